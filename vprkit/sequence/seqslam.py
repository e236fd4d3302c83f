"""SeqSLAM (Milford & Wyeth 2012; OpenSeqSLAM): local contrast enhancement of a difference matrix and a search
for the best straight line through it over a range of velocities.

Matrices here are (query frames, map places). What follows OpenSeqSLAM: enhancement z-scores every cell against the
cells of the same query within `enhance` / 2 map places either side (sample std); velocities are every
integer number of places covered per `ds` frames between `vmin * ds` and `vmax * ds`; a trajectory's cost is the
sum of enhanced differences along it; the confidence compares the best cost with the best one outside `exclude` /
2 places of it. What differs: OpenSeqSLAM centres a `ds + 1` frame window on the query and reports the middle of the
best line; here the line is anchored at the frame being localized (`online`: the `ds` frames ending at it, usable
on a robot; `offline`: `ds` frames centred on it), so the estimate is where the line crosses that frame for any
velocity. The cost is a mean over the frames that exist (the first frames of a stream have fewer than `ds`
predecessors), places beyond the map's ends are clamped to them, and the confidence is the margin
(second best - best, in enhanced units, >= 0) rather than OpenSeqSLAM's ratio, which needs positive costs.
"""

from __future__ import annotations

import numpy as np


def enhance(diff: np.ndarray, window: int, bounds: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Local contrast enhancement along the map axis (last): each cell minus the mean of the cells within
    `window` // 2 places of it, over their sample std. Row-wise, so rows can be enhanced one at a time.
    `bounds` (first, end) per column: the stretch its window may not leave (several map stretches side by side)."""
    diff = np.asarray(diff, dtype=np.float64)
    if window <= 0:
        return diff.astype(np.float32)
    m, half = diff.shape[-1], window // 2
    first, end = bounds if bounds is not None else (0, m)
    lo = np.maximum(np.arange(m) - half, first)
    hi = np.minimum(np.arange(m) + half + 1, end)
    pad = [(0, 0)] * (diff.ndim - 1) + [(1, 0)]
    c1 = np.pad(np.cumsum(diff, axis=-1), pad)
    c2 = np.pad(np.cumsum(diff * diff, axis=-1), pad)
    n = (hi - lo).astype(np.float64)
    mean = c1[..., hi]
    mean -= c1[..., lo]
    mean /= n
    var = c2[..., hi]  # in place from here on: these are (frames x places) arrays
    var -= c2[..., lo]
    var -= n * mean * mean
    var /= np.maximum(n - 1, 1)
    std = np.sqrt(np.maximum(var, 0.0, out=var), out=var)
    std[std == 0] = np.inf  # a flat neighbourhood: enhanced difference 0
    out = diff - mean
    out /= std
    return out.astype(np.float32)


def velocities(vmin: float, vmax: float, ds: int) -> np.ndarray:
    """OpenSeqSLAM's velocity set: every whole number of places per `ds` frames from vmin*ds to vmax*ds."""
    moves = np.arange(int(np.ceil(vmin * ds - 1e-9)), int(np.floor(vmax * ds + 1e-9)) + 1)
    if not len(moves):
        raise ValueError(f"no velocity between vmin={vmin} and vmax={vmax} for ds={ds}")
    return moves / ds


def frame_offsets(ds: int, mode: str) -> np.ndarray:
    """Query frames of the window relative to the frame localized: online = the ds frames ending at it,
    offline = ds frames centred on it."""
    if ds < 1:
        raise ValueError(f"ds must be >= 1, got {ds}")
    if mode == "online":
        return np.arange(-(ds - 1), 1)
    if mode == "offline":
        return np.arange(ds) - ds // 2
    raise ValueError(f"mode must be 'online' or 'offline', got '{mode}'")


def shifts(vels: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(V, K) map offsets of each trajectory at each window frame (rounded to the nearest place)."""
    return np.rint(np.outer(vels, offsets)).astype(np.int64)


def line_costs(enhanced: np.ndarray, rows: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Best (over velocities) mean enhanced difference of the line ending at each map place.

    `enhanced` (R, L) holds enhanced rows; `rows` (T, K) says which row is window frame k of query t (-1: the
    frame does not exist; for each k the queries that have it are consecutive and so are their rows, as for any
    stream); `shift` (V, K) from `shifts`. Returns (T, L) costs, lower = better.
    """
    length, reach = enhanced.shape[1], int(np.abs(shift).max())
    padded = np.pad(enhanced, ((0, 0), (reach, reach)), mode="edge")  # places beyond the ends clamp to them
    valid = rows >= 0
    count = np.maximum(valid.sum(axis=1, keepdims=True), 1).astype(np.float32)
    spans = []
    for k in range(rows.shape[1]):
        have = np.flatnonzero(valid[:, k])
        spans.append((have[0], have[-1] + 1, rows[have[0], k]) if len(have) else None)
    best = np.full((len(rows), length), np.inf, dtype=np.float32)
    acc = np.empty_like(best)
    for s in shift:
        acc[:] = 0
        for span, off in zip(spans, s):
            if span is not None:
                a, b, r = span
                acc[a:b] += padded[r:r + b - a, reach + off:reach + off + length]
        np.minimum(best, acc / count, out=best)
    return best


def best_match(costs: np.ndarray, exclude: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the place of lowest cost and the margin to the lowest cost more than `exclude` // 2 places away
    (inf when every place is within the window)."""
    est = np.argmin(costs, axis=1)
    cols = np.arange(costs.shape[1])
    outside = np.abs(cols[None, :] - est[:, None]) > exclude // 2
    second = np.where(outside, costs, np.inf).min(axis=1)
    return est, second - costs[np.arange(len(costs)), est]
