"""Extra time and size of a Patch-NetVLAD report's match figures.

    python bench/report_match_figures.py RESULTS_DIR --gt GT [--preset speed] [--set KEY=VALUE ...] [--repeats 2]

Re-ranks RESULTS_DIR (a `vprkit query` folder) `--repeats` times with the default `--match-figures` (the first
run computes and caches the patch features, later ones reuse them) and times the figure step inside each run,
so the ratio of the figures' time to the rest of the run is measured under the same load; prints the machine,
each run's time, its figure step, and the figures' count and bytes against the rest of the report.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402

from vprkit import rerank  # noqa: E402
from vprkit.config import parse_overrides  # noqa: E402
from vprkit.evaluation.report import files_dir  # noqa: E402
from vprkit.rerank import base  # noqa: E402
from vprkit.rerank.patchnetvlad import PatchNetVLAD  # noqa: E402
from vprkit.results import read_results


class TimedFigures(PatchNetVLAD):
    """Patch-NetVLAD whose figure step (model load, RANSAC, drawing) records its wall time."""

    spent: list[float] = []

    def match_figures(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = super().match_figures(*args, **kwargs)
        self.spent.append(time.perf_counter() - t0)
        return out


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
    conf = PatchNetVLAD.CONFIG.resolve(args.preset, **parse_overrides(args.set))
    out = args.results_dir / f"rerank-patchnetvlad-{args.preset}"
    print(f"machine: {machine()}")
    print("| run | re-ranking + report, s | of which match figures, s | figures / rest |")
    print("|---|---|---|---|")
    rerank.REGISTRY["patchnetvlad"] = "__main__:TimedFigures"  # what the step `main` runs for this method
    for run in range(args.repeats):
        t0 = time.perf_counter()
        res = read_results(base.main(conf, args.results_dir, out, gt=args.gt))
        total, fig = time.perf_counter() - t0, TimedFigures.spent[-1]
        print(f"| {run + 1} | {total:.1f} | {fig:.1f} | {fig / (total - fig):.3f} |")
    files = files_dir(out / "report.html")
    figs = list((files / "matches").glob("*.jpg"))
    report = _bytes([out / "report.html", *files.rglob("*")])
    print(f"R@1 global {res['metrics_global']['R@1']:.3f} -> re-ranked {res['metrics']['R@1']:.3f}; "
          f"figures: {len(figs)} files, {_bytes(figs) / 1e6:.2f} MB ({_bytes(figs) / max(len(figs), 1) / 1e3:.1f} kB "
          f"each); report without them {(report - _bytes(figs)) / 1e6:.2f} MB, with {report / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
