"""Patch-NetVLAD re-ranker end to end (tiny backbone), its outputs, checkpoints, match-two, bad input."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import TinyBackbone
from vprkit.cli import main
from vprkit.rerank import patchnetvlad as pnv

SMALL = ["resize=[32,24]", "num_clusters=4", "num_pcs=16", "fit_max_images=12", "fit_max_patches=400",
         "ransac_iters=50", "global_weight=0"]


@pytest.fixture
def retrieval(tiny_backbone, image_folder, tmp_path, monkeypatch):
    """Global retrieval of the folder against itself with a shuffled order (the true match is not first)."""
    monkeypatch.setattr(pnv, "get_backbone", lambda name, **kw: TinyBackbone())
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
@pytest.mark.parametrize("preset,extra", [("storage", []), ("performance", ["pq_bytes=4"])])
def test_rerank_puts_self_match_first_and_writes_original_outputs(retrieval, preset, extra):
    """Patch size 8 exceeds the 8x6 feature map here: that scale has no patches and must not break anything."""
    res, gt, names = retrieval
    out = res / f"out-{preset}-{len(extra)}"
    assert main(["rerank", str(res), "--method", "patchnetvlad", "--preset", preset, "--gt", str(gt), "-o", str(out),
                 "--set", *SMALL, *extra]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["metrics_global"]["R@1"] == 0.0 and result["metrics"]["R@1"] == 1.0
    kap = (out / "PatchNetVLAD_predictions.txt").read_text().splitlines()
    assert kap[:2] == ["# kapture format: 1.0", "# query_image, map_image, score"]
    assert [p.strip() for p in kap[2].split(",")][:2] == [names[0], names[0]] and len(kap) == 2 + 12 * 6
    glob = (out / "NetVLAD_predictions.txt").read_text().splitlines()
    assert [p.strip() for p in glob[5].split(",")][:2] == [names[0], names[0]]  # rank 4 in the global order
    rec = (out / "recalls.txt").read_text().splitlines()
    assert "Recall NetVLAD@1: 0.0000" in rec and "Recall PatchNetVLAD@1: 1.0000" in rec
    cached = sorted(p.name for p in (out / "cache").rglob("*.h5"))
    assert cached == ["map.h5", "query.h5"]


def test_broken_candidate_and_empty_patches_score_zero(tmp_path):
    conf = pnv.PatchNetVLAD.get_conf("performance", patch_sizes=[2, 9], strides=[1, 1], patch_weights=[0.5, 0.5])
    grids = [pnv.patches.patch_grid(6, 8, s, 1, 4) for s in (2, 9)]  # size 9 > map: no patches at that size
    m = pnv.Matcher(conf, grids=grids, feat_stride=4)
    rng = np.random.default_rng(0)
    q = rng.standard_normal((35, 16)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    raw = m.scale_scores([q, np.zeros((0, 16))], [np.stack([q, q[rng.permutation(35)]]), np.zeros((2, 0, 16))])
    assert raw[0, 0] == 1.0 and raw[0, 1] < 1.0 and (raw[1] == 0).all()
    fused = m.fuse(torch.zeros(2, 3), np.array([0.5, np.nan, 0.2]))  # padded candidate: NaN global score
    assert np.isfinite(fused).all() and fused.argmin() == 1 and fused[0] > fused[2]
    raw = torch.tensor([[0.1, 0.4, 0.2], [3.0, 1.0, 2.0]])
    glob = np.array([0.9, 0.8, 0.7])
    zg = (glob - 0.8) / np.sqrt(2 / 3 * 0.01)
    np.testing.assert_allclose(m.fuse(raw, glob), pnv.spatial.fuse(raw, [0.5, 0.5]).numpy() + 1.0 * zg, rtol=1e-6)


def test_bfloat16_matching_keeps_clear_matches():
    """bfloat16 similarities find the same mutual matches when the true neighbour is clearly the best."""
    conf = pnv.PatchNetVLAD.get_conf("storage", match_dtype="bfloat16")
    grids = [pnv.patches.patch_grid(8, 10, 3, 1, 4)]
    m, exact = pnv.Matcher(conf, grids=grids, feat_stride=4), pnv.Matcher({**conf, "match_dtype": "float32"},
                                                                           grids=grids, feat_stride=4)
    rng = np.random.default_rng(1)
    q = rng.standard_normal((48, 64)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    db = np.stack([q + 0.05 * rng.standard_normal(q.shape), q[rng.permutation(48)], rng.standard_normal(q.shape)])
    db = (db / np.linalg.norm(db, axis=2, keepdims=True)).astype(np.float16)
    torch.testing.assert_close(m.scale_scores([q], [db]), exact.scale_scores([q], [db]))
    with pytest.raises(ValueError, match="match_dtype"):
        pnv.Matcher({**conf, "match_dtype": "int8"}, grids=grids)


def test_checkpoint_parts_load_weights_only(tmp_path):
    k, c, d = 4, 8, 5
    state = {"pool.centroids": torch.randn(k, c), "pool.conv.weight": torch.randn(k, c, 1, 1),
             "WPCA.0.weight": torch.randn(d, k * c, 1, 1), "WPCA.0.bias": torch.randn(d)}
    path = tmp_path / "ckpt.pth.tar"
    torch.save({"state_dict": state, "epoch": 3}, path)
    agg, pca = pnv._checkpoint_parts(str(path))
    assert torch.equal(agg.centroids.data, state["pool.centroids"]) and not agg.conv.bias.any()
    assert torch.equal(agg.conv.weight.data, state["pool.conv.weight"])
    assert pca["pca_weight"].shape == (d, k * c) and torch.equal(pca["pca_bias"], state["WPCA.0.bias"])
    torch.save({"state_dict": {"x": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="not a NetVLAD checkpoint"):
        pnv._checkpoint_parts(str(path))


def test_match_two_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pnv, "get_backbone", lambda name, **kw: TinyBackbone())
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
