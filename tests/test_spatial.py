"""Patch matching and spatial scores against plain per-pair references on hand-made inputs."""

import numpy as np
import pytest
import torch

from vprkit.rerank import spatial


def _unit(rng, *shape):
    x = rng.standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _ref_mutual(q, d):
    """Brute force: i and j are mutual when each is the other's most similar (first on ties)."""
    fw = np.array([int(np.argmax([q[i] @ d[j] for j in range(len(d))])) for i in range(len(q))])
    bw = np.array([int(np.argmax([q[i] @ d[j] for i in range(len(q))])) for j in range(len(d))])
    return fw, np.array([bw[fw[i]] == i for i in range(len(q))])


def test_mutual_nn_matches_brute_force():
    rng = np.random.default_rng(0)
    q, db = _unit(rng, 30, 8), _unit(rng, 3, 25, 8)
    db[1, 4] = q[7]  # an exact pair must be mutual
    fw, mutual = spatial.mutual_nn(torch.from_numpy(q), torch.from_numpy(db))
    for b in range(3):
        rfw, rmut = _ref_mutual(q, db[b])
        assert (fw[b].numpy() == rfw).all() and (mutual[b].numpy() == rmut).all()
    assert mutual[1, 7] and fw[1, 7] == 4


def test_mutual_nn_empty_candidate():
    fw, mutual = spatial.mutual_nn(torch.ones(5, 4), torch.zeros(2, 0, 4))
    assert fw.shape == (2, 5) and not mutual.any()


def _ref_rapid(q_grid, d_grid, fw, mutual, nq):
    """The original's compare_two_spatial, per pair, in numpy (positive: higher is better)."""
    m = np.flatnonzero(mutual)
    if not len(m):
        return 0.0
    dist = (d_grid[fw[m]] - q_grid[m]).T
    mean = dist.mean(1)
    sx, sy = np.abs(dist[0] - mean[0]), np.abs(dist[1] - mean[1])
    xmax, ymax = max(q_grid[:, 0].max(), d_grid[:, 0].max()), max(q_grid[:, 1].max(), d_grid[:, 1].max())
    return float((((xmax - sx) ** 2 + (ymax - sy) ** 2).sum()) / nq)


def test_rapid_spatial_matches_reference():
    rng = np.random.default_rng(1)
    gy, gx = np.meshgrid(np.arange(4), np.arange(6), indexing="ij")
    grid = np.stack([gx.ravel(), gy.ravel()], 1)
    fw = rng.integers(0, len(grid), (4, len(grid)))
    mutual = rng.random((4, len(grid))) < 0.4
    mutual[3] = False  # no matches -> 0
    got = spatial.rapid_spatial_scores(torch.from_numpy(grid), torch.from_numpy(grid), torch.from_numpy(fw),
                                       torch.from_numpy(mutual)).numpy()
    ref = [_ref_rapid(grid, grid, fw[b], mutual[b], len(grid)) for b in range(4)]
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    assert got[3] == 0.0
    # a pure translation is perfectly consistent: every match scores the maximum xmax^2 + ymax^2
    shift = np.arange(len(grid))
    full = spatial.rapid_spatial_scores(torch.from_numpy(grid), torch.from_numpy(grid + 1),
                                        torch.from_numpy(shift)[None], torch.ones(1, len(grid), dtype=torch.bool))
    assert full.item() == pytest.approx(6**2 + 4**2)


def _ref_ransac(src, dst, valid, thr, samples, model):
    """Per-hypothesis loop with numpy: exact minimal fit, reprojection count, first best wins."""
    k = samples.shape[1]
    pts = np.flatnonzero(valid)
    if len(pts) < k:
        return 0
    best = 0
    for u in samples:
        sel = pts[np.minimum(np.floor(u * len(pts)).astype(int), len(valid) - 1)]
        s, d = src[sel], dst[sel]
        scale = max(np.abs(s).max(), np.abs(d).max(), 1.0)
        degenerate = False
        for p in (s, d):
            for i, j, m in [(0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3)][: 1 if k == 3 else 4]:
                a, b = p[j] - p[i], p[m] - p[i]
                degenerate |= abs(a[0] * b[1] - a[1] * b[0]) <= 1e-6 * scale**2
        if degenerate:
            continue
        rows, rhs = [], []
        for (x, y), (u_, v_) in zip(s, d):
            if model == "homography":
                rows += [[x, y, 1, 0, 0, 0, -x * u_, -y * u_], [0, 0, 0, x, y, 1, -x * v_, -y * v_]]
            else:
                rows += [[x, y, 1, 0, 0, 0], [0, 0, 0, x, y, 1]]
            rhs += [u_, v_]
        h = np.linalg.solve(np.array(rows), np.array(rhs))
        mat = np.append(h, 1).reshape(3, 3) if model == "homography" else np.vstack([h.reshape(2, 3), [0, 0, 1]])
        count = 0
        for i in pts:
            p = mat @ np.array([src[i, 0], src[i, 1], 1.0])
            if abs(p[2]) > 1e-12 and ((p[:2] / p[2] - dst[i]) ** 2).sum() <= thr**2:
                count += 1
        best = max(best, count)
    return best


@pytest.mark.parametrize("model", ["homography", "affine"])
def test_ransac_matches_per_hypothesis_reference(model):
    rng = np.random.default_rng(2)
    b, n = 4, 40
    src = rng.uniform(0, 300, (b, n, 2))
    h_true = np.array([[1.1, 0.05, 12.0], [-0.03, 0.95, -7.0], [1e-4, 2e-4, 1.0]])
    proj = np.einsum("ij,bnj->bni", h_true, np.concatenate([src, np.ones((b, n, 1))], -1))
    dst = proj[..., :2] / proj[..., 2:] + rng.normal(0, 1.0, (b, n, 2))
    dst[:, ::3] = rng.uniform(0, 300, (b, len(range(0, n, 3)), 2))  # a third are outliers
    valid = rng.random((b, n)) < 0.8
    valid[3, 2:] = False  # too few matches for a minimal sample
    k = spatial.MIN_SAMPLES[model]
    samples = spatial.ransac_samples(60, k, seed=3)
    counts, _ = spatial.ransac_inliers(torch.from_numpy(src), torch.from_numpy(dst), torch.from_numpy(valid), 6.0,
                                       samples, model)
    ref = [_ref_ransac(src[i], dst[i], valid[i], 6.0, samples.numpy(), model) for i in range(b)]
    assert counts.tolist() == ref
    assert counts[3] == 0


def test_ransac_recovers_known_homography_inliers():
    rng = np.random.default_rng(4)
    n = 60
    src = rng.uniform(0, 640, (n, 2))
    h_true = np.array([[0.9, 0.1, 30.0], [-0.05, 1.05, 10.0], [2e-4, -1e-4, 1.0]])
    p = np.c_[src, np.ones(n)] @ h_true.T
    dst = p[:, :2] / p[:, 2:]
    outliers = np.arange(0, n, 4)
    dst[outliers] += rng.uniform(60, 200, (len(outliers), 2)) * rng.choice([-1, 1], (len(outliers), 2))
    counts, mask = spatial.ransac_inliers(torch.from_numpy(src)[None], torch.from_numpy(dst)[None],
                                          torch.ones(1, n, dtype=torch.bool), 2.0, spatial.ransac_samples(200, 4))
    truth = np.ones(n, bool)
    truth[outliers] = False
    assert counts.item() == truth.sum() and (mask[0].numpy() == truth).all()


def test_ransac_degenerate_inputs_score_zero():
    t = np.linspace(0, 100, 20)
    line = torch.from_numpy(np.stack([t, 2 * t + 3], 1))[None]  # all points collinear
    ones = torch.ones(1, 20, dtype=torch.bool)
    for model in ("homography", "affine"):
        samples = spatial.ransac_samples(50, spatial.MIN_SAMPLES[model])
        counts, mask = spatial.ransac_inliers(line, line, ones, 2.0, samples, model)
        assert counts.item() == 0 and not mask.any()
    none = torch.zeros(1, 20, dtype=torch.bool)  # zero mutual matches
    assert spatial.ransac_inliers(line, line, none, 2.0, spatial.ransac_samples(50, 4))[0].item() == 0
    empty = torch.zeros(2, 0, 2, dtype=torch.float64)
    assert spatial.ransac_inliers(empty, empty, torch.zeros(2, 0, dtype=torch.bool), 2.0,
                                  spatial.ransac_samples(5, 4))[0].tolist() == [0, 0]


def test_fusion_weights_applied_as_specified():
    s = torch.tensor([[1.0, 2.0, 3.0, 6.0], [4.0, 4.0, 4.0, 4.0], [0.0, 1.0, 0.0, 1.0]])
    w = [0.45, 0.15, 0.4]
    got = spatial.fuse(s, w).numpy()
    z0 = (s[0].double().numpy() - 3.0) / np.sqrt(((s[0].double().numpy() - 3.0) ** 2).mean())
    z2 = np.array([-1.0, 1.0, -1.0, 1.0])  # mean 0.5, population std 0.5
    np.testing.assert_allclose(got, 0.45 * z0 + 0.15 * 0.0 + 0.4 * z2, rtol=1e-12)
    assert np.isfinite(got).all()  # constant scale (std 0) contributes 0, not NaN
    with pytest.raises(ValueError, match="3 patch weights for 2"):
        spatial.fuse(s[:2], w)
