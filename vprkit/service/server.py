"""Serving the app with uvicorn, with bounds on connections (slowloris) and the start-up token.

uvicorn alone has no header timeout and no connection limit (its `limit_concurrency` answers 503 only once a
request's headers are complete, and a half-open connection still holds a file descriptor). `guarded_protocol`
adds both: a connection must complete its request headers within `header_timeout_s`, and at most
`max_connections` are open; a new one beyond that closes the oldest connection still waiting for its headers
(or itself, when every open one is busy with a request), so half-open connections cannot starve real clients.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import sys
from pathlib import Path

from .app import build
from .middleware import LOOPBACK

logger = logging.getLogger("vprkit")
TOKEN_ENV = "VPRKIT_TOKEN"  # a fixed start-up token (scripts, benchmarks); else a random one per start


def guarded_protocol(max_connections: int, header_timeout_s: float) -> type:
    """uvicorn's HTTP protocol class with a header deadline and a bound on open connections."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # the `serve` extra installs httptools

    class Guarded(HttpToolsProtocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.waiting_since = self.loop.time()
            self._deadline = self.loop.call_later(header_timeout_s, self._headers_late)
            if len(self.connections) > max_connections:
                idle = [c for c in self.connections if getattr(c, "waiting_since", None) is not None
                        and not c.transport.is_closing()]
                min(idle, key=lambda c: c.waiting_since).transport.close()  # idle holds at least this one

        def on_message_begin(self) -> None:  # a request starts (also the next one on a kept-alive connection)
            super().on_message_begin()
            self.waiting_since = self.waiting_since or self.loop.time()
            self._deadline.cancel()
            self._deadline = self.loop.call_later(header_timeout_s, self._headers_late)

        def on_headers_complete(self) -> None:
            self.waiting_since = None
            self._deadline.cancel()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self.waiting_since = self.loop.time()  # idle between requests: evictable (keep-alive ends it)

        def connection_lost(self, exc) -> None:
            self._deadline.cancel()
            super().connection_lost(exc)

        def _headers_late(self) -> None:
            if self.waiting_since is not None and not self.transport.is_closing():
                self.transport.close()

    return Guarded


def check_bind(host: str, port: int, keys) -> None:
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is not in 0..65535")
    if keys is None and host not in LOOPBACK:
        raise ValueError(f"refusing to serve on {host} without --keys: anyone reaching it could read the map")


def run(index_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, keys: str | Path | None = None,
        settings: dict | None = None, device: str = "cpu") -> None:
    """Serve until interrupted (SIGINT / SIGTERM); the journal is compacted on a clean shutdown."""
    import uvicorn

    check_bind(host, port, keys)
    app, svc = build(index_dir, keys, settings, device, host, os.environ.get(TOKEN_ENV))
    s = svc.s
    _raise_fd_limit()
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
    logger.warning("serving %s (%d images, preset %s) on %s", index_dir, len(svc.map.ids), svc.ext.conf["preset"],
                   url)
    if svc.keys.token is not None:  # shown once, as Jupyter does: the page keeps it, the URL fragment never leaves
        print(f"map changes need this token (Authorization: Bearer ...); open the page with it:\n"
              f"    {url}#token={svc.keys.token}", file=sys.stderr, flush=True)
    # uvicorn re-raises the SIGTERM it handled once it has shut down: exit cleanly (0) through `finally` then
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                          timeout_graceful_shutdown=10, timeout_keep_alive=s["keep_alive_s"],
                                          http=guarded_protocol(s["max_connections"], s["header_timeout_s"])))
    svc.stopping = lambda: server.should_exit  # open event streams end at once, not after the graceful 10 s
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        svc.close()
    if not server.started:  # as uvicorn.run: the port was taken, say
        sys.exit(3)


def _raise_fd_limit() -> None:
    """Let the soft file-descriptor limit reach the hard one (connections and index files share it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
