"""Extra time and size of a Patch-NetVLAD report's match figures.

    python bench/report_match_figures.py RESULTS_DIR --gt GT [--preset speed] [--set KEY=VALUE ...] [--repeats 2]

Re-ranks RESULTS_DIR (a `vprkit query` folder) once, which computes and caches the patch features, then re-runs
the same re-ranking alternately with `--match-figures 0` and with the default on the warm cache, so the
difference of the medians is what the figures cost; prints the machine, both times, the number of figures and
their bytes against the rest of the report.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402

from vprkit.cli import parse_overrides  # noqa: E402
from vprkit.evaluation.report import files_dir  # noqa: E402
from vprkit.rerank import base  # noqa: E402
from vprkit.rerank.patchnetvlad import PatchNetVLAD  # noqa: E402


def _bytes(paths) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results_dir", type=Path)
    p.add_argument("--gt", required=True)
    p.add_argument("--preset", default="speed")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    conf = PatchNetVLAD.get_conf(args.preset, **parse_overrides(args.set))
    out = args.results_dir / f"rerank-patchnetvlad-{args.preset}"
    print(f"machine: {machine()}")
    t0 = time.perf_counter()
    res = base.main(conf, args.results_dir, out, args.gt)
    print(f"first run (patch features computed, {base.MATCH_FIGURES} figures allowed): "
          f"{time.perf_counter() - t0:.1f} s, R@1 global {res['metrics_global']['R@1']:.3f} -> "
          f"re-ranked {res['metrics']['R@1']:.3f}")
    times: dict[int, list[float]] = {0: [], base.MATCH_FIGURES: []}
    for _ in range(args.repeats):
        for n in times:
            t0 = time.perf_counter()
            base.main(conf, args.results_dir, out, args.gt, match_figures=n)
            times[n].append(time.perf_counter() - t0)
    files = files_dir(out / "report.html")
    figs = list((files / "matches").glob("*.jpg"))
    report = _bytes([out / "report.html", *files.rglob("*")])
    without, with_figs = (statistics.median(times[n]) for n in times)
    print(f"warm re-ranking + report, {args.repeats} runs each, interleaved: without figures "
          f"{[round(t, 1) for t in times[0]]} s, with {[round(t, 1) for t in times[base.MATCH_FIGURES]]} s; "
          f"extra {with_figs - without:.1f} s ({(with_figs - without) / max(len(figs), 1) * 1e3:.0f} ms a figure)")
    print(f"figures: {len(figs)} files, {_bytes(figs) / 1e6:.2f} MB ({_bytes(figs) / max(len(figs), 1) / 1e3:.1f} kB "
          f"each); report without them {(report - _bytes(figs)) / 1e6:.2f} MB, with {report / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
