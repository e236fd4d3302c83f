"""SE as the de-attention code runs it (networks/senet.py): global average -> Linear(C, C/16, no bias) -> ReLU ->
Linear(C/16, C, no bias) -> sigmoid channel scale, default initialisation, the original's parameter names
(`fc.0`, `fc.2`). Its run 3 (de-attention + sTML) places it after the de-attention head.
"""

from __future__ import annotations

import torch
from torch import nn


class SERef(nn.Module):
    """Channel reweighting from global context; no spatial weight."""

    def __init__(self, dim: int, reduction: int = 16) -> None:
        super().__init__()
        mid = max(dim // reduction, 1)
        self.fc = nn.Sequential(nn.Linear(dim, mid, bias=False), nn.ReLU(), nn.Linear(mid, dim, bias=False),
                                nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return x * self.fc(x.mean(dim=(2, 3)))[:, :, None, None], None
