"""Segment VLAD: VLAD of the backbone tokens under each (Super)Segment's mask.

A token counts towards a segment with the fraction of its patch the segment covers. Because
segments of a label map do not overlap, the un-normalised residual sums of a SuperSegment are the
sums of its members' sums, so each segment's residuals are computed once and SuperSegments of any
order cost one (S, S) x (S, K*C) product. Normalisation (intra, then L2) and PCA follow, as in
`vprkit.aggregators.vlad`.
"""

from __future__ import annotations

import numpy as np

from ..aggregators.vlad import fit_pca


def patch_weights(labels: np.ndarray, grid: tuple[int, int], num_segments: int) -> np.ndarray:
    """(S, h*w): fraction of each patch's pixels that belong to each segment (label map of any size)."""
    big_h, big_w = labels.shape
    h, w = grid
    rows = np.arange(big_h) * h // big_h
    cols = np.arange(big_w) * w // big_w
    patch = (rows[:, None] * w + cols[None, :]).ravel()
    lab = labels.ravel()
    area = np.bincount(patch, minlength=h * w).astype(np.float32)
    valid = lab >= 0
    counts = np.bincount(lab[valid].astype(np.int64) * (h * w) + patch[valid], minlength=num_segments * h * w)
    return counts.reshape(num_segments, h * w).astype(np.float32) / np.maximum(area, 1.0)


def residual_sums(tokens: np.ndarray, centroids: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(S, K, C): per segment and cluster, the weighted sum of (token - its centroid).

    `tokens` (N, C) are L2-normalised here and hard-assigned to the nearest centroid by cosine,
    exactly as `VLAD.raw`; `weights` (S, N) are the segments' patch coverages.
    """
    x = tokens / np.maximum(np.linalg.norm(tokens, axis=1, keepdims=True), 1e-12)
    assign = (x @ centroids.T).argmax(axis=1)
    resid = x - centroids[assign]
    k = len(centroids)
    out = np.zeros((len(weights), k, x.shape[1]), dtype=np.float32)
    for c in np.unique(assign):
        m = assign == c
        out[:, c] = weights[:, m] @ resid[m]
    return out


def normalise(sums: np.ndarray) -> np.ndarray:
    """Intra-normalise per cluster, flatten, L2-normalise: (S, K, C) -> (S, K*C); zero rows stay zero."""
    intra = sums / np.maximum(np.linalg.norm(sums, axis=2, keepdims=True), 1e-12)
    flat = intra.reshape(len(sums), sums.shape[1] * sums.shape[2])
    return flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)


def supersegment_vlad(sums: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Raw VLAD (S, K*C) of each SuperSegment; `members` (S, S) boolean from `graph.neighbourhoods`."""
    s, k, c = sums.shape
    pooled = members.astype(np.float32) @ sums.reshape(s, k * c)
    return normalise(pooled.reshape(s, k, c))


class PCA:
    """Projection fitted on a bounded sample of raw segment VLADs; whitening optional."""

    def __init__(self, mean: np.ndarray | None = None, proj: np.ndarray | None = None):
        self.mean, self.proj = mean, proj

    @classmethod
    def fit(cls, x: np.ndarray, dim: int, whiten: bool) -> PCA:
        return cls(*fit_pca(x, dim, whiten))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Project and L2-normalise (identity + L2 when not fitted)."""
        if self.proj is not None and self.proj.size:
            x = x @ self.proj.T - self.mean @ self.proj.T
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
