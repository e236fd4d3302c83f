"""MixVPR (Ali-bey et al., WACV 2023): MLP feature mixing over the flattened spatial grid, then two projections.

The authors' `models/aggregators/mixvpr.py` with their parameter names (`mix.N.mix.{0,1,3}`, `channel_proj`,
`row_proj`). Each of `mix_depth` mixer layers adds an MLP (LayerNorm, Linear, ReLU, Linear) over the h*w positions
of every channel; `channel_proj` maps channels to `out_channels`, `row_proj` the positions to `out_rows`; the
result is flattened and L2-normalised (`out_channels * out_rows` dims). The grid size is fixed at construction
(`in_h` x `in_w`: 20 x 20 for their 320 x 320 inputs to ResNet-50 cut after layer3).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Aggregator, l2n


class FeatureMixerLayer(nn.Module):
    """Residual MLP over the spatial positions of each channel."""

    def __init__(self, in_dim: int, mlp_ratio: float = 1):
        super().__init__()
        hidden = int(in_dim * mlp_ratio)
        self.mix = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, in_dim))
        for m in self.mix:  # the authors' initialisation, for training from scratch
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(x)


class MixVPR(Aggregator):
    """MixVPR descriptor of a (B, in_channels, in_h, in_w) map."""

    def __init__(self, in_channels: int = 1024, in_h: int = 20, in_w: int = 20, out_channels: int = 512,
                 mix_depth: int = 1, mlp_ratio: float = 1, out_rows: int = 4):
        super().__init__()
        self.in_h, self.in_w = in_h, in_w
        hw = in_h * in_w
        self.mix = nn.Sequential(*[FeatureMixerLayer(hw, mlp_ratio) for _ in range(mix_depth)])
        self.channel_proj = nn.Linear(in_channels, out_channels)
        self.row_proj = nn.Linear(hw, out_rows)

    def output_dim(self, in_dim: int) -> int:
        return self.channel_proj.out_features * self.row_proj.out_features

    def forward(self, local: torch.Tensor, global_token: torch.Tensor | None = None) -> torch.Tensor:
        if local.shape[2:] != (self.in_h, self.in_w):
            raise ValueError(f"MixVPR was built for a {self.in_h}x{self.in_w} feature map, got "
                             f"{tuple(local.shape[2:])}: resize the images as the preset says")
        x = self.mix(local.flatten(2))  # (B, C, h*w)
        x = self.channel_proj(x.transpose(1, 2))  # (B, h*w, out_channels)
        x = self.row_proj(x.transpose(1, 2))  # (B, out_channels, out_rows)
        return l2n(x.flatten(1))
