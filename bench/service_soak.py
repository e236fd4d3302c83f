"""Soak of the growing map: N minutes of mixed add / delete / localize / stream from several clients on loopback
against a real `vprkit serve` child process, a compaction every few seconds (`compact_every`), and kill -9 +
restarts of the server at even intervals. Then every acknowledged addition must be present and retrievable as
its own top-1, no removed image returned, no 5xx answer, and the journal intact (`journal.scan`: nothing skipped)
and equal to what the server answered.

Uses only the HTTP API (`vprkit.client`), the `vprkit serve` command, and the index folder's files.

    OMP_NUM_THREADS=1 .venv/bin/python bench/service_soak.py --minutes 10 --clients 8 --kills 2

Prints one JSON report; exit code 0 when every check holds. The test suite runs a few seconds of it
(tests/test_durability_soak.py).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from vprkit.client import Client, ServiceError
from vprkit.index import faiss_index, journal

DEMO = Path(__file__).resolve().parents[1] / "vprkit" / "demo_data" / "corridor"
KEY = "soak-key"


def picture(seed: int) -> bytes:
    """A distinct image: a random 6x8 grid of colours, blown up to 96x128 (PNG)."""
    grid = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grid).resize((128, 96), Image.NEAREST).save(buf, "PNG")
    return buf.getvalue()


def build_map(root: Path, n: int = 12) -> Path:
    """A map of `n` Corridor images, indexed with MobileNetV2-GeM at 160 px."""
    from vprkit import api

    map_dir = root / "map"
    map_dir.mkdir(parents=True)
    for i in range(n):
        shutil.copy(DEMO / "ref" / f"{i * 9:07d}.jpg", map_dir / f"{i * 9:07d}@{i}@0@.jpg")
    return api.index_map(map_dir, root / "idx", "mobilenetv2-gem", preprocessing={"resize_max": 160}, batch_size=4)


class Server:
    """`vprkit serve INDEX` in a child process on a fixed port, with one write + read key and no rate limit."""

    def __init__(self, index_dir: Path, compact_every: int) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.index_dir, self.proc = index_dir, None
        keys = index_dir.parent / "keys.json"
        keys.write_text(json.dumps({"keys": [{"name": "soak", "sha256": hashlib.sha256(KEY.encode()).hexdigest(),
                                              "scopes": ["read", "write"]}]}))
        self.cmd = [sys.executable, "-m", "vprkit.cli", "serve", str(index_dir), "--port", str(self.port),
                    "--keys", str(keys), "--set", f"compact_every={compact_every}", "rate_per_s=1000000",
                    "rate_burst=1000000"]
        self.log = index_dir.parent / "server.log"

    def start(self) -> float:
        """Start and wait until ready; seconds it took."""
        t0 = time.monotonic()
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(self.cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        while time.monotonic() - t0 < 300:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - t0
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError("server not ready in 300 s")

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(timeout=120)


class Ledger:
    """What the clients were told, shared by all of them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked: dict[str, int] = {}  # name -> picture seed, additions answered 201
        self.unsure: set[str] = set()  # additions or removals whose answer was lost (server killed)
        self.removed: dict[str, float] = {}  # name -> time its removal was acknowledged
        self.status: Counter = Counter()
        self.violations: list[str] = []
        self.ops: Counter = Counter()

    def violate(self, what: str) -> None:
        with self.lock:
            self.violations.append(what)


def _call(ledger: Ledger, op: str, name: str | None, fn, *args, **kwargs):
    """One request `fn(*args, **kwargs)`; records its status; None when the server did not answer (killed) or
    refused."""
    try:
        out = fn(*args, **kwargs)
        with ledger.lock:
            ledger.status[200] += 1
            ledger.ops[op] += 1
        return out
    except ServiceError as exc:  # every request is valid: any error answer is a failure
        with ledger.lock:
            ledger.status[exc.status] += 1
        ledger.violate(f"{op} {name}: {exc.status} {exc.detail[:200]}")
        return None
    except httpx.TransportError as exc:  # the server was killed: a request that reached it may have been applied
        with ledger.lock:
            ledger.status[f"no answer ({type(exc).__name__})"] += 1
            if op in ("add", "remove") and not isinstance(exc, httpx.ConnectError):
                ledger.unsure.add(name)
        time.sleep(0.2)
        return None


def _check_no_removed(ledger: Ledger, matches: list[dict], sent: float, what: str) -> None:
    with ledger.lock:
        gone = [m["name"] for m in matches if ledger.removed.get(m["name"], sent + 1) < sent]
    if gone:
        ledger.violate(f"{what} returned removed images {gone}")


def client_loop(t: int, url: str, ledger: Ledger, stop: threading.Event) -> None:
    """Add (50 %, with a position), remove one of its own (15 %), localize one of its own live images (25 %: it
    must be the top-1), or send a stream frame (10 %)."""
    c, rng, mine, i = Client(url, KEY, timeout=120), random.Random(t), [], 0
    while not stop.is_set():
        r = rng.random()
        if r < 0.5 or not mine:
            i += 1
            name, seed = f"soak/c{t}/{i}.png", t * 1_000_000 + i
            if _call(ledger, "add", name, c.add, name, picture(seed), (float(t), float(i))) is not None:
                with ledger.lock:
                    ledger.acked[name] = seed
                mine.append(name)
        elif r < 0.65:
            name = mine.pop(rng.randrange(len(mine)))
            if _call(ledger, "remove", name, c.remove, name) is not None:
                with ledger.lock:
                    ledger.removed[name] = time.monotonic()
            elif name not in ledger.unsure:  # never reached the server: still live
                mine.append(name)
        elif r < 0.9:
            name = rng.choice(mine)
            sent = time.monotonic()
            res = _call(ledger, "localize", name, c.localize, picture(ledger.acked[name]), top_k=5)
            if res is not None:
                if not res["matches"] or res["matches"][0]["name"] != name:
                    ledger.violate(f"localize {name}: top-1 {res['matches'][:1]}")
                _check_no_removed(ledger, res["matches"], sent, f"localize {name}")
        else:
            sent = time.monotonic()
            res = _call(ledger, "stream", None, c.frame, f"s{t}", picture(ledger.acked[rng.choice(mine)]))
            if res is not None:
                _check_no_removed(ledger, [m for m in (res["estimate"], res["frame_best"]) if m], sent, "stream")
    c.close()


def generations(index_dir: Path, stop: threading.Event, seen: set) -> None:
    """Count compactions: each makes a new generation current (the `current` link of the index folder)."""
    while not stop.is_set():
        try:
            seen.add(os.readlink(index_dir / faiss_index.CURRENT))
        except OSError:
            pass
        time.sleep(0.05)


def final_checks(server: Server, ledger: Ledger, clients: int) -> dict:
    """Every acknowledged, not removed, addition is its own top-1; the map lists no removed image."""
    live = {n: s for n, s in ledger.acked.items() if n not in ledger.removed and n not in ledger.unsure}
    c = Client(server.url, KEY, timeout=120)
    listed = {p["name"] for p in c.map()["points"]}
    missing = sorted(set(live) - listed)
    if missing:
        ledger.violate(f"{len(missing)} acknowledged additions missing, e.g. {missing[:3]}")
    resurrected = sorted((set(ledger.removed) - ledger.unsure) & listed)
    if resurrected:
        ledger.violate(f"{len(resurrected)} removed images listed, e.g. {resurrected[:3]}")
    names, wrong = sorted(live), []

    def check(part: list[str]) -> None:
        cc = Client(server.url, KEY, timeout=120)
        for n in part:
            res = cc.localize(picture(live[n]), top_k=5)
            if res["matches"][0]["name"] != n:
                wrong.append(n)
            _check_no_removed(ledger, res["matches"], time.monotonic(), f"final localize {n}")
        cc.close()

    threads = [threading.Thread(target=check, args=(names[k::clients],)) for k in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if wrong:
        ledger.violate(f"{len(wrong)} acknowledged additions not their own top-1, e.g. {wrong[:3]}")
    c.close()
    return {"live_added": len(live), "listed": len(listed)}


def verify_journal(index_dir: Path, ledger: Ledger) -> dict:
    """After the server stopped: the journal reads whole and the index holds exactly what was acknowledged."""
    scan = journal.scan(faiss_index.base_dir(index_dir))
    if scan.skipped:
        ledger.violate(f"journal has damaged spans {scan.skipped}")
    names = set(faiss_index.load(index_dir).live_names())
    live = {n for n in ledger.acked if n not in ledger.removed and n not in ledger.unsure}
    if not live <= names:
        ledger.violate(f"index lacks {len(live - names)} acknowledged additions")
    extra = {n for n in names if n.startswith("soak/")} - live - ledger.unsure
    if extra:
        ledger.violate(f"index holds {len(extra)} images neither acknowledged nor in doubt, e.g. {sorted(extra)[:3]}")
    return {"journal_records": len(scan.records), "journal_skipped": len(scan.skipped), "index_live": len(names)}


def soak(index_dir: Path, seconds: float, clients: int = 8, kills: int = 2, compact_every: int = 10) -> dict:
    """Run the soak on `index_dir` (a built index); the report, with `ok` and the violations."""
    server, ledger, stop, gens = Server(index_dir, compact_every), Ledger(), threading.Event(), set()
    starts = [server.start()]
    t0 = time.monotonic()
    workers = [threading.Thread(target=client_loop, args=(t, server.url, ledger, stop)) for t in range(clients)]
    workers.append(threading.Thread(target=generations, args=(index_dir, stop, gens)))
    for w in workers:
        w.start()
    try:
        for k in range(1, kills + 1):
            time.sleep(max(0.0, t0 + seconds * k / (kills + 1) - time.monotonic()))
            server.kill9()
            starts.append(server.start())
        time.sleep(max(0.0, t0 + seconds - time.monotonic()))
    finally:
        stop.set()
        for w in workers:
            w.join()
    report = {"seconds": round(time.monotonic() - t0, 1), "clients": clients, "kills": kills,
              "compact_every": compact_every, "restart_s": [round(s, 1) for s in starts],
              "generations_seen": len(gens), "ops": dict(ledger.ops),
              "status": {str(k): v for k, v in ledger.status.items()}, "acked_adds": len(ledger.acked),
              "acked_removes": len(ledger.removed), "unsure": len(ledger.unsure)}
    report |= final_checks(server, ledger, clients)
    server.kill9()  # a last kill -9: what is on disk must hold everything acknowledged
    report |= verify_journal(index_dir, ledger)
    report |= {"violations": ledger.violations[:20], "num_violations": len(ledger.violations),
               "ok": not ledger.violations}
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--kills", type=int, default=2)
    p.add_argument("--compact-every", type=int, default=10, help="changes between compactions")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="vprkit-soak-") as tmp:
        idx = build_map(Path(tmp))
        report = soak(idx, args.minutes * 60, args.clients, args.kills, args.compact_every)
    print(json.dumps(report, indent=1))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
