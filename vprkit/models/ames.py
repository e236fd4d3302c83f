"""AMES (Suma et al., ECCV 2024): a small transformer reading the local descriptors of two images and
returning their similarity.

Each image is a set of descriptors (L2-normalised, Linear + LayerNorm to `model_dim`) with a learned
match token prepended. Every decoder layer lets each image attend to itself (self-attention stays
inside the image) and then to the other image (cross-attention goes between them); padded
descriptors are never attended to, so padding cannot change a score. A linear head on the first
image's match token gives a raw similarity. With `bits`, descriptors first go through a trainable
ITQ-initialised binarizer and the transformer reads +-1 codes (the memory-efficient variant).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..aggregators.vlad import fit_pca
from .binarize import Binarizer

# cross-attention starts as sharp nearest-neighbour matching (queries = keys = MATCH_INIT * identity): from a
# random start, a model trained on a few thousand pairs stays at chance for hundreds of steps, even on a
# synthetic "do these sets share descriptors" task; with it that task is learnt in ~150 steps
MATCH_INIT = 3.0
# raw score of a pair where one image has no descriptor at all: sigmoid(temp * EMPTY_LOGIT) == 0, i.e.
# "no local evidence", so the re-ranking score falls back to lambda * global similarity
EMPTY_LOGIT = -1e4


class Attention(nn.Module):
    """Multi-head attention of `x` over `mem`, ignoring memory positions where `mem_valid` is False."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"model_dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q, self.kv, self.out = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mem: torch.Tensor, mem_valid: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.heads
        q = self.q(x).view(b, n, h, d // h).transpose(1, 2)
        k, v = self.kv(mem).view(b, mem.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mem_valid[:, None, None, :])
        return self.out(o.transpose(1, 2).reshape(b, n, d))


class DecoderLayer(nn.Module):
    """Pre-norm layer: self-attention within the image, cross-attention to the other image, feed-forward."""

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm_self, self.norm_cross, self.norm_mem, self.norm_ff = (nn.LayerNorm(dim) for _ in range(4))
        self.self_attn, self.cross_attn = Attention(dim, heads), Attention(dim, heads)
        self.ff = nn.Sequential(nn.Linear(dim, ff_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, x_valid: torch.Tensor, other: torch.Tensor, other_valid: torch.Tensor
                ) -> torch.Tensor:
        """One image's tokens updated given the other image's tokens (from the previous layer)."""
        h = self.norm_self(x)
        x = x + self.drop(self.self_attn(h, h, x_valid))
        x = x + self.drop(self.cross_attn(self.norm_cross(x), self.norm_mem(other), other_valid))
        return x + self.drop(self.ff(self.norm_ff(x)))


class AMES(nn.Module):
    """Similarity of two sets of local descriptors; `forward` returns raw scores (B,)."""

    def __init__(self, input_dim: int = 384, model_dim: int = 128, num_heads: int = 2, num_layers: int = 5,
                 ff_dim: int = 1024, dropout: float = 0.0, bits: int | None = None) -> None:
        super().__init__()
        self.conf = {"input_dim": input_dim, "model_dim": model_dim, "num_heads": num_heads,
                     "num_layers": num_layers, "ff_dim": ff_dim, "dropout": dropout, "bits": bits}
        self.binarizer = Binarizer(input_dim, bits) if bits else None
        self.embed = nn.Sequential(nn.Linear(bits or input_dim, model_dim), nn.LayerNorm(model_dim))
        self.match_token = nn.Parameter(torch.randn(model_dim) * 0.02)
        self.layers = nn.ModuleList(DecoderLayer(model_dim, num_heads, ff_dim, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(model_dim)
        self.head = nn.Linear(model_dim, 1)
        self._init_matching()

    @torch.no_grad()
    def _init_matching(self) -> None:
        dim = self.match_token.numel()
        for layer in self.layers:
            att = layer.cross_attn
            att.q.weight.copy_(MATCH_INIT * torch.eye(dim))
            att.kv.weight[:dim].copy_(MATCH_INIT * torch.eye(dim))
            att.q.bias.zero_()
            att.kv.bias[:dim].zero_()

    @torch.no_grad()
    def init_whitening(self, desc: torch.Tensor, eps: float = 1e-6) -> None:
        """Start the input projection as PCA-whitening of (a sample of) training descriptors (n, input_dim).

        Backbone descriptors share a large common component, so raw cosine similarities are all high and the
        nearest-neighbour start of cross-attention cannot tell matches apart; whitened, they can.
        """
        x = F.normalize(self.encode(desc.float()), dim=-1)
        mean, proj = (torch.from_numpy(a) for a in fit_pca(x.cpu().numpy(), self.embed[0].out_features, eps=eps))
        self.embed[0].weight[:len(proj)] = proj
        self.embed[0].bias[:len(proj)] = -(proj @ mean)

    def encode(self, desc: torch.Tensor) -> torch.Tensor:
        """What the transformer reads: +-1 codes for a binary model, else the descriptors themselves."""
        return self.binarizer(desc) if self.binarizer is not None else desc

    def _tokens(self, inputs: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embedded descriptors with the match token in front, and the matching validity mask."""
        inputs = inputs.masked_fill(~valid[..., None], 0.0)  # padding content (even NaN) never reaches a score
        x = self.embed(F.normalize(inputs, dim=-1))
        token = self.match_token.expand(len(x), 1, -1)
        ones = torch.ones(len(x), 1, dtype=torch.bool, device=x.device)
        return torch.cat([token, x], 1), torch.cat([ones, valid], 1)

    def forward(self, src: torch.Tensor, src_valid: torch.Tensor, tgt: torch.Tensor, tgt_valid: torch.Tensor,
                encoded: bool = False) -> torch.Tensor:
        """Raw similarity of image pairs: src (B, n, D) with src_valid (B, n) bool, tgt (B, m, D), tgt_valid.

        `encoded=True` means inputs are already what `encode` returns (e.g. unpacked stored codes).
        """
        if not encoded:
            src, tgt = self.encode(src), self.encode(tgt)
        x, xv = self._tokens(src, src_valid)
        y, yv = self._tokens(tgt, tgt_valid)
        for layer in self.layers:
            x, y = layer(x, xv, y, yv), layer(y, yv, x, xv)
        raw = self.head(self.norm(x[:, 0])).squeeze(-1)
        empty = ~src_valid.any(1) | ~tgt_valid.any(1)
        return raw.masked_fill(empty, EMPTY_LOGIT)


class ChamferTeacher(nn.Module):
    """A hand-crafted local similarity to distil into AMES without labels: the mean, over the first image's
    descriptors, of the best cosine similarity in the second image, after a fixed projection (the student's
    starting whitening), as the logit `scale * (chamfer - shift)`.

    On tiny images a few hundred labelled pairs teach AMES shortcuts (which map images are often negatives)
    rather than matching; this target says at every pair how well the descriptors match.
    """

    def __init__(self, proj: nn.Linear, shift: float = 0.0, scale: float = 1.0) -> None:
        super().__init__()
        self.proj = proj.requires_grad_(False)
        self.shift, self.scale = shift, scale

    def embed(self, desc: torch.Tensor) -> torch.Tensor:
        """Descriptors (..., D) L2-normalised, projected, L2-normalised again: cosines become dot products."""
        return F.normalize(self.proj(F.normalize(desc, dim=-1)), dim=-1)

    def chamfer(self, src: torch.Tensor, src_valid: torch.Tensor, tgt: torch.Tensor, tgt_valid: torch.Tensor
                ) -> torch.Tensor:
        """(B,) mean best cosine of src descriptors in tgt; 0 where either image has no descriptor."""
        return chamfer_similarity(self.embed(src), src_valid, self.embed(tgt), tgt_valid)

    @torch.no_grad()
    def standardize(self, chamfers: torch.Tensor, spread: float = 2.0) -> None:
        """Centre the logits on `chamfers` of sample pairs (label-free) with standard deviation `spread`."""
        self.shift = float(chamfers.mean())
        self.scale = spread / max(float(chamfers.std()), 1e-6)

    def forward(self, src: torch.Tensor, src_valid: torch.Tensor, tgt: torch.Tensor, tgt_valid: torch.Tensor
                ) -> torch.Tensor:
        return self.scale * (self.chamfer(src, src_valid, tgt, tgt_valid) - self.shift)


def chamfer_similarity(src: torch.Tensor, src_valid: torch.Tensor, tgt: torch.Tensor, tgt_valid: torch.Tensor
                       ) -> torch.Tensor:
    """(B,) mean, over each src image's valid rows (B, Ks, d), of the best dot product with the valid rows of
    its tgt image (B, Kt, d); 0 where either has none. Batch dimensions broadcast: one query (1, Ks, d) against
    B candidates costs one product."""
    sim = (src @ tgt.transpose(-1, -2)).masked_fill(~tgt_valid[..., None, :], -2.0).amax(-1)
    n = src_valid.sum(-1)
    out = (sim * src_valid).sum(-1) / n.clamp_min(1)
    return out.masked_fill((n == 0) | ~tgt_valid.any(-1), 0.0)


def rerank_score(global_sim: torch.Tensor, raw: torch.Tensor, lamb: float = 0.5, temp: float = 0.2) -> torch.Tensor:
    """AMES's final score: lambda * global similarity + (1 - lambda) * sigmoid(temp * raw)."""
    return lamb * global_sim + (1 - lamb) * torch.sigmoid(temp * raw)


def load_ames(path: str | Path) -> tuple[AMES, dict]:
    """A trained AMES model (eval mode) and its checkpoint meta (local-feature settings, budgets, conf)."""
    from ..train.checkpoint import load_trained_model

    return load_trained_model(path, AMES, "model_conf", "train an AMES model with `vprkit train-ames`")
