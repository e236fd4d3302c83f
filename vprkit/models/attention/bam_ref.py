"""BAM as the de-attention code runs it (deepguider/deattention_with_stml_for_vpr networks/bam.py, after
Jongchan/attention-module): F' = (1 + sigmoid(C * S)) * F, the channel and spatial gates multiplied (the BAM paper
and vprkit's `bam` add them), with batch norm in both gates.

Channel gate: average pool -> Linear(C, C/16) -> batch norm -> ReLU -> Linear(C/16, C). The original pools with an
HxH window and stride H, so on an HxW map (H <= W < 2H) it averages only the first H columns; other shapes make
its linear layer fail, and here raise a clear error. Spatial gate: 1x1 conv to C/16 -> batch norm -> ReLU, two
3x3 convs with dilation 4 (-> batch norm -> ReLU), 1x1 conv to one map. Parameter names are the original's.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class BAMRef(nn.Module):
    """Residual attention (1 + sigmoid(channel * spatial)) * x; no separate spatial weight."""

    def __init__(self, dim: int, reduction: int = 16, dilation: int = 4) -> None:
        super().__init__()
        mid = max(dim // reduction, 1)
        self.channel_att = nn.Module()
        self.channel_att.gate_c = nn.Sequential(OrderedDict([
            ("gate_c_fc_0", nn.Linear(dim, mid)), ("gate_c_bn_1", nn.BatchNorm1d(mid)), ("gate_c_relu_1", nn.ReLU()),
            ("gate_c_fc_final", nn.Linear(mid, dim))]))
        layers: list[tuple[str, nn.Module]] = [("gate_s_conv_reduce0", nn.Conv2d(dim, mid, 1)),
                                               ("gate_s_bn_reduce0", nn.BatchNorm2d(mid)),
                                               ("gate_s_relu_reduce0", nn.ReLU())]
        for i in range(2):
            layers += [(f"gate_s_conv_di_{i}", nn.Conv2d(mid, mid, 3, padding=dilation, dilation=dilation)),
                       (f"gate_s_bn_di_{i}", nn.BatchNorm2d(mid)), (f"gate_s_relu_di_{i}", nn.ReLU())]
        self.spatial_att = nn.Module()
        self.spatial_att.gate_s = nn.Sequential(OrderedDict([*layers, ("gate_s_conv_final", nn.Conv2d(mid, 1, 1))]))

    def channel(self, x: torch.Tensor) -> torch.Tensor:
        """Channel logits (B, C) from the mean of the first HxH window, as the original pools."""
        h, w = x.shape[-2:]
        if not h <= w < 2 * h:
            raise ValueError(f"the original BAM pools one HxH window and runs only on maps with H <= W < 2H; "
                             f"got {h}x{w} (use attention=bam for other shapes)")
        return self.channel_att.gate_c(x[..., :h].mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        att = 1 + torch.sigmoid(self.channel(x)[:, :, None, None] * self.spatial_att.gate_s(x))
        return att * x, None
