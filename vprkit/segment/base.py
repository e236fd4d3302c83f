"""Segmenter interface: an RGB image (and, for token-based methods, its backbone tokens) -> a label map."""

from __future__ import annotations

import numpy as np


class Segmenter:
    """Turn an image into segments; subclasses implement `segment`.

    `needs_tokens` segmenters cluster the backbone's (C, h, w) tokens instead of pixels.
    """

    name: str = ""
    needs_tokens: bool = False

    def segment(self, image: np.ndarray, tokens: np.ndarray | None = None) -> np.ndarray:
        """(H, W) int label map, -1 where no segment; labels need not be consecutive."""
        raise NotImplementedError  # pragma: no cover - abstract

    def segment_masks(self, image: np.ndarray, tokens: np.ndarray | None = None) -> list[np.ndarray]:
        """Boolean (H, W) masks, which may overlap; by default one per label of `segment`."""
        from .masks import labels_to_masks, relabel

        return list(labels_to_masks(relabel(self.segment(image, tokens))))

    def _check(self, image: np.ndarray, tokens: np.ndarray | None) -> np.ndarray:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"segmenters take (H, W, 3) uint8 RGB images, got {image.shape} {image.dtype}")
        if self.needs_tokens and tokens is None:
            raise ValueError(f"segmenter '{self.name}' needs the backbone tokens")
        return image

    def masks(self, image: np.ndarray, tokens: np.ndarray | None = None) -> np.ndarray:
        """(S, H, W) boolean stack of the non-empty masks, overlaps kept."""
        from .masks import mask_stack

        image = self._check(image, tokens)
        return mask_stack(self.segment_masks(image, tokens), image.shape[:2])

    def __call__(self, image: np.ndarray, tokens: np.ndarray | None = None) -> np.ndarray:
        """(H, W) label map, consecutive labels, -1 where no segment."""
        from .masks import relabel

        image = self._check(image, tokens)
        labels = relabel(self.segment(image, tokens))
        if labels.shape != image.shape[:2]:
            raise ValueError(f"segmenter '{self.name}' returned a {labels.shape} map for a {image.shape[:2]} image")
        return labels
