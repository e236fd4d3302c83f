"""Segments from k-means of the backbone's own tokens (plus position), split into connected parts.

Needs no weights beyond the backbone already loaded, and follows semantic rather than colour edges.
"""

from __future__ import annotations

import numpy as np

from .base import Segmenter


class DinoKMeans(Segmenter):
    """Cluster L2-normalised tokens with `xy_weight`-scaled grid coordinates; each connected part is a segment."""

    name = "dino_kmeans"
    needs_tokens = True

    def __init__(self, num_clusters: int = 12, xy_weight: float = 0.5, seed: int = 0):
        if num_clusters < 1:
            raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
        self.num_clusters, self.xy_weight, self.seed = num_clusters, xy_weight, seed

    def segment(self, image: np.ndarray, tokens: np.ndarray | None = None) -> np.ndarray:
        from scipy.cluster.vq import kmeans2
        from skimage.measure import label as connected

        c, h, w = tokens.shape
        x = tokens.reshape(c, -1).T.astype(np.float64)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        yy, xx = np.mgrid[0:h, 0:w]
        xy = np.stack([yy.ravel() / max(h, w), xx.ravel() / max(h, w)], axis=1) * self.xy_weight
        feats = np.concatenate([x, xy], axis=1)
        k = min(self.num_clusters, len(feats))
        if k > 1:
            _, assign = kmeans2(feats, k, minit="++", seed=self.seed)
        else:
            assign = np.zeros(len(feats), dtype=int)
        grid = connected(assign.reshape(h, w) + 1, background=0, connectivity=1) - 1
        # token grid -> pixels: each token covers the matching block of the (stride-aligned) image
        rows = np.minimum(np.arange(image.shape[0]) * h // image.shape[0], h - 1)
        cols = np.minimum(np.arange(image.shape[1]) * w // image.shape[1], w - 1)
        return grid[rows][:, cols]
