"""CBAM, convolutional block attention module (Woo, Park, Lee and Kweon, ECCV 2018).

Channel attention from average- and max-pooled descriptors through a shared MLP, then spatial
attention from the channel-wise mean and max maps through a 7x7 convolution. The spatial map is
returned as NetVLAD's assignment weight rather than multiplied in (normalisation would cancel it).
"""

from __future__ import annotations

import torch
from torch import nn

from . import hidden, zero_init


class CBAM(nn.Module):
    """Channel then spatial attention."""

    def __init__(self, dim: int, reduction: int = 16, kernel: int = 7) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden(dim, reduction)), nn.ReLU(inplace=True),
                                 zero_init(nn.Linear(hidden(dim, reduction), dim)))
        self.spatial = zero_init(nn.Conv2d(2, 1, kernel, padding=kernel // 2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        channel = torch.sigmoid(self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3))))
        x = x * channel[:, :, None, None]
        stats = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x, torch.sigmoid(self.spatial(stats))
