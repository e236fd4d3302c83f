"""Sequence matching cost: seconds for a 3,576-frame route against a 3,576-place map, and peak working memory and
time of candidate mode against exact full-matrix mode (chunked) on a 20k and a 1M-place map.

Synthetic unit descriptors (a route visited at 1.1 places per frame with noise): only sizes matter here.
Memory is the peak of Python/numpy allocations during matching (tracemalloc), the map descriptors themselves and
the FAISS top-K search (C++) excluded. `python bench/sequence_speed.py` (about 5 minutes on 2 busy cores).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import faiss
import numpy as np
from common import machine

from vprkit.index import faiss_index
from vprkit.sequence import pipeline


def route(num_places: int, num_frames: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(queries, map): random unit places, frames at 1.1 places per frame plus noise."""
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((num_places, dim), dtype=np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    path = np.floor(np.arange(num_frames) * 1.1).astype(int) % num_places
    q = m[path] + 1.5 * rng.standard_normal((num_frames, dim), dtype=np.float32) / np.sqrt(dim)
    return q / np.linalg.norm(q, axis=1, keepdims=True), m


def faiss_search(m: np.ndarray):
    """Top-K through a flat FAISS index (what `vprkit sequence` uses)."""
    mi = faiss_index.MapIndex(faiss_index.build(m), {"names": []})
    return lambda q, k: mi.search(q, k)[1]


def timed(conf: dict, q: np.ndarray, m: np.ndarray, search=None) -> tuple[float, float, float]:
    """(seconds, peak MiB of numpy/Python allocations, share of frames within 2 places of the true one)."""
    tracemalloc.start()
    t0 = time.perf_counter()
    est = pipeline.match(conf, q, m, search=search)[0]
    sec = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    truth = np.floor(np.arange(len(q)) * 1.1).astype(int) % len(m)
    return sec, peak, float(np.mean(np.abs(est - truth) <= 2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--frames", type=int, default=3576)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--big-map", type=int, default=1_000_000)
    p.add_argument("--big-frames", type=int, default=300)
    p.add_argument("--big-dim", type=int, default=32)
    args = p.parse_args()
    faiss.omp_set_num_threads(1)
    print(machine())
    q, m = route(args.frames, args.frames, args.dim)
    print(f"\n{args.frames} frames vs {args.frames} places, dim {args.dim}:")
    print("| method | seconds | peak MiB | R@1 (+-2) |\n|---|---|---|---|")
    for preset in ("seqslam", "seqslam-offline", "seqslam-candidates", "hmm", "hmm-viterbi"):
        sec, peak, r1 = timed(pipeline.CONFIG.resolve(preset), q, m, faiss_search(m))
        print(f"| {preset} | {sec:.1f} | {peak:.0f} | {r1:.3f} |", flush=True)
    small = 20_000
    q, m = route(small, args.big_frames, args.big_dim, seed=1)
    print(f"\npeak memory, {args.big_frames} frames, dim {args.big_dim}:")
    print("| map places | mode | seconds | peak MiB | R@1 (+-2) |\n|---|---|---|---|---|")
    for preset in ("seqslam", "seqslam-candidates"):
        sec, peak, r1 = timed(pipeline.CONFIG.resolve(preset), q, m, faiss_search(m))
        print(f"| {small:,} | {preset} | {sec:.1f} | {peak:.0f} | {r1:.3f} |", flush=True)
        if preset == "seqslam":
            full_peak = peak
    q, m = route(args.big_map, args.big_frames, args.big_dim, seed=2)
    big = {}
    for preset in ("seqslam-candidates", "seqslam"):
        big[preset] = timed(pipeline.CONFIG.resolve(preset), q, m, faiss_search(m))
        sec, peak, r1 = big[preset]
        print(f"| {args.big_map:,} | {preset} | {sec:.1f} | {peak:.0f} | {r1:.3f} |", flush=True)
    cand, full = big["seqslam-candidates"], big["seqslam"]
    print(f"candidate / full mode on {args.big_map:,} places: peak memory {cand[1] / full[1]:.4f}x, "
          f"time {cand[0] / full[0]:.2f}x (full mode on {small:,}: {full_peak:.0f} MiB)")


if __name__ == "__main__":
    main()
