"""Where de-attention guidance masks come from: precomputed mask files or a segmentation model.

A guidance mask is (1, H, W) in [0, 1] at the size the image enters the backbone: 0 on distracting
classes, 1 elsewhere. Mask files are looked up as MASK_DIR/map/NAME.png and MASK_DIR/query/NAME.png
(NAME = the image's relative path without its extension); values > 127 (or 1 for 0/1 masks) are kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.images import load_image

logger = logging.getLogger("vprkit")
Guide = Callable[[Path, str, tuple[int, int]], torch.Tensor]
GUIDED = ("deattention", "deattention-ref")  # attention modules trained towards a guidance mask


@dataclass
class GuidanceSource:
    """Guidance functions for map and query images: (image root, name, (H, W)) -> (1, H, W) mask."""

    map: Guide
    query: Guide


def read_mask(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """A mask image resized (nearest) to `size`, as 0/1 floats; clear error when missing or broken."""
    if not path.is_file():
        raise FileNotFoundError(f"guidance mask {path} not found")
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L").resize((size[1], size[0]), Image.Resampling.NEAREST))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read guidance mask ({exc})") from exc
    thr = 0 if arr.max() <= 1 else 127
    return torch.from_numpy((arr > thr).astype(np.float32))[None]


def _from_files(mask_dir: Path, kind: str) -> Guide:
    def guide(root: Path, name: str, size: tuple[int, int]) -> torch.Tensor:
        return read_mask(mask_dir / kind / Path(name).with_suffix(".png"), size)
    return guide


def _from_segmenter(conf: dict, device: str) -> Guide:
    from ..models.segmentation import class_ids, guidance_from_labels
    from ..models.segmentation.deeplabv3_mobilenet import DeepLabV3MobileNetV2

    if not conf.get("checkpoint"):
        raise ValueError("guidance source 'segmenter' needs guidance.checkpoint: the path of a Cityscapes "
                         "DeepLabV3-MobileNetV2 checkpoint (none ships with vprkit), or use guidance.source=masks")
    seg = DeepLabV3MobileNetV2(conf["checkpoint"]).to(device)
    distracting = class_ids(conf["classes"])

    def guide(root: Path, name: str, size: tuple[int, int]) -> torch.Tensor:
        img = load_image(root / name).resize((size[1], size[0]), Image.Resampling.BILINEAR)
        return guidance_from_labels(seg.labels(img), distracting)[None]
    return guide


def is_guided(attention: str | None) -> bool:
    """Whether an attention setting (one module or a chain a+b) has a module trained towards guidance masks."""
    return any(name in GUIDED for name in (attention or "").split("+"))


def get_source(conf: dict, attention: str | None, device: str = "cpu") -> GuidanceSource | None:
    """The configured guidance, or None when the model has no de-attention module or no source is set."""
    if not is_guided(attention):
        return None
    source = conf.get("source")
    if source is None:
        logger.warning("de-attention without guidance: the mask is trained by the place-recognition loss only")
        return None
    if source == "masks":
        if not conf.get("mask_dir"):
            raise ValueError("guidance source 'masks' needs guidance.mask_dir (with map/ and query/ subfolders)")
        root = Path(conf["mask_dir"])
        return GuidanceSource(_from_files(root, "map"), _from_files(root, "query"))
    if source == "segmenter":
        guide = _from_segmenter(conf, device)
        return GuidanceSource(guide, guide)
    raise ValueError(f"unknown guidance source '{source}'; choose 'masks' or 'segmenter'")
