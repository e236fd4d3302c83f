"""Sharded extraction on a local Ray cluster (N workers) vs one process, same images, same result.

    python bench/ray_extract.py [--images DIR] [--workers 2] [--preset mobilenetv2-gem] [--resize-max 160]

Prints images/s of the plain single-process extraction, of the same shards in one process, and of Ray with N
workers (cluster start included and excluded), the ratio to the single process, and the largest descriptor
difference to it; then, from the shards' `.done` records, how long the actors took to start (the first shard's
start after the job's) and their extraction rate inside shards, which is what more images would run at.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine

from vprkit.data.images import list_images
from vprkit.features import distributed, extract, h5io

DEMO = Path(__file__).resolve().parents[1] / "vprkit" / "demo_data" / "corridor"


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, default=DEMO / "ref")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--preset", default="mobilenetv2-gem")
    p.add_argument("--resize-max", type=int, default=160)
    p.add_argument("--shard-size", type=int, default=16)
    args = p.parse_args()
    import ray

    print(f"machine: {machine()}\n")
    names = list_images(args.images)
    conf = extract.CONFIG.resolve(args.preset, preprocessing={"resize_max": args.resize_max})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t_plain, _ = timed(lambda: extract.main(conf, args.images, tmp / "plain.h5", tmp / "s.npz", names=names))
        t_shards, _ = timed(lambda: distributed.main(conf, args.images, tmp / "one.h5", tmp / "s.npz", names=names,
                                                     address=None, shard_size=args.shard_size))
        t_start, _ = timed(lambda: distributed.connect("local", args.workers))
        began = time.time()
        t_ray, ok = timed(lambda: distributed.main(conf, args.images, tmp / "ray.h5", tmp / "s.npz", names=names,
                                                   address="local", num_workers=args.workers,
                                                   shard_size=args.shard_size))
        ray.shutdown()
        diff = np.abs(h5io.read_global(tmp / "ray.h5", ok) - h5io.read_global(tmp / "plain.h5", ok)).max()
        shards = [json.loads(p.read_text()) for p in (tmp / "ray_shards").glob("*.done")]
    n = len(names)
    print(f"{n} images of {args.images}, {args.preset} at {args.resize_max} px, shards of {args.shard_size}\n")
    print("| run | seconds | images/s | vs one process |\n|---|---|---|---|")
    for label, t in (("one process (extract.main)", t_plain), ("shards, in process", t_shards),
                     (f"Ray, {args.workers} workers (excl. cluster start)", t_ray),
                     (f"Ray, {args.workers} workers (incl. {t_start:.1f} s cluster start)", t_ray + t_start)):
        print(f"| {label} | {t:.1f} | {n / t:.1f} | {t_plain / t:.2f}x |")
    print(f"\nlargest descriptor difference, Ray vs one process: {diff:.1e}")
    first = min(r["started"] for r in shards) - began
    busy = sum(r["seconds"] for r in shards)
    per_actor = {r["pid"] for r in shards}
    inside = n / (busy / args.workers)
    print(f"Ray actors: {len(per_actor)} processes ran shards; the first shard started {first:.1f} s after the job "
          f"(actors starting: importing torch, loading the model); inside shards {busy:.1f} actor-seconds for {n} "
          f"images = {inside:.1f} images/s with {args.workers} actors in parallel ({inside * t_plain / n:.2f}x one "
          "process)")


if __name__ == "__main__":
    main()
