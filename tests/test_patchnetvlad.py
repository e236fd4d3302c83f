"""Patch-NetVLAD re-ranker end to end (tiny backbone), its outputs, checkpoints, match-two, bad input."""

import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from vprkit.cli import main
from vprkit.features import patches
from vprkit.rerank import patchnetvlad as pnv
from vprkit.rerank import spatial
from vprkit.rerank.patchnetvlad import files as pnv_files
from vprkit.results import Retrieval

SMALL = ["resize=[32,24]", "num_clusters=4", "num_pcs=16", "fit_max_images=12", "fit_max_patches=400"]


@pytest.fixture
def retrieval(tiny_backbone, image_folder, tmp_path):
    """Global retrieval of the folder against itself with a shuffled order (the true match is not first)."""
    names = sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.png"))
    gt = tmp_path / "pos.txt"
    gt.write_text("".join(f"{n} {n}\n" for n in names))
    assert main(["index", str(image_folder), "-o", str(tmp_path / "idx"), "--preset", "mobilenetv2-gem"]) == 0
    assert main(["query", str(tmp_path / "idx"), str(image_folder), "-o", str(tmp_path / "res"), "--top-k", "6"]) == 0
    pred = tmp_path / "res" / "predictions.txt"
    lines = pred.read_text().splitlines()
    body = [ln.split() for ln in lines[1:]]
    out = [lines[0]]
    for q in names:  # move each query's self-match from rank 1 to rank 4, so only re-ranking can fix R@1
        rows = [r for r in body if r[0] == q]
        assert rows[0][2] == q
        names_moved = [r[2] for r in rows]
        names_moved.insert(3, names_moved.pop(0))  # scores stay in place: the global score ranks it 4th too
        out += [" ".join([q, str(rank + 1), n, r[3]]) for rank, (n, r) in enumerate(zip(names_moved, rows))]
    pred.write_text("\n".join(out) + "\n")
    return tmp_path / "res", gt, names


@pytest.mark.slow
@pytest.mark.parametrize("preset,extra", [("storage", []), ("performance+global", ["pq_bytes=4", "global_weight=0"])])
def test_rerank_puts_self_match_first_and_writes_original_outputs(retrieval, preset, extra):
    """Patch size 8 exceeds the 8x6 feature map here: that scale has no patches (all scores 0), which
    `skip_constant` (the `+global` presets) skips; the original's ranking would be NaN (constant-size test).
    The global weight is 0 because the fixture's global scores favour the wrong candidates."""
    res, gt, names = retrieval
    out = res / f"out-{preset}-{len(extra)}"
    assert main(["rerank", str(res), "--method", "patchnetvlad", "--preset", preset, "--gt", str(gt), "-o", str(out),
                 "--set", *SMALL, *extra]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["metrics_global"]["R@1"] == 0.0 and result["metrics"]["R@1"] == 1.0
    folder = str(json.loads((res / "results.json").read_text())["queries"])
    full = str(Path(folder).resolve() / names[0])
    kap = (out / "PatchNetVLAD_predictions.txt").read_text().splitlines()  # the original's format: full paths
    assert kap[:2] == ["# kapture format: 1.0", "# query_image, map_image"]
    assert kap[2] == f"{full}, {full}" and len(kap) == 2 + 12 * 6
    glob = (out / "NetVLAD_predictions.txt").read_text().splitlines()
    assert glob[5] == f"{full}, {full}"  # rank 4 in the global order
    scored = (out / "PatchNetVLAD_scored_pairs.txt").read_text().splitlines()
    assert scored[1] == "# query_image, map_image, score" and scored[2].startswith(f"{names[0]}, {names[0]}, ")
    rec = (out / "recalls.txt").read_text().splitlines()
    assert [ln.split(":")[0] for ln in rec] == [f"Recall {m}@{n}" for m in ("NetVLAD", "PatchNetVLAD")
                                                for n in (1, 5, 10, 20, 50, 100)]
    assert "Recall NetVLAD@1: 0.0000" in rec and "Recall PatchNetVLAD@1: 1.0000" in rec
    cached = sorted(p.name for p in (out / "cache").rglob("*.h5"))
    assert cached == ["map.h5", "query.h5"]


def test_broken_candidate_and_empty_patches_score_zero(tmp_path):
    conf = pnv.PatchNetVLAD.CONFIG.resolve("performance", patch_sizes=[2, 9], strides=[1, 1], patch_weights=[0.5, 0.5])
    grids = [patches.patch_grid(6, 8, s, 1, 4) for s in (2, 9)]  # size 9 > map: no patches at that size
    m = pnv.Matcher(conf, grids=grids, feat_stride=4)
    rng = np.random.default_rng(0)
    q = rng.standard_normal((35, 16)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    raw = m.scale_scores([q, np.zeros((0, 16))], [np.stack([q, q[rng.permutation(35)]]), np.zeros((2, 0, 16))])
    assert raw[0, 0] == 1.0 and raw[0, 1] < 1.0 and (raw[1] == 0).all()
    fused = pnv.Matcher(pnv.PatchNetVLAD.CONFIG.resolve("performance+global", patch_sizes=[2, 9], strides=[1, 1],
                                                  patch_weights=[0.5, 0.5]), grids=grids, feat_stride=4
                        ).fuse(torch.zeros(2, 3), np.array([0.5, np.nan, 0.2]))  # padded candidate: NaN global
    assert np.isfinite(fused).all() and fused.argmin() == 1 and fused[0] > fused[2]
    assert np.isnan(m.fuse(torch.zeros(2, 3), np.array([0.5, np.nan, 0.2]))).all()  # the original: 0 / 0
    raw = torch.tensor([[0.1, 0.4, 0.2], [3.0, 1.0, 2.0]])
    glob = np.array([0.9, 0.8, 0.7])
    zg = (glob - 0.8) / np.sqrt(2 / 3 * 0.01)
    fused_global = pnv.Matcher({**conf, "global_weight": 1.0}, grids=grids, feat_stride=4).fuse(raw, glob)
    np.testing.assert_allclose(fused_global, spatial.fuse(raw.numpy(), [0.5, 0.5]) + 1.0 * zg, rtol=1e-6)


@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
def test_reduced_precision_matching_equals_float32(precision):
    """Near-tied neighbours (gaps of 1e-4, far below bfloat16's and int8's error) are recomputed in float32."""
    rng = np.random.default_rng(1)
    q = rng.standard_normal((120, 64))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    db = np.stack([q + 0.05 * rng.standard_normal(q.shape), q[rng.permutation(120)], rng.standard_normal(q.shape)])
    db[0, 1::2] = db[0, 0::2] + 1e-4 * rng.standard_normal((60, 64))  # pairs of near-identical candidate patches
    db /= np.linalg.norm(db, axis=2, keepdims=True)
    qt, dt = torch.from_numpy(q).float(), torch.from_numpy(db).float()
    fw32, bw32, _ = spatial.nearest(qt, dt)
    fw, bw, redone = spatial.nearest(qt, dt, precision)
    assert torch.equal(fw, fw32) and torch.equal(bw, bw32) and 0 < redone < 1
    sim = torch.matmul(dt, qt.T)
    assert torch.equal(fw32, sim.argmax(1)) and torch.equal(bw32, sim.argmax(2))
    conf = pnv.PatchNetVLAD.CONFIG.resolve("storage", match_dtype=precision)
    grids = [patches.patch_grid(10, 12, 1, 1, 4)]
    m, exact = pnv.Matcher(conf, grids=grids, feat_stride=4), pnv.Matcher({**conf, "match_dtype": "float32"},
                                                                           grids=grids, feat_stride=4)
    torch.testing.assert_close(m.scale_scores([q], [db.astype(np.float16)]),
                               exact.scale_scores([q], [db.astype(np.float16)]), rtol=0, atol=0)
    with pytest.raises(ValueError, match="match_dtype"):
        pnv.Matcher({**conf, "match_dtype": "int4"}, grids=grids)


def test_checkpoint_parts_load_weights_only(tmp_path):
    k, c, d = 4, 8, 5
    state = {"pool.centroids": torch.randn(k, c), "pool.conv.weight": torch.randn(k, c, 1, 1),
             "WPCA.0.weight": torch.randn(d, k * c, 1, 1), "WPCA.0.bias": torch.randn(d)}
    path = tmp_path / "ckpt.pth.tar"
    torch.save({"state_dict": state, "epoch": 3}, path)
    agg, pca = pnv_files.checkpoint_parts(str(path))
    assert torch.equal(agg.centroids.data, state["pool.centroids"]) and not agg.conv.bias.any()
    assert torch.equal(agg.conv.weight.data, state["pool.conv.weight"])
    assert pca["pca_weight"].shape == (d, k * c) and torch.equal(pca["pca_bias"], state["WPCA.0.bias"])
    with pytest.raises(ValueError, match="PCA has 5 dims but num_pcs is 512"):  # the original asserts this
        pnv.build_model(pnv.PatchNetVLAD.CONFIG.resolve("speed", checkpoint=str(path)), None, None)
    torch.save({"state_dict": {"x": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="not a NetVLAD checkpoint"):
        pnv_files.checkpoint_parts(str(path))


def test_match_two_cli(tmp_path, tiny_backbone, capsys):
    rng = np.random.default_rng(0)
    arr = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    Image.fromarray(np.roll(arr, 4, axis=1)).save(tmp_path / "b.png")  # shifted by one feature cell
    out = tmp_path / "m.png"
    assert main(["match-two", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(out), "--set",
                 "resize=[64,48]", "num_clusters=4"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["inliers"]["5"] > 10 and 0 < res["score"] <= 1
    assert res["score"] == pytest.approx(sum(w * res["scale_scores"][s] for w, s in zip([0.45, 0.15, 0.4],
                                                                                      ["2", "5", "8"])))
    assert Image.open(out).size == (128, 48)


def test_reference_presets_rank_by_patches_only():
    """`performance`, `speed`, `storage` (and -pq) are the original's patch-only ranking; `+global` fuse."""
    confs = pnv.PatchNetVLAD.confs
    for name in ("performance", "speed", "storage", "performance-pq", "speed-pq", "storage-pq"):
        ref, fused = pnv.PatchNetVLAD.CONFIG.resolve(name), pnv.PatchNetVLAD.CONFIG.resolve(f"{name}+global")
        assert ref["global_weight"] == 0 and not ref["skip_constant"]
        assert fused["global_weight"] == 1 and fused["skip_constant"]
        assert {k: v for k, v in fused.items() if k not in ("preset", "global_weight", "skip_constant")} == \
            {k: v for k, v in ref.items() if k not in ("preset", "global_weight", "skip_constant")}
    assert len(confs) == 12
    perf = pnv.PatchNetVLAD.CONFIG.resolve("performance")  # the original's performance.ini
    assert (perf["patch_sizes"], perf["patch_weights"], perf["num_pcs"], perf["matcher"], perf["resize"]) == \
        ([2, 5, 8], [0.45, 0.15, 0.4], 4096, "ransac", [640, 480])


def _original_keypoints(h: int, w: int, size: int) -> np.ndarray:
    """The original's patch centres for VGG (rf 196, stride 16, padding 90), kept in an integer array, (N, 2)."""
    kp = [(int(((16 * j - 90) + (16 * (j + size - 1) - 90 + 195)) / 2),
           int(((16 * i - 90) + (16 * (i + size - 1) - 90 + 195)) / 2))
          for i in range(h - size + 1) for j in range(w - size + 1)]
    return np.array(kp, dtype=int)


def _original_ransac_score(q: np.ndarray, d: np.ndarray, kp: np.ndarray) -> float:
    """The original's per-pair RANSAC score (positive): neighbours by sqrt(2 - 2 q.d), mutual matches
    enumerated over the candidate's patches, findHomography(candidate -> query, RANSAC, 16 * 1.5 px)."""
    dist = torch.sqrt(2 - 2 * torch.from_numpy(q) @ torch.from_numpy(d).T + 1e-9)  # (Nq, Nd)
    fw, bw = dist.argmin(0).numpy(), dist.argmin(1).numpy()
    mutuals = np.flatnonzero(bw[fw] == np.arange(len(fw)))
    if len(mutuals) <= 3:
        return 0.0
    import cv2

    _, mask = cv2.findHomography(kp[mutuals], kp[fw[mutuals]], cv2.FM_RANSAC, ransacReprojThreshold=16 * 1.5)
    return int(mask.sum()) / len(q)


def _ransac_case(h: int, w: int, size: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(query (N, dim), 4 candidates (4, N, dim)), unit rows: candidates whose patches are the query's shifted
    by a few cells (true matches, 8 / 15 / 40 / 0 %) among random patches."""
    grid, _ = patches.patch_grid(h, w, size, 1, 16)
    rng = np.random.default_rng(3)
    q = rng.standard_normal((len(grid), dim))
    db = []
    for ratio, shift in ((0.08, (1, 0)), (0.15, (2, 1)), (0.4, (0, 2)), (0.0, (0, 0))):
        d = rng.standard_normal(q.shape)
        for k in np.flatnonzero(rng.random(len(grid)) < ratio):
            x, y = grid[k] + shift
            target = np.flatnonzero((grid[:, 0] == x) & (grid[:, 1] == y))
            if len(target):
                d[target[0]] = q[k] + 0.1 * rng.standard_normal(dim)
        db.append(d)
    db = np.stack(db)
    return q / np.linalg.norm(q, axis=-1, keepdims=True), db / np.linalg.norm(db, axis=-1, keepdims=True)


def test_ransac_scores_equal_the_original_per_pair_procedure():
    h, w, size = 12, 16, 3
    kp = _original_keypoints(h, w, size)
    conf = pnv.PatchNetVLAD.CONFIG.resolve("performance", patch_sizes=[size], strides=[1], patch_weights=[1.0],
                                     ransac_threads=1)
    m = pnv.Matcher(conf, grids=[patches.patch_grid(h, w, size, 1, 16)], feat_stride=16)
    assert (m.centres[0] == kp).all()
    q, db = _ransac_case(h, w, size, 32)
    got = m.scale_scores([q], [db])[0].numpy()
    ref = [_original_ransac_score(q, d, kp) for d in db]
    np.testing.assert_array_equal(got, ref)
    assert got[2] > got[1] > got[3] and got[1] > got[0]
    threaded = pnv.Matcher({**conf, "ransac_threads": 3}, grids=[patches.patch_grid(h, w, size, 1, 16)])
    np.testing.assert_array_equal(threaded.scale_scores([q], [db])[0].numpy(), ref)


@pytest.mark.parametrize("threads,batch,cache_mb", [(1, 4, 0), (3, 2, 0), (0, 1, 0.001), (2, 100, 64)])
def test_pooled_ransac_across_batches_equals_the_per_pair_procedure(tmp_path, threads, batch, cache_mb):
    """A query's candidates read from HDF5 in batches of `batch` (100: one matmul for all), every RANSAC queued
    in one pool of `threads` while the next batches are matched, map patches kept between queries in a cache of
    `cache_mb` (0.001: smaller than one candidate, so it evicts all the time): the original's per-pair scores."""
    h, w, size = 12, 16, 3
    q, db = _ransac_case(h, w, size, 32)
    q, db = q.astype(np.float32), db.astype(np.float32)
    names = [f"c{i}" for i in range(len(db))]
    patches.h5io.write_batch(tmp_path / "map.h5", {n: {f"p{size}": d} for n, d in zip(names, db)})
    conf = pnv.PatchNetVLAD.CONFIG.resolve("performance", patch_sizes=[size], strides=[1], patch_weights=[1.0],
                                     ransac_threads=threads, match_batch=batch, map_cache_mb=cache_mb)
    m = pnv.Matcher(conf, grids=[patches.patch_grid(h, w, size, 1, 16)], feat_stride=16)
    ref = [_original_ransac_score(q, d, _original_keypoints(h, w, size)) for d in db]
    with h5py.File(tmp_path / "map.h5", "r") as f:
        for cand in ([names[2], "missing", *names], names[::-1]):  # the second query: candidates from the cache
            raw = m.raw_scores([q[None]], f, cand)
            np.testing.assert_array_equal(raw[0].numpy(), [ref[names.index(c)] if c in names else 0.0 for c in cand])
    assert (len(m.cache) == 0) == (cache_mb == 0) and len(m.cache) <= len(names)


def test_cascade_head_keeps_each_candidates_global_score():
    ret = Retrieval(Path("i"), Path("q"), Path("m"), ["q0", "q1"], [f"m{i}" for i in range(8)],
                        np.array([[5, 3, 7, -1], [1, 2, 0, 4]]), np.array([[0.9, 0.8, 0.7, np.nan], [4, 3, 2, 1.0]]),
                        {}, None, "fp")
    head = pnv.cascade_head(ret, np.array([[7, 5, 3, -1], [4, 0, 1, 2]]), 2)
    assert head.ids.tolist() == [[7, 5], [4, 0]] and head.scores.tolist() == [[0.7, 0.9], [1.0, 2.0]]
    assert head.fingerprint == "fp" and head.q_names == ret.q_names  # same map: the same feature cache


def test_constant_patch_size_orders_as_numpys_argsort_of_nan():
    """All candidates equal at one size: the original's fused score is NaN everywhere and its order is
    np.argsort of that (whatever numpy does with NaNs); `+global` lets the size contribute 0 instead."""
    conf = pnv.PatchNetVLAD.CONFIG.resolve("speed")
    m = pnv.Matcher(conf, grids=[patches.patch_grid(6, 8, 5, 1, 16)])
    raw = torch.full((1, 30), 0.25, dtype=torch.float64)
    fused = m.fuse(raw, np.linspace(1, 0, 30))
    diffs = np.full(30, np.nan)  # the original: -(score - mean) / std with std 0
    assert np.isnan(fused).all() and (np.argsort(-fused) == np.argsort(diffs)).all()
    fused_global = pnv.Matcher({**conf, "global_weight": 1.0, "skip_constant": True},
                               grids=[patches.patch_grid(6, 8, 5, 1, 16)]).fuse(raw, np.linspace(1, 0, 30))
    assert (np.argsort(-fused_global, kind="stable") == np.arange(30)).all()


@pytest.mark.slow
def test_cascade_reranks_the_cheap_presets_top_k(retrieval, tmp_path):
    """`cascade_from=storage`: storage orders all 6 candidates, then `speed` only storage's first 3."""
    from vprkit.config import parse_overrides
    from vprkit.results import load_retrieval

    res, _, _ = retrieval
    ret = load_retrieval(res)
    small = parse_overrides(SMALL)
    shared = {k: v for k, v in small.items() if k in pnv.CASCADE_SHARED}  # storage keeps its own num_pcs
    cheap_ids, cheap_scores = pnv.PatchNetVLAD(pnv.PatchNetVLAD.CONFIG.resolve("storage", **shared)).rerank_all(
        ret, tmp_path / "w")
    ids, scores = pnv.PatchNetVLAD(pnv.PatchNetVLAD.CONFIG.resolve("speed", cascade_from="storage", cascade_top=3,
                                                               **small)).rerank(ret, tmp_path / "w")
    assert (ids[:, 3:] == cheap_ids[:, 3:]).all() and np.array_equal(scores[:, 3:], cheap_scores[:, 3:])
    assert all(sorted(a[:3]) == sorted(b[:3]) for a, b in zip(ids, cheap_ids))  # the head is re-ordered only
    # the head is `speed` run on its own on storage's top 3 (each with its global score), composed by hand
    glob = {(qi, j): s for qi, row in enumerate(ret.ids) for j, s in zip(row, ret.scores[qi])}
    head = dataclasses.replace(ret, ids=cheap_ids[:, :3], scores=np.array(
        [[glob[qi, j] for j in row] for qi, row in enumerate(cheap_ids[:, :3])], dtype=np.float32))
    alone_ids, alone_scores = pnv.PatchNetVLAD(pnv.PatchNetVLAD.CONFIG.resolve("speed", **small)).rerank_all(
        head, tmp_path / "w")
    assert np.array_equal(ids[:, :3], alone_ids) and np.array_equal(scores[:, :3], alone_scores)
    assert [ret.m_names[i] for i in ids[:, 0]] == ret.q_names  # the self-match first


def _verified_here(conf: dict, cache: Path, q: str, m: str) -> list[tuple]:
    """(query, map) pixel centres of the size-5 patch pairs `Matcher.verified` keeps, from the cached features,
    on a patch grid built here (8x6 feature cells: 32x24 images, stride-4 backbone)."""
    matcher = pnv.Matcher(conf, grids=[patches.patch_grid(6, 8, 5, 1, 4)], feat_stride=4)
    with h5py.File(cache / "query.h5") as fq, h5py.File(cache / "map.h5") as fm:
        fw, mutual = spatial.mutual_nn(torch.from_numpy(fq[f"{q}/p5"][()]), torch.from_numpy(fm[f"{m}/p5"][()])[None])
    qi, di = matcher.verified_pair(0, fw[0], mutual[0])
    centres = matcher.centres[0]
    return [(tuple(centres[i].tolist()), tuple(centres[j].tolist())) for i, j in zip(qi, di)]


@pytest.mark.slow
def test_report_match_figures_are_the_verified_correspondences_with_the_top1(retrieval):
    """`--match-figures 5`: the first 5 queries of the report get a figure of the re-ranked top-1 (the query
    itself here; the global top-1 was another image) whose correspondences are `Matcher.verified`'s for that
    pair, recomputed from the cached features; a direct call with another top-1 gives that pair's."""
    from report_helpers import read_report_data

    from vprkit.config import parse_overrides
    from vprkit.results import load_retrieval

    res, gt, names = retrieval
    out = res / "speed"
    assert main(["rerank", str(res), "--method", "patchnetvlad", "--preset", "speed", "--gt", str(gt), "-o", str(out),
                 "--match-figures", "5", "--set", *SMALL]) == 0
    data = read_report_data(out / "report.html")
    assert data["matches"] == {"drawn": 5, "limit": 5, "queries": 12}
    conf = pnv.PatchNetVLAD.CONFIG.resolve("speed", **parse_overrides(SMALL))
    [cache] = (out / "cache").glob("patches-*")
    with_fig = [row for row in data["queries"] if row[9]]
    assert [row[0] for row in with_fig] == names[:5]  # all right after re-ranking: query order
    for row in with_fig:
        top1 = data["maps"][row[3][0]][0]
        # a query against itself: all 4 x 2 size-5 patches of the 8x6 feature map match and fit a homography
        assert top1 == row[0] and row[9][1] == {"5": len(_verified_here(conf, cache, row[0], top1))} == {"5": 8}
        assert Image.open(out / "report_files" / "matches" / row[9][0]).size == (400, 150)  # 200 px per image
    ret = load_retrieval(res)
    other = ret.ids[:, 1:]  # each query's second global candidate as its top-1
    gone = ret.m_names[other[0, 0]]  # an image deleted after its features were cached: no figure with it
    (ret.map_dir / gone).unlink()
    figs = pnv.PatchNetVLAD(conf).match_figures(out / "figs", ret, other, np.arange(12), out / "cache")
    assert sorted(figs) == [qi for qi in range(12) if gone not in (ret.q_names[qi], ret.m_names[other[qi, 0]])]
    assert len(figs) < 12
    for qi, fig in figs.items():
        assert fig.lines == {"5": _verified_here(conf, cache, ret.q_names[qi], ret.m_names[other[qi, 0]])}
