"""Conv-AP (Ali-bey et al., GSV-Cities, Neurocomputing 2022): 1x1 conv channel pooling, then adaptive average
pooling to an s1 x s2 grid, flattened and L2-normalised.

The authors' `models/aggregators/convap.py` (gsv-cities / MixVPR) with their parameter name `channel_pool`.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Aggregator, l2n


class ConvAP(Aggregator):
    """`out_channels * s1 * s2`-dimensional descriptor."""

    def __init__(self, in_channels: int = 2048, out_channels: int = 512, s1: int = 2, s2: int = 2):
        super().__init__()
        self.channel_pool = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=True)
        self.aap = nn.AdaptiveAvgPool2d((s1, s2))
        self.grid = s1 * s2

    def output_dim(self, in_dim: int) -> int:
        return self.channel_pool.out_channels * self.grid

    def forward(self, local: torch.Tensor, global_token: torch.Tensor | None = None) -> torch.Tensor:
        return l2n(self.aap(self.channel_pool(local)).flatten(1))
