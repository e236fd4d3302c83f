"""SuperSegments: segments as nodes of a graph; the order-k SuperSegment of segment i pools i and its
neighbourhood, so a small segment is described with its surroundings (order 0 = the segment alone).

Two graphs: `touching` (vprkit's: segments that share a pixel edge, hops counted on that graph) and
`delaunay` (the original SegVLAD's: a Delaunay triangulation of the mask centroids, self-loops added,
its adjacency matrix raised to the k-th power).
"""

from __future__ import annotations

import numpy as np

from ..segment.masks import disjoint, stack_to_labels


def adjacency(labels: np.ndarray, num_segments: int | None = None) -> np.ndarray:
    """(S, S) boolean: segments that share a pixel edge (4-connectivity); no self-loops, -1 pixels ignored.

    Takes a label map (H, W) or a mask stack (S, H, W); overlapping masks also count as touching.
    """
    labels = np.asarray(labels)
    if labels.ndim == 3:
        return _stack_adjacency(labels)
    s = int(labels.max()) + 1 if num_segments is None else num_segments
    s = max(s, 0)
    adj = np.zeros((s, s), dtype=bool)
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        touch = (a != b) & (a >= 0) & (b >= 0)
        adj[a[touch], b[touch]] = True
    return adj | adj.T


def _stack_adjacency(masks: np.ndarray) -> np.ndarray:
    if disjoint(masks):
        return adjacency(stack_to_labels(masks), len(masks))
    grown = masks.copy()  # each mask grown by one pixel (4-connectivity) meets the masks it touches or overlaps
    grown[:, 1:] |= masks[:, :-1]
    grown[:, :-1] |= masks[:, 1:]
    grown[:, :, 1:] |= masks[:, :, :-1]
    grown[:, :, :-1] |= masks[:, :, 1:]
    s = len(masks)
    adj = (grown.reshape(s, -1).astype(np.float32) @ masks.reshape(s, -1).T.astype(np.float32)) > 0
    np.fill_diagonal(adj, False)
    return adj | adj.T


def neighbourhoods(adj: np.ndarray, order: int) -> np.ndarray:
    """(S, S) boolean: row i marks the segments within `order` hops of i (i itself included), which is
    bool((adj + I) ** order)."""
    if order < 0:
        raise ValueError(f"order must be >= 0, got {order}")
    s = len(adj)
    step = (adj | np.eye(s, dtype=bool)).astype(np.float32)
    reach = np.eye(s, dtype=np.float32)
    for _ in range(order):
        nxt = (reach @ step) > 0
        if (nxt == (reach > 0)).all():  # converged: the whole connected component is reached
            break
        reach = nxt.astype(np.float32)
    return reach > 0


def centroids(masks: np.ndarray) -> np.ndarray:
    """(S, 2) mean (x, y) pixel position of each non-empty mask of a stack (S, H, W)."""
    s, h, w = masks.shape
    area = masks.reshape(s, -1).sum(1).astype(np.float64)
    ys = masks.sum(2, dtype=np.float64) @ np.arange(h)
    xs = masks.sum(1, dtype=np.float64) @ np.arange(w)
    return np.stack([xs, ys], axis=1) / area[:, None]


def delaunay_adjacency(points: np.ndarray) -> np.ndarray:
    """(S, S) boolean Delaunay neighbours of 2-D points, no self-loops.

    Points a triangulation cannot hold (all on one line, where the original stops with an error) are
    joined in order along that line instead; a point Qhull drops as a duplicate has no neighbour.
    """
    from scipy.spatial import Delaunay, QhullError

    s = len(points)
    adj = np.zeros((s, s), dtype=bool)
    try:
        indptr, indices = Delaunay(points).vertex_neighbor_vertices
    except QhullError:
        along = (points - points.mean(0)) @ np.linalg.svd(points - points.mean(0))[2][0]
        order = np.argsort(along, kind="stable")
        adj[order[:-1], order[1:]] = True
        return adj | adj.T
    for v in range(s):
        adj[v, indices[indptr[v]:indptr[v + 1]]] = True
    return adj


def delaunay_members(masks: np.ndarray, order: int) -> np.ndarray:
    """(S, S) boolean SuperSegment members as the original computes them from a mask stack.

    Order 0: each mask alone. More than 3 masks: bool((A + I) ** order) with A the Delaunay neighbours of
    the mask centroids. 3 masks or fewer (no triangulation): every SuperSegment is masks 0 and 1 (mask 0
    alone when it is the only one), whatever the order; mask 2 of three is then not in its own.
    """
    if order < 0:
        raise ValueError(f"order must be >= 0, got {order}")
    s = len(masks)
    if order == 0 or s == 0:
        return np.eye(s, dtype=bool)
    if s <= 3:
        members = np.zeros((s, s), dtype=bool)
        members[:, : min(s, 2)] = True
        return members
    return neighbourhoods(delaunay_adjacency(centroids(masks)), order)
