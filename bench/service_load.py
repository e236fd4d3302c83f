"""Load test of `vprkit serve` on loopback: 1, 4, 16, 64 concurrent clients against offline `vprkit query`.

For each client count: requests/s, p50 / p95 / p99 latency, errors, and the ratio of requests/s to the offline
images/s of `vprkit query` (api.localize, the same code as the command, in this process) on the same images,
and to the extraction step alone (no model load, search or report files: the stricter bound), each measured
before and after the server runs (the better of the two is used: the ratios err low). During the
16-client level one more client adds map images; each must be its own best match afterwards.
Bounded: --requests per level and --time-limit seconds per level.

    .venv/bin/python bench/service_load.py --data vprkit/demo_data/corridor --requests 192
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")  # server and offline alike; 2 threads on a busy 2-core box thrash
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from vprkit import api  # noqa: E402
from vprkit.data.images import list_images  # noqa: E402
from vprkit.results import read_results

TOKEN = secrets.token_urlsafe(32)


def offline_rate(index: Path, queries: Path, work: Path) -> float:
    """Images per second of `vprkit query` (model load, extraction, search, outputs) on `queries`."""
    out = work / f"offline-{time.monotonic_ns()}"
    t0 = time.perf_counter()
    res = read_results(api.localize(index, queries, out, top_k=5))
    dt = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return res["num_queries"] / dt


def extraction_rate(index: Path, queries: Path, work: Path) -> float:
    """Images per second of the extraction step alone (model already built; no search, no report files)."""
    from vprkit.features.extract import Extractor
    from vprkit.features.extract import main as extract
    from vprkit.index import faiss_index

    conf = faiss_index.load(index).manifest["conf"]
    ext = Extractor(conf)
    out = work / f"extract-{time.monotonic_ns()}.h5"
    t0 = time.perf_counter()
    n = len(extract(conf, queries, out, extractor=ext))
    dt = time.perf_counter() - t0
    out.unlink()
    return n / dt


def start_server(index: Path, port: int, max_batch: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "vprkit.cli", "serve", str(index), "--port", str(port), "--set",
           f"max_batch={max_batch}", "batch_wait_ms=5", "rate_per_s=0", "compact_every=0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "VPRKIT_TOKEN": TOKEN})  # map additions need the start-up token
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


async def level(url: str, images: list[bytes], clients: int, requests: int, time_limit: float,
                adds: list[tuple[str, bytes]]) -> dict:
    """`clients` workers share `requests` localizations (round-robin over the images); plus map additions."""
    lat: list[float] = []
    errors = 0
    counter = iter(range(requests))
    acked: list[str] = []
    deadline = time.monotonic() + time_limit

    async def worker(http: httpx.AsyncClient):
        nonlocal errors
        for i in counter:
            if time.monotonic() > deadline:
                return
            t0 = time.perf_counter()
            try:
                r = await http.post("/v1/localize", content=images[i % len(images)],
                                    headers={"Content-Type": "image/jpeg"})
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            lat.append(time.perf_counter() - t0)
            errors += not ok

    async def adder(http: httpx.AsyncClient):
        nonlocal errors
        for name, data in adds:
            r = await http.post("/v1/map/images", files={"image": data}, data={"name": name},
                                headers={"Authorization": f"Bearer {TOKEN}"})
            if r.status_code == 201:
                acked.append(name)
            else:
                errors += 1

    limits = httpx.Limits(max_connections=clients + 1)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(clients)), adder(http))
        wall = time.perf_counter() - t0
        missing = []
        for name, data in adds:
            r = await http.post("/v1/localize", params={"top_k": 1}, content=data,
                                headers={"Content-Type": "image/jpeg"})
            if r.status_code != 200 or r.json()["matches"][0]["name"] != name:
                missing.append(name)
    ms = np.array(lat) * 1000
    return {"clients": clients, "requests": len(lat), "errors": errors, "rps": len(lat) / wall,
            "p50": np.percentile(ms, 50), "p95": np.percentile(ms, 95), "p99": np.percentile(ms, 99),
            "adds": len(acked), "adds_missing": len(missing) + len(adds) - len(acked)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / "vprkit/demo_data/corridor"),
                   help="a folder with ref/ (the map) and query/ (the requests)")
    p.add_argument("--preset", default="mobilenetv2-gem")
    p.add_argument("--resize-max", type=int, default=160)
    p.add_argument("--clients", default="1,4,16,64")
    p.add_argument("--requests", type=int, default=192, help="localizations per level")
    p.add_argument("--time-limit", type=float, default=300, help="seconds per level at most")
    p.add_argument("--adds", type=int, default=8, help="map additions during the 16-client level")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--port", type=int, default=8599)
    args = p.parse_args()
    data = Path(args.data)
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="vprkit-load-") as tmp:
        work = Path(tmp)
        index = api.index_map(data / "ref", work / "idx", args.preset,
                              preprocessing={"resize_max": args.resize_max})
        qdir = data / "query"
        names = list_images(qdir)
        images = [(qdir / n).read_bytes() for n in names]
        before = offline_rate(index, qdir, work), extraction_rate(index, qdir, work)
        proc = start_server(index, args.port, args.max_batch)
        rows = []
        try:
            url = f"http://127.0.0.1:{args.port}"
            for c in (int(x) for x in args.clients.split(",")):
                adds = [(f"bench/add-{c}-{i}.jpg", images[(7 * i + 3) % len(images)]) for i in range(args.adds)]
                rows.append(asyncio.run(level(url, images, c, args.requests, args.time_limit,
                                              adds if c == 16 else [])))
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        after = offline_rate(index, qdir, work), extraction_rate(index, qdir, work)
    offline, extraction = max(before[0], after[0]), max(before[1], after[1])
    print(f"{args.preset} resize {args.resize_max}, {len(names)} query images from {data}, "
          f"max_batch {args.max_batch}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"offline `vprkit query`: {before[0]:.1f} img/s before, {after[0]:.1f} after (ratio uses {offline:.1f}); "
          f"extraction step alone: {before[1]:.1f} / {after[1]:.1f} img/s (uses {extraction:.1f})")
    print("| clients | requests | errors | req/s | p50 ms | p95 ms | p99 ms | x offline query | x extraction alone "
          "| map adds (missing) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        adds = f"{r['adds']} ({r['adds_missing']})" if r["clients"] == 16 else "-"
        print(f"| {r['clients']} | {r['requests']} | {r['errors']} | {r['rps']:.1f} | {r['p50']:.0f} | "
              f"{r['p95']:.0f} | {r['p99']:.0f} | {r['rps'] / offline:.2f} | {r['rps'] / extraction:.2f} | {adds} |")


if __name__ == "__main__":
    main()
