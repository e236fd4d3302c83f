"""How well a stream's `confidence` separates right from wrong estimates: the default `stream_min_confidence`.

Corridor's 111 queries sent in order as one stream to the service (in process) on an index of its 111 map images
(`mobilenetv2-gem`, 160 px; image i at position (i, 0)); for each threshold, the frames it calls localized, how
many of those are within `--near` places of the true one, and how many wrong estimates it calls lost. `--preset`:
the service preset whose stream localizer is measured; the line it prints is the threshold that keeps the most
frames localized with at least `--precision` of them right (the highest one on ties): each service preset's
`stream_min_confidence` (docs/service.md).

    OMP_NUM_THREADS=1 .venv/bin/python bench/stream_confidence.py
    OMP_NUM_THREADS=1 .venv/bin/python bench/stream_confidence.py --preset hmm
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from vprkit import api  # noqa: E402
from vprkit.service.app import build  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "vprkit" / "demo_data" / "corridor"


def main(thresholds: list[float], near: int, preset: str, precision: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "map").mkdir()
        for i in range(111):
            shutil.copy(DEMO / "ref" / f"{i:07d}.jpg", root / "map" / f"{i:07d}@{i}@0@.jpg")
        idx = api.index_map(root / "map", root / "idx", "mobilenetv2-gem", preprocessing={"resize_max": 160})
        app, _ = build(idx, settings={"preset": preset}, token="unused")
        with TestClient(app, base_url="http://127.0.0.1:8000") as c:
            rows = []
            for i in range(111):
                a = c.post("/v1/streams/bench/frames", files={"image": (DEMO / "query" / f"{i:07d}.jpg").read_bytes()})
                est = a.json()["estimate"]
                rows.append((abs(int(est["position"][0]) - i) <= near, est["confidence"]))
    wrong = sum(not ok for ok, _ in rows)
    print(machine())
    print(f"service preset {preset}: {len(rows)} frames, {wrong} estimates more than {near} places off\n")
    print("| stream_min_confidence | localized | of which right | wrong ones called lost |\n|---|---|---|---|")
    best = None  # (localized, threshold) of the line
    for t in thresholds:
        loc = [ok for ok, conf in rows if conf >= t]
        print(f"| {t} | {len(loc)} | {sum(loc)} | {wrong - (len(loc) - sum(loc))} of {wrong} |")
        if loc and sum(loc) >= precision * len(loc):
            best = max(best or (0, t), (len(loc), t))
    print(f"\nline: {best[1] if best else 'none'} (the most frames localized with >= {precision:.0%} of them right)")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.1, 0.15, 0.2, 0.3])
    p.add_argument("--near", type=int, default=5, help="an estimate within this many places is right")
    p.add_argument("--preset", default="seqslam-candidates", help="service preset (`vprkit presets serve`)")
    p.add_argument("--precision", type=float, default=0.93, help="share of the localized frames that must be right")
    a = p.parse_args()
    main(a.thresholds, a.near, a.preset, a.precision)
