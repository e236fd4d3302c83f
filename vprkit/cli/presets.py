"""`vprkit presets`: every step's named presets, generated from the step configs and the re-ranker registry."""

from __future__ import annotations

import argparse
import json

from ..api import step_configs


def add(sub) -> None:
    """Register `vprkit presets`."""
    s = sub.add_parser("presets", help="list the named presets of every step")
    s.add_argument("step", nargs="?", help="only this step's (index, rerank patchnetvlad, train ames, ...)")
    s.set_defaults(func=run_presets)


def run_presets(args: argparse.Namespace) -> None:
    steps = [p for p in step_configs() if args.step in (None, p.step)]
    if not steps:
        raise ValueError(f"unknown step '{args.step}'; choose one of {[p.step for p in step_configs()]}")
    for presets in steps:
        for name, conf in presets.listing():
            default = "  (default)" if name == presets.default else ""
            print(f"{presets.step:20s} {name:28s} {json.dumps(conf)}{default}")
