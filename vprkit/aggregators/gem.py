"""Generalised mean pooling (Radenovic et al.): p=1 is average pooling, p->inf is max pooling."""

from __future__ import annotations

import torch

from .base import Aggregator, l2n


class GeM(Aggregator):
    """GeM over the spatial grid, then L2 normalisation."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6, normalize_input: bool = False):
        super().__init__()
        self.p = torch.nn.Parameter(torch.tensor(float(p)))
        self.eps = eps
        self.normalize_input = normalize_input

    def forward(self, local: torch.Tensor, global_token: torch.Tensor | None = None) -> torch.Tensor:
        x = l2n(local, dim=1) if self.normalize_input else local
        pooled = x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)
        return l2n(pooled)
