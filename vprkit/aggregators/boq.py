"""Bag-of-Queries (Ali-bey et al., CVPR 2024): learned queries cross-attend to the refined local features.

The head of the authors' `amaralibey/Bag-of-Queries` (`src/boq.py`), with their parameter names (`proj_c`,
`norm_input`, `boqs.N.{encoder,queries,self_attn,norm_q,cross_attn,norm_out}`, `fc`) so their released state dicts
load unchanged under `aggregator.*`. A 3x3 conv projects the backbone map to `proj_channels`; each of `num_layers`
blocks refines the tokens with a transformer encoder layer and pools them with `num_queries` learned queries; the
concatenated query outputs are mixed by `fc` into `row_dim` rows, flattened and L2-normalised (dimension
`proj_channels * row_dim`). The authors build ResNet-50 with (1024, 512, 64, 2, 32) and DINOv2-B with
(768, 384, 64, 2, 32).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Aggregator, l2n


class BoQBlock(nn.Module):
    """One refinement + pooling stage; heads of 64 channels, as the authors use."""

    def __init__(self, in_dim: int, num_queries: int, nheads: int = 8):
        super().__init__()
        self.encoder = nn.TransformerEncoderLayer(d_model=in_dim, nhead=nheads, dim_feedforward=4 * in_dim,
                                                  batch_first=True, dropout=0.0)
        self.queries = nn.Parameter(torch.randn(1, num_queries, in_dim))
        # The queries' own self-attention does not depend on the image (the authors note it could be cached at test
        # time); it stays in the forward so trained and loaded heads behave the same.
        self.self_attn = nn.MultiheadAttention(in_dim, num_heads=nheads, batch_first=True)
        self.norm_q = nn.LayerNorm(in_dim)
        self.cross_attn = nn.MultiheadAttention(in_dim, num_heads=nheads, batch_first=True)
        self.norm_out = nn.LayerNorm(in_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(refined tokens (B, N, D), pooled queries (B, Q, D))."""
        x = self.encoder(x)
        q = self.queries.expand(x.shape[0], -1, -1)
        q = self.norm_q(q + self.self_attn(q, q, q, need_weights=False)[0])
        out = self.cross_attn(q, x, x, need_weights=False)[0]
        return x, self.norm_out(out)


class BoQ(Aggregator):
    """BoQ descriptor of a (B, C, h, w) feature map."""

    def __init__(self, in_channels: int = 1024, proj_channels: int = 512, num_queries: int = 64,
                 num_layers: int = 2, row_dim: int = 32):
        super().__init__()
        self.proj_c = nn.Conv2d(in_channels, proj_channels, kernel_size=3, padding=1)
        self.norm_input = nn.LayerNorm(proj_channels)
        self.boqs = nn.ModuleList([BoQBlock(proj_channels, num_queries, nheads=proj_channels // 64)
                                   for _ in range(num_layers)])
        self.fc = nn.Linear(num_layers * num_queries, row_dim)
        self.out_dim = proj_channels * row_dim

    def output_dim(self, in_dim: int) -> int:
        return self.out_dim

    def forward(self, local: torch.Tensor, global_token: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm_input(self.proj_c(local).flatten(2).transpose(1, 2))
        outs = []
        for block in self.boqs:
            x, out = block(x)
            outs.append(out)
        mixed = self.fc(torch.cat(outs, dim=1).transpose(1, 2))  # (B, D, row_dim)
        return l2n(mixed.flatten(1))
