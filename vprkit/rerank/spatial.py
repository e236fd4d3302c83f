"""Patch matching and spatial verification, batched over all candidates of one query.

Mutual nearest neighbours between a query's patch descriptors and each candidate's, then one of two
spatial scores (Patch-NetVLAD, Hausler et al. 2021): RANSAC inlier count (homography or affine) or
rapid spatial scoring (how consistent the matched patches' grid offsets are). Per-scale scores are
z-normalised across a query's candidates and summed with per-scale weights.

Every function takes a batch of B candidates at once and returns defined numbers for the degenerate
cases (no patches, no mutual matches, collinear points): score 0, never NaN.
"""

from __future__ import annotations

import torch

# Elements of the (hypotheses x points) error matrix processed at once in RANSAC (bounds memory).
_RANSAC_CHUNK = 1 << 22
MIN_SAMPLES = {"homography": 4, "affine": 3}


def mutual_nn(q: torch.Tensor, db: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query patch: its nearest candidate patch `fw` (B, Nq) and whether that is mutual (B, Nq).

    `q` (Nq, d) and `db` (B, Nd, d) are L2-normalised, so the nearest neighbour is the largest dot
    product (the original's sqrt(2 - 2 q.d) is monotone in it). Ties go to the lowest index.
    """
    b, nq, nd = db.shape[0], q.shape[0], db.shape[1]
    if nq == 0 or nd == 0:
        return torch.zeros(b, nq, dtype=torch.long), torch.zeros(b, nq, dtype=torch.bool)
    sim = torch.matmul(db, q.T.to(db.dtype))  # (B, Nd, Nq)
    fw = sim.argmax(dim=1)  # (B, Nq): best candidate patch of each query patch
    bw = sim.argmax(dim=2)  # (B, Nd): best query patch of each candidate patch
    mutual = torch.gather(bw, 1, fw) == torch.arange(nq)
    return fw, mutual


def rapid_spatial_scores(q_grid: torch.Tensor, db_grid: torch.Tensor, fw: torch.Tensor,
                         mutual: torch.Tensor) -> torch.Tensor:
    """Rapid spatial scoring (B,): sum over matches of (xmax - |dx - mean dx|)^2 + (ymax - |dy - mean dy|)^2.

    `q_grid` (Nq, 2) and `db_grid` (Nd, 2) are the patches' (x, y) grid indices; the score is
    divided by the number of query patches so that scales with different patch counts are comparable.
    """
    b, nq = fw.shape
    if nq == 0 or db_grid.shape[0] == 0:
        return torch.zeros(b)
    m = mutual.to(torch.float64)
    d = (db_grid[fw] - q_grid).to(torch.float64)  # (B, Nq, 2) grid offset of each match
    mean = (d * m[..., None]).sum(1) / m.sum(1).clamp(min=1)[:, None]
    resid = (d - mean[:, None]).abs()
    anchor = torch.maximum(q_grid.max(0).values, db_grid.max(0).values).to(torch.float64)  # (xmax, ymax)
    s = ((anchor - resid) ** 2).sum(-1) * m
    return (s.sum(1) / nq).to(torch.float32)


def ransac_samples(iters: int, k: int, seed: int = 0) -> torch.Tensor:
    """Uniform numbers (iters, k) that pick RANSAC's minimal samples: index = floor(u * num_matches).

    Drawn once and shared by every pair, so batched and per-pair runs test the same hypotheses.
    """
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(iters, k, generator=gen, dtype=torch.float64)


def _fit_minimal(src: torch.Tensor, dst: torch.Tensor, model: str) -> tuple[torch.Tensor, torch.Tensor]:
    """3x3 transforms (..., 3, 3) mapping src -> dst exactly from minimal samples (..., k, 2), and a valid flag.

    A sample is invalid when any three of its points (in either image) are collinear or coincide,
    or the linear system is singular.
    """
    k = src.shape[-2]
    ok = torch.ones(src.shape[:-2], dtype=torch.bool)
    scale = torch.maximum(src.abs().amax((-1, -2)), dst.abs().amax((-1, -2))).clamp(min=1.0)
    for pts in (src, dst):
        for i, j, m in ((0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3))[: 1 if k == 3 else 4]:
            u, v = pts[..., j, :] - pts[..., i, :], pts[..., m, :] - pts[..., i, :]
            ok &= (u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]).abs() > 1e-6 * scale**2
    x, y = src[..., 0], src[..., 1]
    u, v = dst[..., 0], dst[..., 1]
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    if model == "homography":
        rows_u = torch.stack([x, y, one, zero, zero, zero, -x * u, -y * u], -1)
        rows_v = torch.stack([zero, zero, zero, x, y, one, -x * v, -y * v], -1)
    else:
        rows_u = torch.stack([x, y, one, zero, zero, zero], -1)
        rows_v = torch.stack([zero, zero, zero, x, y, one], -1)
    a = torch.cat([rows_u, rows_v], -2)
    rhs = torch.cat([u, v], -1)[..., None]
    a = torch.where(ok[..., None, None], a, torch.eye(a.shape[-1], dtype=a.dtype))  # keep solve well-posed
    h, info = torch.linalg.solve_ex(a, rhs)
    ok &= (info == 0) & torch.isfinite(h).all(-2).all(-1)
    h = torch.nan_to_num(h[..., 0])
    last = torch.tensor([0.0, 0.0, 1.0], dtype=h.dtype).expand(*h.shape[:-1], 3)
    mat = torch.cat([h, torch.ones_like(h[..., :1])], -1).reshape(*h.shape[:-1], 3, 3) if model == "homography" \
        else torch.cat([h.reshape(*h.shape[:-1], 2, 3), last[..., None, :]], -2)
    return mat, ok


def _count_inliers(mat: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, valid: torch.Tensor,
                   threshold: float) -> torch.Tensor:
    """Inlier masks (B, H, N): valid points whose reprojection src -> dst is within `threshold` pixels."""
    p = torch.einsum("bhij,bnj->bhni", mat, torch.cat([src, torch.ones_like(src[..., :1])], -1))
    w = p[..., 2]
    front = w.abs() > 1e-12
    proj = p[..., :2] / torch.where(front, w, torch.ones_like(w))[..., None]
    err = (proj - dst[:, None]).pow(2).sum(-1)
    return front & (err <= threshold**2) & valid[:, None]


def ransac_inliers(src: torch.Tensor, dst: torch.Tensor, valid: torch.Tensor, threshold: float,
                   samples: torch.Tensor, model: str = "homography") -> tuple[torch.Tensor, torch.Tensor]:
    """Best RANSAC inlier count (B,) and its inlier mask (B, N) for B point sets at once.

    `src`, `dst` (B, N, 2) pixel positions of matches, `valid` (B, N) which are real matches,
    `samples` from `ransac_samples` (its column count must be the model's minimal sample size).
    Pairs with fewer matches than a minimal sample score 0. Ties go to the first hypothesis.
    """
    if model not in MIN_SAMPLES:
        raise ValueError(f"unknown RANSAC model '{model}'; choose one of {sorted(MIN_SAMPLES)}")
    k = MIN_SAMPLES[model]
    if samples.shape[1] != k:
        raise ValueError(f"{model} RANSAC needs samples with {k} columns, got {samples.shape[1]}")
    b, n = valid.shape
    best_count = torch.zeros(b, dtype=torch.long)
    best_mask = torch.zeros(b, n, dtype=torch.bool)
    n_valid = valid.sum(1)
    if n == 0 or not (n_valid >= k).any():
        return best_count, best_mask
    src, dst = src.to(torch.float64), dst.to(torch.float64)
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)  # valid matches first, in order
    pick = (samples[None] * n_valid[:, None, None]).floor().long().clamp(max=n - 1)  # (B, H, k)
    idx = torch.gather(order, 1, pick.flatten(1)).view_as(pick)
    chunk = max(1, _RANSAC_CHUNK // max(b * n, 1))
    for h0 in range(0, samples.shape[0], chunk):
        sel = idx[:, h0:h0 + chunk]
        s_pts = torch.gather(src, 1, sel.flatten(1)[..., None].expand(-1, -1, 2)).view(*sel.shape, 2)
        d_pts = torch.gather(dst, 1, sel.flatten(1)[..., None].expand(-1, -1, 2)).view(*sel.shape, 2)
        mat, ok = _fit_minimal(s_pts, d_pts, model)
        inl = _count_inliers(mat, src, dst, valid, threshold) & ok[..., None] & (n_valid >= k)[:, None, None]
        counts = inl.sum(-1)  # (B, h)
        c_best, h_best = counts.max(1)
        better = c_best > best_count
        best_count = torch.where(better, c_best, best_count)
        best_mask = torch.where(better[:, None], inl[torch.arange(b), h_best], best_mask)
    return best_count, best_mask


def zscore(s: torch.Tensor) -> torch.Tensor:
    """(s - mean) / std over the last axis (population std, as the original); 0 where std is 0."""
    s = s.to(torch.float64)
    std = s.std(-1, unbiased=False, keepdim=True)
    z = (s - s.mean(-1, keepdim=True)) / torch.where(std > 0, std, torch.ones_like(std))
    return torch.where(std > 0, z, torch.zeros_like(z))


def fuse(scale_scores: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """Multi-scale fusion: sum_s w_s * zscore(scores_s) over a query's candidates; (S, B) -> (B,)."""
    if len(weights) != scale_scores.shape[0]:
        raise ValueError(f"{len(weights)} patch weights for {scale_scores.shape[0]} patch sizes")
    w = torch.tensor(weights, dtype=torch.float64)[:, None]
    return (w * zscore(scale_scores)).sum(0)
