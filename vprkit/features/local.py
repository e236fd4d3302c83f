"""Local descriptors for AMES: the top-k most salient patch descriptors of each image.

The detector is the untrained feature-norm saliency (strong, distinctive patches have large
activations). Each kept patch is stored as (x, y, scale, mask, weight, descriptor...):
x, y the patch centre in [0, 1] image coordinates, scale the patch size over the image's long side,
mask 1 for a real descriptor and 0 for padding (images with fewer patches than the budget), weight
the saliency over the image's largest. One dense fp16 HDF5 array [N, K, 5 + D] per set (faster than
a group per image at scale), filled batch by batch in a `.partial` file that a rerun resumes and
that is renamed into place when every image is done.
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
from tqdm import tqdm

from ..data.images import DEFAULT_MAX_PIXELS, list_images
from ..data.safeio import inputs_fingerprint
from ..models import get_backbone
from .extract import Extractor

logger = logging.getLogger("vprkit")

META = 5  # x, y, scale, mask, weight
X, Y, SCALE, MASK, WEIGHT = range(META)
CONFS: dict[str, dict] = {
    "dinov2": {"model": {"name": "dinov2_vits14"}, "preprocessing": {"resize_max": 224}},
    "dinov2-448": {"model": {"name": "dinov2_vits14"}, "preprocessing": {"resize_max": 448}},
    # AnyLoc's finding for global VPR descriptors: a middle block's attention values match places best
    "dinov2-value": {"model": {"name": "dinov2_vits14", "layer": 7, "facet": "value"},
                     "preprocessing": {"resize_max": 224}},
    "vgg19": {"model": {"name": "vgg19"}, "preprocessing": {"resize_max": 320}},
}
DEFAULT_RUNTIME = {"batch_size": 16, "max_pixels": DEFAULT_MAX_PIXELS}


def get_conf(preset: str = "dinov2", resize_max: int | None = None, **overrides) -> dict:
    """A copy of a local-feature preset with runtime defaults and `overrides`; `resize_max` (when given)
    replaces only the preset's resize, keeping the rest of its preprocessing."""
    if preset not in CONFS:
        raise KeyError(f"unknown local-feature preset '{preset}'; choose one of {sorted(CONFS)}")
    conf = {**json.loads(json.dumps(CONFS[preset])), "preset": preset, **DEFAULT_RUNTIME}
    conf.update({k: v for k, v in overrides.items() if v is not None})
    if resize_max:
        conf["preprocessing"] = {**conf["preprocessing"], "resize_max": resize_max}
    return conf


def conf_key(conf: dict, num_features: int) -> str:
    """Short hash of what determines the stored descriptors (model, preprocessing, budget)."""
    key = json.dumps({"model": conf["model"], "preprocessing": conf["preprocessing"], "k": num_features},
                     sort_keys=True)
    return hashlib.sha1(key.encode()).hexdigest()[:10]


class LocalExtractor(Extractor):
    """The global extractor's batching and backbone, without an aggregator."""

    def __init__(self, conf: dict, device: str = "cpu") -> None:  # deliberately no aggregator
        self.conf, self.device = conf, torch.device(device)
        self.backbone = get_backbone(**conf["model"]).eval().to(self.device)


def select_top(local: torch.Tensor, num_features: int) -> np.ndarray:
    """(B, C, h, w) dense features -> (B, K, 5 + C) rows of the K patches with the largest norm, best first."""
    b, c, h, w = local.shape
    tokens = local.flatten(2).transpose(1, 2).float()  # (B, h*w, C)
    norms = tokens.norm(dim=-1)
    k = min(num_features, h * w)
    weight, idx = norms.topk(k, dim=1)
    out = np.zeros((b, num_features, META + c), dtype=np.float32)
    rows, cols = idx.div(w, rounding_mode="floor"), idx % w
    long_side = max(h, w)
    out[:, :k, X] = ((cols.float() + 0.5) / w).numpy()
    out[:, :k, Y] = ((rows.float() + 0.5) / h).numpy()
    out[:, :k, SCALE] = 1.0 / long_side
    out[:, :k, MASK] = 1.0
    out[:, :k, WEIGHT] = (weight / weight[:, :1].clamp_min(1e-12)).numpy()
    out[:, :k, META:] = torch.gather(tokens, 1, idx[..., None].expand(-1, -1, c)).numpy()
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
        f.create_dataset("local", shape=(len(names), *shape), dtype=np.float16, chunks=(1, *shape))
        f.create_dataset("done", data=np.zeros(len(names), dtype=bool))
        f.attrs["conf"] = conf_json
    return np.zeros(len(names), dtype=bool)


def main(conf: dict, image_dir: str | Path, feature_path: str | Path, num_features: int,
         names: list[str] | None = None, device: str = "cpu") -> Path:
    """Write the top-`num_features` local descriptors of each image to `feature_path` ([N, K, 5 + D] fp16).

    Resumable; images that cannot be read keep an all-padding row (mask 0: zero descriptors).
    """
    root, feature_path = Path(image_dir), Path(feature_path)
    names = names if names is not None else list_images(root)
    conf_json = json.dumps({**conf, "num_features": num_features}, sort_keys=True)
    if feature_path.exists():
        if _matches(feature_path, conf_json, names):
            return feature_path
        raise ValueError(f"{feature_path} holds local features of other images or settings; use a new output file")
    ext = LocalExtractor(conf, device)
    partial = feature_path.with_name(feature_path.name + ".partial")
    feature_path.parent.mkdir(parents=True, exist_ok=True)
    done = _open_partial(partial, names, (num_features, META + ext.backbone.dim), conf_json)
    row = {n: i for i, n in enumerate(names)}
    todo = [n for n, d in zip(names, done) if not d]
    failed: list[str] = []
    with tqdm(total=len(todo), desc=f"local features {root.name}", unit="img") as bar:
        for batch_names, images, bad in ext.batches(root, todo):
            failed += bad
            idx = [row[n] for n in batch_names + bad]
            with h5py.File(partial, "a") as f:
                if batch_names:
                    feats = select_top(ext.local(images).local.cpu(), num_features)
                    for i, n in enumerate(batch_names):
                        f["local"][row[n]] = feats[i].astype(np.float16)
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
    """The stored [n, K, 5 + D] fp16 rows (all of them, or `rows` in the given order)."""
    with h5py.File(path, "r") as f:
        return f["local"][()] if rows is None else _gather(f["local"], rows)


def split(feats: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stored rows -> (descriptors (.., K, D) float32, valid mask (.., K) bool)."""
    feats = torch.as_tensor(feats)
    return feats[..., META:].float(), feats[..., MASK] > 0.5


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
        n, k = src["local"].shape[:2]
        for s in range(0, n, chunk):
            desc, valid = split(src["local"][s:s + chunk])
            with torch.no_grad():
                packed = pack(binarize(desc))
            if s == 0:
                dst.create_dataset("codes", shape=(n, k, packed.shape[-1]), dtype=np.uint8)
                dst.create_dataset("count", shape=(n,), dtype=np.uint16)
            dst["codes"][s:s + chunk] = packed * valid.numpy()[..., None]
            dst["count"][s:s + chunk] = valid.sum(1).numpy()
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
