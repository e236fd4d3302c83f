"""SAM's automatic mask generator (package `segment-anything`) from a checkpoint file the user gives.

`segment-anything` imports four small torchvision functions at import time, and torchvision cannot be
installed beside this torch. When torchvision is absent, pure-torch equivalents are put in place only
while the package is imported (so nothing else sees a fake torchvision). SAM weights are never
downloaded: pass `checkpoint=` a local `sam_vit_{b,l,h}_*.pth`, or `model=` an already built `Sam`.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .base import Segmenter
from .masks import masks_to_labels

SAM_PIP = "segment-anything"


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of (x1, y1, x2, y2) boxes, as torchvision.ops.box_area."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU (N, M) of two box sets."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / union.clamp(min=1e-12)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
                ) -> torch.Tensor:
    """Greedy NMS per category (`idxs`), kept indices by decreasing score, as torchvision.ops.batched_nms."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64)
    # shift each category to its own region so boxes of different categories never overlap
    shifted = boxes.float() + (idxs.float() * (boxes.max().float() + 1))[:, None]
    order = torch.argsort(scores, descending=True)
    iou = box_iou(shifted[order], shifted[order])
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= iou[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.int64)]


def _resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """torchvision.transforms.functional.resize for a PIL image and an (h, w) size (bilinear)."""
    return image.resize((int(size[1]), int(size[0])), Image.Resampling.BILINEAR)


def _to_pil_image(array: np.ndarray) -> Image.Image:
    return Image.fromarray(np.asarray(array))


def _torchvision_stand_in() -> dict[str, types.ModuleType]:
    """The torchvision modules segment-anything imports, holding only the functions it uses."""
    mods = {n: types.ModuleType(n) for n in ("torchvision", "torchvision.ops", "torchvision.ops.boxes",
                                             "torchvision.transforms", "torchvision.transforms.functional")}
    mods["torchvision.ops.boxes"].batched_nms = batched_nms
    mods["torchvision.ops.boxes"].box_area = box_area
    mods["torchvision.transforms.functional"].resize = _resize
    mods["torchvision.transforms.functional"].to_pil_image = _to_pil_image
    return mods


def import_segment_anything() -> types.ModuleType:
    """`segment_anything`, importable with or without torchvision; a clear error when it is not installed."""
    if importlib.util.find_spec("segment_anything") is None:
        raise ImportError(f"the 'sam' segmenter needs the package '{SAM_PIP}': pip install {SAM_PIP}")
    if "segment_anything" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        import segment_anything

        return segment_anything
    stand_in = _torchvision_stand_in()
    sys.modules.update(stand_in)
    try:
        import segment_anything
    finally:
        for name in stand_in:
            sys.modules.pop(name, None)
    return segment_anything


class SAM(Segmenter):
    """Segment Anything automatic masks: all of them (`masks`), or one label map with smaller masks on top."""

    name = "sam"

    def __init__(self, checkpoint: str | None = None, model_type: str = "vit_b", model=None,
                 points_per_side: int = 32, pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.95,
                 min_mask_region_area: int = 0, points_per_batch: int = 64, device: str = "cpu"):
        sa = import_segment_anything()
        if model is None:
            model = self._load(sa, checkpoint, model_type)
        self.generator = sa.SamAutomaticMaskGenerator(
            model.to(device).eval(), points_per_side=points_per_side, points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
            min_mask_region_area=min_mask_region_area)

    @staticmethod
    def _load(sa: types.ModuleType, checkpoint: str | None, model_type: str):
        from ..models.base import MissingWeightsError, load_state_dict

        if model_type not in sa.sam_model_registry:
            raise ValueError(f"unknown SAM model_type {model_type!r}; choose from {sorted(sa.sam_model_registry)}")
        if checkpoint is None:
            raise MissingWeightsError("the 'sam' segmenter needs checkpoint= a local SAM .pth file "
                                      "(e.g. sam_vit_b_01ec64.pth); SAM weights are never downloaded")
        if not Path(checkpoint).is_file():
            raise MissingWeightsError(f"SAM checkpoint not found: {checkpoint}")
        model = sa.sam_model_registry[model_type](checkpoint=None)
        model.load_state_dict(load_state_dict(checkpoint), strict=True)
        return model

    @torch.no_grad()
    def segment_masks(self, image: np.ndarray, tokens: np.ndarray | None = None) -> list[np.ndarray]:
        """Every automatic mask, in the generator's order, overlaps kept (what the original SegVLAD uses)."""
        return [m["segmentation"] for m in self.generator.generate(image)]

    def segment(self, image: np.ndarray, tokens: np.ndarray | None = None) -> np.ndarray:
        return masks_to_labels(self.segment_masks(image), image.shape[:2])
