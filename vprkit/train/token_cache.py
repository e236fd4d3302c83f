"""Frozen-backbone tokens of training images, computed once into an HDF5 cache and reused by every epoch and run.

One file per image folder and view (the images as they are, or one seeded augmentation of them), under a name
derived from what produced the tokens; inside, keyed like every vprkit feature file (`features.extract.pending`):
the file's model key (backbone settings, preprocessing, augmentation), the backbone's checkpoint hash, and per image
the identity of its source file, so a changed image is computed again and an interrupted fill resumes.

Per image: `local` (h*w, C) patch tokens and, for ViTs, `cls` (C,), both float16, and `grid` (h, w). In memory the
tokens of a split are float16 too, PCA-projected when training asks for it: N * (h*w + 1) * C' * 2 bytes
(10 000 Nordland images, DINOv2-S at 224 x 112: 10 000 * 129 * 384 * 2 = 0.99 GB; with PCA to 128: 0.33 GB).
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..features import extract, h5io
from ..models import Backbone
from . import route

DATASET = "local"


@dataclass
class Tokens:
    """Tokens of a list of images, in memory: local maps (C, h, w) and CLS tokens (C,) or None, float16."""

    local: list[torch.Tensor]
    cls: list[torch.Tensor] | None

    def __len__(self) -> int:
        return len(self.local)

    def take(self, idx: list[int] | np.ndarray) -> Tokens:
        return Tokens([self.local[i] for i in idx], None if self.cls is None else [self.cls[i] for i in idx])

    def __add__(self, other: Tokens) -> Tokens:
        cls = None if self.cls is None or other.cls is None else self.cls + other.cls
        return Tokens(self.local + other.local, cls)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.local + (self.cls or []))


def content_augmenter(conf: dict, seed: int) -> Callable[[Image.Image], Image.Image]:
    """NetVLAD training's augmentation (`route.augmenter`), seeded per image by its pixels and `seed`: the same
    image always gets the same augmentation whatever the order or resumption of the fill."""
    def apply(img: Image.Image) -> Image.Image:
        return route.augmenter(conf, zlib.crc32(np.asarray(img).tobytes()) ^ seed)(img)

    return apply


def cache_key(model_conf: dict, preprocessing: dict, augment: dict | None, seed: int | None,
              finetune: int = 0) -> str:
    """What the tokens depend on besides the image files and the backbone's checkpoint bytes; with `finetune`
    blocks trained, the tokens are the output of the stem before them."""
    view = None if augment is None else {"augment": augment, "seed": seed}
    key = {"model": model_conf, "preprocessing": preprocessing, "view": view} | (
        {"stem_without": finetune} if finetune else {})
    return json.dumps(key, sort_keys=True)


def cache_path(cache_dir: Path, root: Path, key: str) -> Path:
    """One file per (image folder, key): names repeat across folders (Nordland's seasons)."""
    digest = hashlib.sha1(f"{Path(root).resolve()}\n{key}".encode()).hexdigest()[:12]
    return Path(cache_dir) / f"tokens-{Path(root).name}-{digest}.h5"


@torch.no_grad()
def fill(backbone: Backbone, conf: dict, root: Path, names: list[str], path: Path, key: str,
         transform: Callable | None = None, device: str = "cpu", desc: str = "tokens",
         stem: Callable | None = None) -> list[str]:
    """Compute the tokens of the images of `names` not yet in `path` (or changed since); returns unreadable names.
    `conf` is an extraction config (preprocessing, batch_size, max_pixels); `transform` a size-keeping augmentation;
    `stem` the part of the backbone that runs (default: all of it; `Backbone.split`)."""
    state = extract.state_hash(None, {"model": conf["model"]})
    path.parent.mkdir(parents=True, exist_ok=True)
    todo = extract.pending(path, names, key, dataset=DATASET, root=root, state=state)
    failed: list[str] = []
    with tqdm(total=len(todo), desc=desc, unit="img", leave=False) as bar:
        for batch_names, images, bad in extract.batches(backbone, conf, root, todo, transform):
            failed += bad
            if batch_names:
                out = (stem or backbone)(images.to(device))
                local = out.local.flatten(2).transpose(1, 2).half().cpu().numpy()  # (B, h*w, C)
                grid = np.array(out.local.shape[2:], dtype=np.int32)
                items = {n: {DATASET: loc, "grid": grid} for n, loc in zip(batch_names, local)}
                if out.global_token is not None:
                    for n, c in zip(batch_names, out.global_token.half().cpu().numpy()):
                        items[n]["cls"] = c
                h5io.write_batch(path, items, extract.batch_attrs(key, state), root)
            bar.update(len(batch_names) + len(bad))
    return failed


def load(path: Path, names: list[str], project: Callable | None = None) -> Tokens:
    """Tokens of `names` from a cache file, optionally projected (`project(local (1,C,h,w), cls (1,C) or None)`)."""
    local, cls = [], []
    with h5py.File(path, "r") as f:
        for n in names:
            grp = f[n]
            h, w = grp["grid"][()]
            loc = torch.from_numpy(grp[DATASET][()]).T.reshape(1, -1, h, w)
            c = torch.from_numpy(grp["cls"][()])[None] if "cls" in grp else None
            if project is not None:
                loc, c = project(loc.float(), None if c is None else c.float())
            local.append(loc[0].half())
            cls.append(None if c is None else c[0].half())
    return Tokens(local, None if any(c is None for c in cls) else cls)
