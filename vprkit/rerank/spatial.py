"""Patch matching and spatial verification, batched over all candidates of one query.

Mutual nearest neighbours between a query's patch descriptors and each candidate's, then one of two
spatial scores (Patch-NetVLAD, Hausler et al. 2021): OpenCV's RANSAC homography inlier count, as the
original, or rapid spatial scoring (how consistent the matched patches' grid offsets are). Per-scale
scores are z-normalised across a query's candidates and summed with per-scale weights.

Matching and rapid spatial scoring take a batch of B candidates at once; RANSAC runs per pair (OpenCV).
Degenerate pairs (no patches, no or too few mutual matches) score 0, as in the original.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

MIN_MATCHES = 4  # a homography needs four correspondences


PRECISIONS = ("float32", "bfloat16", "int8")
# Relative error of one similarity from the reduced-precision matmul itself: bfloat16 rounds its output to 8
# significant bits; int8 accumulates exactly in int32 and only the rescaling rounds.
_OUT_ERROR = {"bfloat16": 2.0**-8, "int8": 2.0**-22}


def _quantise(x: torch.Tensor, precision: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values for the matmul, their per-row scale, the float32 vectors they stand for)."""
    if precision == "bfloat16":
        xb = x.to(torch.bfloat16)
        return xb, torch.ones(x.shape[:-1], dtype=torch.float32, device=x.device), xb.float()
    scale = x.abs().amax(-1).clamp(min=1e-30) / 127.0
    xi = torch.round(x / scale[..., None]).clamp(-127, 127).to(torch.int8)
    return xi, scale, xi.float() * scale[..., None]


def _approx_similarity(q: torch.Tensor, db: torch.Tensor, precision: str) -> tuple[torch.Tensor, ...]:
    """(similarities (B, Nd, Nq) in float32 from `precision`, per-row error terms of query and candidate sides).

    For unit-ish vectors x, y and their stand-ins x', y': |x.y - x'.y'| <= |x - x'| |y| + |x'| |y - y'|
    (+ the matmul's own rounding), so each side's term is (residual norm, norm of stand-in, norm).
    """
    qa, qs, qf = _quantise(q, precision)
    da, ds, df = _quantise(db, precision)
    if precision == "bfloat16":
        sim = torch.matmul(da, qa.T).float()
    else:
        qt = qa.T.contiguous()
        sim = torch.stack([torch._int_mm(d, qt) for d in da]).float() * ds[..., None] * qs[None, None]
    side = [((x - xf).norm(dim=-1), xf.norm(dim=-1), x.norm(dim=-1)) for x, xf in ((q, qf), (db, df))]
    return sim, side[0], side[1]


def _safe_argmax(sim: torch.Tensor, dim: int, bound: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(argmax along `dim`, whether it is certain): the top-2 gap exceeds twice the error bound."""
    if sim.shape[dim] < 2:
        return sim.argmax(dim), torch.ones_like(sim.select(dim, 0), dtype=torch.bool)
    top = sim.topk(2, dim=dim)
    return top.indices.select(dim, 0), (top.values.select(dim, 0) - top.values.select(dim, 1)) > 2 * bound


def nearest(q: torch.Tensor, db: torch.Tensor, precision: str = "float32"
            ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(fw (B, Nq): nearest candidate patch of each query patch, bw (B, Nd): nearest query patch of each
    candidate patch, share of rows recomputed in float32).

    `q` (Nq, d) and `db` (B, Nd, d) float32, L2-normalised: the nearest neighbour is the largest dot product
    (the original's sqrt(2 - 2 q.d) is monotone in it). With `precision` bfloat16 or int8 the similarities
    are computed in it, and every row whose top-2 gap is within twice its rigorous error bound is recomputed
    in float32, so the neighbours are float32's (up to float32's own rounding at exact ties).
    """
    if precision == "float32":
        sim = torch.matmul(db, q.T)  # (B, Nd, Nq)
        return sim.argmax(dim=1), sim.argmax(dim=2), 0.0
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}'; choose one of {PRECISIONS}")
    sim, (rq, nq_hat, nq_true), (rd, nd_hat, nd_true) = _approx_similarity(q, db, precision)
    margin = _OUT_ERROR[precision] + 2 * q.shape[1] * 2.0**-24  # the matmul's rounding and float32's own
    bound_fw = rq[None] * nd_true.amax(1, keepdim=True) + nq_hat[None] * rd.amax(1, keepdim=True) \
        + margin * nq_hat[None] * nd_hat.amax(1, keepdim=True)  # (B, Nq)
    bound_bw = rd * nq_true.amax() + nd_hat * rq.amax() + margin * nd_hat * nq_hat.amax()  # (B, Nd)
    fw, fw_ok = _safe_argmax(sim, 1, bound_fw)
    bw, bw_ok = _safe_argmax(sim, 2, bound_bw)
    for b in range(db.shape[0]):
        rows = torch.nonzero(~fw_ok[b]).flatten()
        if len(rows):
            fw[b, rows] = torch.matmul(db[b], q[rows].T).argmax(0)
        cols = torch.nonzero(~bw_ok[b]).flatten()
        if len(cols):
            bw[b, cols] = torch.matmul(db[b, cols], q.T).argmax(1)
    redone = (~fw_ok).sum() + (~bw_ok).sum()
    return fw, bw, float(redone) / max(fw_ok.numel() + bw_ok.numel(), 1)


def mutual_nn(q: torch.Tensor, db: torch.Tensor, precision: str = "float32") -> tuple[torch.Tensor, torch.Tensor]:
    """For each query patch: its nearest candidate patch `fw` (B, Nq) and whether that is mutual (B, Nq).

    `q` (Nq, d) and `db` (B, Nd, d), L2-normalised; see `nearest` for `precision`. Ties go to the lowest index.
    """
    b, nq, nd = db.shape[0], q.shape[0], db.shape[1]
    if nq == 0 or nd == 0:
        return torch.zeros(b, nq, dtype=torch.long), torch.zeros(b, nq, dtype=torch.bool)
    fw, bw, _ = nearest(q.float(), db.float(), precision)
    mutual = torch.gather(bw, 1, fw) == torch.arange(nq, device=fw.device)
    return fw, mutual


def rapid_spatial_scores(q_grid: torch.Tensor, db_grid: torch.Tensor, fw: torch.Tensor,
                         mutual: torch.Tensor) -> torch.Tensor:
    """Rapid spatial scoring (B,): sum over matches of (xmax - |dx - mean dx|)^2 + (ymax - |dy - mean dy|)^2.

    `q_grid` (Nq, 2) and `db_grid` (Nd, 2) are the patches' (x, y) grid indices; the score is
    divided by the number of query patches so that scales with different patch counts are comparable.
    """
    b, nq = fw.shape
    if nq == 0 or db_grid.shape[0] == 0:
        return torch.zeros(b, dtype=torch.float64)
    m = mutual.to(torch.float64)
    d = (db_grid[fw] - q_grid).to(torch.float64)  # (B, Nq, 2) grid offset of each match
    mean = (d * m[..., None]).sum(1) / m.sum(1).clamp(min=1)[:, None]
    resid = (d - mean[:, None]).abs()
    anchor = torch.maximum(q_grid.max(0).values, db_grid.max(0).values).to(torch.float64)  # (xmax, ymax)
    s = ((anchor - resid) ** 2).sum(-1) * m
    return s.sum(1) / nq


def mutual_pairs(fw: torch.Tensor, mutual: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(query patch indices, candidate patch indices) of one candidate's mutual matches, by candidate index.

    The original enumerates mutual matches over the candidate's patches, in index order; RANSAC's random
    samples are drawn from that order, so keeping it keeps OpenCV's inlier count equal to the original's.
    """
    q_idx = torch.nonzero(mutual).flatten().numpy()
    db_idx = fw[q_idx].numpy()
    order = np.argsort(db_idx, kind="stable")
    return q_idx[order], db_idx[order]


def ransac_inliers(src: np.ndarray, dst: np.ndarray, threshold: float) -> np.ndarray:
    """Inlier mask (N,) of OpenCV's RANSAC homography src -> dst (pixels), as the original calls it.

    `cv2.findHomography(src, dst, RANSAC, threshold)` with OpenCV's defaults (up to 2000 iterations,
    adaptive to the inlier ratio, confidence 0.995, degenerate samples redrawn, its own fixed seed).
    Fewer than 4 matches cannot fix a homography: no inliers (the original scores such a pair 0).
    """
    if len(src) < MIN_MATCHES:
        return np.zeros(len(src), dtype=bool)
    _, mask = cv2.findHomography(np.asarray(src, np.float32), np.asarray(dst, np.float32), cv2.RANSAC,
                                 ransacReprojThreshold=threshold)
    return np.zeros(len(src), dtype=bool) if mask is None else mask.ravel().astype(bool)


def zscore(s: np.ndarray, skip_constant: bool = True) -> np.ndarray:
    """(s - mean) / std over the last axis in float64 numpy (population std), as the original computes it.

    Where std is 0 the original divides 0 by 0 (NaN); `skip_constant` gives 0 there instead.
    """
    s = np.asarray(s, dtype=np.float64)
    mean, std = s.mean(-1, keepdims=True), s.std(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (s - mean) / std
    return np.where(std > 0, z, 0.0) if skip_constant else z


def fuse(scale_scores: np.ndarray, weights: list[float], skip_constant: bool = False) -> np.ndarray:
    """Multi-scale fusion: sum_s w_s * zscore(scores_s) over a query's candidates; (S, B) -> (B,).

    As the original, a patch size whose scores are all equal makes every fused score NaN;
    `skip_constant` lets that size contribute 0 instead.
    """
    scale_scores = np.asarray(scale_scores, dtype=np.float64)
    if len(weights) != scale_scores.shape[0]:
        raise ValueError(f"{len(weights)} patch weights for {scale_scores.shape[0]} patch sizes")
    return (np.asarray(weights, dtype=np.float64)[:, None] * zscore(scale_scores, skip_constant)).sum(0)
