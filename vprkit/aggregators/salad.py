"""SALAD (Izquierdo & Civera, CVPR 2024): local features softly assigned to clusters by optimal transport.

The head of the authors' `serizba/salad` (`models/aggregators/salad.py`), with their parameter names
(`token_features`, `cluster_features`, `score`, `dust_bin`) so their released state dicts load unchanged under
`aggregator.*`. Each patch feature gives a `cluster_dim` vector and `num_clusters` scores; three log-domain
Sinkhorn iterations with a learned dustbin row turn the scores into a transport plan (patches may go to the
dustbin, i.e. be discarded); per cluster, the plan-weighted sum of the vectors is L2-normalised. The CLS token
goes through its own MLP to `token_dim`; both parts are L2-normalised, concatenated and normalised again
(dimension `token_dim + num_clusters * cluster_dim`). MegaLoc uses the same head with other sizes.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import Aggregator, l2n

SINKHORN_ITERS = 3


def sinkhorn_log(scores: torch.Tensor, dustbin: torch.Tensor, iters: int = SINKHORN_ITERS) -> torch.Tensor:
    """Log transport plan (B, m + 1, n) of scores (B, m, n) extended by a dustbin row.

    Marginals: each of the n patches and each of the m clusters has mass 1 / (n + m), the dustbin the remaining
    (n - m) / (n + m), so every patch is fully assigned; the plan is returned scaled by n + m (a patch's row of
    probabilities sums to one).
    """
    b, m, n = scores.shape
    if n <= m:
        raise ValueError(f"SALAD needs more patches than clusters: {n} patches for {m} clusters (image too small)")
    cost = torch.cat([scores, dustbin.to(scores.dtype).expand(b, 1, n)], dim=1)
    log_mass = -math.log(n + m)
    log_a = torch.full((m + 1,), log_mass, dtype=scores.dtype, device=scores.device)
    log_a[-1] += math.log(n - m)
    log_b = torch.full((n,), log_mass, dtype=scores.dtype, device=scores.device)
    u = torch.zeros(b, m + 1, dtype=scores.dtype, device=scores.device)
    v = torch.zeros(b, n, dtype=scores.dtype, device=scores.device)
    for _ in range(iters):
        u = log_a - torch.logsumexp(cost + v[:, None, :], dim=2)
        v = log_b - torch.logsumexp(cost + u[:, :, None], dim=1)
    return cost + u[:, :, None] + v[:, None, :] - log_mass


class SALAD(Aggregator):
    """SALAD descriptor of a (B, C, h, w) feature map and the backbone's (B, C) CLS token."""

    def __init__(self, num_channels: int = 768, num_clusters: int = 64, cluster_dim: int = 128, token_dim: int = 256,
                 mlp_dim: int = 512, dropout: float = 0.3):
        super().__init__()
        self.num_clusters, self.cluster_dim, self.token_dim = num_clusters, cluster_dim, token_dim
        drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.token_features = nn.Sequential(nn.Linear(num_channels, mlp_dim), nn.ReLU(), nn.Linear(mlp_dim, token_dim))
        self.cluster_features = nn.Sequential(nn.Conv2d(num_channels, mlp_dim, 1), drop, nn.ReLU(),
                                              nn.Conv2d(mlp_dim, cluster_dim, 1))
        self.score = nn.Sequential(nn.Conv2d(num_channels, mlp_dim, 1), drop, nn.ReLU(),
                                   nn.Conv2d(mlp_dim, num_clusters, 1))
        self.dust_bin = nn.Parameter(torch.tensor(1.0))

    def output_dim(self, in_dim: int) -> int:
        return self.token_dim + self.num_clusters * self.cluster_dim

    def forward(self, local: torch.Tensor, global_token: torch.Tensor | None = None) -> torch.Tensor:
        if global_token is None:
            raise ValueError("SALAD needs a backbone with a global token (a ViT such as dinov2)")
        f = self.cluster_features(local).flatten(2)  # (B, l, n)
        plan = sinkhorn_log(self.score(local).flatten(2), self.dust_bin).exp()[:, :-1]  # (B, m, n), dustbin dropped
        clusters = l2n(torch.einsum("bln,bmn->blm", f, plan), dim=1).flatten(1)  # cluster-dim major, as the authors
        token = l2n(self.token_features(global_token))
        return l2n(torch.cat([token, clusters], dim=-1))
