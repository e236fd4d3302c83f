"""Integral-map patch descriptors against direct per-window computation; PCA; resumable fp16 storage."""

import h5py
import numpy as np
import pytest
import torch

from vprkit.aggregators.netvlad import NetVLAD
from vprkit.aggregators.vlad import VLAD
from vprkit.features import patches


def _netvlad(c=6, k=4, seed=0):
    agg = NetVLAD(num_clusters=k, dim=c, alpha=5.0)
    cent = torch.nn.functional.normalize(torch.randn(k, c, generator=torch.Generator().manual_seed(seed)), dim=1)
    agg.init_from_centroids(cent.numpy())
    return agg.eval()


def test_window_sums_equal_direct_sums():
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64)
    ii = patches.integral(x)
    for size, stride in ((1, 1), (2, 1), (3, 2), (5, 3), (7, 1)):
        got = patches.window_sums(ii, size, stride)
        ref = torch.stack([torch.stack([x[..., y:y + size, xx:xx + size].sum((-1, -2))
                                        for xx in range(0, 9 - size + 1, stride)], -1)
                           for y in range(0, 7 - size + 1, stride)], -2)
        torch.testing.assert_close(got, ref)
    assert patches.window_sums(ii, 8, 1).shape[-2:] == (0, 0)  # window larger than the map: no patches


@pytest.mark.parametrize("kind", ["netvlad", "vlad"])
def test_patch_vlads_equal_aggregator_on_each_window(kind):
    """Each patch descriptor is exactly the aggregator applied to that window's crop (loop reference)."""
    torch.manual_seed(0)
    local = torch.relu(torch.randn(2, 6, 6, 8))
    if kind == "netvlad":
        agg = _netvlad()
        direct = agg
    else:
        agg = VLAD(num_clusters=4)
        agg.fit(local.permute(0, 2, 3, 1).reshape(-1, 6).numpy())
        direct = agg.raw
    x, a = patches.assignments(agg, local)
    glob, per_size = patches.patch_vlads(x, a, agg.centroids.detach(), [2, 3, 5], [1, 2, 1])
    with torch.no_grad():
        torch.testing.assert_close(glob, direct(local), atol=1e-5, rtol=1e-5)
        for (size, stride), got in zip(((2, 1), (3, 2), (5, 1)), per_size):
            ref = [direct(local[:, :, y:y + size, xx:xx + size])
                   for y in range(0, 6 - size + 1, stride) for xx in range(0, 8 - size + 1, stride)]
            torch.testing.assert_close(got, torch.stack(ref, 1), atol=1e-5, rtol=1e-5)


def test_patch_grid_matches_receptive_field_centres():
    """Original: centre = mean of first cell's box start and last cell's box end (VGG rf 196, pad 90, stride 16)."""
    grid, centres = patches.patch_grid(30, 40, 5, 1, 16)
    assert len(grid) == 26 * 36 and tuple(grid[37]) == (1, 1)
    j, i = 3, 2
    k = i * 36 + j
    ref_x = ((16 * j - 90) + (16 * (j + 4) - 90 + 195)) / 2
    ref_y = ((16 * i - 90) + (16 * (i + 4) - 90 + 195)) / 2
    assert tuple(centres[k]) == (int(ref_x), int(ref_y))  # the original keeps them in an integer array
    grid2, _ = patches.patch_grid(7, 9, 3, 2, 16)  # stride 2: grid counts windows, not cells
    assert grid2[:, 0].max() == 3 and grid2[:, 1].max() == 2


class _Tiny(torch.nn.Module):
    stride, dim = 4, 8

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 4, stride=4)
        torch.nn.init.normal_(self.conv.weight, generator=torch.Generator().manual_seed(0))

    def preprocess(self, img):
        return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)

    def forward(self, x):
        from vprkit.models.base import BackboneOutput

        return BackboneOutput(torch.relu(self.conv(x)))


def test_extract_is_fp16_resumable_and_projected(image_folder, tmp_path):
    conf = {"resize": [32, 24], "patch_sizes": [2, 3], "strides": [1, 1], "num_pcs": 12, "whiten": True,
            "fit_max_images": 12, "fit_max_patches": 500, "batch_size": 5, "seed": 0}
    model = patches.PatchModel(conf, _Tiny(), _netvlad(c=8))
    names = sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.png"))
    model.fit_pca(image_folder, names)
    out = tmp_path / "p.h5"
    (image_folder / "broken.png").write_bytes(b"not an image")
    ok = patches.extract(model, image_folder, names[:7] + ["broken.png"], out, "k1")
    assert ok == names[:7]
    with h5py.File(out) as f:
        feats = patches.read_patches(f, names[:2], [2, 3])
        assert feats[0].dtype == np.float16 and feats[0].shape == (2, 5 * 7, 12) and feats[1].shape == (2, 4 * 6, 12)
        np.testing.assert_allclose(np.linalg.norm(feats[0].astype(np.float32), axis=-1), 1.0, atol=2e-3)
        first = f[f"{names[0]}/p2"][()]
    calls = []
    orig = model.describe
    model.describe = lambda im: calls.append(len(im)) or orig(im)
    patches.extract(model, image_folder, names, out, "k1")  # resumes: only the 5 missing images are computed
    assert sum(calls) == 5
    with h5py.File(out) as f:
        assert len(patches.read_patches(f, names, [3])[0]) == 12 and (f[f"{names[0]}/p2"][()] == first).all()
        direct = model.describe(model.local_features(image_folder, names[:1])[1])["p2"][0]
        np.testing.assert_allclose(first.astype(np.float32), direct, atol=2e-3)
    whole = tmp_path / "whole.h5"  # an uninterrupted run writes the same file
    assert patches.extract(model, image_folder, names, whole, "k1") == names
    with h5py.File(out) as a, h5py.File(whole) as b:
        for n in names:
            assert sorted(a[n]) == sorted(b[n]) and all((a[n][k][()] == b[n][k][()]).all() for k in a[n])
    with pytest.raises(ValueError, match="features of another model"):
        patches.extract(model, image_folder, names, out, "k2")
    with h5py.File(out, "a") as f:  # a cache written before the attribute was renamed from patch_key
        del f.attrs["model_key"]
        f.attrs["patch_key"] = "k1"
    calls.clear()
    assert patches.extract(model, image_folder, names, out, "k1") == names and not calls


def test_patch_pca_is_the_shared_fit_as_weight_and_bias(image_folder, monkeypatch):
    from vprkit.models.pca import fit_pca

    seen = {}

    def spy(x, dim, whiten):
        seen["fit"] = x, fit_pca(x, dim, whiten)
        return seen["fit"][1]

    monkeypatch.setattr(patches, "fit_pca", spy)
    conf = {"resize": [32, 24], "patch_sizes": [2, 3], "strides": [1, 1], "num_pcs": 12, "whiten": True,
            "fit_max_images": 12, "fit_max_patches": 500, "batch_size": 5, "seed": 0}
    model = patches.PatchModel(conf, _Tiny(), _netvlad(c=8))
    model.fit_pca(image_folder, sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.png")))
    x, (mean, proj) = seen["fit"]
    assert proj.shape == (12, 32) and len(x) >= 400
    got = x @ model.pca_weight.numpy().T + model.pca_bias.numpy()
    np.testing.assert_allclose(got, (x - mean) @ proj.T, atol=1e-4)
    np.testing.assert_allclose(np.cov(got.T), np.eye(12), atol=2e-3)  # whitened (var / (var + eps) ~ 1)


def test_backbone_cache_reused_across_models(image_folder, tmp_path):
    conf = {"resize": [32, 24], "patch_sizes": [2], "strides": [1], "backbone_cache": str(tmp_path / "bb.h5")}
    names = ["001.png", "002.png"]
    first = patches.PatchModel(conf, _Tiny(), _netvlad(c=8)).local_features(image_folder, names)[1]
    other = patches.PatchModel({**conf, "patch_sizes": [3]}, _Tiny(), _netvlad(c=8))
    other.backbone.forward = lambda x: pytest.fail("backbone ran although its features were cached")
    ok, again, bad = other.local_features(image_folder, names)
    assert ok == names and not bad and torch.equal(first, again)


@pytest.mark.slow
def test_pq_codes_are_nearest_centroids_and_decode_close(image_folder, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 8)).astype(np.float32)
    book = torch.from_numpy(patches.train_pq(x, 2))
    assert book.shape == (2, 256, 4)
    codes = patches.pq_encode(torch.from_numpy(x[:20]), book)
    for i in range(20):
        for m in range(2):
            ref = np.argmin(((book[m].numpy() - x[i, 4 * m:4 * m + 4]) ** 2).sum(1))
            assert codes[i, m] == ref
    dec = patches.pq_decode(codes, book).numpy()
    ref = np.concatenate([book[0, codes[:, 0].long()], book[1, codes[:, 1].long()]], 1)
    np.testing.assert_allclose(dec, ref / np.linalg.norm(ref, axis=1, keepdims=True), rtol=1e-6)
    with pytest.raises(ValueError, match="must divide"):
        patches.train_pq(x, 3)

    conf = {"resize": [32, 24], "patch_sizes": [2], "strides": [1], "num_pcs": 12, "whiten": False, "pq_bytes": 6,
            "fit_max_images": 12, "fit_max_patches": 500, "batch_size": 6, "seed": 0}
    model = patches.PatchModel(conf, _Tiny(), _netvlad(c=8))
    names = sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.png"))
    model.fit_pca(image_folder, names)
    patches.extract(model, image_folder, names[:3], tmp_path / "pq.h5", "k", compress=True)
    patches.extract(model, image_folder, names[:3], tmp_path / "fp.h5", "k")
    with h5py.File(tmp_path / "pq.h5") as fq, h5py.File(tmp_path / "fp.h5") as ff:
        assert fq[f"{names[0]}/p2"].dtype == np.uint8 and fq[f"{names[0]}/p2"].shape == (35, 6)
        with pytest.raises(ValueError, match="no codebook"):
            patches.read_patches(fq, names[:3], [2])
        dec = patches.read_patches(fq, names[:3], [2], model.pq_centroids)[0]
        full = patches.read_patches(ff, names[:3], [2])[0].astype(np.float32)
    assert (dec * full).sum(-1).mean() > 0.9  # 12-d unit vectors in 6 bytes stay close
