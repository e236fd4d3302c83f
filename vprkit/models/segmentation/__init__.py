"""Semantic segmentation behind a small interface, used to make de-attention guidance masks.

A segmenter maps an RGB image to per-pixel class labels; `guidance_from_labels` turns labels into a
mask that is 0 on distracting classes (Cityscapes vehicles and people by default) and 1 elsewhere.
"""

from __future__ import annotations

import numpy as np
import torch

CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                      "motorcycle", "bicycle")
# groups the seed calls distracting; any Cityscapes class name is accepted too
GROUPS = {"human": ("person", "rider"), "vehicle": ("car", "truck", "bus", "train", "motorcycle", "bicycle")}


def class_ids(names: list[str] | tuple[str, ...]) -> list[int]:
    """Cityscapes train ids of class or group names."""
    out: list[int] = []
    for name in names:
        members = GROUPS.get(name, (name,))
        for m in members:
            if m not in CITYSCAPES_CLASSES:
                raise KeyError(f"unknown class '{name}'; use {sorted(GROUPS)} or one of {CITYSCAPES_CLASSES}")
            out.append(CITYSCAPES_CLASSES.index(m))
    return sorted(set(out))


def guidance_from_labels(labels: torch.Tensor | np.ndarray, distracting: list[int]) -> torch.Tensor:
    """1.0 where the label is not distracting, 0.0 where it is (same shape as `labels`)."""
    labels = torch.as_tensor(labels)
    return (~torch.isin(labels, torch.tensor(distracting, dtype=labels.dtype))).float()


__all__ = ["CITYSCAPES_CLASSES", "GROUPS", "class_ids", "guidance_from_labels"]
