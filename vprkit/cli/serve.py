"""`vprkit serve INDEX` and `vprkit keys add` (the service's own parsers, `service.commands`, with the settings of
`--preset` / `--set` resolved and checked like every step's before the server starts), and `vprkit replay`, a client
of a running service."""

from __future__ import annotations

import argparse
import os

from .common import add_settings, step_conf

KEY_ENV = "VPRKIT_KEY"  # `vprkit replay`'s key when --key is not given


def add(sub) -> None:
    """Register `vprkit serve` and `vprkit keys` (the service's commands, which set `args.run`) and `vprkit replay`."""
    from ..service.commands import add_parsers

    add_parsers(sub, serve_settings, add_settings)
    sub.choices["serve"].set_defaults(func=_run, conf=serve_settings)
    sub.choices["keys"].set_defaults(func=_run)
    r = sub.add_parser("replay", help="send a folder of frames to a running `vprkit serve` as a robot's stream")
    r.add_argument("folder", help="the frames (images, sent in name order)")
    r.add_argument("--url", default="http://127.0.0.1:8000", help="the service (default %(default)s)")
    r.add_argument("--fps", type=float, default=10.0, help="frames per second (0: as fast as answered)")
    r.add_argument("--stream", default="replay", help="stream id (1-64 of A-Za-z0-9_.-; default %(default)s)")
    r.add_argument("--key", default=os.environ.get(KEY_ENV),
                   help=f"API key, when the server needs one to read (default: ${KEY_ENV})")
    r.add_argument("--start", type=int, default=0, help="skip the first N frames")
    r.add_argument("--limit", type=int, help="send at most N frames")
    r.set_defaults(func=run_replay)


def _run(args: argparse.Namespace) -> None:
    args.run(args)


def serve_settings(args: argparse.Namespace) -> dict:
    """The service's config: `--preset` (default seqslam-candidates) and `--set`, checked before the server
    starts."""
    from ..service.settings import CONFIG

    return step_conf(CONFIG, args)


def run_replay(args: argparse.Namespace) -> None:
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
