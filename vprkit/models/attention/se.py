"""SE, squeeze-and-excitation (Hu, Shen and Sun, CVPR 2018): channel reweighting from global context."""

from __future__ import annotations

import torch
from torch import nn

from . import hidden, zero_init


class SE(nn.Module):
    """Global average -> bottleneck MLP -> sigmoid channel scale."""

    def __init__(self, dim: int, reduction: int = 16) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden(dim, reduction)), nn.ReLU(inplace=True),
                                 zero_init(nn.Linear(hidden(dim, reduction), dim)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        scale = torch.sigmoid(self.mlp(x.mean(dim=(2, 3))))
        return x * scale[:, :, None, None], None
