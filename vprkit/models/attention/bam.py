"""BAM, bottleneck attention module (Park, Woo, Lee and Kweon, BMVC 2018).

A 3-D attention map sigmoid(channel + spatial) applied residually: F' = F + F * M(F). The channel
branch is a bottleneck MLP of the pooled features, the spatial branch a 1x1 reduction followed by two
dilated 3x3 convolutions. Batch norm is left out so one image and a training batch behave the same.
"""

from __future__ import annotations

import torch
from torch import nn

from . import hidden, zero_init


class BAM(nn.Module):
    """Residual channel x spatial attention."""

    def __init__(self, dim: int, reduction: int = 16, dilation: int = 4) -> None:
        super().__init__()
        mid = hidden(dim, reduction)
        self.channel = nn.Sequential(nn.Linear(dim, mid), nn.ReLU(inplace=True), zero_init(nn.Linear(mid, dim)))
        self.spatial = nn.Sequential(
            nn.Conv2d(dim, mid, 1), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True),
            zero_init(nn.Conv2d(mid, 1, 1)),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        att = torch.sigmoid(self.channel(x.mean(dim=(2, 3)))[:, :, None, None] + self.spatial(x))
        return x + x * att, None
