"""`vprkit serve INDEX`: the localization service (needs the `serve` extra)."""

from __future__ import annotations

import argparse

from ..config import resolve
from .common import at_least, overrides


def add(sub) -> None:
    """Register `vprkit serve`."""
    s = sub.add_parser("serve", help="HTTP localization service on an index (OpenAPI docs at /docs)")
    s.add_argument("index_dir")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    s.add_argument("--port", type=at_least(0, 65535), default=8000)
    s.add_argument("--keys", help="API keys file (hashed; see docs/service.md); without it every caller may write")
    s.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="service settings, e.g. max_batch=16 batch_wait_ms=5 rate_per_s=20 (see docs/service.md)")
    s.set_defaults(func=run_serve, conf=serve_conf)


def serve_conf(args: argparse.Namespace) -> dict:
    """The service settings: its defaults with `--set`, checked (unknown keys, types)."""
    from ..service.app import DEFAULTS

    conf = resolve(DEFAULTS, {}, None, overrides(args), what="service", open_sections=("rerank",))
    conf.pop("preset")
    return conf


def run_serve(args: argparse.Namespace) -> None:
    from ..service.app import run

    run(args.index_dir, args.host, args.port, args.keys, serve_conf(args), args.device)
