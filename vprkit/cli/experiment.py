"""`vprkit experiment CONFIG`: datasets x pipelines from a TOML / YAML file, resumable, one table per dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import experiment


def add(sub) -> None:
    """Register the subcommand of this module."""
    s = sub.add_parser("experiment", help="run datasets x pipelines from a TOML or YAML config (finished cells are "
                                          "skipped), then a comparison table per dataset")
    s.add_argument("config", help="a .toml or .yaml file (see docs/experiments.md)")
    s.add_argument("-o", "--out", help="output folder (default: the config file's name, in the current folder)")
    s.set_defaults(func=run_experiment, conf=experiment_conf)


def experiment_conf(args: argparse.Namespace) -> experiment.Experiment:
    """The config read and checked (presets, settings, folders), without running anything."""
    path = Path(args.config)
    return experiment.parse(experiment.read_config(path), path.resolve().parent, str(path))


def run_experiment(args: argparse.Namespace) -> None:
    path = Path(args.config)
    out = Path(args.out) if args.out else Path(path.stem)
    for folder in experiment.main(path, out, device=args.device):
        print(f"{folder.parent.name}:\n{(folder / 'table.md').read_text(encoding='utf-8')}")
    print(f"results in {out}")
