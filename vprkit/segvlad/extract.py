"""SegVLAD extraction step: image -> segments -> SuperSegment VLAD descriptors, written resumably to HDF5.

Each image's group holds `segments` (S, D) descriptors and `labels`, its run-length coded label map
(the masks, kept for inspection and re-use; a few kB). Backbone, batching and the k-means vocabulary
come from `vprkit.features.extract.Extractor`; this module adds segmentation, SuperSegments and PCA.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..data.images import list_images
from ..evaluation.outputs import atomic_savez
from ..features import h5io
from ..features.extract import DEFAULT_RUNTIME, Extractor, batch_attrs, pending, state_hash, succeeded
from ..segment import get_segmenter
from ..segment.masks import encode, num_segments
from .describe import PCA, patch_weights, residual_sums, supersegment_vlad
from .graph import adjacency, neighbourhoods

logger = logging.getLogger("vprkit")

_BASE = {
    "model": {"name": "dinov2_vits14", "layer": 7, "facet": "value"},
    "aggregator": {"name": "vlad", "num_clusters": 32},
    "preprocessing": {"resize_max": 322},
    "order": 3,
    "vocabulary": "map",  # 'map': k-means on the map's tokens; else a .npy/.npz file of (K, C) centroids
    "pca_dim": 1024,
    "pca_whiten": False,
    "pca_fit_images": 100,
    "pca_max_segments": 4096,
    "top_k_segments": 50,
    "fp16": True,
}
CONFS: dict[str, dict] = {
    "segvlad-slic": {**_BASE, "segmenter": {"name": "slic", "n_segments": 48, "compactness": 10.0}},
    "segvlad-dino": {**_BASE, "segmenter": {"name": "dino_kmeans", "num_clusters": 12}},
    "segvlad-sam": {**_BASE, "segmenter": {"name": "sam", "checkpoint": None, "model_type": "vit_b"}},
}
DEFAULT_PRESET = "segvlad-slic"
DESCRIPTOR_KEYS = ("model", "aggregator", "preprocessing", "segmenter", "order", "vocabulary", "pca_dim",
                   "pca_whiten")


def get_conf(preset: str = DEFAULT_PRESET, **overrides) -> dict:
    """A copy of a preset with runtime defaults; override keys may be dotted (`segmenter.n_segments=64`)."""
    if preset not in CONFS:
        raise KeyError(f"unknown SegVLAD preset '{preset}'; choose one of {sorted(CONFS)}")
    conf = json.loads(json.dumps(CONFS[preset]))
    conf["preset"] = preset
    conf.update({k: v for k, v in DEFAULT_RUNTIME.items() if k not in conf})
    for key, value in overrides.items():
        if value is None:
            continue
        *parents, leaf = key.split(".")
        node = conf
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return conf


def model_key(conf: dict) -> str:
    """What determines the descriptor space: map and queries must agree on it."""
    return json.dumps({k: conf.get(k) for k in DESCRIPTOR_KEYS}, sort_keys=True)


class SegExtractor:
    """Backbone + vocabulary (shared Extractor), segmenter, SuperSegment order and PCA."""

    def __init__(self, conf: dict, device: str = "cpu", extractor: Extractor | None = None):
        self.conf = conf
        self.ext = extractor or Extractor(conf, device)
        self.segmenter = get_segmenter(**conf["segmenter"])
        self.pca = PCA()
        self.fitted = False

    @property
    def centroids(self) -> np.ndarray:
        return self.ext.aggregator.centroids.cpu().numpy()

    def _rgb(self, images: torch.Tensor) -> np.ndarray:
        """The uint8 images (B, H, W, 3) the backbone saw, recovered from the normalised batch (segments align
        with tokens)."""
        mean = torch.tensor(self.ext.backbone.mean).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.ext.backbone.std).view(1, 3, 1, 1) * 255
        return images.cpu().mul(std).add_(mean).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()

    def raw(self, images: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
        """(label map, raw SuperSegment VLADs (S, K*C)) for each image of a batch."""
        local = self.ext.local(images).local.cpu().numpy()
        centroids = self.centroids
        out = []
        for rgb, tok in zip(self._rgb(images), local):
            labels = self.segmenter(rgb, tok)
            s = num_segments(labels)
            c, h, w = tok.shape
            sums = residual_sums(tok.reshape(c, -1).T, centroids, patch_weights(labels, (h, w), s))
            out.append((labels, supersegment_vlad(sums, neighbourhoods(adjacency(labels, s), self.conf["order"]))))
        return out

    def describe(self, images: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
        """(label map, final descriptors (S, D)) per image; one PCA product for the whole batch."""
        raws = self.raw(images)
        if not raws:
            return []
        desc = self.pca(np.concatenate([r for _, r in raws]))
        bounds = np.cumsum([len(r) for _, r in raws])[:-1]
        return [(labels, d) for (labels, _), d in zip(raws, np.split(desc, bounds))]

    def fit(self, root: Path, names: list[str]) -> None:
        """Vocabulary (map k-means or a given file), then PCA on a bounded sample of map segments."""
        vocab = self.conf["vocabulary"]
        self.fitted = True
        if vocab == "map":
            self.ext.fit(root, names)
        else:
            self.ext.aggregator.centroids = torch.from_numpy(load_vocabulary(vocab, self.ext.backbone.dim))
        if not self.conf.get("pca_dim"):
            return
        rng = random.Random(self.conf["seed"])
        sample = sorted(rng.sample(names, min(len(names), self.conf["pca_fit_images"])))
        raws = [r for _, images, _ in tqdm(list(self.ext.batches(root, sample)), desc="fit: segment PCA",
                                           unit="batch") if len(images) for _, r in self.raw(images)]
        x = np.concatenate(raws) if raws else np.zeros((0, 1), np.float32)
        if len(x) > self.conf["pca_max_segments"]:
            x = x[np.random.default_rng(self.conf["seed"]).choice(len(x), self.conf["pca_max_segments"], False)]
        if len(x) < 2:
            logger.warning("too few map segments (%d) to fit PCA; descriptors stay at full size", len(x))
            return
        self.pca = PCA.fit(x, self.conf["pca_dim"], self.conf["pca_whiten"])

    def save_state(self, path: Path) -> None:
        """Vocabulary and PCA as .npz (no pickle), written atomically."""
        empty = np.zeros(0, np.float32)
        atomic_savez(path, {"centroids": self.centroids,
                            "pca_mean": self.pca.mean if self.pca.proj is not None else empty,
                            "pca_proj": self.pca.proj if self.pca.proj is not None else empty})

    def load_state(self, path: Path) -> None:
        self.fitted = True
        with np.load(path, allow_pickle=False) as data:
            self.ext.aggregator.centroids = torch.from_numpy(data["centroids"])
            self.pca = PCA(data["pca_mean"], data["pca_proj"]) if data["pca_proj"].size else PCA()


def load_vocabulary(path: str | Path, dim: int) -> np.ndarray:
    """(K, C) centroids from a .npy, or the `centroids` array of a .npz (e.g. another map's state)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file not found: {path} (use vocabulary='map' to fit one)")
    data = np.load(path, allow_pickle=False)
    arr = data["centroids"] if isinstance(data, np.lib.npyio.NpzFile) else data
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"{path}: vocabulary of shape {arr.shape}, expected (K, {dim}) for this backbone")
    return np.ascontiguousarray(arr, dtype=np.float32)


def main(conf: dict, image_dir: str | Path, feature_path: str | Path, state_path: str | Path | None = None,
         names: list[str] | None = None, device: str = "cpu", extractor: SegExtractor | None = None) -> list[str]:
    """Write SegVLAD descriptors and label maps of `image_dir` to `feature_path`; returns names that succeeded.

    `state_path` (vocabulary + PCA) is loaded if it exists, else fitted on these images (the map) and saved.
    """
    root, feature_path = Path(image_dir), Path(feature_path)
    names = names if names is not None else list_images(root)
    ext = extractor or SegExtractor(conf, device)
    if state_path is not None and Path(state_path).exists():
        ext.load_state(Path(state_path))
    elif not ext.fitted:
        ext.fit(root, names)
        if state_path is not None:
            ext.save_state(Path(state_path))
    state = state_hash(state_path, conf)
    todo = pending(feature_path, names, model_key(conf), dataset="segments", root=root, state=state)
    failed: list[str] = []
    dtype = np.float16 if conf["fp16"] else np.float32
    with tqdm(total=len(todo), desc=f"segvlad {root.name}", unit="img") as bar:
        for batch_names, images, bad in ext.ext.batches(root, todo):
            failed += bad
            if batch_names:
                items = {n: {"segments": d.astype(dtype), "labels": encode(lab)}
                         for n, (lab, d) in zip(batch_names, ext.describe(images))}
                h5io.write_batch(feature_path, items, batch_attrs(model_key(conf), state), root)
            bar.update(len(batch_names) + len(bad))
    return succeeded(names, failed, len(todo))
