"""NetVLAD (Arandjelovic et al. 2016): differentiable soft-assignment VLAD.

Centroids are initialised by k-means; the 1x1 assignment conv starts at w = 2*alpha*c,
b = -alpha*|c|^2 so that softmax(alpha * -|x - c|^2) is reproduced exactly at init.
An optional attention module (vprkit.models.attention) reweights the local features first. Its spatial mask
acts by `mask_mode`: "assignment" (vprkit's) weights each location's soft assignment, which changes the
descriptor; "features" (the de-attention code's) multiplies the features, which the per-location input
L2-normalisation then cancels, so such a mask only matters through what is trained against it (guidance) or
through modules after it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..models.attention import get_attention
from .base import Aggregator, l2n
from .vlad import kmeans

MASK_MODES = ("assignment", "features")


def _attention(name: str | None, dim: int) -> nn.Module | None:
    """One attention module, or a chain "a+b" applied in order (the original's de-attention + SE run)."""
    if not name:
        return None
    modules = [get_attention(n, dim) for n in name.split("+")]
    return modules[0] if len(modules) == 1 else nn.ModuleList(modules)


class NetVLAD(Aggregator):
    """Soft-assignment VLAD layer, trainable end to end."""

    needs_fit = True

    def __init__(self, num_clusters: int = 64, dim: int = 512, alpha: float = 100.0, normalize_input: bool = True,
                 attention: str | None = None, mask_mode: str = "assignment"):
        super().__init__()
        self.num_clusters = num_clusters
        self.dim = dim
        self.alpha = alpha
        self.normalize_input = normalize_input
        self.conv = nn.Conv2d(dim, num_clusters, kernel_size=1, bias=True)
        self.centroids = nn.Parameter(torch.rand(num_clusters, dim))
        self.attention = _attention(attention, dim)
        if mask_mode not in MASK_MODES:
            raise ValueError(f"unknown mask_mode '{mask_mode}'; choose one of {MASK_MODES}")
        self.mask_mode = mask_mode

    def output_dim(self, in_dim: int) -> int:
        return self.num_clusters * in_dim

    def init_from_centroids(self, centroids: np.ndarray) -> None:
        """Set centroids and the assignment conv from unit-norm cluster centres."""
        c = torch.from_numpy(np.asarray(centroids, dtype=np.float32))
        self.centroids.data.copy_(c)
        self.conv.weight.data.copy_((2.0 * self.alpha * c)[:, :, None, None])
        self.conv.bias.data.copy_(-self.alpha * c.pow(2).sum(1))

    def fit(self, local: np.ndarray) -> None:
        x = local / np.maximum(np.linalg.norm(local, axis=1, keepdims=True), 1e-12)
        self.init_from_centroids(kmeans(x, self.num_clusters))

    def state(self) -> dict[str, np.ndarray]:
        return {k: v.detach().numpy() for k, v in self.state_dict().items()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})

    def attend(self, local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(reweighted features, spatial weight (B, 1, h, w) or None) from the attention module, if any; in
        "features" mode the weight is already multiplied into the features."""
        x, weight = local, None
        for module in self._attention_modules():
            x, w = module(x)
            if w is None:
                continue
            if self.mask_mode == "features":
                x = x * w
            weight = w if weight is None else weight * w
        return x, weight

    def _attention_modules(self) -> list[nn.Module]:
        if self.attention is None:
            return []
        return list(self.attention) if isinstance(self.attention, nn.ModuleList) else [self.attention]

    def pool(self, local: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """NetVLAD of (B, C, h, w) features; in "assignment" mode each location's assignment scaled by `weight`."""
        b, c = local.shape[:2]
        x = l2n(local, dim=1) if self.normalize_input else local
        soft = torch.softmax(self.conv(x).flatten(2), dim=1)  # (B, K, N)
        if weight is not None and self.mask_mode == "assignment":
            soft = soft * weight.flatten(2)
        xf = x.flatten(2)  # (B, C, N)
        resid = soft @ xf.transpose(1, 2) - soft.sum(-1, keepdim=True) * self.centroids  # (B, K, C)
        return l2n(l2n(resid, dim=-1).reshape(b, -1))

    def forward(self, local: torch.Tensor, global_token: torch.Tensor | None = None) -> torch.Tensor:
        return self.pool(*self.attend(local))
