"""Extraction throughput (images/s) of each preset on the shipped Corridor map images."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import machine

from vprkit.demo import DEMO_DATA
from vprkit.features import extract


def _timed(conf: dict, images: Path, out: Path, state: Path, ext: extract.Extractor) -> float:
    start = time.perf_counter()
    extract.main(conf, images, out, state, extractor=ext)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--presets", default=",".join(extract.CONFS))
    args = p.parse_args()
    images = DEMO_DATA / "ref"
    n = len(list(images.iterdir()))
    print(f"machine: {machine()}\n{n} Corridor images (160x120, resized per preset)\n")
    print("| preset | fit s | images/s (extraction, excl. fit) | speed vs first preset |\n|---|---|---|---|")
    base = None
    for preset in args.presets.split(","):
        conf = extract.CONFIG.resolve(preset)
        ext = extract.Extractor(conf)
        with tempfile.TemporaryDirectory() as tmp:
            first = _timed(conf, images, Path(tmp) / "a.h5", Path(tmp) / "state.npz", ext)  # fit + extract
            second = _timed(conf, images, Path(tmp) / "b.h5", Path(tmp) / "state.npz", ext)  # extract only
        fit_t, rate = max(first - second, 0.0), n / second
        base = base or rate
        print(f"| {preset} | {fit_t:.1f} | {rate:.1f} | {rate / base:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
