"""Extraction throughput (images/s) of each preset on the shipped Corridor map images."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import machine

from vprkit.demo import DEMO_DATA
from vprkit.features import extract


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--presets", default=",".join(extract.CONFS))
    args = p.parse_args()
    images = DEMO_DATA / "ref"
    n = len(list(images.iterdir()))
    print(f"machine: {machine()}\n{n} Corridor images (160x120, resized per preset)\n")
    print("| preset | fit s | images/s (extraction, excl. fit) |\n|---|---|---|")
    for preset in args.presets.split(","):
        conf = extract.get_conf(preset)
        ext = extract.Extractor(conf)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            extract.main(conf, images, Path(tmp) / "f.h5", Path(tmp) / "state.npz", extractor=ext)
            fit_t = 0.0
            if ext.aggregator.needs_fit:  # second run reuses the fitted state: pure extraction
                fit_t = time.perf_counter() - start
                start = time.perf_counter()
                extract.main(conf, images, Path(tmp) / "g.h5", Path(tmp) / "state.npz", extractor=ext)
                fit_t -= time.perf_counter() - start
            rate = n / (time.perf_counter() - start)
        print(f"| {preset} | {max(fit_t, 0):.1f} | {rate:.1f} |", flush=True)


if __name__ == "__main__":
    main()
