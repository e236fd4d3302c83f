"""The segvlad-ref choices pinned to the original SegVLAD (Revisit Anything) on hand-made cases.

`data/segvlad_reference/segvlad_reference.npz` holds the original functions' outputs on these inputs
(made by `make_fixtures.py` there, see SOURCE.txt); the hand computations below are independent of it.
"""

import json
from itertools import combinations
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from vprkit.aggregators.vlad import VLAD
from vprkit.results import read_results
from vprkit.segment import get_segmenter
from vprkit.segment.masks import (
    decode_stack,
    encode_stack,
    labels_to_masks,
    mask_record,
    mask_stack,
    masks_to_labels,
    read_masks,
)
from vprkit.segvlad import api, extract
from vprkit.segvlad.describe import PCA, assign, patch_weights, residual_sums, supersegment_vlad
from vprkit.segvlad.graph import adjacency, centroids, delaunay_adjacency, delaunay_members
from vprkit.segvlad.index import knn_chunked, rank_hits, vote_weights

REF = np.load(Path(__file__).parent / "data" / "segvlad_reference" / "segvlad_reference.npz")


def _brute_force_delaunay(points: np.ndarray) -> set[tuple[int, int]]:
    """Edges of every triangle whose circumcircle holds no other point (no four points are cocircular)."""
    edges = set()
    for tri in combinations(range(len(points)), 3):
        a, b, c = points[list(tri)]
        m = np.array([[b[0] - a[0], b[1] - a[1]], [c[0] - a[0], c[1] - a[1]]])
        if abs(np.linalg.det(m)) < 1e-9:
            continue  # collinear: no triangle
        rhs = 0.5 * np.array([b @ b - a @ a, c @ c - a @ a])
        centre = np.linalg.solve(m, rhs)
        radius = np.linalg.norm(a - centre)
        others = [p for i, p in enumerate(points) if i not in tri]
        if all(np.linalg.norm(p - centre) > radius + 1e-9 for p in others):
            edges |= {(tri[0], tri[1]), (tri[0], tri[2]), (tri[1], tri[2])}
    return edges


def test_grid_of_masks_delaunay_neighbours_and_order_k_powers():
    grid = REF["grid_masks"]  # 3x3 grid, middle column shifted down a little (no cocircular centroids)
    pts = centroids(grid)
    assert np.allclose(pts[:3], [[1.5, 1.5], [5.5, 2.0], [9.5, 1.5]])  # (x, y) means of the pixels
    edges = _brute_force_delaunay(pts)
    # the 12 grid edges, one diagonal per cell, and 0-2 / none at 6-8 (the shifted middle column bends the hull)
    assert edges == {(0, 1), (1, 2), (3, 4), (4, 5), (6, 7), (7, 8), (0, 3), (3, 6), (1, 4), (4, 7), (2, 5),
                     (5, 8), (1, 3), (1, 5), (4, 6), (4, 8), (0, 2)}
    adj = delaunay_adjacency(pts)
    assert {(i, j) for i, j in zip(*np.nonzero(adj)) if i < j} == edges
    step = (adj | np.eye(9, dtype=bool)).astype(int)
    for order in (1, 2, 3):
        ours = delaunay_members(grid, order)
        assert (ours == (np.linalg.matrix_power(step, order) > 0)).all()  # self included, then powers
        assert (ours == REF[f"grid_adj_order{order}"]).all()  # the original's nbrMasksAGGFastSingle
    assert set(np.flatnonzero(delaunay_members(grid, 2)[0])) == {0, 1, 2, 3, 4, 5, 6}
    assert (delaunay_members(grid, 0) == np.eye(9, dtype=bool)).all()  # order 0: each segment alone


def test_three_masks_or_fewer_follow_the_original():
    grid = REF["grid_masks"]
    for n in (1, 2, 3):
        assert (delaunay_members(grid[:n], 3) == REF[f"few_adj_{n}"]).all()
    # three masks: every SuperSegment is masks 0 and 1, so mask 2 is not even in its own
    assert delaunay_members(grid[:3], 1).astype(int).tolist() == [[1, 1, 0]] * 3


def test_collinear_centroids_are_chained_along_their_line():
    masks = labels_to_masks(np.repeat(np.array([[0, 1, 2, 3]]).repeat(2, 1), 3, 0))  # four in a row
    adj = delaunay_adjacency(centroids(masks))
    assert {(i, j) for i, j in zip(*np.nonzero(adj)) if i < j} == {(0, 1), (1, 2), (2, 3)}


def test_overlapping_masks_are_all_kept_and_stored():
    masks = REF["overlap_masks"]  # mask 0 is wholly covered by masks 1 and 2
    assert len(mask_stack(list(masks) + [np.zeros((56, 70), bool)], (56, 70))) == 5  # empty ones dropped
    flat = masks_to_labels(list(masks), (56, 70))
    assert flat.max() + 1 == 4  # a single label map loses the covered mask (vprkit's `masks=labels`)
    code = encode_stack(masks)
    assert code.dtype == np.int32 and (decode_stack(code) == masks).all()
    assert code.size < masks.size / 20  # two numbers per row a mask crosses, not one per pixel
    assert (decode_stack(encode_stack(np.zeros((0, 3, 4), bool))).shape == (0, 3, 4))
    record = mask_record(masks)
    assert list(record) == ["masks"] and (read_masks({"masks": record["masks"]}) == masks).all()
    disjoint = labels_to_masks(flat)
    assert list(mask_record(disjoint)) == ["labels"] and (read_masks(mask_record(disjoint)) == disjoint).all()
    with pytest.raises(ValueError, match="mask 0"):
        decode_stack(np.array([1, 2, 2, 2, 1, 2]))
    # touching graph on overlapping masks: overlap counts as touching
    assert adjacency(masks)[0, 1] and adjacency(masks)[0, 2] and not adjacency(masks)[0, 4]


def test_multiscale_slic_stand_in_gives_overlapping_masks():
    rgb = np.random.default_rng(0).integers(0, 255, (42, 56, 3), np.uint8)
    masks = get_segmenter("slic_scales", scales=[4, 16]).masks(rgb)
    assert masks.sum(0).min() == 2  # every pixel lies in one coarse and one fine superpixel


def test_any_pixel_patch_counting():
    masks = REF["overlap_masks"]  # 56x70 pixels, 4x5 patches of 14x14
    any_pixel = patch_weights(masks, (4, 5), any_pixel=True)
    expected = [{0, 1, 2, 5, 6, 7}, {0, 1, 5, 6}, {1, 2, 6, 7}, set(range(10, 20)), {9, 13, 14, 18, 19}]
    assert [set(np.flatnonzero(row)) for row in any_pixel] == expected
    assert set(np.unique(any_pixel)) == {0.0, 1.0}  # a patch counts fully however little the mask covers
    fraction = patch_weights(masks, (4, 5))
    assert fraction[4, 9] == pytest.approx(1 / 196)  # one pixel of 14x14
    assert fraction[1, 1] == pytest.approx(0.5) and fraction[3, 10] == pytest.approx(12 * 4 / 196)


def test_cosine_assignment_to_non_unit_centroids_hand_case():
    token = np.array([[1.0, 0.0]])
    cents = np.array([[0.5, 0.0], [0.9, 0.9]])  # cosine 1 vs 0.71; dot product 0.5 vs 0.9
    assert assign(token, cents, cosine=True).tolist() == [0]
    assert assign(token, cents, cosine=False).tolist() == [1]
    sums = residual_sums(np.array([[2.0, 0.0]]), cents, np.ones((1, 1)), cosine=True)
    assert np.allclose(sums[0], [[0.5, 0.0], [0.0, 0.0]])  # residual to the centroid as given, not its unit form


@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_segment_vlad_equals_the_original(order):
    """Overlapping masks, any-pixel patches, Delaunay members, cosine to non-unit centroids: the original's
    seg_vlad_gpu_single on the same tokens and masks."""
    masks, tokens, cents = REF["overlap_masks"], REF["tokens"], REF["centers"]
    c, h, w = tokens.shape[1:]
    ours = supersegment_vlad(tokens[0].reshape(c, -1).T, cents, patch_weights(masks, (h, w), any_pixel=True),
                             delaunay_members(masks, order), cosine=True)
    assert np.allclose(ours, REF[f"segvlad_order{order}"], atol=1e-5)


def test_cluster_means_vocabulary():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    vlad = VLAD(num_clusters=4, unit_centroids=False)
    vlad.fit(x)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    cents = vlad.centroids.numpy()
    labels = assign(xn, cents, cosine=True)
    for k in range(4):
        assert np.allclose(cents[k], xn[labels == k].mean(0), atol=1e-5)  # plain means of unit vectors
    assert (np.linalg.norm(cents, axis=1) < 0.99).all()


def test_vote_table_min_max_normalisation_hand_computed():
    # query A: 2 segments, query B: 1 segment; top-2 map segments each, (cosine, map image)
    hits = [(np.array([[0.9, 0.5], [0.8, 0.1]]), np.array([[0, 1], [1, 2]])),
            (np.array([[0.7, -0.2]]), np.array([[2, 0]]))]
    # 2 cos over the run: 1.8 1.0 1.6 0.2 1.4 -0.4 -> m = -0.4, M = 1.8, weight (2 cos + 0.4) / 2.2
    w = vote_weights(hits, "reference")
    assert np.allclose(w[0], [[1.0, 1.4 / 2.2], [2.0 / 2.2, 0.6 / 2.2]]) and np.allclose(w[1], [[1.8 / 2.2, 0]])
    ids, scores = rank_hits(hits, 3, 3, "reference")
    assert ids.tolist() == [[1, 0, 2], [2, 0, -1]]  # image 0 of B: retrieved at weight 0, still ranked
    assert np.allclose(scores, [[3.4 / 2.2, 1.0, 0.6 / 2.2], [1.8 / 2.2, 0, 0]], atol=1e-6)
    # the serving score is the query's own: B alone scores as in the run; the reference score does not
    alone, _ = rank_hits(hits[1:], 3, 3, "reference")
    assert np.allclose(rank_hits(hits[1:], 3, 3, "votes")[1], rank_hits(hits, 3, 3, "votes")[1][1:])
    assert np.allclose(rank_hits(hits[1:], 3, 3, "reference")[1][0, 0], 1.0) and alone[0, 0] == 2
    assert rank_hits(hits, 3, 3, "votes")[0].tolist() == [[1, 0, 2], [2, -1, -1]]
    with pytest.raises(ValueError, match="scoring"):
        vote_weights(hits, "borda")


def test_vote_ranking_equals_the_original_get_matches():
    sims, seg = knn_chunked(REF["vote_q"], REF["vote_db"], 3)
    owner = REF["vote_owner"]
    hits = [(sims[:2], owner[seg[:2]]), (sims[2:], owner[seg[2:]])]
    ids, _ = rank_hits(hits, 3, 3, "reference")
    assert (ids == REF["vote_preds"]).all()


def test_whitening_pca_equals_numpy_rederivation():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(80, 10)) * np.array([6, 4, 3, 2, 1.5, 1, 0.5, 0.3, 0.2, 0.1])
    ours = PCA.fit(x, 4, whiten=True, eps=0.0)(x)
    xc = x - x.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    z = xc @ vt[:4].T / (s[:4] / np.sqrt(len(x) - 1))  # scikit-learn's PCA(whiten=True).transform
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    signs = np.sign((ours * z).sum(0))  # each axis is defined up to its sign
    assert np.allclose(ours * signs, z, atol=1e-4)
    white = PCA.fit(x, 4, whiten=True, eps=0.0)
    assert np.allclose(((x - white.mean) @ white.proj.T).var(0, ddof=1), 1, atol=1e-4)


def test_pt_vocabulary_loads_with_weights_only(tmp_path):
    cents = torch.randn(32, 8) * 3
    torch.save(cents, tmp_path / "c_centers.pt")
    assert np.allclose(extract.load_vocabulary(tmp_path / "c_centers.pt", 8), cents.numpy())
    with pytest.raises(ValueError, match="expected \\(K, 16\\)"):
        extract.load_vocabulary(tmp_path / "c_centers.pt", 16)
    torch.save({"c": cents}, tmp_path / "dict.pt")
    with pytest.raises(ValueError, match="dict.pt: holds a dict"):
        extract.load_vocabulary(tmp_path / "dict.pt", 8)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.pt: not a readable torch vocabulary"):
        extract.load_vocabulary(tmp_path / "junk.pt", 8)


def test_reference_preset_conf():
    ref = extract.CONFIG.resolve("segvlad-ref")
    assert (ref["masks"], ref["graph"], ref["token_weights"], ref["assignment"], ref["scoring"]) == \
        ("overlapping", "delaunay", "any_pixel", "cosine", "reference")
    assert (ref["pca_dim"], ref["pca_whiten"], ref["pca_eps"], ref["pca_max_segments"]) == (1024, True, 0.0, 50000)
    assert ref["aggregator"]["unit_centroids"] is False and ref["order"] == 3
    assert ref["segmenter"]["name"] == "slic_scales"  # the stand-in without a SAM checkpoint
    sam = extract.CONFIG.resolve("segvlad-ref", **{"segmenter.checkpoint": "sam_vit_h.pth"})
    assert sam["segmenter"] == {"name": "sam", "model_type": "vit_h", "checkpoint": "sam_vit_h.pth"}
    vprkit = extract.CONFIG.resolve("segvote-slic")
    assert (vprkit["masks"], vprkit["graph"], vprkit["scoring"]) == ("labels", "touching", "votes")
    with pytest.raises(ValueError, match="graph='knn'"):
        extract.CONFIG.resolve("segvlad-ref", graph="knn")


SMALL = {"preprocessing": {"resize_max": 32}, "aggregator": {"name": "vlad", "num_clusters": 4,
                                                              "unit_centroids": False},
         "pca_dim": 16, "segmenter.scales": [2, 6], "top_k_segments": 5}


def test_reference_preset_end_to_end(tiny_backbone, image_folder, tmp_path):
    idx = api.index_map(image_folder, tmp_path / "idx", preset="segvlad-ref", **SMALL)
    manifest = json.loads((idx / "manifest.json").read_text())
    assert manifest["conf"]["graph"] == "delaunay"
    with h5py.File(idx / "map_segments.h5") as f:
        group = f[manifest["names"][0]]
        masks = read_masks(group)
        assert "masks" in group and masks.sum(0).max() >= 2  # overlapping masks stored as they are
        assert len(masks) == len(group["segments"])
    gt = tmp_path / "pos.txt"
    gt.write_text("".join(f"{n} {n}\n" for n in manifest["names"]))
    res = read_results(api.localize(idx, image_folder, top_k=3, gt=str(gt)))
    assert res["scoring"] == "reference" and res["metrics"]["R@1"] == 1.0
    res = read_results(api.localize(idx, image_folder, tmp_path / "votes", top_k=3, gt=str(gt), scoring="votes"))
    assert res["scoring"] == "votes" and res["metrics"]["R@1"] == 1.0


def test_randomized_pca_beyond_the_exact_limit_agrees_with_the_exact_one():
    from vprkit.models.pca import fit_pca

    rng = np.random.default_rng(4)
    x = rng.normal(size=(400, 60)) * (0.7 ** np.arange(60))  # well separated variances
    mean, exact = fit_pca(x, 6, whiten=True, eps=0.0)
    mean2, approx = fit_pca(x, 6, whiten=True, eps=0.0, exact_max=50)
    assert np.allclose(mean, mean2) and approx.shape == exact.shape
    assert np.allclose(approx, exact, rtol=1e-3, atol=1e-3 * np.abs(exact).max())


def test_reranker_reference_scoring_normalises_over_the_run(tmp_path, monkeypatch):
    """Two queries, three candidates each; unit segment descriptors in 2-D so the cosines are hand-made."""
    from vprkit.rerank.segvlad import SegVLADReranker
    from vprkit.results import Retrieval

    def unit(deg):
        return np.array([[np.cos(np.radians(d)), np.sin(np.radians(d))] for d in deg], np.float32)

    m_segs = {"m0": unit([0]), "m1": unit([60]), "m2": unit([170])}
    q_segs = {"q0": unit([10]), "q1": unit([100])}
    for name, segs in (("map.h5", m_segs), ("query.h5", q_segs)):
        with h5py.File(tmp_path / name, "w") as f:
            for key, value in segs.items():
                f[f"{key}/segments"] = value
    monkeypatch.setattr(SegVLADReranker, "_features", lambda self, r, w: (tmp_path / "map.h5", tmp_path / "query.h5"))
    retrieval = Retrieval(tmp_path, tmp_path, tmp_path, ["q0", "q1"], ["m0", "m1", "m2"],
                          np.array([[2, 1, 0], [0, 1, 2]]), np.zeros((2, 3)), {})
    ids, scores = SegVLADReranker({**SegVLADReranker.confs["ref"], "top_k_segments": 3}).rerank(retrieval, tmp_path)
    cos = np.cos(np.radians([[10, 50, 160], [100, 40, 70]]))  # (query, map image 0 1 2)
    lo, hi = 2 * cos.min(), 2 * cos.max()
    expected = (2 * cos - lo) / (hi - lo)
    assert ids.tolist() == [[0, 1, 2], [1, 2, 0]]
    assert np.allclose(scores, np.take_along_axis(expected, ids, 1), atol=1e-5)
    ids, scores = SegVLADReranker({**SegVLADReranker.confs["slic"], "top_k_segments": 3}).rerank(retrieval, tmp_path)
    assert ids.tolist() == [[0, 1, 2], [1, 2, 0]]
    assert np.allclose(scores, np.take_along_axis(np.maximum(cos, 0), ids, 1), atol=1e-5)  # plain votes
