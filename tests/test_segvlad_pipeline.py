"""SegVLAD end to end on small images with a tiny backbone: index, query, resume, re-rank, bad input."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from vprkit import rerank
from vprkit.cli import main
from vprkit.results import read_results
from vprkit.segment import get_segmenter
from vprkit.segment.masks import decode
from vprkit.segvlad import api, extract

SMALL = {"preprocessing": {"resize_max": 32}, "aggregator": {"name": "vlad", "num_clusters": 4}, "pca_dim": 16,
         "segmenter.n_segments": 6, "top_k_segments": 5}


def test_index_and_query_find_each_image_itself(tiny_backbone, image_folder, tmp_path):
    idx = api.index_map(image_folder, tmp_path / "idx", **SMALL)
    manifest = json.loads((idx / "manifest.json").read_text())
    assert manifest["method"] == "segvlad" and len(manifest["names"]) == 12
    owner = np.load(idx / "segment_image.npy")
    segs = np.load(idx / "segments.npy")
    # PCA keeps at most pca_dim orthonormal axes (checked on the float32 state: a rank of the float16 store depends
    # on the CPU's BLAS), and the store holds the map's segments projected on them
    with np.load(idx / "segvlad_state.npz") as state:
        proj = state["pca_proj"]
    assert segs.shape[1] == manifest["dim"] == len(proj) <= 16
    np.testing.assert_allclose(proj @ proj.T, np.eye(len(proj)), atol=1e-4)
    assert len(segs) == len(owner) == manifest["num_segments"] and segs.dtype == np.float16
    assert np.allclose(np.linalg.norm(segs.astype(np.float32), axis=1), 1, atol=1e-2)
    with h5py.File(idx / "map_segments.h5") as f:  # label maps stored compactly and consistent with descriptors
        name = manifest["names"][0]
        labels = decode(f[f"{name}/labels"][()])
        assert labels.shape == (24, 32) and labels.max() + 1 == len(f[f"{name}/segments"])
    gt = tmp_path / "pos.txt"
    gt.write_text("".join(f"{n} {n}\n" for n in manifest["names"]))
    res = read_results(api.localize(idx, image_folder, top_k=3, gt=str(gt)))
    assert res["metrics"]["R@1"] == 1.0  # identical images: every segment retrieves itself first


def test_extraction_resumes_and_refuses_another_model(tiny_backbone, image_folder, tmp_path, monkeypatch):
    conf = extract.CONFIG.resolve(**SMALL)
    feats, state = tmp_path / "f.h5", tmp_path / "s.npz"
    names = extract.main(conf, image_folder, feats, state)
    assert len(names) == 12 and state.exists()
    calls = []
    monkeypatch.setattr(extract.SegExtractor, "describe", lambda self, images: calls.append(1) or [])
    extract.main(conf, image_folder, feats, state)  # everything done: nothing recomputed
    assert calls == []
    other = extract.CONFIG.resolve(**{**SMALL, "order": 1})
    with pytest.raises(ValueError, match="another model"):
        extract.main(other, image_folder, feats, state)


def test_degenerate_segmentations_give_defined_descriptors(tiny_backbone, image_folder, tmp_path, monkeypatch):
    """One segment, hundreds of segments, and no segment at all (every pixel unassigned)."""
    conf = extract.CONFIG.resolve(**SMALL)
    ext = extract.SegExtractor(conf)
    ext.fit(image_folder, sorted(p.name for p in image_folder.glob("*.png")))
    _, images, _ = next(ext.ext.batches(image_folder, ["001.png"]))
    for labels_fn, expected in ((lambda im, tok: np.zeros(im.shape[:2], int), 1),
                                (lambda im, tok: np.arange(im.shape[0] * im.shape[1]).reshape(im.shape[:2]), 768),
                                (lambda im, tok: np.full(im.shape[:2], -1), 0)):
        monkeypatch.setattr(ext.segmenter, "segment", labels_fn)
        [(labels, desc)] = ext.describe(images)
        assert desc.shape == (expected, len(ext.pca.proj)) and np.isfinite(desc).all()
    many = get_segmenter("slic", n_segments=400)(np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8))
    assert many.max() + 1 > 100  # SLIC honours large counts on small images too


def test_query_without_segments_gets_no_ranking(tiny_backbone, image_folder, tmp_path, monkeypatch):
    idx = api.index_map(image_folder, tmp_path / "idx", **SMALL)
    monkeypatch.setattr("vprkit.segment.slic.SLIC.segment", lambda self, im, tok=None: np.full(im.shape[:2], -1))
    res = read_results(api.localize(idx, image_folder, top_k=3))
    assert len(res["queries_without_votes"]) == 12
    assert (tmp_path / "idx" / "results" / image_folder.name / "predictions.txt").read_text().count("\n") == 1


@pytest.mark.slow
def test_rerank_orders_candidates_by_votes(tiny_backbone, image_folder, tmp_path, monkeypatch):
    gt = tmp_path / "pos.txt"
    names = sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.png"))
    gt.write_text("".join(f"{n} {n}\n" for n in names))
    assert main(["index", str(image_folder), "-o", str(tmp_path / "g"), "--preset", "mobilenetv2-gem"]) == 0
    assert main(["query", str(tmp_path / "g"), str(image_folder), "--top-k", "5", "-o", str(tmp_path / "res")]) == 0
    # reverse the global order so the true match is last among the 5 candidates
    pred = tmp_path / "res" / "predictions.txt"
    rows = [line.split() for line in pred.read_text().splitlines() if not line.startswith("#")]
    by_q: dict = {}
    for q, _r, m, s in rows:
        by_q.setdefault(q, []).append((m, s))
    pred.write_text("# query rank map_image score\n" + "".join(
        f"{q} {i + 1} {m} {s}\n" for q, c in by_q.items() for i, (m, s) in enumerate(c[::-1])))
    sets = ["preprocessing={\"resize_max\": 32}", "aggregator={\"name\": \"vlad\", \"num_clusters\": 4}",
            "pca_dim=16", "segmenter.n_segments=6", "top_k_segments=5"]
    reads = []

    class File(h5py.File):  # counts how often segment files are opened for reading
        def __init__(self, name, mode="r", *args, **kwargs):
            reads.extend([Path(name).name] if mode == "r" and str(name).endswith("_segments.h5") else [])
            super().__init__(name, mode, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", File)
    assert main(["rerank", str(tmp_path / "res"), "--method", "segvlad", "--preset", "slic", "--gt", str(gt),
                 "--set", *sets]) == 0
    assert sorted(reads) == ["map_segments.h5", "query_segments.h5"]  # once per run, not once per query
    out = json.loads((tmp_path / "res" / "rerank-segvlad-slic" / "results.json").read_text())
    assert out["metrics_global"]["R@1"] == 0.0 and out["metrics"]["R@1"] == 1.0
    assert "segvlad" in rerank.REGISTRY


def test_cli_segvlad_index_and_query(tiny_backbone, image_folder, tmp_path, capsys):
    sets = ["preprocessing={\"resize_max\": 32}", "aggregator={\"name\": \"vlad\", \"num_clusters\": 4}",
            "pca_dim=16", "segmenter.n_segments=6"]
    assert main(["segvlad", "index", str(image_folder), "-o", str(tmp_path / "idx"), "--set", *sets]) == 0
    assert main(["segvlad", "query", str(tmp_path / "idx"), str(image_folder), "--top-k", "3"]) == 0
    assert "report.html" in capsys.readouterr().out
    assert main(["query", str(tmp_path / "idx"), str(image_folder)]) == 2  # a global query on a SegVLAD index


def _segment_votes(idx: Path, res: Path, k: int) -> np.ndarray:
    """(Q, M) image scores re-derived with numpy from the stored segments: each query segment's `k` most similar
    map segments vote for their image with their (non-negative) cosine similarity."""
    from vprkit.index.layout import QUERY_SEGMENTS
    from vprkit.results import load_retrieval

    store, owner = np.load(idx / "segments.npy").astype(np.float32), np.load(idx / "segment_image.npy")
    q_names = load_retrieval(res).q_names
    scores = np.zeros((len(q_names), owner.max() + 1))
    for row, segs in zip(scores, api.read_segments(res / QUERY_SEGMENTS, q_names)):
        sims = segs @ store.T
        top = np.argsort(-sims, axis=1)[:, :k]
        np.add.at(row, owner[top], np.maximum(np.take_along_axis(sims, top, 1), 0))
    return scores


def _assert_ranks_by(res: Path, ref: np.ndarray) -> None:
    """The results' ranked images are the best of `ref` (up to near-ties) with `ref`'s scores; images `ref` gives
    no vote are not ranked."""
    from conftest import assert_top_k

    from vprkit.results import load_retrieval

    ret = load_retrieval(res)
    ranked = ret.ids >= 0
    assert (ranked.sum(1) == np.minimum(ret.ids.shape[1], (ref > 1e-6).sum(1))).all()
    for ids, scores, row in zip(ret.ids, ret.scores, ref):
        n = int((ids >= 0).sum())
        assert_top_k(ids[None, :n], row[None], atol=1e-3)
        np.testing.assert_allclose(scores[:n], row[ids[:n]], atol=1e-3)


def test_cli_segvlad_query_takes_preset_and_set(tiny_backbone, image_folder, tmp_path, capsys):
    """`segvlad query --set` changes the query's own settings (checked against a numpy re-derivation of the votes),
    `--set` wins over the shorthand flag, and a setting or preset that would change the index's descriptors is one
    line naming the index."""
    idx = tmp_path / "idx"
    sets = ["preprocessing={\"resize_max\": 32}", "aggregator={\"name\": \"vlad\", \"num_clusters\": 4}",
            "pca_dim=16", "segmenter.n_segments=6"]  # the index's top_k_segments: the preset's 50
    assert main(["segvlad", "index", str(image_folder), "-o", str(idx), "--set", *sets]) == 0
    query = ["segvlad", "query", str(idx), str(image_folder), "--top-k", "4"]
    assert main([*query, "-o", str(tmp_path / "k50")]) == 0
    assert main([*query, "-o", str(tmp_path / "k1"), "--preset", "segvote-slic", "--top-k-segments", "3", "--set",
                 "top_k_segments=1", "batch_size=5"]) == 0
    k50, k1 = read_results(tmp_path / "k50"), read_results(tmp_path / "k1")
    assert (k50["top_k_segments"], k1["top_k_segments"], k1["scoring"]) == (50, 1, "votes")
    ref50, ref1 = _segment_votes(idx, tmp_path / "k50", 50), _segment_votes(idx, tmp_path / "k1", 1)
    _assert_ranks_by(tmp_path / "k50", ref50)
    _assert_ranks_by(tmp_path / "k1", ref1)
    assert (ref1 > 1e-6).sum() < (ref50 > 1e-6).sum()  # one vote per query segment reaches fewer images
    capsys.readouterr()

    assert main([*query, "-o", str(tmp_path / "x"), "--set", "nope=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vprkit: error: unknown setting 'nope'") and "top_k_segments" in err[0]
    assert main([*query, "-o", str(tmp_path / "x"), "--set", "pca_dim=8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{idx}: ['pca_dim'] would change the index's descriptors (pca_dim)" in err[0]
    assert main([*query, "-o", str(tmp_path / "x"), "--preset", "segvote-dino"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{idx} was built with preset 'segvote-slic'" in err[0] and "segmenter" in err[0]
    assert main([*query, "-o", str(tmp_path / "x"), "--set", "scoring=best"]) == 2
    assert "scoring='best' is not one of ('votes', 'reference')" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
