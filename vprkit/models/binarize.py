"""Binary local descriptors as AMES's authors make them: L2-normalise, project with a bias-free matrix, take the sign.

The code of a descriptor does not depend on its scale (normalised first, no bias), so a descriptor and 3x it give
the same bits. A 128-bit code packs into 16 bytes: 50 map descriptors take 800 bytes instead of ~39 KB in fp16,
and two packed codes compare in the Hamming domain (dot product = bits - 2 * Hamming distance). The projection
starts from ITQ (PCA + the rotation that best aligns the data with the hypercube corners) fitted on normalised
descriptors, and is fine-tuned through the authors' smooth surrogate erf(x / sqrt(2 sigma)), sigma 1e-6.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SIGMA = 1e-6  # the authors' surrogate width: erf(x / sqrt(2 * SIGMA)) is sign(x) except within ~1e-3 of 0


def itq(x: np.ndarray, bits: int = 128, iters: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """ITQ (Gong & Lazebnik 2011): (mean (D,), projection (D, bits)) so that sign((x - mean) @ W) is a good code.

    PCA to `bits` dimensions, then alternate B = sign(VR) and the orthogonal Procrustes R from SVD(B^T V).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < bits or x.shape[1] < bits:
        raise ValueError(f"ITQ for {bits}-bit codes needs at least {bits} descriptors of at least {bits} "
                         f"dimensions, got shape {x.shape}")
    mean = x.mean(0)
    xc = x - mean
    pca = np.linalg.svd(xc, full_matrices=False)[2][:bits].T
    v = xc @ pca
    r = np.linalg.qr(np.random.default_rng(seed).normal(size=(bits, bits)))[0]
    for _ in range(iters):
        b = np.where(v @ r >= 0, 1.0, -1.0)
        u, _, wt = np.linalg.svd(b.T @ v)
        r = (u @ wt).T
    return mean.astype(np.float32), (pca @ r).astype(np.float32)


class Binarizer(nn.Module):
    """The authors' binarization layer: `W` (dim, bits); codes sign(normalize(x) @ W), erf surrogate in training."""

    def __init__(self, dim: int, bits: int = 128, sigma: float = SIGMA) -> None:
        super().__init__()
        self.sigma = sigma
        self.W = nn.Parameter(torch.randn(dim, bits) / math.sqrt(dim))

    @property
    def bits(self) -> int:
        return self.W.shape[1]

    @torch.no_grad()
    def init_itq(self, x: np.ndarray, seed: int = 0) -> None:
        """Set `W` to ITQ fitted on the L2-normalised descriptors `x` (N, dim); the mean is dropped (no bias)."""
        x = np.asarray(x, dtype=np.float64)
        self.W.copy_(torch.from_numpy(itq(x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12), self.bits,
                                          seed=seed)[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.normalize(x, dim=-1) @ self.W
        return torch.erf(y / math.sqrt(2 * self.sigma)) if self.training else torch.sign(y)


def pack(codes: np.ndarray | torch.Tensor) -> np.ndarray:
    """(..., bits) real codes -> (..., bits / 8) uint8, bit set where the code is >= 0."""
    codes = codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    if codes.shape[-1] % 8:
        raise ValueError(f"code length {codes.shape[-1]} is not a multiple of 8")
    return np.packbits(codes >= 0, axis=-1)


def unpack(packed: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(..., bytes) uint8 -> (..., 8 * bytes) +-1 tensor."""
    bits = np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=-1)
    return torch.from_numpy(bits).to(dtype) * 2 - 1


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int32)


def hamming_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dot products of +-1 codes from packed bytes: bits - 2 * Hamming distance, for (n, B) x (m, B) -> (n, m)."""
    a, b = np.asarray(a, dtype=np.uint8), np.asarray(b, dtype=np.uint8)
    dist = _POPCOUNT[a[:, None, :] ^ b[None, :, :]].sum(-1)
    return 8 * a.shape[-1] - 2 * dist
