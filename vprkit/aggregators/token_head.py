"""A trainable head on frozen backbone tokens: an optional fixed PCA projection of the channels, an optional pooling
of the token grid to a fixed size (MixVPR's MLPs need one), then one of the released heads (SALAD, BoQ, MixVPR,
NetVLAD, GeM + fc), the same classes the authors' models load into.

`vprkit train head` trains it on a route (vprkit.train.head); its checkpoint brings this configuration, so
`vprkit index --preset NAME --checkpoint RUN/best.pt` rebuilds exactly the trained model. Without a checkpoint the
head keeps a seeded initialisation (the same in every process, so a map and its queries agree).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Aggregator


class TokenHead(Aggregator):
    """(PCA projection) -> (grid pooling) -> head, on a (B, C, h, w) token map and its (B, C) CLS token."""

    def __init__(self, head: dict, in_dim: int, proj_dim: int | None = None, grid: list[int] | None = None,
                 seed: int = 0):
        super().__init__()
        from . import get_aggregator  # the registry imports this module

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.head = get_aggregator(**head)
        self.proj = nn.Linear(in_dim, proj_dim) if proj_dim else None
        if self.proj is not None:
            self.proj.requires_grad_(False)  # fitted by PCA, not trained
        self.grid = tuple(grid) if grid else None
        self.needs_fit = self.head.needs_fit

    def output_dim(self, in_dim: int) -> int:
        return self.head.output_dim(self.proj.out_features if self.proj is not None else in_dim)

    def set_pca(self, mean: np.ndarray, components: np.ndarray) -> None:
        """Project onto `components` (d, C) after centring on `mean` (C,)."""
        w = torch.as_tensor(components, dtype=torch.float32)
        self.proj.weight.data.copy_(w)
        self.proj.bias.data.copy_(-w @ torch.as_tensor(mean, dtype=torch.float32))

    def project(self, local: torch.Tensor, token: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tokens in the head's channel space (identity without PCA)."""
        if self.proj is None:
            return local, token
        local = self.proj(local.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return local, None if token is None else self.proj(token)

    def pool(self, local: torch.Tensor, token: torch.Tensor | None = None) -> torch.Tensor:
        """The descriptor of projected tokens (what training runs on cached tokens)."""
        if self.grid is not None and tuple(local.shape[2:]) != self.grid:
            local = F.adaptive_avg_pool2d(local, self.grid)
        return self.head(local, token)

    def fit(self, local: np.ndarray) -> None:
        """Fit the head (NetVLAD's k-means) on sampled backbone local features (N, C), projected first."""
        if self.proj is not None:
            with torch.no_grad():
                local = self.proj(torch.as_tensor(local, dtype=torch.float32)).numpy()
        self.head.fit(local)
        self.needs_fit = False

    def state(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in self.state_dict().items()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
        self.needs_fit = False

    def forward(self, local: torch.Tensor, global_token: torch.Tensor | None = None) -> torch.Tensor:
        return self.pool(*self.project(local, global_token))
