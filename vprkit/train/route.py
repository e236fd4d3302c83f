"""Label-free training data from the map alone: along a route, neighbours are positives, far images negatives.

When the map is a route (images in travel order, or with positions), images a few frames or metres apart show the
same place from a slightly different viewpoint, and images far along the route show other places. Augmented copies
of the map images (random crop, brightness, contrast, saturation, grey: a stand-in for another season, time of day
or camera) are the queries, so NetVLAD learns viewpoint and appearance invariance without a second traversal.

A route that comes back to a place it passed earlier breaks "far along the route = elsewhere" when only the file
order is known: give positions (`utm`, a `.csv`) for such maps.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from ..data.groundtruth import GroundTruthError, from_positions
from ..data.images import list_images
from .data import SPLITS, PlaceSet, read_positions

SOURCES = ("queries", "map")  # data.source: labelled query images, or the map alone (label-free)


def map_positions(spec: str, names: list[str]) -> np.ndarray:
    """(N, D) positions of the map images: `index` is the file order; `sequence`, `utm`, a `.csv` as for queries."""
    if spec.endswith(".mat") or not (spec in ("index", "sequence", "utm") or spec.endswith(".csv")):
        raise GroundTruthError(f"positions '{spec}': label-free training (data.source=map) needs the map's own "
                               f"positions: 'index' (file order), 'sequence', 'utm' or a .csv")
    return read_positions(spec, names, names)[1]


def route_places(names: list[str], pos: np.ndarray, pos_thr: float, neg_thr: float, copies: int = 1,
                 self_positive: bool = True) -> PlaceSet:
    """Queries = `copies` passes over the map images (to be augmented); positives = map images within `pos_thr`
    of the query's source image (itself excluded unless `self_positive`), negatives = those beyond `neg_thr`."""
    if copies < 1:
        raise ValueError(f"data.copies must be >= 1, got {copies}")
    near = from_positions(pos, pos, pos_thr).positives
    non_neg = from_positions(pos, pos, neg_thr).positives
    if not self_positive:
        near = [p[p != i] for i, p in enumerate(near)]
    return PlaceSet([n for _ in range(copies) for n in names], list(names), near * copies, non_neg * copies)


def route_splits(data: dict, map_dir: str | Path) -> dict[str, PlaceSet]:
    """Train on augmented copies of every map image with route neighbours as positives. Validate and test (a proxy:
    no real query is known) on one augmented copy of every second image against the others, so a query's own image
    is never in its map and only a neighbour within `pos_thr` counts."""
    names = list_images(map_dir)
    pos = map_positions(data["positions"], names)
    train = route_places(names, pos, data["pos_thr"], data["neg_thr"], data["copies"], data["self_positive"])
    held = PlaceSet(names[1::2], names[::2], from_positions(pos[1::2], pos[::2], data["pos_thr"]).positives,
                    from_positions(pos[1::2], pos[::2], data["neg_thr"]).positives)
    return {"train": train, **{name: held for name in SPLITS[1:]}}


def augmenter(conf: dict, seed: int) -> Callable[[Image.Image], Image.Image]:
    """A seeded size-keeping augmentation: a random crop of at least `crop` of each side resized back, then
    brightness, contrast and saturation scaled by factors in [1 - a, 1 + a], then grey with probability `grey`."""
    rng = np.random.default_rng(seed)
    enhancers = ((ImageEnhance.Brightness, conf["brightness"]), (ImageEnhance.Contrast, conf["contrast"]),
                 (ImageEnhance.Color, conf["saturation"]))

    def apply(img: Image.Image) -> Image.Image:
        w, h = img.size
        side = rng.uniform(conf["crop"], 1.0)
        cw, ch = max(1, round(w * side)), max(1, round(h * side))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = img.crop((x, y, x + cw, y + ch)).resize((w, h), Image.BILINEAR)
        for enhancer, amount in enhancers:
            img = enhancer(img).enhance(rng.uniform(1 - amount, 1 + amount))
        return img.convert("L").convert("RGB") if rng.random() < conf["grey"] else img

    return apply
