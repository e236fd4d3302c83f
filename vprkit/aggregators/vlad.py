"""VLAD as in AnyLoc: k-means vocabulary fitted on the map's own features, hard assignment.

Local features are L2-normalised and assigned to the nearest centroid by cosine similarity;
residuals are summed per cluster, intra-normalised, flattened and L2-normalised. Optional
PCA-whitening (fitted on the map's descriptors) shrinks the K*C vector.
"""

from __future__ import annotations

import numpy as np
import torch

from ..models.pca import fit_pca
from .base import Aggregator, l2n


def kmeans(x: np.ndarray, k: int, niter: int = 50, seed: int = 0) -> np.ndarray:
    """Spherical k-means with FAISS (deterministic for a fixed seed); returns (k, C) unit centroids."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) < k:
        raise ValueError(f"k-means needs at least {k} features, got {len(x)}: use fewer clusters")
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True, verbose=False)
    km.train(x)
    return km.centroids.astype(np.float32)


def cluster_means(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(K, C): mean of the rows of `x` nearest (by cosine) to each centroid; an empty cluster keeps its
    centroid."""
    c = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    labels = (x @ c.T).argmax(axis=1)
    counts = np.bincount(labels, minlength=len(centroids))
    sums = np.zeros_like(centroids, dtype=np.float64)
    np.add.at(sums, labels, x)
    means = sums / np.maximum(counts, 1)[:, None]
    return np.where(counts[:, None] > 0, means, centroids).astype(np.float32)


class VLAD(Aggregator):
    """Hard-assignment VLAD with a map-fitted vocabulary and optional PCA-whitening."""

    needs_fit = True

    def __init__(self, num_clusters: int = 32, pca_dim: int | None = None, seed: int = 0,
                 unit_centroids: bool = True):
        super().__init__()
        self.num_clusters, self.unit_centroids = num_clusters, unit_centroids
        self.pca_dim = pca_dim
        self.seed = seed
        self.register_buffer("centroids", torch.zeros(0))
        self.register_buffer("pca_mean", torch.zeros(0))
        self.register_buffer("pca_proj", torch.zeros(0))

    def output_dim(self, in_dim: int) -> int:
        return self.pca_dim or self.num_clusters * in_dim

    def fit(self, local: np.ndarray) -> None:
        """Vocabulary from map local features (N, C); `unit_centroids=False` keeps each cluster's plain mean
        (not of unit norm), as cosine k-means in AnyLoc / SegVLAD's `c_centers.pt` does."""
        x = local / np.maximum(np.linalg.norm(local, axis=1, keepdims=True), 1e-12)
        centroids = kmeans(x, self.num_clusters, seed=self.seed)
        self.centroids = torch.from_numpy(centroids if self.unit_centroids else cluster_means(x, centroids))

    def fit_pca(self, descriptors: np.ndarray) -> None:
        """PCA-whitening fitted on the map's raw VLAD vectors (needs more images than pca_dim for a full rank)."""
        if self.pca_dim:
            mean, proj = fit_pca(descriptors, self.pca_dim)
            self.pca_mean, self.pca_proj = torch.from_numpy(mean), torch.from_numpy(proj)

    def state(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k).numpy() for k in ("centroids", "pca_mean", "pca_proj")}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        for key in ("centroids", "pca_mean", "pca_proj"):
            setattr(self, key, torch.from_numpy(np.asarray(state[key], dtype=np.float32)))

    def raw(self, local: torch.Tensor) -> torch.Tensor:
        """VLAD before PCA: (B, K*C)."""
        if self.centroids.numel() == 0:
            raise RuntimeError("VLAD vocabulary not fitted: call fit() on map features first")
        b, c = local.shape[:2]
        x = l2n(local.flatten(2).transpose(1, 2), dim=-1)  # (B, N, C)
        unit = self.centroids if self.unit_centroids else l2n(self.centroids, dim=-1)
        assign = (x @ unit.T).argmax(dim=-1)  # cosine nearest centroid
        onehot = torch.nn.functional.one_hot(assign, self.num_clusters).to(x.dtype)  # (B, N, K)
        resid = onehot.transpose(1, 2) @ x - onehot.sum(1).unsqueeze(-1) * self.centroids  # (B, K, C)
        return l2n(l2n(resid, dim=-1).reshape(b, -1))

    def forward(self, local: torch.Tensor, global_token: torch.Tensor | None = None) -> torch.Tensor:
        v = self.raw(local)
        if self.pca_proj.numel():
            v = l2n((v - self.pca_mean) @ self.pca_proj.T)
        return v
