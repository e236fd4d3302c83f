"""Semantic-guided de-attention (Choi et al., Pattern Recognition 2023).

A small convolutional head predicts a spatial mask in [0, 1] that weights each location's
contribution to NetVLAD. During training an extra loss pulls the mask towards a guidance mask that is
0 on distracting classes (vehicles, people) and 1 elsewhere (vprkit.train.losses.guidance_loss), so at
test time the network down-weights distractors without running a segmenter.
"""

from __future__ import annotations

import torch
from torch import nn

from . import zero_init


class DeAttention(nn.Module):
    """conv 3x3 -> ReLU -> conv 3x3 -> ReLU -> conv 1x1 -> sigmoid spatial mask."""

    def __init__(self, dim: int, width: int = 64) -> None:
        super().__init__()
        self.head = nn.Sequential(
            nn.Conv2d(dim, width, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
            zero_init(nn.Conv2d(width, 1, 1)),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, torch.sigmoid(self.head(x))
