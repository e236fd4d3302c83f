"""CosPlace / EigenPlaces head (Berton et al., CVPR 2022 / ICCV 2023): L2 -> GeM -> fully connected -> L2.

Both authors' `GeoLocalizationNet` end in `aggregation = Sequential(L2Norm, GeM, Flatten, Linear, L2Norm)`; here
`p` (shape (1,), as theirs) is their `aggregation.1.p` and `fc` their `aggregation.3`. The input is L2-normalised per
location before pooling, and the pooled vector goes through `fc` unnormalised.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Aggregator, l2n
from .gem import gem_pool


class CosPlace(Aggregator):
    """GeM of the per-location-normalised map, projected to `out_dim`, L2-normalised."""

    def __init__(self, in_dim: int = 2048, out_dim: int = 2048, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps
        self.fc = nn.Linear(in_dim, out_dim)

    def output_dim(self, in_dim: int) -> int:
        return self.fc.out_features

    def forward(self, local: torch.Tensor, global_token: torch.Tensor | None = None) -> torch.Tensor:
        return l2n(self.fc(gem_pool(l2n(local, dim=1), self.p, self.eps)))
