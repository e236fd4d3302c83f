"""`vprkit serve`, `vprkit keys add` and `vprkit replay`: their arguments and what they run (imported by
`vprkit.cli`; the service's own modules load only when a command runs, so the CLI starts without FastAPI)."""

from __future__ import annotations

import argparse
import os


def port(text: str) -> int:
    """argparse type: a TCP port, 0..65535 (else exit 2)."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is in 0..65535, got {value}")
    return value


port.__name__ = "port"  # argparse's "invalid port value: 'x'"
KEY_ENV = "VPRKIT_KEY"  # `vprkit replay`'s key when --key is not given


def add_parsers(sub, parse_overrides) -> None:
    """Register `serve`, `keys` and `replay` on the CLI's subparsers; each sets `run(args)`."""
    s = sub.add_parser("serve", help="HTTP localization service on an index (OpenAPI docs at /docs)")
    s.add_argument("index_dir")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    s.add_argument("--port", type=port, default=8000)
    s.add_argument("--keys", help="API keys file (hashed; `vprkit keys add`); without it a token printed at start "
                                  "is needed to change the map and anyone may read")
    s.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="service settings, e.g. max_batch=16 batch_wait_ms=5 rate_per_s=20 (see docs/service.md)")
    s.set_defaults(run=lambda a: _serve(a, parse_overrides(a.set)))
    k = sub.add_parser("keys", help="API keys of `vprkit serve --keys FILE`")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    a = ksub.add_parser("add", help="create a key (printed once; the file keeps only its SHA-256)")
    a.add_argument("keys_file")
    a.add_argument("name", help="who uses the key (an existing name gets a new key)")
    a.add_argument("--scopes", default="read", help="comma-separated: read, write (default read)")
    a.set_defaults(run=_add_key)
    r = sub.add_parser("replay", help="send a folder of frames to a running `vprkit serve` as a robot's stream")
    r.add_argument("folder", help="the frames (images, sent in name order)")
    r.add_argument("--url", default="http://127.0.0.1:8000", help="the service (default %(default)s)")
    r.add_argument("--fps", type=float, default=10.0, help="frames per second (0: as fast as answered)")
    r.add_argument("--stream", default="replay", help="stream id (1-64 of A-Za-z0-9_.-; default %(default)s)")
    r.add_argument("--key", default=os.environ.get(KEY_ENV),
                   help=f"API key, when the server needs one to read (default: ${KEY_ENV})")
    r.add_argument("--start", type=int, default=0, help="skip the first N frames")
    r.add_argument("--limit", type=int, help="send at most N frames")
    r.set_defaults(run=_replay)


def _serve(args, settings: dict) -> None:
    from .server import run

    run(args.index_dir, args.host, args.port, args.keys, settings, args.device)


def _add_key(args) -> None:
    from .auth import add_key

    print(add_key(args.keys_file, args.name, [s.strip() for s in args.scopes.split(",") if s.strip()]))


def _replay(args) -> None:
    """Print one line per frame and a summary; a server that cannot be reached or refuses is one error line."""
    import httpx

    from ..client import Client, ServiceError, replay

    client, states = Client(args.url, args.key), {"localized": 0, "lost": 0}
    try:
        for n, (name, a) in enumerate(replay(client, args.folder, args.stream, args.fps, args.limit, args.start), 1):
            states[a["state"]] += 1
            est = a["estimate"]
            print(f"{n:5d} {name} -> {est['name'] if est else '-'} {a['state']}"
                  + (f" (confidence {est['confidence']:.3f})" if est and est["confidence"] is not None else ""),
                  flush=True)
    except httpx.TransportError as exc:
        raise ValueError(f"cannot reach the service at {args.url}: {exc}") from None
    except ServiceError as exc:
        raise ValueError(f"the service at {args.url} refused a frame: {exc}") from None
    finally:
        client.close()
    print(f"{sum(states.values())} frames sent to {args.url} as stream {args.stream!r}: {states['localized']} "
          f"localized, {states['lost']} lost; {client.retried} requests waited out the server's rate limit (429, "
          f"Retry-After: {client.waited_s:.1f} s in all)")
