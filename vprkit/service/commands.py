"""`vprkit serve` and `vprkit keys add`: their arguments and what they run (imported by
`vprkit.cli`; the service's own modules load only when a command runs, so the CLI starts without FastAPI)."""

from __future__ import annotations

import argparse


def port(text: str) -> int:
    """argparse type: a TCP port, 0..65535 (else exit 2)."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is in 0..65535, got {value}")
    return value


port.__name__ = "port"  # argparse's "invalid port value: 'x'"


def add_parsers(sub, settings, add_settings) -> None:
    """Register `serve` and `keys` on the CLI's subparsers; each sets `run(args)`. `settings(args)` is the service's
    config from `--preset` / `--set`, which `add_settings(parser, ...)` adds."""
    s = sub.add_parser("serve", help="HTTP localization service on an index (OpenAPI docs at /docs)")
    s.add_argument("index_dir")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    s.add_argument("--port", type=port, default=8000)
    s.add_argument("--keys", help="API keys file (hashed; `vprkit keys add`); without it a token printed at start "
                                  "is needed to change the map and anyone may read")
    add_settings(s, "service preset: the streams' localizer and its localized/lost line (default "
                 "seqslam-candidates; `vprkit presets serve`)",
                 set_help="service settings, e.g. max_batch=16 batch_wait_ms=5 rate_per_s=20 (see docs/service.md); "
                          "unknown keys are refused with the valid ones")
    s.set_defaults(run=lambda a: _serve(a, settings(a)))
    k = sub.add_parser("keys", help="API keys of `vprkit serve --keys FILE`")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    a = ksub.add_parser("add", help="create a key (printed once; the file keeps only its SHA-256)")
    a.add_argument("keys_file")
    a.add_argument("name", help="who uses the key (an existing name gets a new key)")
    a.add_argument("--scopes", default="read", help="comma-separated: read, write (default read)")
    a.set_defaults(run=_add_key)


def _serve(args, settings: dict) -> None:
    from .server import run

    run(args.index_dir, args.host, args.port, args.keys, settings, args.device)


def _add_key(args) -> None:
    from .auth import add_key

    print(add_key(args.keys_file, args.name, [s.strip() for s in args.scopes.split(",") if s.strip()]))
