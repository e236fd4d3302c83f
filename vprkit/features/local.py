"""Local descriptors for AMES: the top-k most salient patch descriptors of each image, in the AMES authors' format.

Each kept patch is a row (x, y, scale, mask, weight, descriptor...) with the authors' meanings
(pavelsuma/ames `extract/extract_dino.py`, `src/utils/tensor_dataset.py`): x, y the patch centre in [0, 1] image
coordinates, scale the index of the image scale it came from (0: one scale), mask 1 for padding and 0 for a real
descriptor, weight the detector's raw score. The detector is the feature norm (untrained saliency), or the
authors' trained detector (`detector`: a checkpoint file of their SpatialAttention2d; it also replaces each
descriptor by its normalised conv + BN output, as theirs does). One dense HDF5 dataset `features` [N, K, 5 + D]
per set, as the authors' files, plus `names`: files move both ways (theirs are float32 and have no names; ours are
fp16, filled batch by batch in a `.partial` file that a rerun resumes and renamed into place when complete).
Any D is accepted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..config import Presets
from ..data.images import DEFAULT_MAX_PIXELS, list_images
from ..data.safeio import inputs_fingerprint
from ..models import get_backbone
from ..models.base import load_state_dict, load_strict
from .extract import Extractor, check_conf

logger = logging.getLogger("vprkit")

META = 5  # x, y, scale, mask, weight
X, Y, SCALE, MASK, WEIGHT = range(META)
DATASET = "features"  # the authors' dataset name
FORMAT = 2  # in the cache key: files of the earlier format (mask 1 = real, relative weights) are never reused
CONFS: dict[str, dict] = {
    "dinov2": {"model": {"name": "dinov2_vits14"}, "preprocessing": {"resize_max": 224}},
    "dinov2-448": {"model": {"name": "dinov2_vits14"}, "preprocessing": {"resize_max": 448}},
    # AnyLoc's finding for global VPR descriptors: a middle block's attention values match places best
    "dinov2-value": {"model": {"name": "dinov2_vits14", "layer": 7, "facet": "value"},
                     "preprocessing": {"resize_max": 224}},
    "vgg19": {"model": {"name": "vgg19"}, "preprocessing": {"resize_max": 320}},
}
DEFAULT_RUNTIME = {"batch_size": 16, "max_pixels": DEFAULT_MAX_PIXELS, "detector": None}
# `preprocessing.resize_max` replaces only the preset's resize, keeping the rest of its preprocessing
CONFIG = Presets("local features", DEFAULT_RUNTIME, CONFS, "dinov2",
                 open_sections=("model", "preprocessing"), check=check_conf)


def conf_key(conf: dict, num_features: int) -> str:
    """Short hash of what determines the stored descriptors (model, preprocessing, budget)."""
    key = json.dumps({"model": conf["model"], "preprocessing": conf["preprocessing"], "k": num_features,
                      "detector": conf.get("detector"), "format": FORMAT}, sort_keys=True)
    return hashlib.sha1(key.encode()).hexdigest()[:10]


class Detector(nn.Module):
    """The AMES authors' trained detector (`extract/spatial_attention_2d.py`, their parameter names): 1x1 conv +
    BN give the descriptors (L2-normalised), ReLU, 1x1 conv and softplus give each patch's weight."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1, self.bn, self.conv2 = nn.Conv2d(dim, dim, 1), nn.BatchNorm2d(dim), nn.Conv2d(dim, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.bn(self.conv1(x))
        return F.normalize(x, dim=1, eps=1e-15), F.softplus(self.conv2(F.relu(x)))


def load_detector(path: str | Path, dim: int) -> Detector:
    """The authors' detector checkpoint ({'state': ...} or a bare state dict; weights_only) for `dim`-d features."""
    state = load_state_dict(path)
    if "conv1.weight" in state and state["conv1.weight"].shape[1] != dim:
        raise ValueError(f"{path}: detector for {state['conv1.weight'].shape[1]}-d features, the backbone gives {dim}")
    det = Detector(dim)
    load_strict(det, state, path)
    return det.eval()


class LocalExtractor(Extractor):
    """The global extractor's batching and backbone, without an aggregator; the authors' detector if given."""

    def __init__(self, conf: dict, device: str = "cpu") -> None:  # deliberately no aggregator
        self.conf, self.device = conf, torch.device(device)
        self.backbone = get_backbone(**conf["model"]).eval().to(self.device)
        path = conf.get("detector")
        self.detector = load_detector(path, self.backbone.dim).to(self.device) if path else None

    @torch.no_grad()
    def salient(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(dense descriptors (B, C, h, w), detector scores (B, h, w)) of a batch."""
        feats = self.local(images).local.float()
        if self.detector is None:
            return feats, feats.norm(dim=1)
        feats, weights = self.detector(feats)
        return feats, weights[:, 0]


def select_top(local: torch.Tensor, weights: torch.Tensor, num_features: int) -> np.ndarray:
    """(B, C, h, w) dense features and (B, h, w) detector scores -> (B, K, 5 + C) rows of the K patches with the
    largest score, best first; rows past the image's patches are padding (mask 1, zeros)."""
    b, c, h, w = local.shape
    tokens = local.flatten(2).transpose(1, 2).float()  # (B, h*w, C)
    k = min(num_features, h * w)
    weight, idx = weights.flatten(1).float().topk(k, dim=1)
    out = padding_rows(b, num_features, c)
    rows, cols = idx.div(w, rounding_mode="floor"), idx % w
    out[:, :k, X] = ((cols.float() + 0.5) / w).numpy()
    out[:, :k, Y] = ((rows.float() + 0.5) / h).numpy()
    out[:, :k, SCALE] = 0.0  # one scale
    out[:, :k, MASK] = 0.0
    out[:, :k, WEIGHT] = weight.numpy()
    out[:, :k, META:] = torch.gather(tokens, 1, idx[..., None].expand(-1, -1, c)).numpy()
    return out


def padding_rows(n: int, k: int, dim: int) -> np.ndarray:
    """(n, k, 5 + dim) rows of images with no descriptor: zeros, mask 1."""
    out = np.zeros((n, k, META + dim), dtype=np.float32)
    out[..., MASK] = 1.0
    return out


def _matches(path: Path, conf_json: str, names: list[str]) -> bool:
    """Whether a feature file was made with these settings for exactly these images."""
    with h5py.File(path, "r") as f:
        return f.attrs.get("conf") == conf_json and list(f["names"].asstr()[()]) == names


def _open_partial(partial: Path, names: list[str], shape: tuple[int, int], conf_json: str) -> np.ndarray:
    """Create the work file, or reuse an existing one for the same images and settings; returns `done`."""
    if partial.exists():
        if _matches(partial, conf_json, names):
            with h5py.File(partial, "r") as f:
                return f["done"][()]
        logger.warning("%s was started with other images or settings; starting it again", partial)
        partial.unlink()
    with h5py.File(partial, "w") as f:
        f.create_dataset("names", data=np.array(names, dtype=object), dtype=h5py.string_dtype())
        f.create_dataset(DATASET, shape=(len(names), *shape), dtype=np.float16, chunks=(1, *shape))
        f.create_dataset("done", data=np.zeros(len(names), dtype=bool))
        f.attrs["conf"] = conf_json
    return np.zeros(len(names), dtype=bool)


def main(conf: dict, image_dir: str | Path, feature_path: str | Path, num_features: int,
         names: list[str] | None = None, device: str = "cpu") -> Path:
    """Write the top-`num_features` local descriptors of each image to `feature_path` ([N, K, 5 + D] fp16).

    Resumable; images that cannot be read get an all-padding row (mask 1: zero descriptors).
    """
    root, feature_path = Path(image_dir), Path(feature_path)
    names = names if names is not None else list_images(root)
    # unset (None) settings are left out, so files written before they existed keep matching
    conf_json = json.dumps({**{k: v for k, v in conf.items() if v is not None}, "num_features": num_features},
                           sort_keys=True)
    if feature_path.exists():
        if _matches(feature_path, conf_json, names):
            return feature_path
        raise ValueError(f"{feature_path} holds local features of other images or settings; use a new output file")
    ext = LocalExtractor(conf, device)
    partial = feature_path.with_name(feature_path.name + ".partial")
    feature_path.parent.mkdir(parents=True, exist_ok=True)
    shape = (num_features, ext.backbone.dim)
    done = _open_partial(partial, names, (num_features, META + ext.backbone.dim), conf_json)
    row = {n: i for i, n in enumerate(names)}
    todo = [n for n, d in zip(names, done) if not d]
    failed: list[str] = []
    with tqdm(total=len(todo), desc=f"local features {root.name}", unit="img") as bar:
        for batch_names, images, bad in ext.batches(root, todo):
            failed += bad
            idx = [row[n] for n in batch_names + bad]
            feats = select_top(*(t.cpu() for t in ext.salient(images)), num_features) if batch_names else []
            with h5py.File(partial, "a") as f:
                for n, rows in zip(batch_names + bad, [*feats, *padding_rows(len(bad), *shape)]):
                    f[DATASET][row[n]] = rows.astype(np.float16)
                f["done"][sorted(idx)] = True
            bar.update(len(idx))
    if failed:
        logger.warning("%d images could not be read and have no local descriptors: %s", len(failed),
                       ", ".join(failed[:10]))
    os.replace(partial, feature_path)
    return feature_path


def _gather(data: h5py.Dataset, rows: np.ndarray | list[int]) -> np.ndarray:
    """Rows of an HDF5 dataset in any order, with repeats (h5py only reads increasing unique indices)."""
    uniq, inverse = np.unique(np.asarray(rows, dtype=np.int64), return_inverse=True)
    if not len(uniq):
        return np.zeros((0, *data.shape[1:]), dtype=data.dtype)
    return data[uniq][inverse]


def read_rows(path: str | Path, rows: np.ndarray | list[int] | None = None) -> np.ndarray:
    """The stored [n, K, 5 + D] rows (all of them, or `rows` in the given order) of ours or the authors' files."""
    with h5py.File(path, "r") as f:
        if DATASET not in f or f[DATASET].ndim != 3 or f[DATASET].shape[-1] <= META:
            raise ValueError(f"{path}: not a local-feature file (no '{DATASET}' dataset [N, K, 5 + D])")
        return f[DATASET][()] if rows is None else _gather(f[DATASET], rows)


def write_rows(path: str | Path, rows: np.ndarray, names: list[str] | None = None) -> Path:
    """Rows [N, K, 5 + D] as the authors' file (float32 `features`; `names` too when given), written atomically:
    their evaluation code reads it as one of their own."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.create_dataset(DATASET, data=np.asarray(rows, dtype=np.float32))
        if names is not None:
            f.create_dataset("names", data=np.array(names, dtype=object), dtype=h5py.string_dtype())
    os.replace(tmp, path)
    return path


def split(feats: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stored rows -> (descriptors (.., K, D) float32, valid mask (.., K) bool; mask column 1 = padding)."""
    feats = torch.as_tensor(feats)
    return feats[..., META:].float(), feats[..., MASK] < 0.5


def write_codes(feature_path: str | Path, codes_path: str | Path, binarize, chunk: int = 256) -> Path:
    """Binary map store from fp local features: packed sign codes [N, K, bits / 8] uint8 and the number of
    real descriptors per image [N] (valid descriptors come first), so K 128-bit codes cost 16 K + 2 bytes.

    `binarize` maps (n, K, D) float descriptors to (n, K, bits) +-1 codes (a trained model's binarizer).
    """
    from ..models.binarize import pack

    codes_path = Path(codes_path)
    if codes_path.exists():
        return codes_path
    tmp = codes_path.with_name(codes_path.name + ".tmp")
    with h5py.File(feature_path, "r") as src, h5py.File(tmp, "w") as dst:
        n, k = src[DATASET].shape[:2]
        for s in range(0, n, chunk):
            desc, valid = split(src[DATASET][s:s + chunk])
            with torch.no_grad():
                packed = pack(binarize(desc))
            if s == 0:
                dst.create_dataset("codes", shape=(n, k, packed.shape[-1]), dtype=np.uint8)
                dst.create_dataset("count", shape=(n,), dtype=np.uint16)
            dst["codes"][s:s + chunk] = packed * valid.numpy()[..., None]
            dst["count"][s:s + chunk] = valid.sum(1).numpy()
        if "names" in src:  # the authors' files have none
            dst.create_dataset("names", data=src["names"][()], dtype=h5py.string_dtype())
    os.replace(tmp, codes_path)
    return codes_path


def read_codes(path: str | Path, rows: np.ndarray | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpacked (+-1) codes (n, K, bits) and valid mask (n, K) of the given rows of a binary store."""
    from ..models.binarize import unpack

    with h5py.File(path, "r") as f:
        packed, count = _gather(f["codes"], rows), _gather(f["count"], rows)
    valid = torch.arange(packed.shape[1])[None, :] < torch.from_numpy(count.astype(np.int64))[:, None]
    return unpack(packed), valid


def cached(conf: dict, image_dir: str | Path, names: list[str], cache_dir: str | Path, role: str,
           num_features: int, device: str = "cpu") -> Path:
    """`main` into `cache_dir/{role}_local_{hash}.h5` (hash of settings, image list and the files' identities):
    runs with other settings or images, or after an image file changed, never collide."""
    images = hashlib.sha1(json.dumps([str(Path(image_dir).resolve()), names, inputs_fingerprint(image_dir, names)]
                                     ).encode()).hexdigest()[:8]
    path = Path(cache_dir) / f"{role}_local_{conf_key(conf, num_features)}_{images}.h5"
    return main(conf, image_dir, path, num_features, names=names, device=device)
