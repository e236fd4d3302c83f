"""Generalised mean pooling (Radenovic et al.): p=1 is average pooling, p->inf is max pooling."""

from __future__ import annotations

import torch

from .base import Aggregator, l2n


def gem_pool(x: torch.Tensor, p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(B, C, h, w) -> (B, C): the mean of clamped x^p over the grid, to the power 1/p."""
    return x.clamp(min=eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


class GeM(Aggregator):
    """GeM over the spatial grid, then L2 normalisation."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6, normalize_input: bool = False):
        super().__init__()
        self.p = torch.nn.Parameter(torch.tensor(float(p)))
        self.eps = eps
        self.normalize_input = normalize_input

    def forward(self, local: torch.Tensor, global_token: torch.Tensor | None = None) -> torch.Tensor:
        x = l2n(local, dim=1) if self.normalize_input else local
        return l2n(gem_pool(x, self.p, self.eps))
