"""Flatten aggregator: the whole local feature map as one vector (for tiny maps such as SeqSLAM's pixels)."""

from __future__ import annotations

import torch

from .base import Aggregator, l2n


class Flatten(Aggregator):
    """(B, C, h, w) -> L2-normalised (B, C*h*w), so inner products are cosine similarities."""

    def forward(self, local: torch.Tensor, global_token: torch.Tensor | None = None) -> torch.Tensor:
        return l2n(local.flatten(1))
