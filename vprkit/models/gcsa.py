"""GCSA network: contextual similarity aggregation over visual and non-visual affinities.

Each image (the query and its K candidates) is described by its affinities to the same anchors
(the query and the top-L of the retrieval), one vector per modality. Per modality a linear layer
maps the vector to a common width; the projections are summed and a transformer encoder lets the
query and candidates attend to each other. The refined similarity is the cosine of the refined
query and candidate embeddings. There is no positional encoding, so the network is
permutation-equivariant over candidates: their order in the retrieval carries no information.

Unknown affinities (NaN) are masked: a token that lacks a modality gets no contribution from
that modality at all; an anchor that lacks it is zero-filled *and* flagged by a mask input, so
"unknown" never reads as "known to be unrelated".
"""

from __future__ import annotations

import torch
from torch import nn


class AffinityProjection(nn.Module):
    """Linear map of one modality's affinity vector (values and their unknown-mask) to the model width."""

    def __init__(self, num_anchors: int, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(2 * num_anchors, width)

    def forward(self, aff: torch.Tensor) -> torch.Tensor:
        known = torch.isfinite(aff)
        x = torch.cat([torch.where(known, aff, torch.zeros_like(aff)), (~known).to(aff.dtype)], dim=-1)
        return self.linear(x) * known.any(dim=-1, keepdim=True).to(aff.dtype)


class GCSA(nn.Module):
    """Re-ranking network. `modalities` are the side channels beyond the always-present visual one."""

    def __init__(self, desc_dim: int, num_anchors: int, modalities: list[str] | tuple[str, ...] = (),
                 proj_dim: int | None = 256, width: int = 128, num_layers: int = 2, num_heads: int = 4,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.num_anchors, self.modalities = num_anchors, list(modalities)
        self._config = {"desc_dim": desc_dim, "num_anchors": num_anchors, "modalities": self.modalities,
                        "proj_dim": proj_dim, "width": width, "num_layers": num_layers, "num_heads": num_heads,
                        "dropout": dropout}
        self.input_proj = nn.Linear(desc_dim, proj_dim) if proj_dim else nn.Identity()
        self.affinity_proj = nn.ModuleDict({m: AffinityProjection(1 + num_anchors, width)
                                            for m in ["visual", *self.modalities]})
        layer = nn.TransformerEncoderLayer(width, num_heads, 4 * width, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def project(self, desc: torch.Tensor) -> torch.Tensor:
        """L2-normalised projected descriptors (stage 1 trains only this)."""
        return nn.functional.normalize(self.input_proj(desc), dim=-1)

    @staticmethod
    def projected_scores(x: torch.Tensor) -> torch.Tensor:
        """(B, K) cosine of the projected query (token 0) and candidates: the stage-1 similarity."""
        return (x[:, 1:] * x[:, :1]).sum(-1)

    def forward(self, desc: torch.Tensor, anchors: torch.Tensor, side: dict[str, torch.Tensor] | None = None,
                pad: torch.Tensor | None = None, projected: bool = False) -> torch.Tensor:
        """Refined similarities (B, K).

        desc: (B, 1+K, D) query then candidates; anchors: (B, 1+L, D) query then anchors (zero rows pad);
        side: modality -> (B, 1+K, 1+L) affinities of the same tokens to the same anchors, NaN unknown;
        pad: (B, 1+K) True for padded candidate slots (ignored by attention); projected: the
        descriptors are already `project`ed (lets callers project each distinct image once).
        """
        side = side or {}
        missing = set(self.modalities) - set(side)
        if missing:
            raise ValueError(f"GCSA model needs side affinities {sorted(missing)}")
        x, a = (desc, anchors) if projected else (self.project(desc), self.project(anchors))
        h = self.affinity_proj["visual"](x @ a.transpose(1, 2))
        for m in self.modalities:
            h = h + self.affinity_proj[m](side[m].to(h.dtype))
        h = self.norm(self.encoder(h, src_key_padding_mask=pad))
        return self.projected_scores(nn.functional.normalize(h, dim=-1))

    def config(self) -> dict:
        """Constructor arguments, stored in checkpoints so a re-ranker can rebuild the network."""
        return dict(self._config)
