"""Segment VLAD: VLAD of the backbone tokens under each (Super)Segment's masks.

Each mask gives every patch of the token grid a weight: 1 when any of its pixels falls in the patch (the
original's rule) or the fraction of the patch it covers (vprkit's). A SuperSegment's weights are those of
its members added and capped at 1 (for any-pixel weights: the union of the members' patches, as in the
original; for disjoint masks with covered fractions: their sum). Residuals to the hard-assigned centroid
are summed with these weights, intra-normalised per cluster, flattened and L2-normalised; PCA follows.
"""

from __future__ import annotations

import numpy as np

from ..models.pca import fit_pca

EXACT_MAX = 4096  # segments up to which PCA is an exact eigen-decomposition


def patch_weights(masks: np.ndarray, grid: tuple[int, int], any_pixel: bool = False) -> np.ndarray:
    """(S, h*w) weight of each patch for each mask of a stack (S, H, W) of any size.

    Pixel row r lies in patch row r*h//H (r//14 when H = 14h, as the backbone sees it). `any_pixel`: 1 where
    the mask has a pixel in the patch; else the fraction of the patch's pixels in the mask.
    """
    s, big_h, big_w = masks.shape
    h, w = grid
    rows = np.arange(big_h) * h // big_h
    cols = np.arange(big_w) * w // big_w
    patch = (rows[:, None] * w + cols[None, :]).ravel()
    seg, pix = np.nonzero(masks.reshape(s, big_h * big_w))
    counts = np.bincount(seg * (h * w) + patch[pix], minlength=s * h * w).reshape(s, h * w).astype(np.float32)
    if any_pixel:
        return (counts > 0).astype(np.float32)
    area = np.bincount(patch, minlength=h * w).astype(np.float32)
    return counts / np.maximum(area, 1.0)


def assign(tokens: np.ndarray, centroids: np.ndarray, cosine: bool) -> np.ndarray:
    """Nearest centroid of each L2-normalised token: by cosine (the original: centroids normalised for the
    comparison only) or by dot product with the centroids as they are (equal when they have unit norm)."""
    c = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12) if cosine else centroids
    return (tokens @ c.T).argmax(axis=1)


def residual_sums(tokens: np.ndarray, centroids: np.ndarray, weights: np.ndarray, cosine: bool = False
                  ) -> np.ndarray:
    """(S, K, C): per segment and cluster, the weighted sum of (token - its centroid).

    `tokens` (N, C) are L2-normalised here; residuals are taken to the centroids as given (unit or not);
    `weights` (S, N) are the segments' patch weights.
    """
    x = tokens / np.maximum(np.linalg.norm(tokens, axis=1, keepdims=True), 1e-12)
    labels = assign(x, centroids, cosine)
    resid = x - centroids[labels]
    k = len(centroids)
    out = np.zeros((len(weights), k, x.shape[1]), dtype=np.float32)
    for c in np.unique(labels):
        m = labels == c
        out[:, c] = weights[:, m] @ resid[m]
    return out


def normalise(sums: np.ndarray) -> np.ndarray:
    """Intra-normalise per cluster, flatten, L2-normalise: (S, K, C) -> (S, K*C); zero rows stay zero."""
    intra = sums / np.maximum(np.linalg.norm(sums, axis=2, keepdims=True), 1e-12)
    flat = intra.reshape(len(sums), sums.shape[1] * sums.shape[2])
    return flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)


def supersegment_vlad(tokens: np.ndarray, centroids: np.ndarray, weights: np.ndarray, members: np.ndarray,
                      cosine: bool = False) -> np.ndarray:
    """Raw VLAD (S, K*C) of each SuperSegment; `members` (S, S) boolean from `graph`."""
    pooled = np.minimum(members.astype(np.float32) @ weights, 1.0)
    return normalise(residual_sums(tokens, centroids, pooled, cosine))


class PCA:
    """Projection fitted on a bounded sample of raw segment VLADs; whitening optional."""

    def __init__(self, mean: np.ndarray | None = None, proj: np.ndarray | None = None):
        self.mean, self.proj = mean, proj

    @classmethod
    def fit(cls, x: np.ndarray, dim: int, whiten: bool, eps: float = 1e-6) -> PCA:
        """`eps` is added to each axis' variance before whitening; 0 divides by the standard deviation as
        scikit-learn's PCA(whiten=True) does (the original). Beyond EXACT_MAX segments the axes come from
        a randomized SVD (the original's 50k segments would take an exact decomposition an hour)."""
        return cls(*fit_pca(x, dim, whiten, eps, exact_max=EXACT_MAX))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Project and L2-normalise (identity + L2 when not fitted)."""
        if self.proj is not None and self.proj.size:
            x = x @ self.proj.T - self.mean @ self.proj.T
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
