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

SEGMENTS_FILE, OWNER_FILE = "segments.npy", "segment_image.npy"


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


def bin_count(seg_ids: np.ndarray, sims: np.ndarray, owner: np.ndarray, num_images: int) -> np.ndarray:
    """Score of each map image: the summed similarity of its segments among every query segment's top-K.

    Negative similarities count as 0 (a retrieved segment never counts against its image); padded
    ids (-1) are ignored.
    """
    valid = seg_ids >= 0
    weights = np.maximum(sims[valid], 0).astype(np.float64)
    return np.bincount(owner[seg_ids[valid]], weights=weights, minlength=num_images)


def rank(scores: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Images by decreasing score (ties: lower index first); images without votes are not ranked (-1)."""
    order = np.argsort(-scores, kind="stable")[:top_k]
    ids = np.where(scores[order] > 0, order, -1)
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

    def search(self, query_sets: list[np.ndarray], k_segments: int, top_k: int
               ) -> tuple[np.ndarray, np.ndarray]:
        """Rank map images for each query's segment set; (ids, scores) of shape (Q, top_k), -1 padded.

        All query segments of the batch are searched in one streaming pass over the map.
        """
        sizes = [len(s) for s in query_sets]
        dim = self.segments.shape[1]
        stacked = np.concatenate([np.asarray(s, np.float32).reshape(-1, dim) for s in query_sets]) \
            if query_sets else np.zeros((0, dim), np.float32)
        sims, seg_ids = knn_chunked(stacked, self.segments, min(k_segments, len(self.segments)), self.chunk)
        ids = np.full((len(query_sets), top_k), -1, dtype=np.int64)
        scores = np.zeros((len(query_sets), top_k), dtype=np.float32)
        start = 0
        for qi, n in enumerate(sizes):
            votes = bin_count(seg_ids[start:start + n], sims[start:start + n], self.owner, self.num_images)
            ids[qi], scores[qi] = rank(votes, top_k)
            start += n
        return ids, scores
