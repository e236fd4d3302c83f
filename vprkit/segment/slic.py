"""SLIC superpixels (scikit-image): no weights, deterministic, fast on small images."""

from __future__ import annotations

import numpy as np

from .base import Segmenter
from .masks import masks_to_labels


class SLIC(Segmenter):
    """k-means in (Lab colour, position) space; `n_segments` is a target, the result varies per image."""

    name = "slic"

    def __init__(self, n_segments: int = 48, compactness: float = 10.0, sigma: float = 1.0):
        if n_segments < 1:
            raise ValueError(f"n_segments must be >= 1, got {n_segments}")
        self.n_segments, self.compactness, self.sigma = n_segments, compactness, sigma

    def segment(self, image: np.ndarray, tokens: np.ndarray | None = None) -> np.ndarray:
        from skimage.segmentation import slic

        return slic(image, n_segments=self.n_segments, compactness=self.compactness, sigma=self.sigma,
                    start_label=0, channel_axis=-1)


class SLICScales(Segmenter):
    """SLIC at several target counts, every superpixel of every scale kept: coarse segments overlap the fine
    ones inside them, a weight-free stand-in for SAM's nested object / part masks."""

    name = "slic_scales"

    def __init__(self, scales: tuple[int, ...] = (12, 48), compactness: float = 10.0, sigma: float = 1.0):
        if not scales:
            raise ValueError("slic_scales needs at least one scale")
        self.levels = [SLIC(n, compactness, sigma) for n in scales]

    def segment_masks(self, image: np.ndarray, tokens: np.ndarray | None = None) -> list[np.ndarray]:
        return [m for level in self.levels for m in level.segment_masks(image, tokens)]

    def segment(self, image: np.ndarray, tokens: np.ndarray | None = None) -> np.ndarray:
        return masks_to_labels(self.segment_masks(image), image.shape[:2])
