"""Maps of millions: Nordland dev queries against their true map plus 1M / 10M distractors.

Distractors are real descriptors of other images (the other dev sets) plus synthetic ones drawn to match the
real descriptors' statistics (mean and principal axes with their variances, then L2-normalised). For each map
size the index is chosen from the memory budget (`vprkit.index.large.choose`), built chunk by chunk in a child
process, then queried one query at a time in another child (latency p50 / p99): compressed search + exact
re-scoring of the shortlist, against exact search over the same map.

Memory of the build and query children, two ways: peak anonymous memory (RssAnon of the child and its descendants,
sampled every 20 ms: what the process allocated, not the file pages it maps) next to peak RSS (VmHWM: includes the
memory-mapped descriptors and inverted lists, which the kernel drops under pressure); and, with `--cgroup-limit 2G`
(Linux, cgroup v1 memory controller, root), the build child (and the query child with `--limit-queries`) runs
inside a memory cgroup of that size: with no swap,
exceeding it in anonymous memory gets the child OOM-killed, so a finished row proves the limit. The cgroup's own
peak (anonymous + page cache charged to it) and its OOM-kill count are printed too.

    python bench/scale.py --data ../shared/data --sizes 1000000,10000000 --budget 2GB --cgroup-limit 2G \
        --work /tmp/vprkit-scale
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from vprkit.index import large  # the children import no torch: their memory is the index's

NORDLAND = ("nordland_64x32_dev/summer", "nordland_64x32_dev/winter")
OTHERS = ("corridor/ref", "corridor/query", "essex3in1_thumbs/ref", "essex3in1_thumbs/query",
          "gardenspoint_mini10/ref", "gardenspoint_mini10/query", "toy_streets_unlabeled/database",
          "toy_streets_unlabeled/queries")
CHUNK, EXACT_CHUNK = 100_000, 20_000
CGROUP_ROOT = Path("/sys/fs/cgroup/memory")


def describe(data: Path, folder: str, conf: dict, work: Path) -> np.ndarray:
    """Global descriptors of one folder (cached, resumable), in sorted name order."""
    from vprkit.data.images import list_images
    from vprkit.features import extract, h5io

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
    z = np.random.default_rng(seed).standard_normal((n, len(std)), dtype=np.float32)
    z *= std
    x = z @ vt
    x += mean
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def training_sample(map_real: np.ndarray, n_train: int, stats: tuple) -> np.ndarray:
    """The real map descriptors plus n_train synthetic ones, generated chunk by chunk into one array."""
    out = np.empty((len(map_real) + n_train, map_real.shape[1]), dtype=np.float32)
    out[:len(map_real)] = map_real
    for s in range(0, n_train, CHUNK):  # seeds apart from the map chunks' (1, 2, ...)
        n = min(CHUNK, n_train - s)
        out[len(map_real) + s:len(map_real) + s + n] = synthetic(stats, n, 10**6 + s // CHUNK)
    return out


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
    index = large.build_chunked(map_chunks(map_real, size, stats), size, dim, choice, out,
                                training_sample(map_real, n_train, stats))  # no reference kept: freed once trained
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


def _kib(pid: int, field: str) -> int:
    """A 'kB' field of /proc/PID/status, in KiB (0 once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(pid: int) -> list[int]:
    """pid and all its descendants (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except OSError:
                pass
    return out


class PeakAnon(threading.Thread):
    """Samples the anonymous memory (RssAnon) of a process tree every `period` s; `peak` is the largest sum, bytes."""

    def __init__(self, pid: int, period: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid, self.period, self.peak, self.done = pid, period, 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, 1024 * sum(_kib(p, "RssAnon") for p in _tree(self.pid)))
            self.done.wait(self.period)


def cgroup_create(limit: str) -> Path | None:
    """A cgroup-v1 memory cgroup limited to `limit`; None, with the reason printed, where that is not possible."""
    path = CGROUP_ROOT / f"vprkit-scale-{os.getpid()}"
    try:
        path.mkdir()
        (path / "memory.limit_in_bytes").write_text(str(large.parse_bytes(limit)))
    except OSError as e:
        print(f"--cgroup-limit {limit} skipped: cannot create a memory cgroup under {CGROUP_ROOT} ({e}); this needs "
              "Linux with the cgroup-v1 memory controller mounted there and root. Measuring without a limit.\n")
        if path.is_dir():
            path.rmdir()
        return None
    return path


def _oom_kills(cgroup: Path) -> int:
    for line in (cgroup / "memory.oom_control").read_text().splitlines():
        if line.startswith("oom_kill "):
            return int(line.split()[1])
    return 0


def run_child(phase: str, args: argparse.Namespace, size: int, cgroup: Path | None = None) -> dict:
    """Run one phase in a child process (inside `cgroup` if given); adds its peak anonymous memory."""
    cmd = [sys.executable, __file__, "--phase", phase, "--work", str(args.work), "--size", str(size),
           "--budget", args.budget, "--shortlist", str(args.shortlist)]
    enter = None
    if cgroup is not None:
        (cgroup / "memory.max_usage_in_bytes").write_text("0")
        kills = _oom_kills(cgroup)

        def enter() -> None:  # in the child, before exec: everything it runs is charged to the cgroup
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=enter)
    watch = PeakAnon(proc.pid)
    watch.start()
    out, err = proc.communicate()
    watch.done.set()
    watch.join()
    if proc.returncode != 0:
        oom = cgroup is not None and _oom_kills(cgroup) > kills
        why = f" (OOM-killed by the {args.cgroup_limit} cgroup limit)" if oom else ""
        raise SystemExit(f"{phase} at {size:,}: the child exited with {proc.returncode}{why}\n{err[-3000:]}")
    res = json.loads(out.splitlines()[-1])
    res["peak_anon_mib"] = watch.peak / 2**20
    if cgroup is not None:
        res["cgroup_peak_mib"] = int((cgroup / "memory.max_usage_in_bytes").read_text()) / 2**20
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--work", type=Path, default=Path("/tmp/vprkit-scale"))
    p.add_argument("--preset", default="dinov2-gem")
    p.add_argument("--resize-max", type=int, default=224)
    p.add_argument("--sizes", default="1000000,10000000")
    p.add_argument("--budget", default="2GB")
    p.add_argument("--shortlist", type=int, default=large.SHORTLIST)
    p.add_argument("--cgroup-limit", help="run the build (and, with --limit-queries, query) children inside a "
                   "cgroup-v1 memory limit of this size (e.g. 2G; Linux, root; skipped with a message otherwise)")
    p.add_argument("--limit-queries", action="store_true", help="queries inside the limit too (lists and descriptors "
                   "then come from disk: latency measures the disk, not the index)")
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
    from common import machine

    from vprkit.features import extract

    print(f"machine: {machine()}\n", flush=True)
    conf = extract.CONFIG.resolve(args.preset, preprocessing={"resize_max": args.resize_max})
    data = Path(args.data)
    map_true, queries = (describe(data, f, conf, args.work) for f in NORDLAND)
    others = np.concatenate([describe(data, f, conf, args.work) for f in OTHERS])
    np.save(args.work / "map_real.npy", np.concatenate([map_true, others]))
    np.save(args.work / "queries.npy", queries)
    print(f"{args.preset} (long side {args.resize_max}), dim {map_true.shape[1]}; {len(queries)} queries, "
          f"{len(map_true)} true map + {len(others)} real distractors + synthetic; budget {args.budget}, "
          f"shortlist {args.shortlist} re-scored exactly\n")
    cgroup = cgroup_create(args.cgroup_limit) if args.cgroup_limit else None
    limit = f"in a {args.cgroup_limit} cgroup: " if cgroup else ""
    print(f"| map size | index | build s | build peak MiB: anon / RSS | query peak MiB: anon / RSS | "
          f"{limit}cgroup peak MiB: build / query | p50 ms | p99 ms | R@1 compressed+rescored | R@1 exact | ratio | "
          "top-1 = exact | bytes on disk / image |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    try:
        for size in map(int, args.sizes.split(",")):
            b = run_child("build", args, size, cgroup)
            q = run_child("query", args, size, cgroup if args.limit_queries else None)
            exact = run_child("exact", args, size)["exact_top1"]
            r, e = recall(q["top1"]), recall(exact)
            same = float(np.mean(np.asarray(q["top1"]) == np.asarray(exact)))
            where = "on disk" if b["on_disk"] else "RAM"
            held = f"{b['cgroup_peak_mib']:.0f} / {q.get('cgroup_peak_mib', 0):.0f}" if cgroup else "not run"
            print(f"| {size:,} | {b['factory']} ({where}, nprobe {b['nprobe']}) | {b['build_s']:.0f} | "
                  f"{b['peak_anon_mib']:.0f} / {b['peak_rss_mib']:.0f} | {q['peak_anon_mib']:.0f} / "
                  f"{q['peak_rss_mib']:.0f} | {held} | {q['lat_p50_ms']:.1f} | {q['lat_p99_ms']:.1f} | {r:.3f} | "
                  f"{e:.3f} | {r / e if e else float('nan'):.3f} | {same:.3f} | {q['disk_bytes'] / size:.0f} |",
                  flush=True)
    finally:
        if cgroup is not None:
            cgroup.rmdir()


if __name__ == "__main__":
    main()
