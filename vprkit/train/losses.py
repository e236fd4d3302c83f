"""Metric-learning losses on L2-normalised descriptors.

Shapes: queries (B, D), positives (B, D), negatives (B, K, D) with a validity mask (B, K) because a
query can have fewer than K negatives. Every loss is the mean over valid (query, negative) pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distance along the last axis, with a finite gradient at zero distance."""
    return ((a - b).pow(2).sum(-1) + 1e-12).sqrt()


def _masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return x.mean()
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def triplet_loss(q: torch.Tensor, p: torch.Tensor, n: torch.Tensor, mask: torch.Tensor | None = None,
                 margin: float = 0.1) -> torch.Tensor:
    """max(0, d(q,p) + m - d(q,n)), as in NetVLAD."""
    d_qp = _dist(q, p)[:, None]
    d_qn = _dist(q[:, None], n)
    return _masked_mean(F.relu(d_qp + margin - d_qn), mask)


def stml_loss(q: torch.Tensor, p: torch.Tensor, n: torch.Tensor, mask: torch.Tensor | None = None,
              margin: float = 0.1, margin_pn: float = 1.4) -> torch.Tensor:
    """Sharpened triplet marginal loss: max(0, d(q,p) + m - d(q,n) + m_pn - d(p,n)).

    The extra term also pushes the positive away from the negative, so the pair is separated from
    both ends (Choi et al. 2023).
    """
    d_qp = _dist(q, p)[:, None]
    d_qn = _dist(q[:, None], n)
    d_pn = _dist(p[:, None], n)
    return _masked_mean(F.relu(d_qp + margin - d_qn + margin_pn - d_pn), mask)


LOSSES = {"triplet": triplet_loss, "stml": stml_loss}


def get_loss(name: str, **conf):
    """A loss function by name with its margins bound."""
    if name not in LOSSES:
        raise KeyError(f"unknown loss '{name}'; choose one of {sorted(LOSSES)}")
    fn = LOSSES[name]
    return lambda q, p, n, mask=None: fn(q, p, n, mask, **conf)


def guidance_loss(mask: torch.Tensor, guidance: torch.Tensor, kind: str = "mse", resize: str = "area") -> torch.Tensor:
    """Distance of a predicted attention mask (B, 1, h, w) to a guidance mask in [0, 1].

    The guidance is brought to the mask's size when they differ: "area" averages (vprkit's), "bicubic" interpolates
    with aligned corners as the de-attention code does (values may overshoot [0, 1] at edges). Zero when they are
    equal (for "bce": when the guidance is binary).
    """
    if guidance.shape[-2:] != mask.shape[-2:]:
        guidance = _resize_guidance(guidance.float(), mask.shape[-2:], resize)
    guidance = guidance.to(mask.dtype)
    if kind == "mse":
        return F.mse_loss(mask, guidance)
    if kind == "bce":
        return F.binary_cross_entropy(mask, guidance)
    raise ValueError(f"unknown guidance loss '{kind}'; choose 'mse' or 'bce'")


def _resize_guidance(guidance: torch.Tensor, size, resize: str) -> torch.Tensor:
    if resize == "area":
        return F.adaptive_avg_pool2d(guidance, size)
    if resize == "bicubic":
        return F.interpolate(guidance, size=tuple(size), mode="bicubic", align_corners=True)
    raise ValueError(f"unknown guidance resize '{resize}'; choose 'area' or 'bicubic'")
