"""Maps of millions: Nordland dev queries against their true map plus 1M / 10M distractors.

Distractors are real descriptors of other images (the other dev sets) plus synthetic ones drawn to match the
real descriptors' statistics (mean and principal axes with their variances, then L2-normalised). For each map
size the index is chosen from the memory budget (`vprkit.index.large.choose`), built chunk by chunk in a child
process (its peak RSS measured there), then queried one query at a time in another child (latency p50 / p99,
peak RSS): compressed search + exact re-scoring of the shortlist, against exact search over the same map.

    python bench/scale.py --data ../shared/data --sizes 1000000,10000000 --budget 2GB --work /tmp/vprkit-scale
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import machine

from vprkit.data.images import list_images
from vprkit.features import extract, h5io
from vprkit.index import large

NORDLAND = ("nordland_64x32_dev/summer", "nordland_64x32_dev/winter")
OTHERS = ("corridor/ref", "corridor/query", "essex3in1_thumbs/ref", "essex3in1_thumbs/query",
          "gardenspoint_mini10/ref", "gardenspoint_mini10/query", "toy_streets_unlabeled/database",
          "toy_streets_unlabeled/queries")
CHUNK, EXACT_CHUNK = 100_000, 20_000


def describe(data: Path, folder: str, conf: dict, work: Path) -> np.ndarray:
    """Global descriptors of one folder (cached, resumable), in sorted name order."""
    names = list_images(data / folder)
    out = work / (folder.replace("/", "_") + ".h5")
    ok = extract.main(conf, data / folder, out, work / "state.npz", names=names)
    return h5io.read_global(out, ok)


def statistics(real: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, standard deviations along the principal axes, and the axes (rows) of `real`."""
    mean = real.mean(0)
    _, s, vt = np.linalg.svd(real - mean, full_matrices=False)
    return mean, (s / np.sqrt(max(len(real) - 1, 1))).astype(np.float32), vt.astype(np.float32)


def synthetic(stats: tuple, n: int, seed: int) -> np.ndarray:
    """n vectors with the mean and covariance of the real ones (Gaussian in its principal axes), L2-normalised."""
    mean, std, vt = stats
    x = (np.random.default_rng(seed).standard_normal((n, len(std))).astype(np.float32) * std) @ vt + mean
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def map_chunks(map_real: np.ndarray, size: int, stats: tuple):
    """The map: true map + real distractors first, then synthetic distractors chunk by chunk (deterministic)."""
    yield map_real
    left, i = size - len(map_real), 0
    while left > 0:
        n = min(CHUNK, left)
        yield synthetic(stats, n, 1 + i)
        left, i = left - n, i + 1


def child_build(work: Path, size: int, budget: int) -> dict:
    """Build the index for `size` vectors in this (child) process; returns timings and the choice."""
    map_real = np.load(work / "map_real.npy")
    dim = map_real.shape[1]
    choice = large.choose(size, dim, budget)
    out = work / f"index-{size}"
    out.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    stats = statistics(map_real)
    n_train = max(large.train_size(choice, size) - len(map_real), 0)
    sample = np.concatenate([map_real, synthetic(stats, n_train, 0)])
    index = large.build_chunked(map_chunks(map_real, size, stats), size, dim, choice, out, sample)
    if index is not None:
        import faiss

        faiss.write_index(index, str(out / "index.faiss"))
    build_s = time.perf_counter() - t0
    (out / "choice.json").write_text(json.dumps(large.manifest_entry(choice, float("nan"))))
    return {"build_s": build_s, "factory": choice.factory, "on_disk": choice.on_disk, "nprobe": choice.nprobe}


def child_query(work: Path, size: int, shortlist: int) -> dict:
    """Search every query alone (latency) with re-scoring of the shortlist."""
    out = work / f"index-{size}"
    choice = json.loads((out / "choice.json").read_text())
    index = large.read(out / "index.faiss", choice["on_disk"])
    large.set_nprobe(index, choice["nprobe"])
    full = large.descriptors(out)
    queries = np.load(work / "queries.npy")
    lat, top1 = [], []
    for q in queries:
        t0 = time.perf_counter()
        _, short = index.search(q[None], shortlist)
        _, ids = large.rescore(q[None], short, full, 1)
        lat.append(time.perf_counter() - t0)
        top1.append(int(ids[0, 0]))
    return {"lat_p50_ms": 1e3 * float(np.percentile(lat, 50)), "lat_p99_ms": 1e3 * float(np.percentile(lat, 99)),
            "top1": top1, "disk_bytes": sum(p.stat().st_size for p in out.iterdir() if p.is_file())}


def child_exact(work: Path, size: int, shortlist: int) -> dict:
    """Exact top-1 of every query over the whole map (chunked; its own process, so it does not inflate the
    query process's RSS with the pages it reads)."""
    full = large.descriptors(work / f"index-{size}")
    queries = np.load(work / "queries.npy")
    rows = np.arange(len(queries))
    exact, best = np.full(len(queries), -1), np.full(len(queries), -np.inf, dtype=np.float32)
    for s in range(0, len(full), EXACT_CHUNK):
        sims = queries @ np.asarray(full[s:s + EXACT_CHUNK], dtype=np.float32).T
        j = sims.argmax(1)
        better = sims[rows, j] > best
        best[better], exact[better] = sims[rows, j][better], j[better] + s
    return {"exact_top1": exact.tolist()}


def recall(top1: list[int], tol: int = 2) -> float:
    """Nordland ground truth: query i matches map place i +- tol (the true map comes first in the index)."""
    t = np.asarray(top1)
    return float((np.abs(t - np.arange(len(t))) <= tol).mean())


def run_child(phase: str, args: argparse.Namespace, size: int) -> dict:
    cmd = [sys.executable, __file__, "--phase", phase, "--work", str(args.work), "--size", str(size),
           "--budget", args.budget, "--shortlist", str(args.shortlist)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--work", type=Path, default=Path("/tmp/vprkit-scale"))
    p.add_argument("--preset", default="dinov2-gem")
    p.add_argument("--resize-max", type=int, default=224)
    p.add_argument("--sizes", default="1000000,10000000")
    p.add_argument("--budget", default="2GB")
    p.add_argument("--shortlist", type=int, default=large.SHORTLIST)
    p.add_argument("--phase", choices=["build", "query", "exact"], help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:
        if args.phase == "build":
            res = child_build(args.work, args.size, large.parse_bytes(args.budget))
        else:
            res = (child_query if args.phase == "query" else child_exact)(args.work, args.size, args.shortlist)
        res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(res))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}\n", flush=True)
    conf = extract.get_conf(args.preset, preprocessing={"resize_max": args.resize_max})
    data = Path(args.data)
    map_true, queries = (describe(data, f, conf, args.work) for f in NORDLAND)
    others = np.concatenate([describe(data, f, conf, args.work) for f in OTHERS])
    np.save(args.work / "map_real.npy", np.concatenate([map_true, others]))
    np.save(args.work / "queries.npy", queries)
    print(f"{args.preset} (long side {args.resize_max}), dim {map_true.shape[1]}; {len(queries)} queries, "
          f"{len(map_true)} true map + {len(others)} real distractors + synthetic; budget {args.budget}, "
          f"shortlist {args.shortlist} re-scored exactly\n")
    print("| map size | index | build s | build peak RSS MiB | query peak RSS MiB | p50 ms | p99 ms | "
          "R@1 compressed+rescored | R@1 exact | ratio | top-1 = exact | bytes on disk / image |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for size in map(int, args.sizes.split(",")):
        b = run_child("build", args, size)
        q = run_child("query", args, size)
        exact = run_child("exact", args, size)["exact_top1"]
        r, e = recall(q["top1"]), recall(exact)
        same = float(np.mean(np.asarray(q["top1"]) == np.asarray(exact)))
        where = "on disk" if b["on_disk"] else "RAM"
        print(f"| {size:,} | {b['factory']} ({where}, nprobe {b['nprobe']}) | {b['build_s']:.0f} | "
              f"{b['peak_rss_mib']:.0f} | {q['peak_rss_mib']:.0f} | {q['lat_p50_ms']:.1f} | {q['lat_p99_ms']:.1f} | "
              f"{r:.3f} | {e:.3f} | {r / e if e else float('nan'):.3f} | {same:.3f} | "
              f"{q['disk_bytes'] / size:.0f} |", flush=True)


if __name__ == "__main__":
    main()
