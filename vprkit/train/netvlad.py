"""Train NetVLAD (optionally with an attention module) on any dataset with positions: the seed's
`cluster`, `train` and `test` modes as one hloc-style step with named presets and `main(conf, ...)`.

The backbone is frozen except its last `train_layers` modules, so the frozen part runs once per image
and its output is kept in memory; each step then only runs the trainable tail, the attention module
and NetVLAD. Checkpoints carry backbone + attention + NetVLAD weights and plug into
`vprkit index --preset FEATURES --checkpoint best.pt`.

This module is the step (presets in `CONFIG`, `main`); the model and its in-memory features are in
`netvlad_model`, the session the modes share in `netvlad_session`, the training loop and test in `netvlad_loop`.
"""

from __future__ import annotations

import functools
from pathlib import Path

from ..config import Presets, merge
from .checkpoint import run_folder
from .netvlad_loop import test, train
from .netvlad_session import Session

DEFAULT_CONF: dict = {  # the de-attention code's choices (deepguider/deattention_with_stml_for_vpr)
    "features": "mobilenetv2-netvlad",  # extraction preset: backbone, NetVLAD size, preprocessing
    "resize_max": None,  # override the preset's long image side
    "attention": None,  # crn | bam | cbam | se | deattention | crn-ref | bam-ref | deattention-ref (+ chains a+b)
    "mask_mode": "features",  # where a spatial mask acts: features (the original's) | assignment (vprkit's)
    "loss": {"name": "triplet", "margin": 0.1},
    "guidance": {"source": None, "mask_dir": None, "checkpoint": None, "classes": ["human", "vehicle", "sky"],
                 "loss": "mse", "weight": 0.1, "resize": "bicubic"},
    "data": {"positions": "utm", "pos_thr": 10.0, "neg_thr": 25.0, "split": [0.7, 0.15, 0.15], "gap": None,
             "source": "queries", "copies": 4, "self_positive": True},  # source=map: label-free (train/route.py)
    "augment": {"crop": 0.9, "brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "grey": 0.0},
    "train": {"epochs": 30, "batch_size": 4, "optimizer": "adam", "lr": 1e-4, "momentum": 0.9,
              "weight_decay": 1e-3, "lr_step": 5, "lr_gamma": 0.5, "train_layers": 0, "num_negs": 10,
              "neg_samples": 1000, "mining": "violating", "mining_margin": 0.1, "cache_refresh": 1000,
              "patience": 10, "seed": 123, "cluster_images": 500, "max_queries_per_epoch": None, "init": None},
}
_STML = {"loss": {"name": "stml", "margin": 0.1, "margin_pn": 1.4},
         "train": {"mining_margin": 1.5}}  # the original's sTML runs mine with --dataloader_margin=1.5
_SEG = {"guidance": {"source": "segmenter"}}
_DEATT = {"attention": "deattention-ref", **_SEG}  # the original's run 2 (baseline_deattention): human + vehicle
_DEATT_STML = {"attention": "deattention-ref+se-ref", **_SEG}  # its run 3 adds SE after de-attention
# vprkit's own choices: nearest negatives, masks weighting the soft assignment, its modules and guidance
_VPRKIT = {"mask_mode": "assignment", "train": {"mining": "nearest"}}
_VPRKIT_DEATT = {"attention": "deattention", "guidance": {"source": "segmenter", "classes": ["vehicle", "human"],
                                                          "weight": 0.001, "resize": "area"}}
_VGG = {"features": "vgg19-netvlad", "train": {"train_layers": 4}}  # conv5_3 + conv5_4 (and their ReLUs) trained


def _preset(*parts: dict) -> dict:
    return functools.reduce(merge, parts, {})


CONFS: dict[str, dict] = {
    # reference presets: the de-attention paper's training runs as its code computes them
    "mobilenetv2-netvlad": {},
    "mobilenetv2-netvlad-stml": _STML,
    "mobilenetv2-crn-netvlad": {"attention": "crn-ref"},
    "mobilenetv2-bam-netvlad": {"attention": "bam-ref"},
    "mobilenetv2-deattention-netvlad": _preset(_DEATT, {"guidance": {"classes": ["human", "vehicle"]}}),
    "mobilenetv2-deattention-stml": _preset(_DEATT_STML, _STML),
    "vgg19-netvlad": _VGG,
    "vgg19-deattention-stml": _preset(_DEATT_STML, _STML, _VGG),
    # vprkit's variants
    "mobilenetv2-netvlad-vprkit": _VPRKIT,
    "mobilenetv2-netvlad-stml-vprkit": _preset(_STML, _VPRKIT),
    "mobilenetv2-crn-netvlad-vprkit": _preset({"attention": "crn"}, _VPRKIT),
    "mobilenetv2-crn-stml-vprkit": _preset({"attention": "crn"}, _STML, _VPRKIT),
    "mobilenetv2-bam-netvlad-vprkit": _preset({"attention": "bam"}, _VPRKIT),
    "mobilenetv2-deattention-stml-vprkit": _preset(_VPRKIT_DEATT, _STML, _VPRKIT),
    "vgg19-deattention-stml-vprkit": _preset(_VPRKIT_DEATT, _STML, _VPRKIT, _VGG),
}
DEFAULT_PRESET = "mobilenetv2-netvlad"
MODES = ("cluster", "train", "test")


CONFIG = Presets("train netvlad", DEFAULT_CONF, CONFS, DEFAULT_PRESET)


def main(conf: dict, map_dir: str | Path, query_dir: str | Path | None, out_dir: str | Path, *, mode: str = "train",
         resume: bool = True, checkpoint: str | Path | None = None, split: str = "test",
         device: str = "cpu") -> dict:
    """Run one mode: `cluster` (writes OUT/centroids.npz), `train` (OUT/last.pt, best.pt, log.csv) or
    `test` (Recall@N of `checkpoint`, or of the untrained model, on `split`). `query_dir` may be None with
    `data.source=map` (label-free: augmented map images are the queries)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode '{mode}'; choose one of {MODES}")
    out_dir = run_folder(out_dir)
    clustered = (Path(out_dir) / "centroids.npz").exists() or checkpoint is not None
    splits = {"cluster": ("train",), "train": ("train", "val"),
              "test": (split,) if clustered else ("train", split)}[mode]
    s = Session(conf, map_dir, query_dir, out_dir, device, tuple(dict.fromkeys(splits)))
    if mode == "cluster":
        return {"centroids": str(s.cluster())}
    if mode == "train":
        return train(s, resume)
    return test(s, checkpoint, split)
