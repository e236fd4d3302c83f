"""SegVLAD building blocks checked against hand computations and independent numpy re-derivations."""

import numpy as np
import pytest
import torch
from conftest import assert_top_k

from vprkit.aggregators.vlad import VLAD
from vprkit.segment.masks import decode, encode, labels_to_masks, masks_to_labels, relabel
from vprkit.segvlad.describe import PCA, patch_weights, supersegment_vlad
from vprkit.segvlad.graph import adjacency, neighbourhoods
from vprkit.segvlad.index import SegmentIndex, bin_count, knn_chunked, owners, rank

# A 4x6 map with five segments laid out as a chain 0-1-2-3 plus segment 4 touching only 3:
#   0 0 1 1 2 2
#   0 0 1 1 2 2
#   3 3 3 3 3 2
#   4 4 3 3 3 2
CHAIN = np.array([[0, 0, 1, 1, 2, 2],
                  [0, 0, 1, 1, 2, 2],
                  [3, 3, 3, 3, 3, 2],
                  [4, 4, 3, 3, 3, 2]])


def test_adjacency_of_hand_made_label_map():
    adj = adjacency(CHAIN)
    edges = {(i, j) for i, j in zip(*np.nonzero(adj)) if i < j}
    assert edges == {(0, 1), (1, 2), (0, 3), (1, 3), (2, 3), (3, 4)}
    assert (adj == adj.T).all() and not adj.diagonal().any()


def test_adjacency_ignores_unassigned_pixels_and_diagonals():
    labels = np.array([[0, -1, 1],
                       [-1, 2, -1]])  # 0 and 2 touch only diagonally, 1 and 2 too
    assert not adjacency(labels).any()


def test_order_k_neighbourhoods():
    # path graph 0-1-2-3-4 (each touches the next only)
    path = np.repeat(np.arange(5), 2)[None, :].repeat(2, axis=0)
    adj = adjacency(path)
    assert (neighbourhoods(adj, 0) == np.eye(5, dtype=bool)).all()
    n1, n2 = neighbourhoods(adj, 1), neighbourhoods(adj, 2)
    assert set(np.flatnonzero(n1[2])) == {1, 2, 3}
    assert set(np.flatnonzero(n2[0])) == {0, 1, 2}
    assert set(np.flatnonzero(n2[2])) == {0, 1, 2, 3, 4}
    assert neighbourhoods(adj, 10).all()  # beyond the diameter: the whole component
    # the hand-made map: segment 4 reaches 3 at order 1, and everyone but itself's far side at order 2
    n = neighbourhoods(adjacency(CHAIN), 1)
    assert set(np.flatnonzero(n[4])) == {3, 4}
    assert set(np.flatnonzero(neighbourhoods(adjacency(CHAIN), 2)[4])) == {0, 1, 2, 3, 4}


def test_rle_round_trip_and_size():
    rng = np.random.default_rng(0)
    for labels in (CHAIN, np.full((7, 3), -1), rng.integers(-1, 300, (13, 17)), np.zeros((1, 1), int)):
        code = encode(labels)
        assert code.dtype == np.int32
        assert (decode(code) == labels).all() and decode(code).shape == labels.shape
    # row-major runs of CHAIN: 00 11 22 | 00 11 22 | 33333 2 | 44 333 2 -> 11 (value, length) pairs
    assert encode(CHAIN).tolist() == [4, 6, 0, 2, 1, 2, 2, 2, 0, 2, 1, 2, 2, 2, 3, 5, 2, 1, 4, 2, 3, 3, 2, 1]
    with pytest.raises(ValueError):
        decode(np.array([2, 2, 0, 3]))  # runs cover 3 of 4 pixels


def test_masks_to_labels_overlap_and_empty_masks():
    big = np.zeros((4, 4), bool)
    big[:, :3] = True
    small = np.zeros((4, 4), bool)
    small[0, 0] = True
    empty = np.zeros((4, 4), bool)
    labels = masks_to_labels([small, empty, big], (4, 4))
    assert labels[0, 0] != labels[1, 1]  # the small mask stays visible on top of the big one
    assert (labels[:, 3] == -1).all()  # nothing covers the last column
    assert sorted(np.unique(labels)) == [-1, 0, 1]  # the empty mask is gone, labels consecutive
    assert (masks_to_labels([], (2, 3)) == -1).all()
    assert (relabel(np.array([[5, 9], [-3, 5]])) == np.array([[0, 1], [-1, 0]])).all()


def test_patch_weights_hand_computed():
    # 4x6 pixels on a 2x3 patch grid (2x2 pixels per patch)
    w = patch_weights(labels_to_masks(CHAIN), (2, 3))
    expected = np.array([
        [1, 0, 0, 0, 0, 0],                  # segment 0 fills patch (0,0)
        [0, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0.5],                # segment 2: patch (0,2) and the right column of (1,2)
        [0, 0, 0, 0.5, 1, 0.5],
        [0, 0, 0, 0.5, 0, 0],
    ])
    assert np.allclose(w, expected)
    assert np.allclose(w.sum(0), 1)  # every pixel belongs to one segment here


def _numpy_segment_vlad(tokens, centroids, labels, grid, members):
    """Independent re-derivation: loop over segments, pixels and tokens."""
    h, w = grid
    big_h, big_w = labels.shape
    x = tokens / np.linalg.norm(tokens, axis=1, keepdims=True)
    assign = [int(np.argmax(centroids @ t)) for t in x]
    s = labels.max() + 1
    out = []
    for i in range(s):
        v = np.zeros_like(centroids)
        for p in range(h * w):
            py, px = divmod(p, w)
            block = labels[py * big_h // h:(py + 1) * big_h // h, px * big_w // w:(px + 1) * big_w // w]
            cover = np.isin(block, np.flatnonzero(members[i])).mean()
            v[assign[p]] += cover * (x[p] - centroids[assign[p]])
        v = np.array([r / np.linalg.norm(r) if np.linalg.norm(r) > 0 else r for r in v]).ravel()
        out.append(v / np.linalg.norm(v))
    return np.array(out)


@pytest.mark.parametrize("order", [0, 1, 2])
def test_segment_vlad_equals_numpy(order):
    rng = np.random.default_rng(1)
    tokens = rng.normal(size=(6, 5)).astype(np.float32)  # 2x3 grid, 5 channels
    centroids = rng.normal(size=(3, 5)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    members = neighbourhoods(adjacency(CHAIN), order)
    ours = supersegment_vlad(tokens, centroids, patch_weights(labels_to_masks(CHAIN), (2, 3)), members)
    ref = _numpy_segment_vlad(tokens, centroids, CHAIN, (2, 3), members)
    assert np.allclose(ours, ref, atol=1e-5)


def test_whole_image_segment_equals_global_vlad():
    rng = np.random.default_rng(2)
    local = rng.normal(size=(1, 8, 3, 4)).astype(np.float32)
    vlad = VLAD(num_clusters=4)
    vlad.fit(local[0].reshape(8, -1).T.repeat(3, 0) + rng.normal(size=(36, 8)).astype(np.float32) * 0.1)
    labels = np.zeros((3 * 14, 4 * 14), int)
    ours = supersegment_vlad(local[0].reshape(8, -1).T, vlad.centroids.numpy(),
                             patch_weights(labels_to_masks(labels), (3, 4)), np.ones((1, 1), bool))
    assert np.allclose(ours[0], vlad.raw(torch.from_numpy(local))[0].numpy(), atol=1e-5)


def test_pca_plain_projection_is_orthonormal_and_whitening_equalises_variance():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 6)) * np.array([5, 3, 1, 1, 0.5, 0.1])
    plain = PCA.fit(x, 3, whiten=False)
    assert np.allclose(plain.proj @ plain.proj.T, np.eye(3), atol=1e-5)
    white = PCA.fit(x, 3, whiten=True)
    z = (x - white.mean) @ white.proj.T
    assert np.allclose(z.var(0, ddof=1), 1, atol=1e-3)


def test_bin_counting_hand_computed():
    # 6 map segments owned by images [0, 0, 1, 2, 2, 2]; two query segments retrieve 3 each
    owner = np.array([0, 0, 1, 2, 2, 2])
    seg_ids = np.array([[0, 3, 1], [4, 2, -1]])
    sims = np.array([[0.9, 0.8, 0.5], [0.7, -0.2, 0.3]])
    assert owners(seg_ids, owner).tolist() == [[0, 2, 0], [2, 1, -1]]
    scores = bin_count(owners(seg_ids, owner), sims, 4)
    # image 0: 0.9 + 0.5; image 1: max(-0.2, 0) = 0; image 2: 0.8 + 0.7; image 3: never retrieved
    assert np.allclose(scores, [1.4, 0.0, 1.5, 0.0])
    ids, s = rank(scores, 3)
    assert ids.tolist() == [2, 0, -1] and np.allclose(s, [1.5, 1.4, 0])


def test_knn_chunked_matches_brute_force():
    rng = np.random.default_rng(4)
    store = rng.normal(size=(103, 16)).astype(np.float16)
    q = rng.normal(size=(7, 16)).astype(np.float32)
    full = q @ store.astype(np.float32).T
    for chunk in (10, 64, 1000):
        s, i = knn_chunked(q, store, 5, chunk)
        assert_top_k(i, full, atol=1e-4)
        assert np.allclose(s, np.take_along_axis(full, i, 1), atol=1e-4)
    s, i = knn_chunked(q, store[:3], 5)  # fewer rows than k: padded
    assert (i[:, 3:] == -1).all() and np.isinf(s[:, 3:]).all()


def test_segment_index_votes_and_handles_a_query_without_segments():
    rng = np.random.default_rng(5)
    segs = rng.normal(size=(9, 8)).astype(np.float32)
    segs /= np.linalg.norm(segs, axis=1, keepdims=True)
    owner = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    index = SegmentIndex(segs.astype(np.float16), owner, 3, chunk=4)
    ids, scores = index.search([segs[3:6], np.zeros((0, 8), np.float32)], k_segments=1, top_k=3)
    assert ids[0, 0] == 1 and np.isclose(scores[0, 0], 3.0, atol=1e-2)  # its own three segments, sim 1 each
    assert (ids[1] == -1).all() and (scores[1] == 0).all()  # no segments: no ranking, no crash
