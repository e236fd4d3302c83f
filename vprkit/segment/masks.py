"""Segment masks stored compactly: a label map per image, or every mask when masks overlap, run-length encoded.

A label map holds, for every pixel, the index of the segment it belongs to (0..S-1) or -1 where no
segment covers it. Overlapping masks (what SAM returns: objects and their parts) are kept as a mask
stack (S, H, W) instead, coded mask by mask; either becomes one int32 array of runs in the feature file.
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


def labels_to_masks(labels: np.ndarray) -> np.ndarray:
    """A label map -> its (S, H, W) boolean mask stack (one mask per label, disjoint)."""
    labels = np.asarray(labels)
    return labels[None] == np.arange(num_segments(labels)).reshape(-1, 1, 1)


def mask_stack(masks, shape: tuple[int, int]) -> np.ndarray:
    """(S, H, W) boolean stack of the non-empty masks, in their order; overlaps are kept."""
    masks = [np.asarray(m, dtype=bool) for m in masks]
    for m in masks:
        if m.shape != tuple(shape):
            raise ValueError(f"mask of shape {m.shape} does not match the image {tuple(shape)}")
    kept = [m for m in masks if m.any()]
    return np.stack(kept) if kept else np.zeros((0, *shape), dtype=bool)


def disjoint(masks: np.ndarray) -> bool:
    """True when no pixel lies in two masks of the stack (it is then one label map)."""
    return len(masks) < 2 or int(masks.sum(0, dtype=np.int32).max()) <= 1


def stack_to_labels(masks: np.ndarray) -> np.ndarray:
    """A disjoint mask stack -> its label map (-1 where no mask)."""
    labels = np.full(masks.shape[1:], -1, dtype=np.int32)
    for i, m in enumerate(masks):
        labels[m] = i
    return labels


def encode_stack(masks: np.ndarray) -> np.ndarray:
    """Per-mask run-length code of a boolean stack: [S, H, W, n_0, runs_0..., n_1, runs_1...] as int32.

    Each mask's runs alternate absent / present pixels in row-major order, starting with absent (a run of
    0 when the first pixel is present), so a mask costs two numbers per row it crosses, overlaps included.
    """
    masks = np.asarray(masks, dtype=bool)
    s, h, w = masks.shape
    parts = [np.array([s, h, w])]
    for m in masks.reshape(s, h * w):
        change = np.flatnonzero(np.r_[True, m[1:] != m[:-1], True])
        runs = np.diff(change)
        runs = np.r_[0, runs] if m[0] else runs
        parts += [np.array([len(runs)]), runs]
    return np.concatenate(parts).astype(np.int32)


def decode_stack(code: np.ndarray) -> np.ndarray:
    """Inverse of `encode_stack`; checks that every mask's runs fill the stated size exactly."""
    code = np.asarray(code, dtype=np.int64)
    if code.size < 3:
        raise ValueError("corrupt mask code: expected [S, H, W, (n, runs...)...]")
    s, h, w = (int(v) for v in code[:3])
    out = np.zeros((s, h * w), dtype=bool)
    pos = 3
    for i in range(s):
        n = int(code[pos]) if pos < code.size else -1
        runs = code[pos + 1:pos + 1 + n]
        if n < 0 or len(runs) != n or runs.sum() != h * w or (runs < 0).any():
            raise ValueError(f"corrupt mask code: mask {i} does not cover the {h}x{w} image exactly")
        out[i] = np.repeat(np.arange(n) % 2 == 1, runs)
        pos += 1 + n
    if pos != code.size:
        raise ValueError(f"corrupt mask code: {code.size - pos} numbers after the last of {s} masks")
    return out.reshape(s, h, w)


def mask_record(masks: np.ndarray) -> dict[str, np.ndarray]:
    """What the feature file keeps of an image's masks: one coded label map when they are disjoint
    (`labels`), else every mask coded on its own (`masks`)."""
    if disjoint(masks):
        return {"labels": encode(stack_to_labels(masks))}
    return {"masks": encode_stack(masks)}


def read_masks(group) -> np.ndarray:
    """The (S, H, W) mask stack of an image's group in a feature file (either record)."""
    if "masks" in group:
        return decode_stack(group["masks"][()])
    return labels_to_masks(decode(group["labels"][()]))
