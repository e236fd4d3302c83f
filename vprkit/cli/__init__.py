"""Command line: `vprkit index | query | rerank | sequence | segvlad | evaluate | compare | export | train | serve |
match-two | demo | presets | experiment`.

Each module of this package registers its subcommands in `add(sub)`, with `set_defaults(func=run, conf=build)`:
`run(args)` runs the step, `build(args)` (where the step has a config) builds and checks its configuration
without running it (the documented-commands test uses it). A new subcommand is a function in one of these
modules, or a new module listed in `COMMANDS`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import experiment, index, methods, presets, serve, train
from .train import modern_argv

COMMANDS = (index, methods, train, serve, presets, experiment)


def parser() -> argparse.ArgumentParser:
    """The whole command line."""
    p = argparse.ArgumentParser(prog="vprkit", description="Visual place recognition: index a map, localize queries.")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda), for every step")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; bad input ends with one line on stderr and exit code 2, a failed write with 1."""
    args = parser().parse_args(modern_argv(sys.argv[1:] if argv is None else list(argv)))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        args.func(args)
    except (FileNotFoundError, ValueError, KeyError) as exc:  # bad input (InputError is a ValueError)
        print(f"vprkit: error: {exc.args[0] if isinstance(exc, KeyError) and exc.args else exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a failed write (WriteError names the file), or another system error
        print(f"vprkit: error: {exc}", file=sys.stderr)
        return 1
    return 0


__all__ = ["main", "modern_argv", "parser"]
