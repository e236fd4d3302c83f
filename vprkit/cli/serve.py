"""`vprkit serve INDEX`, `vprkit keys add` and `vprkit replay`: the service's own parsers (`service.commands`),
with the service settings of `--set` checked like every step's (unknown keys, types) before the server starts."""

from __future__ import annotations

import argparse

from ..config import parse_overrides, resolve


def add(sub) -> None:
    """Register `vprkit serve`, `vprkit keys` and `vprkit replay` (the service's commands, which set `args.run`)."""
    from ..service.commands import add_parsers

    add_parsers(sub, serve_settings)
    sub.choices["serve"].set_defaults(func=_run, conf=lambda args: serve_settings(args.set))
    sub.choices["keys"].set_defaults(func=_run)
    sub.choices["replay"].set_defaults(func=_run)


def _run(args: argparse.Namespace) -> None:
    args.run(args)


def serve_settings(pairs: list[str]) -> dict:
    """The service settings of `--set KEY=VALUE ...`: the service's defaults with them, checked."""
    from ..service.state import DEFAULTS

    conf = resolve(DEFAULTS, {}, None, parse_overrides(pairs), what="service", open_sections=("rerank",))
    conf.pop("preset")
    return conf
