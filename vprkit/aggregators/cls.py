"""CLS-token aggregator: the ViT's own global token, L2-normalised."""

from __future__ import annotations

import torch

from .base import Aggregator, l2n


class ClsToken(Aggregator):
    """Uses the backbone's global token; errors clearly for backbones without one."""

    def forward(self, local: torch.Tensor, global_token: torch.Tensor | None = None) -> torch.Tensor:
        if global_token is None:
            raise ValueError("the 'cls' aggregator needs a backbone with a global token (a ViT such as dinov2)")
        return l2n(global_token)
