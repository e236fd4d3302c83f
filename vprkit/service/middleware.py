"""ASGI layers around the routers, outermost first: `Limits` (body bytes 413, stalled body 408, time 504,
metrics of every request), `HostGuard` (DNS rebinding: a `Host` that is not this server's is refused),
`OriginGuard` (CSRF: a state-changing request from another web page's origin is refused)."""

from __future__ import annotations

import asyncio
import json
import time

from fastapi import HTTPException

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
WILDCARD = {"0.0.0.0", "::", ""}


class Limits:
    """Outermost layer: refuses bodies over `max_body_bytes` (413, from Content-Length or while streaming)
    or stalled for `body_timeout_s` (408), answers 504 when no answer has begun within `timeout_s`, and records
    every request's metrics. Both deadlines end where they no longer apply: the stall one once the body is in, the
    answer one once the answer has begun (a live view's event stream goes on as long as its watcher stays)."""

    def __init__(self, app, svc) -> None:
        self.app, self.svc = app, svc

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        s, t0 = self.svc.s, time.perf_counter()
        seen, status, body_done = 0, [0], False

        async def limited():
            nonlocal seen, body_done
            if body_done:  # only a disconnect can come now: wait for it as long as it takes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), s["body_timeout_s"])
            except TimeoutError:
                raise Refused(408, f"request body stalled for over {s['body_timeout_s']} s") from None
            seen += len(message.get("body", b""))
            body_done = not message.get("more_body", False)
            if seen > s["max_body_bytes"]:
                raise Refused(413, f"request body over the limit of {s['max_body_bytes']} bytes")
            return message

        length = dict(scope["headers"]).get(b"content-length")
        try:
            async with asyncio.timeout(s["timeout_s"]) as deadline:

                async def tracking_send(message):
                    if message["type"] == "http.response.start":
                        status[0] = message["status"]
                        deadline.reschedule(None)
                    await send(message)

                if length is not None and (not length.isdigit() or int(length) > s["max_body_bytes"]):
                    raise Refused(413, f"request body over the limit of {s['max_body_bytes']} bytes")
                await self.app(scope, limited, tracking_send)
        except Refused as exc:
            if not status[0]:
                await send_json(send, exc.status, exc.detail)
                status[0] = exc.status
        except TimeoutError:
            if not status[0]:
                await send_json(send, 504, f"request took over {s['timeout_s']} s")
                status[0] = 504
        finally:
            route = getattr(scope.get("route"), "path", "other")
            self.svc.metrics.observe(route, status[0] or 500, time.perf_counter() - t0)


class Refused(HTTPException):
    """A refused request with its status: a limit hit while the body streams in, or (from `Service`) an upload or
    a name it cannot take. An HTTPException, so FastAPI answers it, and its form parsing passes it on as is."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(status, detail)
        self.status = status


async def send_json(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def allowed_hosts(bound: str, extra: list[str]) -> set[str] | None:
    """Host names a request may address: the bound address (and the loopback names when it is one) plus the
    configured ones; None (any) when bound to every interface and none are configured (keys are required then)."""
    if bound in WILDCARD and not extra:
        return None
    names = {bound.strip("[]").lower(), *(h.lower() for h in extra)}
    return names | LOOPBACK if names & LOOPBACK else names


def host_name(host: str) -> str:
    """`Host` header -> its name without the port ('[::1]:8000' -> '::1')."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class HostGuard:
    """403 for a request whose `Host` is not one of `hosts` (a page on attacker.example rebinding its name to
    127.0.0.1 sends `Host: attacker.example`)."""

    def __init__(self, app, hosts: set[str] | None) -> None:
        self.app, self.hosts = app, hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.hosts is not None:
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if host_name(host) not in self.hosts:
                return await send_json(send, 403, f"host {host[:100]!r} is not served here (add it to the "
                                                  "allowed_hosts setting if it is this server's name)")
        await self.app(scope, receive, send)


class OriginGuard:
    """403 for a state-changing request (not GET / HEAD / OPTIONS) that a browser sent from another origin:
    its `Origin` is neither this server's (scheme + Host) nor in `origins`, or `Sec-Fetch-Site` says
    cross-site. Clients that are not browsers send neither header and pass (they need a credential to write)."""

    def __init__(self, app, origins: list[str]) -> None:
        self.app, self.origins = app, {o.rstrip("/").lower() for o in origins}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            headers = dict(scope["headers"])
            origin = headers.get(b"origin", b"").decode("latin-1").rstrip("/").lower()
            own = f"{scope.get('scheme', 'http')}://{headers.get(b'host', b'').decode('latin-1').lower()}"
            site = headers.get(b"sec-fetch-site", b"").decode("latin-1")
            foreign = origin != own and origin not in self.origins if origin else site in ("cross-site", "same-site")
            if foreign:
                return await send_json(send, 403, f"cross-origin request refused (origin {origin[:100] or site!r}; "
                                                  "add it to the allowed_origins setting to allow it)")
        await self.app(scope, receive, send)
