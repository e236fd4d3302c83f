"""What every subcommand shares: checked argparse types, `--preset` / `--set`, and building a step's config."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..config import Presets, parse_overrides
from ..data.groundtruth import positions_spec
from ..evaluation import metrics
from ..results import read_results


def at_least(minimum: int, maximum: int | None = None):
    """argparse type: an integer >= `minimum` (and <= `maximum`); others are refused with exit code 2."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum or maximum is not None and value > maximum:
            bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value
    parse.__name__ = "integer"  # argparse's "invalid integer value: 'x'"
    return parse


def number(minimum: float = 0.0):
    """argparse type: a finite number >= `minimum` (NaN, inf and smaller values are refused with exit code 2)."""
    def parse(text: str) -> float:
        value = float(text)
        if not math.isfinite(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"must be a finite number >= {minimum:g}, got {text}")
        return value
    parse.__name__ = "number"
    return parse


def fraction(text: str) -> float:
    """argparse type: a number in (0, 1] (a precision target)."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text}")
    return value


positive_int = at_least(1)
distance = number(0.0)  # --threshold: metres, or frames for 'sequence'


def add_settings(s: argparse.ArgumentParser, preset_help: str, default: str | None = None,
                 choices: list[str] | None = None, set_help: str = "") -> None:
    """`--preset NAME` and `--set KEY=VALUE ...` (dotted keys, JSON values; unknown keys are refused)."""
    s.add_argument("--preset", default=default, choices=choices, help=preset_help)
    s.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help=set_help or "override any setting, dotted for nested ones (VALUE parsed as JSON when it can "
                                    "be); unknown keys are refused with the valid ones")


class PositionsGt(argparse.Action):
    """`--gt-query FILE` / `--gt-map FILE`: kept, and `gt` becomes their spec ('query=FILE[;map=FILE]'), so every
    step reads one ground truth argument."""

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        setattr(namespace, self.dest, value)
        query, map_csv = getattr(namespace, "gt_query", None), getattr(namespace, "gt_map", None)
        namespace.gt = positions_spec(query, map_csv)


def add_gt(s: argparse.ArgumentParser, required: bool = False) -> None:
    """`--gt` (or `--gt-query` [+ `--gt-map`]) and `--threshold` (checked: a finite distance >= 0)."""
    group = s.add_mutually_exclusive_group(required=required)
    group.add_argument("--gt", help="ground truth: 'utm', 'sequence', 'index', a .npz, a .csv (positions; a 'set' "
                                    "column tells map and query rows apart) or a positives file")
    group.add_argument("--gt-query", action=PositionsGt, metavar="FILE.csv",
                       help="ground truth from positions: the queries' positions CSV (the map's: --gt-map, or the "
                            "index's own from `vprkit index --positions` / @east@north@ names)")
    s.add_argument("--gt-map", action=PositionsGt, metavar="FILE.csv", help="the map's positions CSV (with --gt-query)")
    s.add_argument("--threshold", type=distance, help="positive distance (m; frames for 'sequence')")


def add_query(s: argparse.ArgumentParser) -> None:
    """INDEX_DIR QUERY_DIR, `--top-k`, `-o` and the ground truth: what every query command takes."""
    s.add_argument("index_dir")
    s.add_argument("query_dir")
    s.add_argument("--top-k", type=positive_int, default=20)
    s.add_argument("-o", "--out", help="results folder (default INDEX/results/QUERY_NAME)")
    add_gt(s)


def overrides(args: argparse.Namespace, flags: dict | None = None) -> dict:
    """The dedicated flags that were given (None: not given), then `--set` (which wins)."""
    return {**{k: v for k, v in (flags or {}).items() if v is not None}, **parse_overrides(args.set)}


def step_conf(presets: Presets, args: argparse.Namespace, flags: dict | None = None) -> dict:
    """The step's config: `--preset` (the step's default when absent), the flags, `--set`, and the global
    `--device` where the step has a device setting that `--set device=...` did not give."""
    over = overrides(args, flags)
    conf = presets.resolve(args.preset, over)
    if "device" in conf and "device" not in over:
        conf["device"] = args.device
    return conf


def print_results(out: Path) -> None:
    """What `vprkit query` and `segvlad query` print: the metrics (with ground truth) and where the files are."""
    res = read_results(out)
    if "metrics" in res:
        print(metrics.format_table({res["preset"]: res["metrics"]}))
    print(f"predictions, pairs, results.json and report.html in {out}")
