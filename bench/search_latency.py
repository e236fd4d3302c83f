"""Query latency of exact vs IVF-PQ search as the map grows, and IVF-PQ's recall@1 relative to exact.

Synthetic map: clustered unit vectors (like real place descriptors, not uniform noise); queries are noisy
copies of map items, so exact search finds the source item and IVF-PQ is judged against it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import machine

from vprkit.index.faiss_index import MapIndex, build


def synthetic(n: int, dim: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def timed_search(mi: MapIndex, q: np.ndarray, k: int, **kw) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    _, ids = mi.search(q, k, **kw)
    return (time.perf_counter() - start) / len(q) * 1e3, ids


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", default="1000,10000,100000,1000000")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--nprobe", type=int, default=16)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2000, args.dim)).astype(np.float32)
    print(f"machine: {machine()}\ndim {args.dim}, {args.queries} queries, top-10, IVF-PQ nprobe {args.nprobe}\n")
    print("| map size | exact ms/query | IVF-PQ ms/query | speed-up | IVF-PQ R@1 vs exact | index |")
    print("|---|---|---|---|---|---|")
    for n in (int(s) for s in args.sizes.split(",")):
        db = synthetic(n, args.dim, rng, centres)
        src = rng.integers(0, n, args.queries)
        q = db[src] + 0.05 * rng.normal(size=(args.queries, args.dim)).astype(np.float32)
        exact = MapIndex(build(db, "Flat"), {})
        t_exact, ids_exact = timed_search(exact, q, 10)
        nlist = max(16, int(4 * np.sqrt(n)))
        factory = f"IVF{nlist},PQ{args.dim // 8}"
        ivf = MapIndex(build(db, factory, train_max=max(40 * nlist, 10_000)), {})
        t_ivf, ids_ivf = timed_search(ivf, q, 10, nprobe=args.nprobe)
        agree = float((ids_ivf[:, 0] == ids_exact[:, 0]).mean())
        print(f"| {n:,} | {t_exact:.3f} | {t_ivf:.3f} | {t_exact / t_ivf:.1f}x | {agree:.3f} | {factory} |",
              flush=True)
        del db, exact, ivf


if __name__ == "__main__":
    main()
