"""CRN, contextual reweighting network (Kim, Dunn and Frahm, CVPR 2017).

Multi-scale context filters (3x3, 5x5, 7x7) on a 2x-downsampled feature map are fused by a 1x1
convolution into one spatial reweighting mask, upsampled back to the feature size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import zero_init


class CRN(nn.Module):
    """Spatial reweighting mask from multi-scale context; features pass through unchanged."""

    def __init__(self, dim: int, widths: tuple[int, int, int] = (32, 32, 20)) -> None:
        super().__init__()
        self.filters = nn.ModuleList(nn.Conv2d(dim, w, k, padding=k // 2) for w, k in zip(widths, (3, 5, 7)))
        self.fuse = zero_init(nn.Conv2d(sum(widths), 1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = x.shape[-2:]
        ctx = F.avg_pool2d(x, 2, ceil_mode=True) if min(h, w) >= 2 else x
        multi = torch.cat([F.relu(f(ctx)) for f in self.filters], dim=1)
        mask = torch.sigmoid(self.fuse(multi))
        return x, F.interpolate(mask, size=(h, w), mode="bilinear", align_corners=False)
