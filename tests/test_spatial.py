"""Patch matching and spatial scores against plain per-pair references on hand-made inputs."""

import cv2
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


def _homography_matches(rng, n: int, ratio: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(src, dst, true inlier mask): `ratio` of n matches follow a homography, the rest land >= 60 px off it."""
    src = rng.uniform(0, 640, (n, 2))
    h_true = np.array([[0.92, 0.06, 25.0], [-0.04, 1.03, -12.0], [1.5e-4, -1e-4, 1.0]])
    p = np.c_[src, np.ones(n)] @ h_true.T
    dst = p[:, :2] / p[:, 2:] + rng.normal(0, 1.0, (n, 2))
    truth = np.zeros(n, bool)
    truth[rng.permutation(n)[: round(ratio * n)]] = True
    off = rng.uniform(60, 250, (n, 2)) * rng.choice([-1, 1], (n, 2))
    dst[~truth] += off[~truth]
    return src.astype(np.float32), dst.astype(np.float32), truth


@pytest.mark.parametrize("ratio", [0.05, 0.1, 0.15, 0.25, 0.5])
def test_ransac_is_opencv_findhomography_at_inlier_ratios(ratio):
    """The original's call: findHomography(RANSAC, 24 px); OpenCV seeds its own RNG, so counts are exact."""
    rng = np.random.default_rng(int(ratio * 100))
    src, dst, truth = _homography_matches(rng, 300, ratio)
    mask = spatial.ransac_inliers(src, dst, 24.0)
    _, ref = cv2.findHomography(src, dst, cv2.FM_RANSAC, ransacReprojThreshold=24.0)
    assert (mask == ref.ravel().astype(bool)).all()
    if ratio >= 0.15:  # enough all-inlier samples in 2000 adaptive iterations: the true model is found
        assert mask[truth].mean() >= 0.95 and mask.sum() <= truth.sum() + 0.02 * len(truth)


def test_ransac_degenerate_inputs_score_zero():
    t = np.linspace(0, 100, 20, dtype=np.float32)
    line = np.stack([t, 2 * t + 3], 1)  # all points collinear: OpenCV finds no homography
    assert spatial.ransac_inliers(line, line, 24.0).sum() in (0, 20)  # OpenCV's answer, never an error
    assert not spatial.ransac_inliers(line[:3], line[:3], 24.0).any()  # fewer than 4 matches
    assert spatial.ransac_inliers(np.zeros((0, 2)), np.zeros((0, 2)), 24.0).shape == (0,)


def test_mutual_pairs_in_candidate_patch_order():
    fw = torch.tensor([5, 2, 7, 0, 3])
    mutual = torch.tensor([True, True, False, True, True])
    q_idx, db_idx = spatial.mutual_pairs(fw, mutual)
    assert db_idx.tolist() == [0, 2, 3, 5] and q_idx.tolist() == [3, 1, 4, 0]


def test_fusion_weights_applied_as_specified():
    s = np.array([[1.0, 2.0, 3.0, 6.0], [4.0, 4.0, 4.0, 4.0], [0.0, 1.0, 0.0, 1.0]])
    w = [0.45, 0.15, 0.4]
    z0 = (s[0] - 3.0) / np.sqrt(((s[0] - 3.0) ** 2).mean())
    z2 = np.array([-1.0, 1.0, -1.0, 1.0])  # mean 0.5, population std 0.5
    np.testing.assert_allclose(spatial.fuse(s, w, skip_constant=True), 0.45 * z0 + 0.4 * z2, rtol=1e-12)
    assert np.isnan(spatial.fuse(s, w)).all()  # the original: a constant size's z-score is 0 / 0 for all
    np.testing.assert_allclose(spatial.fuse(s[[0, 2]], [0.45, 0.4]), 0.45 * z0 + 0.4 * z2, rtol=1e-12)
    with pytest.raises(ValueError, match="3 patch weights for 2"):
        spatial.fuse(s[:2], w)
