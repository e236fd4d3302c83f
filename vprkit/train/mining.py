"""Hard-example mining as in NetVLAD: best positive and hardest negatives from cached descriptors.

Descriptors of all training images are recomputed every `refresh` steps (NetVLAD's cacheRefreshRate)
rather than every step: mining then costs a nearest-neighbour search, not a forward pass per candidate.

With a `margin` (NetVLAD's and the de-attention code's way) only negatives that violate it are kept,
d(q, n) < d(q, p) + margin in Euclidean distance, and a query with none is skipped that round; without one
(vprkit's "nearest") the `num_negs` nearest negatives are always taken, even those the loss ignores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Triplet:
    """One training tuple: query index, its best positive and its hardest negatives (map indices)."""

    query: int
    positive: int
    negatives: np.ndarray


def layout(tuples: list[Triplet]) -> tuple[list[int], list[int], np.ndarray]:
    """What a batch of tuples forwards: the queries, then the map images (every positive, then each tuple's negatives
    padded to the longest by repetition), and the (B, K) mask of real negatives (padded pairs are masked out)."""
    k = max(len(t.negatives) for t in tuples)
    negatives = [int(j) for t in tuples for j in np.resize(t.negatives, k)]
    mask = np.array([[j < len(t.negatives) for j in range(k)] for t in tuples])
    return [t.query for t in tuples], [t.positive for t in tuples] + negatives, mask


def sq_dist(x: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Squared L2 distance of one vector to rows of `ys`."""
    return ((ys - x[None]) ** 2).sum(axis=1)


def mine_one(q_desc: np.ndarray, map_desc: np.ndarray, positives: np.ndarray, candidates: np.ndarray,
             num_negs: int, margin: float | None = None) -> tuple[int, np.ndarray] | None:
    """(best positive, up to `num_negs` hardest negatives nearest first) or None without either; with a
    `margin`, only negatives closer than d(q, p) + margin (possibly none)."""
    if len(positives) == 0 or len(candidates) == 0:
        return None
    d_pos = sq_dist(q_desc, map_desc[positives])
    pos = int(positives[np.argmin(d_pos)])
    candidates = np.unique(candidates)
    d_neg = sq_dist(q_desc, map_desc[candidates])
    order = np.argsort(d_neg, kind="stable")[:num_negs]
    if margin is not None:
        order = order[np.sqrt(d_neg[order]) < np.sqrt(d_pos.min()) + margin]
    return pos, candidates[order]


def sample_negatives(num_map: int, non_negatives: np.ndarray, num_samples: int,
                     rng: np.random.Generator) -> np.ndarray:
    """Up to `num_samples` random map indices outside `non_negatives` (all of them when fewer exist)."""
    pool = np.setdiff1d(np.arange(num_map), non_negatives, assume_unique=False)
    if len(pool) <= num_samples:
        return pool
    return rng.choice(pool, num_samples, replace=False)


@dataclass
class MiningStats:
    """What mining had to leave out, reported per epoch."""

    no_positive: int = 0
    no_negative: int = 0
    no_violating: int = 0
    few_negatives: int = 0


class Miner:
    """Keeps the descriptor cache and each query's previous hard negatives (NetVLAD's negCache)."""

    def __init__(self, positives: list[np.ndarray], non_negatives: list[np.ndarray], num_map: int,
                 num_negs: int = 10, neg_samples: int = 1000, margin: float | None = None) -> None:
        self.positives, self.non_negatives, self.num_map = positives, non_negatives, num_map
        self.num_negs, self.neg_samples, self.margin = num_negs, neg_samples, margin
        self.previous = np.full((len(positives), num_negs), -1, dtype=np.int64)
        self.q_desc: np.ndarray | None = None
        self.map_desc: np.ndarray | None = None
        self.stats = MiningStats()

    def refresh(self, q_desc: np.ndarray, map_desc: np.ndarray) -> None:
        self.q_desc, self.map_desc = q_desc, map_desc

    def mine(self, queries: list[int], rng: np.random.Generator) -> list[Triplet]:
        """Triplets for `queries`; queries without a positive or any (violating) negative are skipped and
        counted, their previous negatives kept."""
        if self.q_desc is None or self.map_desc is None:
            raise RuntimeError("descriptor cache is empty: call refresh() first")
        out = []
        for q in queries:
            if len(self.positives[q]) == 0:
                self.stats.no_positive += 1
                continue
            sampled = sample_negatives(self.num_map, self.non_negatives[q], self.neg_samples, rng)
            prev = self.previous[q][self.previous[q] >= 0]
            found = mine_one(self.q_desc[q], self.map_desc, self.positives[q], np.concatenate([sampled, prev]),
                             self.num_negs, self.margin)
            if found is None:
                self.stats.no_negative += 1
                continue
            pos, negs = found
            if len(negs) == 0:
                self.stats.no_violating += 1
                continue
            if len(negs) < self.num_negs:
                self.stats.few_negatives += 1
            self.previous[q] = -1
            self.previous[q, : len(negs)] = negs
            out.append(Triplet(q, pos, negs))
        return out
