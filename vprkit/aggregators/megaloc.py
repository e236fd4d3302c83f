"""MegaLoc (Berton & Masone, 2025): a SALAD head followed by a linear projection, L2-normalised.

The head of the authors' `gmberton/MegaLoc` (`megaloc_model.py`, class `Aggregator`), with their parameter names
(`agg.*` for the SALAD part, `linear`) so their released `model.safetensors` loads unchanged under
`aggregator.*`. Their SALAD part has 64 clusters of 256 channels plus a 256-d token (16640 values), already
L2-normalised, which `linear` maps to `feat_dim` (8448) before the final L2 normalisation.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Aggregator, l2n
from .salad import SALAD


class MegaLoc(Aggregator):
    """MegaLoc descriptor of a (B, C, h, w) feature map and the backbone's (B, C) CLS token."""

    def __init__(self, num_channels: int = 768, num_clusters: int = 64, cluster_dim: int = 256, token_dim: int = 256,
                 mlp_dim: int = 512, feat_dim: int = 8448, dropout: float = 0.3):
        super().__init__()
        self.agg = SALAD(num_channels, num_clusters, cluster_dim, token_dim, mlp_dim, dropout)
        self.linear = nn.Linear(self.agg.output_dim(num_channels), feat_dim)

    def output_dim(self, in_dim: int) -> int:
        return self.linear.out_features

    def forward(self, local: torch.Tensor, global_token: torch.Tensor | None = None) -> torch.Tensor:
        return l2n(self.linear(self.agg(local, global_token)))
