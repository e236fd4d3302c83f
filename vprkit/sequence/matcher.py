"""Sequence matchers over global descriptors: SeqSLAM and HMM, one frame at a time (streams) or in batch.

Map descriptors are given in route order (see `order.layout`); descriptors are L2-normalised, so the difference
of a frame and a place is 1 - cosine similarity. Two search modes:
- `full`: every map place is scored for every frame; batch work runs in query chunks so memory stays
  (chunk + ds) x map, and a stream keeps ds enhanced rows (ds x map).
- `candidates`: only each frame's global top-K places (and the place after the previous estimate) and
  `neighbours` places either side of them are scored
  (with the map stretch their lines and the contrast enhancement need); a stream keeps its last ds descriptors.
  Memory and time per frame do not depend on the map size beyond the top-K search itself.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np

from . import hmm, seqslam

Search = Callable[[np.ndarray, int], np.ndarray]  # (n, dim) descriptors, k -> (n, k) place indices (route order)
CHUNK_CELLS = 1 << 22  # batch work in query chunks of about this many (query x place) cells


def exact_search(map_desc: np.ndarray) -> Search:
    """Top-k by inner product over all places (a flat index), in query chunks of bounded memory."""
    def top(q: np.ndarray, k: int) -> np.ndarray:
        sims = q @ map_desc.T
        idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        return np.take_along_axis(idx, np.argsort(-np.take_along_axis(sims, idx, 1), axis=1), 1)

    def search(q: np.ndarray, k: int) -> np.ndarray:
        k, step = min(k, len(map_desc)), max(1, CHUNK_CELLS // max(len(map_desc), 1))
        return np.concatenate([top(q[a:a + step], k) for a in range(0, len(q), step)])
    return search


def _tracked(top: np.ndarray, previous: int | None, num_places: int) -> np.ndarray:
    """Candidates: the frame's top places plus the place after the previous estimate, so a stream that is on
    track stays on it when the global search misses the right place."""
    return top if previous is None else np.r_[top, min(previous + 1, num_places - 1)]


def _ranked(costs: np.ndarray, places: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """The `top_k` places of lowest cost and their scores (-cost, higher = better)."""
    order = np.argsort(costs, kind="stable")[:top_k]
    return places[order], -costs[order]


class SeqSLAMStream:
    """Online SeqSLAM, one frame at a time; `add` returns (place, confidence, ranked places, their scores)."""

    def __init__(self, map_desc: np.ndarray, conf: dict, search: Search | None = None):
        self.map, self.conf = map_desc, conf
        self.ds = conf["ds"]
        self.offsets = seqslam.frame_offsets(self.ds, "online")
        self.shift = seqslam.shifts(seqslam.velocities(conf["vmin"], conf["vmax"], self.ds), self.offsets)
        self.search = search if conf["search"] == "candidates" else None
        self.past: deque = deque(maxlen=self.ds)  # enhanced rows (full) or descriptors (candidates)
        self.previous: int | None = None

    def add(self, q: np.ndarray) -> tuple[int, float, np.ndarray, np.ndarray]:
        q = np.asarray(q, dtype=np.float32).ravel()
        if self.search is None:
            self.past.append(seqslam.enhance(1.0 - self.map @ q, self.conf["enhance"]))
            rows = np.arange(-self.ds, 0) + len(self.past)
            costs = seqslam.line_costs(np.stack(self.past), rows[None], self.shift)[0]
            places = np.arange(len(self.map))
        else:
            self.past.append(q)
            rows = np.arange(-self.ds, 0) + len(self.past)
            top = _tracked(self.search(q[None], self.conf["top_k"])[0], self.previous, len(self.map))
            places, costs = candidate_costs(np.stack(self.past), rows, self.map, top, self.shift, self.conf)
        est, margin = seqslam.best_match(costs[None], self.conf["exclude"])
        ids, scores = _ranked(costs, places, self.conf["top_k"])
        self.previous = int(places[est[0]])
        return self.previous, float(margin[0]), ids, scores


def candidate_costs(window: np.ndarray, rows: np.ndarray, map_desc: np.ndarray, top: np.ndarray,
                    shift: np.ndarray, conf: dict) -> tuple[np.ndarray, np.ndarray]:
    """SeqSLAM costs of the lines ending at the top places and their `neighbours`: (places, costs).

    `window` (W, dim) are the frames' descriptors, `rows` (K,) which window row is line frame k (-1: none).
    Each stretch of the map scored is widened by the lines' reach and half the enhancement window, so the costs
    equal those of the full search. The stretches are scored side by side in one matrix: enhancement stays within
    each, and each is padded with its edge values so lines clamp at its ends as at the map's.
    """
    m, nb, half = len(map_desc), conf["neighbours"], conf["enhance"] // 2
    reach = int(np.abs(shift).max())
    ends = np.unique(np.clip(top[:, None] + np.arange(-nb, nb + 1)[None], 0, m - 1))
    lo = np.clip(ends + shift.min() - half, 0, m - 1)
    hi = np.clip(ends + shift.max() + half, 0, m - 1)
    starts = np.r_[True, lo[1:] > hi[:-1] + 1]  # merge overlapping stretches (ends are sorted)
    seg_lo = lo[starts]
    length = np.maximum.reduceat(hi, np.flatnonzero(starts)) + 1 - seg_lo
    seg = np.repeat(np.arange(len(seg_lo)), length)
    col0 = np.cumsum(length) - length  # where each stretch starts among the scored columns
    places = seg_lo[seg] + np.arange(len(seg)) - col0[seg]
    enh = seqslam.enhance(1.0 - window @ map_desc[places].T, conf["enhance"], (col0[seg], (col0 + length)[seg]))
    block = length + 2 * reach
    b0 = np.cumsum(block) - block
    bseg = np.repeat(np.arange(len(seg_lo)), block)
    inside = np.clip(np.arange(len(bseg)) - b0[bseg] - reach, 0, length[bseg] - 1)
    costs = seqslam.line_costs(enh[:, col0[bseg] + inside], rows[None], shift)[0]
    end_seg = np.cumsum(starts) - 1
    return ends, costs[b0[end_seg] + reach + ends - seg_lo[end_seg]]


def seqslam_batch(q_desc: np.ndarray, map_desc: np.ndarray, conf: dict, search: Search | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """SeqSLAM for a whole query sequence: (estimates (Q,), confidences (Q,), ranked ids (Q, k), scores (Q, k))."""
    ds, mode = conf["ds"], conf["mode"]
    offsets = seqslam.frame_offsets(ds, mode)
    shift = seqslam.shifts(seqslam.velocities(conf["vmin"], conf["vmax"], ds), offsets)
    n_q, m, k = len(q_desc), len(map_desc), min(conf["top_k"], len(map_desc))
    est, conf_out = np.empty(n_q, dtype=np.int64), np.empty(n_q, dtype=np.float32)
    ids, scores = np.full((n_q, k), -1, dtype=np.int64), np.full((n_q, k), np.nan, dtype=np.float32)
    frames = np.arange(n_q)[:, None] + offsets[None]
    if conf["search"] == "candidates":
        search = search or exact_search(map_desc)
        top = search(q_desc, conf["top_k"])
        for t in range(n_q):
            ok = (frames[t] >= 0) & (frames[t] < n_q)
            first = frames[t][ok][0]
            rows = np.where(ok, frames[t] - first, -1)
            cands = _tracked(top[t], est[t - 1] if t else None, m)
            places, costs = candidate_costs(q_desc[frames[t][ok]], rows, map_desc, cands, shift, conf)
            e, mg = seqslam.best_match(costs[None], conf["exclude"])
            est[t], conf_out[t] = places[e[0]], mg[0]
            r_ids, r_sc = _ranked(costs, places, k)
            ids[t, :len(r_ids)], scores[t, :len(r_sc)] = r_ids, r_sc
        return est, conf_out, ids, scores
    chunk = max(1, CHUNK_CELLS // max(m, 1))
    for a in range(0, n_q, chunk):
        b = min(a + chunk, n_q)
        first, last = max(a + offsets.min(), 0), min(b + offsets.max(), n_q)
        enh = seqslam.enhance(1.0 - q_desc[first:last] @ map_desc.T, conf["enhance"])
        f = frames[a:b]
        rows = np.where((f >= 0) & (f < n_q), f - first, -1)
        costs = seqslam.line_costs(enh, rows, shift)
        est[a:b], conf_out[a:b] = seqslam.best_match(costs, conf["exclude"])
        top = np.argpartition(costs, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(top, np.argsort(np.take_along_axis(costs, top, 1), axis=1, kind="stable"), 1)
        ids[a:b], scores[a:b] = top, -np.take_along_axis(costs, top, 1)
    return est, conf_out, ids, scores


class HMMStream:
    """Forward filtering over places, one frame at a time; `add` returns (place, posterior probability, ranked
    places, their log posteriors)."""

    def __init__(self, map_desc: np.ndarray, conf: dict, trans: hmm.Transitions, search: Search | None = None):
        self.map, self.conf, self.trans = map_desc, conf, trans
        self.search = search if conf["search"] == "candidates" else None
        self.belief: np.ndarray | None = None

    def emission(self, q: np.ndarray) -> np.ndarray:
        """Log emission over places: from all similarities (full), or from the top-K's with every other place
        given the K-th best similarity (candidates)."""
        q = np.asarray(q, dtype=np.float32).ravel()
        if self.search is None:
            return hmm.emission(self.map @ q, self.conf["temperature"])
        top = self.search(q[None], self.conf["top_k"])[0]
        sims = self.map[top] @ q
        full = np.full(len(self.map), sims.min(), dtype=np.float64)
        full[top] = sims
        return hmm.emission(full, self.conf["temperature"])

    def add(self, q: np.ndarray) -> tuple[int, float, np.ndarray, np.ndarray]:
        self.belief = hmm.filter_step(self.belief, self.emission(q), self.trans)
        k = min(self.conf["top_k"], len(self.belief))
        top = np.argpartition(-self.belief, k - 1)[:k]
        top = top[np.argsort(-self.belief[top], kind="stable")]
        return int(top[0]), float(np.exp(self.belief[top[0]])), top, self.belief[top].astype(np.float32)


def hmm_batch(q_desc: np.ndarray, map_desc: np.ndarray, conf: dict, trans: hmm.Transitions,
              search: Search | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """HMM over a whole query sequence: online = forward filtering; offline = the Viterbi path (ranked first),
    each frame's confidence being the filtered posterior of the place on that path."""
    stream = HMMStream(map_desc, conf, trans, search)
    if conf["mode"] == "online":
        out = [stream.add(q) for q in q_desc]
        return (np.array([o[0] for o in out]), np.array([o[1] for o in out], dtype=np.float32),
                np.stack([o[2] for o in out]), np.stack([o[3] for o in out]))
    log_e = np.stack([stream.emission(q) for q in q_desc])
    path = hmm.viterbi(log_e, trans)
    k = min(conf["top_k"], len(map_desc))
    confidence, ids, scores, belief = [], [], [], None
    for t, row in enumerate(log_e):
        belief = hmm.filter_step(belief, row, trans)
        others = np.argsort(-belief, kind="stable")[:k]
        ranked = np.r_[path[t], others[others != path[t]]][:k]
        confidence.append(np.exp(belief[path[t]]))
        ids.append(ranked)
        scores.append(belief[ranked])
    return path, np.array(confidence, dtype=np.float32), np.stack(ids), np.stack(scores).astype(np.float32)
