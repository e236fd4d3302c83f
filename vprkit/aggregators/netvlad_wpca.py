"""NetVLAD + whitening PCA, the global descriptor of the NetVLAD / Patch-NetVLAD authors' released models.

Patch-NetVLAD's `pittsburgh_WPCA4096.pth.tar` / `mapillary_WPCA4096.pth.tar` hold a NetVLAD layer (`pool.*`, no
assignment bias: their `vladv2=False`) and `WPCA.0`, a 1x1 conv from the K*C NetVLAD vector to `num_pcs` dims
followed by L2 normalisation (`get_pca_encoding` in their `models_generic.py`). Here `pool` is vprkit's NetVLAD and
`wpca` a Linear holding the same matrix; nothing is fitted on the map.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Aggregator, l2n
from .netvlad import NetVLAD


class NetVLADWPCA(Aggregator):
    """NetVLAD (intra- and L2-normalised) projected by a learned whitening PCA, L2-normalised."""

    def __init__(self, num_clusters: int = 64, dim: int = 512, num_pcs: int = 4096):
        super().__init__()
        self.pool = NetVLAD(num_clusters=num_clusters, dim=dim)
        self.wpca = nn.Linear(num_clusters * dim, num_pcs)

    def output_dim(self, in_dim: int) -> int:
        return self.wpca.out_features

    def forward(self, local: torch.Tensor, global_token: torch.Tensor | None = None) -> torch.Tensor:
        return l2n(self.wpca(self.pool(local)))
