"""Aggregators against plain numpy re-derivations on small arrays."""

import numpy as np
import pytest
import torch

from vprkit.aggregators import get_aggregator
from vprkit.models.pca import fit_pca
from vprkit.segvlad.describe import PCA


def _unit(x, axis=-1):
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


def test_gem_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.random((2, 4, 3, 5)).astype(np.float32)
    p = 3.0
    ref = _unit(np.mean(x ** p, axis=(2, 3)) ** (1 / p))
    out = get_aggregator("gem", p=p)(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_gem_p1_is_average_pooling():
    x = torch.rand(1, 3, 2, 2)
    out = get_aggregator("gem", p=1.0)(x).detach().numpy()
    np.testing.assert_allclose(out, _unit(x.mean((2, 3)).numpy()), rtol=1e-5)


def test_vlad_matches_numpy_hand_computation():
    rng = np.random.default_rng(1)
    b, c, h, w, k = 2, 6, 3, 4, 3
    local = rng.normal(size=(b, c, h, w)).astype(np.float32)
    centroids = _unit(rng.normal(size=(k, c)).astype(np.float32))
    vlad = get_aggregator("vlad", num_clusters=k)
    vlad.load_state({"centroids": centroids, "pca_mean": np.zeros(0), "pca_proj": np.zeros(0)})
    out = vlad(torch.from_numpy(local)).numpy()
    for i in range(b):
        x = _unit(local[i].reshape(c, -1).T)  # (N, C)
        assign = np.argmax(x @ centroids.T, axis=1)
        v = np.zeros((k, c), np.float32)
        for n, a in enumerate(assign):
            v[a] += x[n] - centroids[a]
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        v = np.where(norms > 0, v / np.maximum(norms, 1e-12), 0)
        np.testing.assert_allclose(out[i], _unit(v.ravel()), atol=1e-5)


def test_vlad_pca_whitening_decorrelates_map_descriptors():
    rng = np.random.default_rng(2)
    vlad = get_aggregator("vlad", num_clusters=2, pca_dim=4)
    raw = rng.normal(size=(50, 10)) @ rng.normal(size=(10, 10))
    vlad.fit_pca(raw.astype(np.float32))
    z = (raw - vlad.pca_mean.numpy()) @ vlad.pca_proj.numpy().T
    np.testing.assert_allclose(np.cov(z.T), np.eye(4), atol=1e-3)


def numpy_pca(x, dim, whiten, eps=1e-6):
    """float64 SVD re-derivation: (mean, principal axes with their largest entry positive [/ sigma])."""
    x = np.asarray(x, np.float64)
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    d = min(dim, len(x) - 1, x.shape[1])
    axes = vt[:d] * np.sign(vt[np.arange(d), np.abs(vt[:d]).argmax(1)])[:, None]
    return mean, axes / np.sqrt(s[:d] ** 2 / (len(x) - 1) + eps)[:, None] if whiten else axes


@pytest.mark.parametrize("n, d", [(60, 300), (400, 12)])  # N <= D: Gram matrix; N > D: scatter matrix
@pytest.mark.parametrize("whiten", [True, False])
def test_fit_pca_equals_numpy_svd(n, d, whiten):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((n, d)) * np.geomspace(3, 0.1, d) + 2.0).astype(np.float32)
    mean, proj = fit_pca(x, 8, whiten)
    ref_mean, ref = numpy_pca(x, 8, whiten)
    np.testing.assert_allclose(mean, ref_mean, atol=1e-6)
    np.testing.assert_allclose(proj, ref, atol=2e-4 * np.abs(ref).max())
    z = (x - mean) @ proj.T
    np.testing.assert_allclose(np.cov(z.T), np.eye(8) if whiten else np.diag(z.var(0, ddof=1)), atol=2e-3)
    assert fit_pca(x, 1000, whiten)[1].shape == (min(n - 1, d), d)  # at most N - 1 axes have variance


def test_vlad_and_segvlad_pca_are_the_shared_fit():
    x = (np.random.default_rng(1).standard_normal((30, 50)) * np.geomspace(2, 0.1, 50)).astype(np.float32)
    vlad = get_aggregator("vlad", num_clusters=2, pca_dim=6)
    vlad.fit_pca(x)
    ref_mean, ref = numpy_pca(x, 6, whiten=True)
    np.testing.assert_allclose(vlad.pca_proj.numpy(), ref, atol=2e-4 * np.abs(ref).max())
    np.testing.assert_allclose(vlad.pca_mean.numpy(), ref_mean, atol=1e-6)
    plain = PCA.fit(x, 6, whiten=False)  # SegVLAD's default: principal axes, not whitened
    np.testing.assert_allclose(plain.proj, numpy_pca(x, 6, whiten=False)[1], atol=1e-4)


def test_netvlad_matches_numpy_soft_assignment():
    rng = np.random.default_rng(3)
    b, c, h, w, k, alpha = 2, 5, 2, 3, 4, 10.0
    local = rng.normal(size=(b, c, h, w)).astype(np.float32)
    centroids = _unit(rng.normal(size=(k, c)).astype(np.float32))
    nv = get_aggregator("netvlad", num_clusters=k, dim=c, alpha=alpha)
    nv.init_from_centroids(centroids)
    out = nv(torch.from_numpy(local)).detach().numpy()
    for i in range(b):
        x = _unit(local[i].reshape(c, -1).T)
        d2 = ((x[:, None, :] - centroids[None]) ** 2).sum(-1)  # (N, K): soft-assign = softmax(-alpha d^2)
        a = np.exp(-alpha * d2 - (-alpha * d2).max(1, keepdims=True))
        a /= a.sum(1, keepdims=True)
        v = np.einsum("nk,nkc->kc", a, x[:, None, :] - centroids[None])
        v = _unit(v, axis=1)
        np.testing.assert_allclose(out[i], _unit(v.ravel()), atol=1e-5)


def test_netvlad_gradients_reach_input_and_parameters():
    nv = get_aggregator("netvlad", num_clusters=4, dim=8)
    nv.init_from_centroids(_unit(np.random.default_rng(0).normal(size=(4, 8))).astype(np.float32))
    x = torch.randn(2, 8, 3, 3, requires_grad=True)
    (nv(x) * torch.randn(2, 32)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert nv.conv.weight.grad.abs().sum() > 0 and nv.centroids.grad.abs().sum() > 0


def test_cls_requires_global_token():
    import pytest

    with pytest.raises(ValueError, match="global token"):
        get_aggregator("cls")(torch.zeros(1, 2, 1, 1))
