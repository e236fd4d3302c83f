"""Place-batched training samples (P places x K images, as GSV-Cities-style training draws them) from a route.

A place is a training query with its positives: image 0 is the query, images 1..K-1 are drawn from its map
positives (without replacement when it has enough). Places of one batch never overlap: none of a place's positives
is a non-negative of another place of the batch (both ways), so every cross-place pair is a true negative. With
`neighbours` (each place's most similar other places under the current model, from the cached tokens), a fraction
`hard` of each batch is filled with hard negative places: the nearest compatible neighbour of a place already in it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Place:
    """One place of a batch: the query index and K-1 map indices."""

    query: int
    images: list[int]


class _Batch:
    """A batch being filled: its places, the map images they must not meet (non-negatives) and their positives."""

    def __init__(self, positives: list[np.ndarray], non_negatives: list[np.ndarray]) -> None:
        self.positives, self.non_negatives = positives, non_negatives
        self.places: list[Place] = []
        self.blocked: set[int] = set()
        self.footprint: set[int] = set()

    def fits(self, j: int) -> bool:
        """Whether place j is a true negative of every place already in (and they of it)."""
        return not (self.blocked.intersection(self.positives[j].tolist())
                    or self.footprint.intersection(self.non_negatives[j].tolist()))

    def add(self, j: int, per_place: int, rng: np.random.Generator) -> None:
        pos = self.positives[j]
        self.blocked.update(self.non_negatives[j].tolist())
        self.footprint.update(pos.tolist())
        self.places.append(Place(j, rng.choice(pos, per_place - 1, replace=len(pos) < per_place - 1).tolist()))


def place_batches(positives: list[np.ndarray], non_negatives: list[np.ndarray], places: int, per_place: int,
                  rng: np.random.Generator, neighbours: np.ndarray | None = None,
                  hard: float = 0.0) -> list[list[Place]]:
    """One epoch of batches of `places` places (the last batch may be smaller; batches of one place are dropped).
    Every query with a positive is used at most once per epoch."""
    order = [int(q) for q in rng.permutation(len(positives)) if len(positives[q])]
    used: set[int] = set()
    batches: list[list[Place]] = []
    for seed in order:
        if seed in used:
            continue
        batch = _Batch(positives, non_negatives)
        batch.add(seed, per_place, rng)
        used.add(seed)
        for j in order:
            if len(batch.places) == places:
                break
            if neighbours is not None and rng.random() < hard:
                near = [int(k) for k in neighbours[batch.places[-1].query]
                        if k not in used and len(positives[k]) and batch.fits(int(k))]
                if near:
                    batch.add(near[0], per_place, rng)
                    used.add(near[0])
                    continue
            if j not in used and batch.fits(j):
                batch.add(j, per_place, rng)
                used.add(j)
        if len(batch.places) > 1:
            batches.append(batch.places)
    return batches
