"""Patch-NetVLAD descriptors: a (Net)VLAD vector for every window of the dense feature map.

Every window of every size is pooled at once from integral maps of the per-pixel VLAD terms
(a_k(p) x(p) and a_k(p)): a window sum is four look-ups, whatever the window size, instead of a
loop over windows. Each patch vector is intra-normalised per cluster, L2-normalised, then projected
by a PCA(-whitening) to `num_pcs` dims and L2-normalised again, as in the original.

Features go to HDF5 as float16, one group per image (`global` plus `p{size}` per patch size),
written batch by batch like global features, so an interrupted run resumes where it stopped.
Keypoints are not stored: every image is resized to the same size, so patch positions are one grid
(`patch_grid`) shared by all images.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import h5py
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..aggregators.base import l2n
from ..aggregators.netvlad import NetVLAD
from ..aggregators.vlad import VLAD
from ..data.images import ImageError, load_image
from ..models import Backbone
from ..models.pca import fit_pca
from . import h5io
from .extract import pending, succeeded

logger = logging.getLogger("vprkit")
# as the original's torchvision Resize on PIL images (part of the feature cache key)
RESAMPLE = Image.Resampling.BILINEAR


def integral(x: torch.Tensor) -> torch.Tensor:
    """Integral image over the last two axes, zero-padded at the top and left: (..., H+1, W+1).

    Accumulated in float64: window sums are differences of large running totals, and float32 would
    lose about 1e-4 of a descriptor on a 40 x 30 map.
    """
    return torch.nn.functional.pad(x.double().cumsum(-1).cumsum(-2), (1, 0, 1, 0))


def window_sums(ii: torch.Tensor, size: int, stride: int) -> torch.Tensor:
    """Sums of all size x size windows at `stride` from an integral image: (..., Hout, Wout)."""
    h, w = ii.shape[-2] - 1, ii.shape[-1] - 1
    if size > h or size > w:
        return ii.new_zeros(*ii.shape[:-2], 0, 0)
    ey, ex = h + 1, w + 1
    return (ii[..., size:ey:stride, size:ex:stride] - ii[..., : ey - size:stride, size:ex:stride]
            - ii[..., size:ey:stride, : ex - size:stride] + ii[..., : ey - size:stride, : ex - size:stride])


def assignments(aggregator: NetVLAD | VLAD, local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised features (B, C, H, W), cluster weights (B, K, H, W)): soft for NetVLAD, one-hot for VLAD."""
    x = l2n(local, dim=1)
    if isinstance(aggregator, NetVLAD):
        return x, torch.softmax(aggregator.conv(x), dim=1)
    if not isinstance(aggregator, VLAD):
        raise ValueError(f"patch descriptors need a 'netvlad' or 'vlad' aggregator, got {type(aggregator).__name__}")
    assign = torch.einsum("bchw,kc->bkhw", x, aggregator.centroids).argmax(1)
    return x, torch.nn.functional.one_hot(assign, aggregator.centroids.shape[0]).permute(0, 3, 1, 2).to(x.dtype)


def _vlad_from_sums(s_ax: torch.Tensor, s_a: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Normalised VLADs (B, N, K*C) from window sums of a_k x (B, K, C, N) and of a_k (B, K, N)."""
    b, k, c = s_ax.shape[:3]
    s_ax, s_a = s_ax.float(), s_a.float()
    v = l2n(s_ax - s_a[:, :, None] * centroids[None, :, :, None], dim=2)  # intra-normalisation per cluster
    return l2n(v.reshape(b, k * c, -1).transpose(1, 2))


def patch_vlads(x: torch.Tensor, a: torch.Tensor, centroids: torch.Tensor, sizes: list[int],
                strides: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(global VLAD (B, K*C), raw patch VLADs (B, N_s, K*C) per size, windows row-major) from integral maps.

    A window's VLAD is sum_p a_k(p) (x(p) - c_k) = sum_p a_k(p) x(p) - (sum_p a_k(p)) c_k.
    """
    ax = integral(torch.einsum("bkhw,bchw->bkchw", a, x))  # (B, K, C, H+1, W+1)
    aa = integral(a)  # (B, K, H+1, W+1)
    glob = _vlad_from_sums(ax[..., -1:, -1].contiguous(), aa[..., -1:, -1].contiguous(), centroids)[:, 0]
    out = []
    for size, stride in zip(sizes, strides, strict=True):
        s_ax, s_a = window_sums(ax, size, stride), window_sums(aa, size, stride)
        out.append(_vlad_from_sums(s_ax.flatten(3), s_a.flatten(2), centroids))
    return glob, out


def patch_grid(h: int, w: int, size: int, stride: int, feat_stride: int) -> tuple[np.ndarray, np.ndarray]:
    """(grid indices (N, 2) as (x, y), pixel centres (N, 2)) of the windows of an h x w feature map.

    A window's pixel centre is the middle of the first and last cells' receptive fields, which for
    VGG (field 196, padding 90, stride 16) is feat_stride * (j + size / 2) - 0.5, truncated to whole
    pixels as the original stores it (an integer array): RANSAC sees the original's coordinates.
    """
    ys, xs = np.arange(0, h - size + 1, stride), np.arange(0, w - size + 1, stride)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    grid = np.stack([gx.ravel(), gy.ravel()], 1).astype(np.int64)
    centres = np.trunc(feat_stride * (grid + size / 2.0) - 0.5)
    return grid // stride, centres.astype(np.float32)


class PatchModel(torch.nn.Module):
    """Backbone + (Net)VLAD + PCA producing multi-scale patch descriptors for fixed-size images."""

    def __init__(self, conf: dict, backbone: Backbone, aggregator: NetVLAD | VLAD, drop_last_relu: bool = False):
        super().__init__()
        self.conf = conf
        self.backbone = backbone.eval()
        self.aggregator = aggregator.eval()
        self.drop_last_relu = drop_last_relu  # NetVLAD checkpoints pool conv5_3 before its ReLU
        self.register_buffer("pca_weight", torch.zeros(0))
        self.register_buffer("pca_bias", torch.zeros(0))
        self.register_buffer("pq_centroids", torch.zeros(0))  # (M, 256, d / M) when map patches are PQ-coded

    @property
    def centroids(self) -> torch.Tensor:
        return self.aggregator.centroids

    def feature_size(self) -> tuple[int, int]:
        """(h, w) of the feature map for the configured image size."""
        w, h = self.conf["resize"]
        return h // self.backbone.stride, w // self.backbone.stride

    def grids(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per patch size: (grid indices, pixel centres) of its patches."""
        h, w = self.feature_size()
        return [patch_grid(h, w, s, st, self.backbone.stride)
                for s, st in zip(self.conf["patch_sizes"], self.conf["strides"], strict=True)]

    def load_images(self, root: Path, names: list[str]) -> tuple[list[str], torch.Tensor, list[str]]:
        """(names read, (B, 3, H, W) batch at the configured size, names that failed)."""
        ok, tensors, bad = [], [], []
        for name in names:
            try:
                img = load_image(root / name).resize(tuple(self.conf["resize"]), RESAMPLE)
            except ImageError as exc:
                logger.warning("skipping %s", exc)
                bad.append(name)
                continue
            ok.append(name)
            tensors.append(self.backbone.preprocess(img))
        return ok, torch.stack(tensors) if tensors else torch.empty(0), bad

    @torch.no_grad()
    def local(self, images: torch.Tensor) -> torch.Tensor:
        """Dense backbone features (B, C, h, w)."""
        images = images.to(self.pca_weight.device)
        if self.drop_last_relu:
            return self.backbone.features[:-1](images)
        return self.backbone(images).local

    def local_features(self, root: Path, names: list[str]) -> tuple[list[str], torch.Tensor, list[str]]:
        """(names read, dense features (B, C, h, w), names that failed), via `conf['backbone_cache']` if set.

        The cache (HDF5 of float32 backbone maps keyed by image path) lets presets that differ only
        after the backbone (patch sizes, PCA dims, matcher) share one backbone pass per image.
        """
        cache = self.conf.get("backbone_cache")
        keys = [str(Path(root).resolve() / n) for n in names]
        if cache and Path(cache).exists():
            with h5py.File(cache, "r") as f:
                if all(k in f for k in keys):
                    return names, torch.from_numpy(np.stack([f[k][()] for k in keys])), []
        ok, images, bad = self.load_images(root, names)
        local = self.local(images) if ok else torch.empty(0)
        if cache and ok:
            with h5py.File(cache, "a") as f:
                for n, x in zip(ok, local):
                    key = str(Path(root).resolve() / n)
                    if key not in f:
                        f.create_dataset(key, data=x.cpu().numpy())
        return ok, local, bad

    @torch.no_grad()
    def raw(self, local: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(raw global VLAD (B, K*C), raw patch VLADs per size (B, N_s, K*C)) before PCA."""
        x, a = assignments(self.aggregator, local.to(self.pca_weight.device))
        return patch_vlads(x, a, self.centroids, self.conf["patch_sizes"], self.conf["strides"])

    def project(self, v: torch.Tensor) -> torch.Tensor:
        """PCA(-whitening) then L2 normalisation; identity (normalised) before PCA is fitted."""
        if self.pca_weight.numel() == 0:
            return l2n(v)
        return l2n(v @ self.pca_weight.T + self.pca_bias)

    @torch.no_grad()
    def describe(self, local: torch.Tensor) -> dict[str, np.ndarray]:
        """{'global': (B, d), 'p{size}': (B, N_s, d)} float32 after PCA, from backbone features."""
        glob, patches = self.raw(local)
        out = {"global": self.project(glob).cpu().numpy()}
        for size, p in zip(self.conf["patch_sizes"], patches, strict=True):
            out[f"p{size}"] = self.project(p).cpu().numpy()
        return out

    def fit_pca(self, root: Path, names: list[str]) -> None:
        """PCA-whitening to `num_pcs` dims fitted on patches of (a sample of) the map images."""
        rng = random.Random(self.conf["seed"])
        sample = sorted(rng.sample(names, min(len(names), self.conf["fit_max_images"])))
        per_image = max(1, self.conf["fit_max_patches"] // max(len(sample), 1))
        gen = np.random.default_rng(self.conf["seed"])
        rows = []
        for i in tqdm(range(0, len(sample), self.conf["batch_size"]), desc="fit PCA: patches", unit="batch"):
            ok, local, _ = self.local_features(root, sample[i:i + self.conf["batch_size"]])
            if ok:
                allp = torch.cat(self.raw(local)[1], dim=1).cpu().numpy()  # (B, N, D) all sizes
                for p in allp:
                    rows.append(p[gen.choice(len(p), min(per_image, len(p)), replace=False)])
        if not rows or sum(len(r) for r in rows) < 2:
            raise ValueError(f"{root}: not enough map patches to fit PCA (images too small for the patch sizes?)")
        mean, proj = fit_pca(np.concatenate(rows), self.conf["num_pcs"], self.conf["whiten"])
        self.pca_weight, self.pca_bias = torch.from_numpy(proj), torch.from_numpy(-(proj @ mean))
        if self.conf.get("pq_bytes"):
            projected = self.project(torch.from_numpy(np.concatenate(rows))).numpy()
            self.pq_centroids = torch.from_numpy(train_pq(projected, self.conf["pq_bytes"], self.conf["seed"]))


def train_pq(x: np.ndarray, num_bytes: int, seed: int = 0) -> np.ndarray:
    """Product-quantiser codebooks (M, 256, d / M) for rows of `x`: one byte per sub-vector."""
    import faiss

    d = x.shape[1]
    if d % num_bytes:
        raise ValueError(f"pq_bytes={num_bytes} must divide the descriptor size {d}")
    if len(x) < 256:
        raise ValueError(f"product quantisation needs at least 256 patches to train on, got {len(x)}")
    recommended = 39 * 256  # faiss's own minimum for good k-means codebooks
    if len(x) < recommended:
        logger.warning("product quantiser trained on %d patches (%d recommended): raise fit_max_patches for "
                       "better codes", len(x), recommended)
    pq = faiss.ProductQuantizer(d, num_bytes, 8)
    pq.cp.seed = seed
    pq.cp.min_points_per_centroid = 1  # warned once above, not once per sub-quantiser
    pq.train(np.ascontiguousarray(x, dtype=np.float32))
    return faiss.vector_to_array(pq.centroids).reshape(num_bytes, 256, d // num_bytes).astype(np.float32)


def pq_encode(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """uint8 codes (..., M): the nearest centroid of each sub-vector of `x` (..., d)."""
    m, _, dsub = codebook.shape
    sub = x.reshape(*x.shape[:-1], m, dsub)
    dist = (codebook**2).sum(-1) - 2 * torch.einsum("...md,mkd->...mk", sub, codebook)
    return dist.argmin(-1).to(torch.uint8)


def pq_decode(codes: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Unit vectors (..., d) rebuilt from codes (..., M)."""
    m, _, dsub = codebook.shape
    parts = codebook[torch.arange(m), codes.long()]  # (..., M, d / M)
    return l2n(parts.reshape(*codes.shape[:-1], m * dsub))


def extract(model: PatchModel, root: Path, names: list[str], path: Path, key: str, compress: bool = False
            ) -> list[str]:
    """Write patch features of `names` to `path` (fp16, resumable); returns the names that could be read.

    With `compress` and a trained product quantiser, patches are stored as uint8 PQ codes instead (the
    map side: queries stay fp16 so matching is asymmetric). `key` identifies the model and settings;
    a file written with another key is refused.
    """
    todo = pending(path, names, key, root=root)
    failed: list[str] = []
    bs = model.conf["batch_size"]
    with tqdm(total=len(todo), desc=f"patch features {root.name}", unit="img") as bar:
        for i in range(0, len(todo), bs):
            ok, local, bad = model.local_features(root, todo[i:i + bs])
            failed += bad
            if ok:
                feats = model.describe(local)
                items = {n: {k: v[j].astype(np.float16) for k, v in feats.items()} for j, n in enumerate(ok)}
                if compress and model.pq_centroids.numel():
                    for j, n in enumerate(ok):
                        for size in model.conf["patch_sizes"]:
                            codes = pq_encode(torch.from_numpy(feats[f"p{size}"][j]), model.pq_centroids.cpu())
                            items[n][f"p{size}"] = codes.numpy()
                h5io.write_batch(path, items, {"model_key": key}, root)
            bar.update(len(ok) + len(bad))
    return succeeded(names, failed, len(todo))


def read_patches(f: h5py.File, names: list[str], sizes: list[int], codebook: torch.Tensor | None = None
                 ) -> list[np.ndarray]:
    """Per patch size, the stacked features (len(names), N_s, d) of `names` from an open file.

    float16 as stored, or float32 decoded with `codebook` when the file holds PQ codes.
    """
    out = [np.stack([f[f"{n}/p{s}"][()] for n in names]) for s in sizes]
    if out and out[0].dtype == np.uint8:
        if codebook is None or not codebook.numel():
            raise ValueError(f"{f.filename} holds PQ codes but no codebook was given")
        out = [pq_decode(torch.from_numpy(x), codebook).numpy() for x in out]
    return out


