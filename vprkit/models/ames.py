"""AMES (Suma et al., ECCV 2024): a small transformer reading the local descriptors of two images and
returning their similarity, computed as the authors' code computes it (pavelsuma/ames, `src/models/matcher.py`).

Descriptors are L2-normalised and mapped to `model_dim` (Linear + LayerNorm; a binary model first turns them into
sign codes, `binarize.Binarizer`). One learned match token is prepended to the joint sequence
[token | first image | second image]. Each post-norm layer runs self-attention, where an image's descriptors see
their own image and the token, then cross-attention over the same (updated) sequence, where they see the other
image and the token, then a ReLU feed-forward; the token sees everything in both. The classifier reads the token:
one raw similarity, symmetric in the two images. Padded descriptors are never attended to, so their content
cannot change a score. Parameter names are the authors', so their released checkpoints load strictly
(`load_authors_checkpoint`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .base import load_state_dict, load_strict
from .binarize import Binarizer
from .checkpoint import load_trained_model
from .pca import fit_pca

# vprkit's training start (the authors released no training code): cross-attention begins as sharp
# nearest-neighbour matching (queries = keys = MATCH_INIT * identity); from a random start a model trained on a few
# thousand pairs stays at chance for hundreds of steps
MATCH_INIT = 3.0
# raw score given where one image has no descriptor at all: sigmoid(temp * EMPTY_LOGIT) == 0, i.e. "no local
# evidence", so the re-ranking score falls back to lambda * global similarity (the model itself is not asked)
EMPTY_LOGIT = -1e4
# conf/model/ames.yaml
AUTHORS_CONF = {"model_dim": 128, "num_heads": 2, "num_layers": 5, "ff_dim": 1024}


def attend(mha: nn.MultiheadAttention, x: torch.Tensor, src_len: int, valid: torch.Tensor, cross: bool
           ) -> torch.Tensor:
    """Multi-head attention over x = [token | src | tgt] (B, L, d) with `mha`'s weights, as the authors' masks
    define it: the token reads every valid position; a src or tgt position reads the token and the valid positions
    of its own image (self-attention) or of the other image (`cross`). Computed block by block (fused kernels, the
    masked-out blocks never computed), which gives what one masked L x L attention gives."""
    b, n, d = x.shape
    h = mha.num_heads
    q, k, v = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
    end = src_len + 1
    with_src = k[:, :, :end], v[:, :, :end], valid[:, None, None, :end]  # the token and src
    with_tgt = (torch.cat([k[:, :, :1], k[:, :, end:]], 2), torch.cat([v[:, :, :1], v[:, :, end:]], 2),
                torch.cat([valid[:, :1], valid[:, end:]], 1)[:, None, None])  # the token and tgt

    def read(rows: slice, keys: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return F.scaled_dot_product_attention(q[:, :, rows], keys[0], keys[1], attn_mask=keys[2])

    out = torch.cat([read(slice(0, 1), (k, v, valid[:, None, None])),
                     read(slice(1, end), with_tgt if cross else with_src),
                     read(slice(end, n), with_src if cross else with_tgt)], 2)
    return mha.out_proj(out.transpose(1, 2).reshape(b, n, d))


class DecoderLayer(nn.Module):
    """The authors' post-norm layer: self-attention, cross-attention over the same sequence, ReLU feed-forward."""

    def __init__(self, dim: int, heads: int, ff_dim: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"model_dim {dim} is not divisible by {heads} heads")
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.linear1, self.linear2 = nn.Linear(dim, ff_dim), nn.Linear(ff_dim, dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, src_len: int, valid: torch.Tensor) -> torch.Tensor:
        """x = [token | src (src_len) | tgt] (B, L, d); `valid` (B, L) False at padding."""
        x = self.norm1(x + attend(self.self_attn, x, src_len, valid, cross=False))
        x = self.norm2(x + attend(self.cross_attn, x, src_len, valid, cross=True))
        return self.norm3(x + self.linear2(F.relu(self.linear1(x))))


class Decoder(nn.Module):
    """Holds the layers under the authors' names (`decoder.layers.N`); no final norm (normalize_before=False)."""

    def __init__(self, dim: int, heads: int, ff_dim: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, ff_dim) for _ in range(num_layers))


class AMES(nn.Module):
    """The authors' AMES; `forward` returns raw similarities (B,). `bits` makes the binary (distilled) variant."""

    def __init__(self, input_dim: int = 768, model_dim: int = 128, num_heads: int = 2, num_layers: int = 5,
                 ff_dim: int = 1024, bits: int | None = None) -> None:
        super().__init__()
        self.conf = {"input_dim": input_dim, "model_dim": model_dim, "num_heads": num_heads,
                     "num_layers": num_layers, "ff_dim": ff_dim, "bits": bits}
        self.mtc_token = nn.Parameter(torch.randn(model_dim) * 0.02)
        remap = [Binarizer(input_dim, bits), nn.Linear(bits, model_dim)] if bits else [nn.Linear(input_dim, model_dim)]
        self.remap_local = nn.Sequential(*remap, nn.LayerNorm(model_dim))
        self.decoder = Decoder(model_dim, num_heads, ff_dim, num_layers)
        self.classifier = nn.Linear(model_dim, 1)

    @property
    def binarizer(self) -> Binarizer | None:
        return self.remap_local[0] if self.conf["bits"] else None

    @property
    def projection(self) -> nn.Linear:
        """The linear map from what the transformer reads (descriptors or codes) to `model_dim`."""
        return self.remap_local[-2]

    @torch.no_grad()
    def init_matching(self) -> None:
        """vprkit's training start: cross-attention queries = keys = MATCH_INIT * identity (nearest neighbours)."""
        for layer in self.decoder.layers:
            w, bias = layer.cross_attn.in_proj_weight, layer.cross_attn.in_proj_bias
            dim = w.shape[1]
            w[:2 * dim].copy_(MATCH_INIT * torch.eye(dim).repeat(2, 1))
            bias[:2 * dim].zero_()

    @torch.no_grad()
    def init_whitening(self, desc: torch.Tensor, eps: float = 1e-6) -> None:
        """Start the projection as PCA-whitening of (a sample of) training descriptors (n, input_dim).

        Backbone descriptors share a large common component, so raw cosine similarities are all high and the
        nearest-neighbour start of cross-attention cannot tell matches apart; whitened, they can.
        """
        x = self.encode(F.normalize(desc.float(), dim=-1))
        mean, proj = (torch.from_numpy(a) for a in fit_pca(x.cpu().numpy(), self.projection.out_features, eps=eps))
        self.projection.weight[:len(proj)] = proj
        self.projection.bias[:len(proj)] = -(proj @ mean)

    def encode(self, desc: torch.Tensor) -> torch.Tensor:
        """What the projection reads: sign codes for a binary model (what a binary map store keeps), else the
        L2-normalised descriptors."""
        desc = F.normalize(desc, dim=-1)
        return self.binarizer(desc) if self.binarizer is not None else desc

    def embed(self, inputs: torch.Tensor, valid: torch.Tensor, encoded: bool = False) -> torch.Tensor:
        """Descriptors (B, K, D) (or, `encoded`, what `encode` made of them) -> tokens (B, K, model_dim); padding
        zeroed first, so its content (even NaN) never reaches a score."""
        inputs = inputs.masked_fill(~valid[..., None], 0.0)
        return self.remap_local[-2:](inputs if encoded and self.binarizer is not None else self.encode(inputs))

    def forward(self, src: torch.Tensor, src_valid: torch.Tensor, tgt: torch.Tensor, tgt_valid: torch.Tensor,
                encoded: bool = False) -> torch.Tensor:
        """Raw similarity of image pairs: src (B, n, D) with src_valid (B, n) bool (True = a real descriptor),
        tgt (B, m, D), tgt_valid. A src batch of 1 is shared by all B targets (embedded once).

        `encoded=True`: inputs are what `encode` returns (e.g. unpacked stored codes). As the authors' model, an fp
        model in eval mode rounds the embedded target (map) descriptors to fp16.
        """
        x, y = self.embed(src, src_valid, encoded), self.embed(tgt, tgt_valid, encoded)
        if not self.training and self.binarizer is None:
            y = y.half().float()
        b = len(y)
        x, src_valid = x.expand(b, -1, -1), src_valid.expand(b, -1)
        seq = torch.cat([self.mtc_token.expand(b, 1, -1).to(x.dtype), x, y], 1)
        valid = torch.cat([src_valid.new_ones(b, 1), src_valid, tgt_valid], 1)
        for layer in self.decoder.layers:
            seq = layer(seq, x.shape[1], valid)
        return self.classifier(seq[:, 0]).squeeze(-1)


def load_authors_checkpoint(path: str | Path, num_heads: int = AUTHORS_CONF["num_heads"]) -> AMES:
    """A released AMES checkpoint of the authors (fp or distilled binary, DINOv2 or CVNet) in eval mode.

    The file holds {'state': state dict} (a bare state dict is accepted too); sizes are read from the weights,
    the head count (not in the weights) is ames.yaml's. Read with weights_only=True, loaded strictly.
    """
    state = load_state_dict(path)
    if "classifier.weight" not in state:
        raise ValueError(f"{path}: not an AMES checkpoint (no 'state' dict with 'classifier.weight')")
    binary = "remap_local.0.W" in state
    first = state["remap_local.0.W"].shape[0] if binary else state["remap_local.0.weight"].shape[1]
    conf = {"input_dim": int(first), "model_dim": int(state["mtc_token"].shape[0]), "num_heads": num_heads,
            "num_layers": len({k.split(".")[2] for k in state if k.startswith("decoder.layers.")}),
            "ff_dim": int(state["decoder.layers.0.linear1.weight"].shape[0]),
            "bits": int(state["remap_local.0.W"].shape[1]) if binary else None}
    model = AMES(**conf)
    load_strict(model, state, path)
    return model.eval()


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


def rerank_score(global_sim: torch.Tensor, raw: torch.Tensor, lamb: float = 0.55, temp: float = 0.3) -> torch.Tensor:
    """AMES's final score: lambda * global similarity + (1 - lambda) * sigmoid(temp * raw)."""
    return lamb * global_sim + (1 - lamb) * torch.sigmoid(temp * raw)


def load_ames(path: str | Path) -> tuple[AMES, dict]:
    """A trained AMES model (eval mode) and its checkpoint meta (local-feature settings, budgets, conf)."""
    return load_trained_model(path, AMES, "model_conf", "train an AMES model with `vprkit train ames`")
