"""All map segments in one searchable store, and similarity-weighted bin counting of retrieved segments.

Segment descriptors live in one float16 `.npy` (memory-mapped) with the map image of every row in a
second array. Search streams over the map in fixed-size chunks and keeps a running top-K, so memory
stays at (query segments x chunk) however large the map grows; the store costs 2*D bytes per segment.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import h5py
import numpy as np

from ..index.layout import OWNER_FILE, SEGMENTS_FILE

SCORINGS = ("votes", "reference")


def write_store(feature_path: str | Path, names: list[str], out_dir: str | Path) -> tuple[int, int]:
    """Concatenate the `segments` of `names` (in order) into out_dir/segments.npy + segment_image.npy.

    Written row-block by row-block into a memory map, so no more than one image is held at a time.
    Returns (number of segments, dimension).
    """
    out_dir = Path(out_dir)
    with h5py.File(feature_path, "r") as f:
        shapes = [f[f"{n}/segments"].shape for n in names]
        dim = max((s[1] for s in shapes), default=0)
        counts = np.array([s[0] for s in shapes], dtype=np.int64)
        store = np.lib.format.open_memmap(out_dir / SEGMENTS_FILE, mode="w+", dtype=np.float16,
                                          shape=(int(counts.sum()), dim))
        start = 0
        for n, c in zip(names, counts):
            if c:
                store[start:start + c] = f[f"{n}/segments"][()]
            start += c
        store.flush()
        del store
    np.save(out_dir / OWNER_FILE, np.repeat(np.arange(len(names), dtype=np.int32), counts))
    return int(counts.sum()), dim


def knn_chunked(queries: np.ndarray, store: np.ndarray, k: int, chunk: int = 16384
                ) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of each query row over `store` rows, streaming `chunk` rows at a time.

    Returns (similarities, row ids), best first, padded with (-inf, -1) when the store has fewer rows.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    best_s = np.full((len(q), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(q), k), -1, dtype=np.int64)
    if len(q) == 0 or k == 0:
        return best_s, best_i
    for start in range(0, len(store), chunk):
        block = np.ascontiguousarray(store[start:start + chunk], dtype=np.float32)
        s, i = faiss.knn(q, block, min(k, len(block)), metric=faiss.METRIC_INNER_PRODUCT)
        s, i = np.concatenate([best_s, s], 1), np.concatenate([best_i, np.where(i >= 0, i + start, -1)], 1)
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    return best_s, best_i


def owners(seg_ids: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """The map image of each retrieved segment id; padded ids (-1) stay -1."""
    return np.where(seg_ids >= 0, owner[np.maximum(seg_ids, 0)], -1)


def bin_count(images: np.ndarray, weights: np.ndarray, num_images: int) -> np.ndarray:
    """Score of each map image: the summed weight of its segments among every query segment's top-K.

    Negative weights count as 0 (a retrieved segment never counts against its image); padded
    entries (image -1) are ignored.
    """
    valid = images >= 0
    return np.bincount(images[valid], weights=np.maximum(weights[valid], 0).astype(np.float64),
                       minlength=num_images)


def vote_weights(hits: list[tuple[np.ndarray, np.ndarray]], scoring: str) -> list[np.ndarray]:
    """The weight of each retrieved segment, per query; `hits` holds (similarities, images) of each query.

    `votes` (query-independent, for serving): the cosine similarity itself (negatives count 0).
    `reference` (the original SegVLAD, for reproducing published numbers): (2 cos - m) / (M - m), with m, M
    the least and greatest 2 cos over every retrieved segment of every query of the run, so a query's
    scores depend on the other queries scored with it (all equal weights when m = M).
    """
    if scoring == "votes":
        return [sims for sims, _ in hits]
    if scoring != "reference":
        raise ValueError(f"unknown scoring {scoring!r}; choose one of {SCORINGS}")
    two_cos = [2 * sims[images >= 0].astype(np.float64) for sims, images in hits]
    every = np.concatenate(two_cos) if two_cos else np.zeros(0)
    lo, hi = (every.min(), every.max()) if every.size else (0.0, 0.0)

    def weigh(sims: np.ndarray) -> np.ndarray:
        return (2 * sims.astype(np.float64) - lo) / (hi - lo) if hi > lo else np.ones(sims.shape)

    return [np.where(images >= 0, weigh(sims), 0) for sims, images in hits]


def rank_hits(hits: list[tuple[np.ndarray, np.ndarray]], num_images: int, top_k: int, scoring: str = "votes"
              ) -> tuple[np.ndarray, np.ndarray]:
    """(ids, scores) of shape (Q, top_k): map images by decreasing score. Not ranked (-1): with `votes`, images
    scoring 0; with `reference`, images no segment of the query retrieved (as the original)."""
    ids = np.full((len(hits), top_k), -1, dtype=np.int64)
    scores = np.zeros((len(hits), top_k), dtype=np.float32)
    for qi, ((_, images), w) in enumerate(zip(hits, vote_weights(hits, scoring))):
        voted = np.bincount(images[images >= 0], minlength=num_images) > 0 if scoring == "reference" else None
        ids[qi], scores[qi] = rank(bin_count(images, w, num_images), top_k, voted)
    return ids, scores


def rank(scores: np.ndarray, top_k: int, voted: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images by decreasing score (ties: lower index first); images not `voted` (default: score <= 0) are not
    ranked (-1)."""
    voted = scores > 0 if voted is None else voted
    order = np.argsort(-scores, kind="stable")[:top_k]
    ids = np.where(voted[order], order, -1)
    out_ids = np.full(top_k, -1, dtype=np.int64)
    out_scores = np.zeros(top_k, dtype=np.float32)
    out_ids[: len(ids)], out_scores[: len(ids)] = ids, np.where(ids >= 0, scores[order], 0)
    return out_ids, out_scores


class SegmentIndex:
    """Map segments (memory-mapped) + owner image per segment; retrieval by segment voting."""

    def __init__(self, segments: np.ndarray, owner: np.ndarray, num_images: int, chunk: int = 16384):
        if len(segments) != len(owner):
            raise ValueError(f"{len(segments)} segments but {len(owner)} owner entries")
        self.segments, self.owner, self.num_images, self.chunk = segments, owner, num_images, chunk

    @classmethod
    def load(cls, index_dir: str | Path, num_images: int, chunk: int = 16384) -> SegmentIndex:
        index_dir = Path(index_dir)
        for f in (SEGMENTS_FILE, OWNER_FILE):
            if not (index_dir / f).is_file():
                raise FileNotFoundError(f"{index_dir}: not a SegVLAD index ({f} missing); build one with "
                                        "`vprkit segvlad index MAP_DIR -o OUT`")
        return cls(np.load(index_dir / SEGMENTS_FILE, mmap_mode="r"), np.load(index_dir / OWNER_FILE),
                   num_images, chunk)

    def retrieve(self, query_sets: list[np.ndarray], k_segments: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """(similarities, map images) (n, k) of each query's n segments' top-k map segments, -1 padded.

        All query segments of the batch are searched in one streaming pass over the map.
        """
        if not query_sets:
            return []
        sizes = [len(s) for s in query_sets]
        dim = self.segments.shape[1]
        stacked = np.concatenate([np.asarray(s, np.float32).reshape(-1, dim) for s in query_sets])
        sims, seg_ids = knn_chunked(stacked, self.segments, min(k_segments, len(self.segments)), self.chunk)
        bounds = np.cumsum(sizes)[:-1]
        return list(zip(np.split(sims, bounds), np.split(owners(seg_ids, self.owner), bounds)))

    def search(self, query_sets: list[np.ndarray], k_segments: int, top_k: int, scoring: str = "votes"
               ) -> tuple[np.ndarray, np.ndarray]:
        """Rank map images for each query's segment set; (ids, scores) of shape (Q, top_k), -1 padded.

        With `reference` scoring the normalisation spans these queries only: pass a whole run at once, or
        collect `retrieve` results and call `rank_hits` once.
        """
        return rank_hits(self.retrieve(query_sets, k_segments), self.num_images, top_k, scoring)
