"""Segment masks stored compactly: one label map per image, run-length encoded.

A label map holds, for every pixel, the index of the segment it belongs to (0..S-1) or -1 where no
segment covers it. Thousands of boolean masks per image (what SAM returns) become one int32 array of
runs, which is what the feature file keeps.
"""

from __future__ import annotations

import numpy as np


def relabel(labels: np.ndarray) -> np.ndarray:
    """Consecutive labels 0..S-1 (in order of the original ids); negatives become -1 (unassigned).

    Segment ids a segmenter skipped (empty masks) disappear, so every label left covers >= 1 pixel.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"a label map must be 2-D (H, W), got shape {labels.shape}")
    out = np.full(labels.shape, -1, dtype=np.int32)
    valid = labels >= 0
    if valid.any():
        _, inverse = np.unique(labels[valid], return_inverse=True)
        out[valid] = inverse.astype(np.int32)
    return out


def masks_to_labels(masks: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Overlapping boolean masks -> one label map, larger masks painted first so smaller ones stay visible.

    Empty masks are dropped; pixels no mask covers get -1.
    """
    labels = np.full(shape, -1, dtype=np.int32)
    masks = [np.asarray(m, dtype=bool) for m in masks if np.asarray(m).any()]
    for i in np.argsort([-m.sum() for m in masks], kind="stable"):
        if masks[i].shape != tuple(shape):
            raise ValueError(f"mask of shape {masks[i].shape} does not match the image {tuple(shape)}")
        labels[masks[i]] = i
    return relabel(labels)


def encode(labels: np.ndarray) -> np.ndarray:
    """Row-major run-length code: [H, W, value0, length0, value1, length1, ...] as int32."""
    labels = np.asarray(labels)
    flat = labels.ravel()
    if flat.size == 0:
        return np.array(labels.shape, dtype=np.int32)
    starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
    lengths = np.diff(np.r_[starts, flat.size])
    runs = np.stack([flat[starts], lengths], axis=1).ravel()
    return np.concatenate([np.array(labels.shape), runs]).astype(np.int32)


def decode(code: np.ndarray) -> np.ndarray:
    """Inverse of `encode`; checks that the runs fill the stated size exactly."""
    code = np.asarray(code, dtype=np.int64)
    if code.size < 2 or (code.size - 2) % 2:
        raise ValueError("corrupt run-length code: expected [H, W, (value, length)...]")
    h, w = int(code[0]), int(code[1])
    values, lengths = code[2::2], code[3::2]
    if lengths.sum() != h * w or (lengths < 0).any():
        raise ValueError(f"corrupt run-length code: runs cover {lengths.sum()} pixels, the map has {h * w}")
    return np.repeat(values, lengths).astype(np.int32).reshape(h, w)


def num_segments(labels: np.ndarray) -> int:
    """Number of segments in a relabelled map."""
    return int(labels.max()) + 1 if labels.size else 0
