"""Aggregator interface shared by CLS, GeM, VLAD and NetVLAD."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Aggregator(nn.Module):
    """Maps local features (B, C, h, w) (and an optional global token) to (B, D) descriptors."""

    needs_fit: bool = False

    def output_dim(self, in_dim: int) -> int:
        """Descriptor size for a backbone of `in_dim` channels."""
        return in_dim

    def fit(self, local: np.ndarray) -> None:
        """Fit on a sample of map local features (N, C); no-op for parameter-free aggregators."""

    def state(self) -> dict[str, np.ndarray]:
        """Fitted arrays to save beside the index (numpy only, so no pickle is needed to reload)."""
        return {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what `state` returned."""

    def forward(self, local: torch.Tensor, global_token: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - abstract


def l2n(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """L2-normalise along `dim`, leaving zero vectors at zero instead of NaN."""
    return torch.nn.functional.normalize(x, p=2, dim=dim, eps=1e-12)
