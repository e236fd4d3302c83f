"""SuperSegments: segments as nodes of a graph whose edges join touching segments.

The order-k SuperSegment of segment i is i plus every segment within k hops; its descriptor pools
all of them, so a small segment is described with its surroundings (order 0 = the segment alone).
"""

from __future__ import annotations

import numpy as np


def adjacency(labels: np.ndarray, num_segments: int | None = None) -> np.ndarray:
    """(S, S) boolean: segments that share a pixel edge (4-connectivity); no self-loops, -1 pixels ignored."""
    labels = np.asarray(labels)
    s = int(labels.max()) + 1 if num_segments is None else num_segments
    s = max(s, 0)
    adj = np.zeros((s, s), dtype=bool)
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        touch = (a != b) & (a >= 0) & (b >= 0)
        adj[a[touch], b[touch]] = True
    return adj | adj.T


def neighbourhoods(adj: np.ndarray, order: int) -> np.ndarray:
    """(S, S) boolean: row i marks the segments within `order` hops of i (i itself included)."""
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
