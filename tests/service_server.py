"""A small Corridor map and a real `vprkit serve` process on 127.0.0.1, for the service tests."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

DEMO = Path(__file__).resolve().parents[1] / "vprkit" / "demo_data" / "corridor"
PRESET, RESIZE = "mobilenetv2-gem", 160  # Corridor's own size: fast, and top-1 correct on the queries used
MAP_FRAMES = range(0, 111, 10)


def map_name(i: int) -> str:
    """Map images carry their frame number as an `@east@north@` position."""
    return f"{i:07d}@{i}@0@.jpg"


def query(i: int) -> Path:
    return DEMO / "query" / f"{i:07d}.jpg"


def build_index(root: Path, extra: dict[str, int] | None = None) -> Path:
    """Index of every 10th Corridor map image (12), positions from the names; `extra`: more map images,
    name -> Corridor map frame."""
    from vprkit import api

    map_dir = root / "map"
    map_dir.mkdir(parents=True)
    for i in MAP_FRAMES:
        shutil.copy(DEMO / "ref" / f"{i:07d}.jpg", map_dir / map_name(i))
    for name, i in (extra or {}).items():
        shutil.copy(DEMO / "ref" / f"{i:07d}.jpg", map_dir / name)
    return api.index_map(map_dir, root / "idx", PRESET, preprocessing={"resize_max": RESIZE}, batch_size=4)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m vprkit.cli serve INDEX` in a child process, ready when /readyz answers; `token`: the start-up
    token it printed (no keys); `max_files`: its file-descriptor limit."""

    def __init__(self, index_dir: Path, keys: Path | None = None, settings: dict | None = None,
                 max_files: int | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "vprkit.cli", "serve", str(index_dir), "--port", str(self.port)]
        if keys is not None:
            cmd += ["--keys", str(keys)]
        if settings:
            cmd += ["--set", *(f"{k}={json.dumps(v)}" for k, v in settings.items())]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.log = Path(index_dir).parent / f"server-{self.port}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         preexec_fn=None if max_files is None else lambda: resource.setrlimit(
                                             resource.RLIMIT_NOFILE, (max_files, max_files)))
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    found = re.search(r"#token=(\S+)", self.log.read_text())
                    self.token = found and found.group(1)
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        self.kill()
        raise RuntimeError("server did not become ready in 180 s")

    def stop(self) -> int:
        """SIGTERM (a clean shutdown compacts the journal); the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
