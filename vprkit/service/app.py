"""`vprkit serve`: the HTTP API over one index (FastAPI; OpenAPI docs at /docs).

The index folder is opened by a `MapWriter` (this process is its only writer), the map's model once;
queries go through the dynamic batcher. Limits are enforced before any work: body bytes (413, checked
on the raw ASGI stream), slow uploads (408), content type (415), header-declared pixels (413), decodability
(422), API key and scope (401 / 403), per-key rate (429), processing time (504). Client-supplied names are validated
(`growing.check_name`) and looked up in the manifest; they never become a path.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.datastructures import UploadFile

from ..data.images import ImageError, PixelLimitError, decode_image, load_image
from ..features.extract import Extractor
from ..index.growing import MapWriter, check_name
from ..index.layout import STATE_FILE
from ..sequence.localizer import SequenceLocalizer
from .auth import Caller, KeyStore, RateLimiter
from .batching import Batcher
from .estimate import estimate, posterior
from .metrics import Metrics
from .streams import StreamLocalizer, Streams, WindowLocalizer

logger = logging.getLogger("vprkit")
STATIC = Path(__file__).parent / "static"
DEFAULTS = {
    "top_k": 5, "max_top_k": 100, "max_batch": 16, "batch_wait_ms": 5.0, "max_body_bytes": 20_000_000,
    "max_pixels": 40_000_000, "rate_per_s": 50.0, "rate_burst": 100.0, "timeout_s": 30.0, "body_timeout_s": 10.0,
    "stream_idle_s": 300.0, "max_streams": 1000, "stream_window": 10, "stream_preset": "seqslam-candidates",
    "compact_every": 1000, "estimate_temp": 0.05,
    "estimate_radius": 25.0, "prior_depth": 50, "thumb_px": 160, "thumb_cache": 512, "map_points_max": 20000,
    "rerank": {},
}
IMAGE_TYPES = {"image/jpeg", "image/png", "image/webp", "image/bmp", "image/tiff", "image/gif",
               "application/octet-stream"}
STREAM_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class Service:
    """Everything one server holds: the map (writer), the model, the batcher, keys, limits, streams, metrics."""

    def __init__(self, index_dir: str | Path, keys: str | Path | None = None, settings: dict | None = None,
                 device: str = "cpu") -> None:
        unknown = set(settings or {}) - set(DEFAULTS)
        if unknown:
            raise KeyError(f"unknown service settings {sorted(unknown)}; known: {sorted(DEFAULTS)}")
        self.s = {**DEFAULTS, **(settings or {})}
        self.writer = MapWriter(index_dir, self.s["compact_every"])
        conf = self.writer.map.manifest["conf"]
        self.ext = Extractor(conf, device)
        state = Path(index_dir) / STATE_FILE
        if self.ext.aggregator.needs_fit:
            self.ext.load_state(state)
        self.metrics = Metrics()
        self.batcher = Batcher(lambda x: self.ext.describe(x)[0].astype(np.float32), self.s["max_batch"],
                               self.s["batch_wait_ms"] / 1000, self.metrics.batch.observe)
        self.keys = KeyStore(keys)
        self.limiter = RateLimiter(self.s["rate_per_s"], self.s["rate_burst"])
        self.streams = Streams(self.stream_factory, self.s["stream_idle_s"], self.s["max_streams"])
        self._rerank = None
        self._sequence: tuple | None = None  # (map, its size, SequenceLocalizer the streams fork from)
        self._thumbs: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()  # the lazily built re-ranker and the thumbnail cache
        self.metrics.map_size.set(len(self.writer.map.ids))

    def stream_factory(self, search) -> StreamLocalizer:
        """One stream's localizer: `vprkit.sequence.SequenceLocalizer` with the `stream_preset` (default SeqSLAM in
        candidates mode, so a stream's memory is bounded by its window and candidates, not the map) on the live
        map, shared by all streams and rebuilt when the map changes (removed images are not places of its route);
        the built-in `WindowLocalizer` where the index cannot give its vectors back (compressed indexes)."""
        with self.writer.lock:
            mi = self.map
            key = (mi.index.ntotal, len(mi.deleted))  # a compaction makes a new MapIndex: compared by identity
            if self._sequence is None or self._sequence[0] is not mi or self._sequence[1] != key:
                try:  # removed images are masked by the localizer (they are not places of its route)
                    desc = mi.index.reconstruct_n(0, mi.index.ntotal)
                except RuntimeError:
                    desc = None
                base = None if desc is None else SequenceLocalizer(mi, self.s["stream_preset"], map_desc=desc)
                self._sequence = (mi, key, base)
            base = self._sequence[2]
        return WindowLocalizer(search, window=self.s["stream_window"]) if base is None else base.fork()

    @property
    def map(self):
        return self.writer.map

    def reranker(self):
        """The Chamfer re-ranker, built on first use (it loads its own backbone)."""
        with self._lock:
            if self._rerank is None:
                from .rerank import OnlineChamfer

                self._rerank = OnlineChamfer(self.image_path, self.s["rerank"], device=str(self.ext.device))
        return self._rerank

    def image_path(self, name: str) -> Path:
        with self.writer.lock:
            return self.map.image_path(name)

    def decode(self, data: bytes) -> Image.Image:
        """Uploaded bytes -> RGB image; 413 over the pixel limit, 422 when not a readable image."""
        if not data:
            raise HTTPException(422, "empty image")
        try:
            return decode_image(io.BytesIO(data), "uploaded image", self.s["max_pixels"])
        except PixelLimitError as exc:
            raise HTTPException(413, str(exc)) from None
        except ImageError as exc:
            raise HTTPException(422, str(exc)) from None

    async def describe(self, data: bytes) -> tuple[Image.Image, np.ndarray]:
        """Decode + preprocess in a worker thread, then the batched forward pass."""
        def prep():
            img = self.decode(data)
            return img, self.ext.prepare(img)

        img, x = await asyncio.to_thread(prep)
        return img, await self.batcher.submit(x)

    def search(self, desc: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        with self.writer.lock:
            return self.map.search(np.asarray(desc, dtype=np.float32).reshape(1, -1), k)

    def candidates(self, ids: np.ndarray) -> tuple[list[str], list]:
        with self.writer.lock:
            ok = [int(i) for i in ids if i >= 0]
            return [self.map.names[i] for i in ok], [self.map.position(i) for i in ok]

    def ranked(self, desc: np.ndarray, k: int) -> tuple[np.ndarray, list[str], list]:
        """(scores, names, positions) of the top k, under one lock: a compaction cannot renumber in between."""
        with self.writer.lock:
            scores, ids = self.search(desc, k)
            names, positions = self.candidates(ids[0])
        return scores[0][:len(names)], names, positions

    def localize(self, img: Image.Image, desc: np.ndarray, top_k: int, rerank: bool,
                 prior: tuple[float, float, float] | None) -> dict:
        """Top-k matches (re-ranked, weighted by the prior) and the position estimate."""
        depth = max(top_k, self.s["prior_depth"]) if prior else top_k
        scores, names, positions = self.ranked(desc, depth)
        if rerank and names:
            order, scores = self.reranker().rerank(img, names, scores, self._live_names)
            names, positions = [names[i] for i in order], [positions[i] for i in order]
        w = posterior(scores, positions, self.s["estimate_temp"], prior) if names else np.zeros(0)
        order = np.argsort(-w, kind="stable")[:top_k] if prior else np.arange(min(top_k, len(names)))
        matches = [{"name": names[i], "score": float(scores[i]), "weight": float(w[i]), "position": positions[i]}
                   for i in order]
        est = estimate(names, positions, w, self.s["estimate_radius"]) if names else None
        return {"matches": matches, "estimate": est, "reranked": bool(rerank), "map_size": len(self.map.ids)}

    def _live_names(self) -> list[str]:
        with self.writer.lock:
            return self.map.live_names()

    def thumbnail(self, name: str) -> bytes:
        with self._lock:
            if name in self._thumbs:
                self._thumbs.move_to_end(name)
                return self._thumbs[name]
        img = load_image(self.image_path(name), self.s["max_pixels"])
        img.thumbnail((self.s["thumb_px"], self.s["thumb_px"]))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        with self._lock:
            self._thumbs[name] = buf.getvalue()
            while len(self._thumbs) > self.s["thumb_cache"]:
                self._thumbs.popitem(last=False)
        return buf.getvalue()

    def forget_thumbnail(self, name: str) -> None:
        with self._lock:
            self._thumbs.pop(name, None)

    def close(self) -> None:
        self.batcher.close()
        self.writer.close()


class Limits:
    """Outermost ASGI layer: refuses bodies over `max_bytes_body` (413, from Content-Length or while streaming)
    or stalled for `body_timeout_s` (408), answers 504 past `timeout_s`, and records every request's metrics."""

    def __init__(self, app, svc: Service) -> None:
        self.app, self.svc = app, svc

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        s, t0 = self.svc.s, time.perf_counter()
        seen, status = 0, [0]

        async def limited():
            nonlocal seen
            try:
                message = await asyncio.wait_for(receive(), s["body_timeout_s"])
            except TimeoutError:
                raise _Refused(408, f"request body stalled for over {s['body_timeout_s']} s") from None
            seen += len(message.get("body", b""))
            if seen > s["max_body_bytes"]:
                raise _Refused(413, f"request body over the limit of {s['max_body_bytes']} bytes")
            return message

        async def tracking_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        length = dict(scope["headers"]).get(b"content-length")
        try:
            if length is not None and (not length.isdigit() or int(length) > s["max_body_bytes"]):
                raise _Refused(413, f"request body over the limit of {s['max_body_bytes']} bytes")
            await asyncio.wait_for(self.app(scope, limited, tracking_send), s["timeout_s"])
        except _Refused as exc:
            if not status[0]:
                await _send_json(tracking_send, exc.status, exc.detail)
        except TimeoutError:
            if not status[0]:
                await _send_json(tracking_send, 504, f"request took over {s['timeout_s']} s")
        finally:
            route = getattr(scope.get("route"), "path", "other")
            self.svc.metrics.observe(route, status[0] or 500, time.perf_counter() - t0)


class _Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


async def _send_json(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _key_of(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key")


def _parse_floats(text: str, n: int, what: str) -> list[float]:
    try:
        vals = [float(v) for v in text.replace(";", ",").split(",")]
    except ValueError:
        vals = []
    if len(vals) != n or not np.all(np.isfinite(vals)):
        raise HTTPException(422, f"{what} must be {n} comma-separated numbers, got {text[:50]!r}")
    return vals


async def _image_and_fields(request: Request) -> tuple[bytes, dict]:
    """The image bytes (multipart field `image`, or the raw body) and the other fields (form + query)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fields = dict(request.query_params)
    if ctype == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=20)
        image = form.get("image")
        if not isinstance(image, UploadFile):
            raise HTTPException(422, "multipart request without a file field 'image'")
        fields.update({k: v for k, v in form.items() if isinstance(v, str)})
        return await image.read(), fields
    if ctype in IMAGE_TYPES:
        return await request.body(), fields
    raise HTTPException(415, f"content type {ctype or '(none)'!r} not accepted: send multipart/form-data with "
                             "an 'image' file, or the image bytes as image/* or application/octet-stream")


def _options(fields: dict, s: dict) -> tuple[int, bool, tuple[float, float, float] | None]:
    try:
        top_k = int(fields.get("top_k", s["top_k"]))
    except ValueError:
        raise HTTPException(422, "top_k must be an integer") from None
    if not 1 <= top_k <= s["max_top_k"]:
        raise HTTPException(422, f"top_k must be in 1..{s['max_top_k']}")
    rerank = fields.get("rerank", "") or "none"
    if rerank not in ("none", "chamfer"):
        raise HTTPException(422, f"rerank must be 'none' or 'chamfer', got {rerank[:30]!r}")
    prior = fields.get("prior")
    prior_vals = _parse_floats(prior, 3, "prior (x,y,sigma)") if prior else None
    if prior_vals is not None and prior_vals[2] <= 0:
        raise HTTPException(422, "prior sigma must be positive")
    return top_k, rerank == "chamfer", tuple(prior_vals) if prior_vals else None


def create_app(svc: Service) -> FastAPI:
    app = FastAPI(title="vprkit localization service", version="1",
                  description="Where am I? Send a photo, get the matching map images and a position estimate.")
    app.state.svc = svc
    app.add_exception_handler(_Refused, lambda request, exc: JSONResponse({"detail": exc.detail}, exc.status))

    def guard(scope: str | None) -> Callable[[Request], Awaitable[Caller | None]]:
        async def check(request: Request) -> Caller | None:
            if scope is None:
                return None
            caller = svc.keys.identify(_key_of(request), request.client.host if request.client else "?")
            if caller is None:
                raise HTTPException(401, "missing or unknown API key (Authorization: Bearer KEY)",
                                    headers={"WWW-Authenticate": "Bearer"})
            if scope not in caller.scopes:
                raise HTTPException(403, f"this key lacks the '{scope}' scope")
            wait = svc.limiter.allow(caller.name, rate=caller.rate, burst=caller.burst)
            if wait > 0:
                raise HTTPException(429, "rate limit exceeded", headers={"Retry-After": str(int(np.ceil(wait)))})
            return caller
        return check

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse((STATIC / "index.html").read_text())

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        return {"status": "ready", "map_size": len(svc.map.ids), "preset": svc.ext.conf["preset"],
                "auth": svc.keys.enabled}

    @app.get("/metrics")
    async def metrics(request: Request):
        await guard("read")(request)
        svc.metrics.map_size.set(len(svc.map.ids))
        svc.metrics.streams.set(len(svc.streams))
        return Response(svc.metrics.text(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/localize")
    async def localize(request: Request):
        """One image -> top-k map images (names, scores, positions), a position estimate and a confidence.

        Multipart field `image` or the raw image bytes; options as form fields or query parameters:
        `top_k`, `rerank=chamfer`, `prior=x,y,sigma` (a Gaussian position prior, map units)."""
        await guard("read")(request)
        data, fields = await _image_and_fields(request)
        top_k, rerank, prior = _options(fields, svc.s)
        img, desc = await svc.describe(data)
        return await asyncio.to_thread(svc.localize, img, desc, top_k, rerank, prior)

    @app.post("/v1/streams/{stream_id}/frames")
    async def stream_frame(stream_id: str, request: Request):
        """One frame of a stream (e.g. a robot's camera) -> the sequence-consistent estimate so far."""
        await guard("read")(request)
        if not STREAM_ID.fullmatch(stream_id):
            raise HTTPException(422, "stream id: 1-64 letters, digits, '_', '-', '.'")
        data, _ = await _image_and_fields(request)
        _, desc = await svc.describe(data)
        i, score, frames = svc.streams.add(stream_id, desc, svc.search)
        names, positions = svc.candidates(np.array([i]))
        single = svc.localize(None, desc, 1, False, None)["matches"]
        return {"stream": stream_id, "frames": frames,
                "estimate": {"name": names[0], "position": positions[0], "score": score} if names else None,
                "frame_best": single[0] if single else None}

    @app.delete("/v1/streams/{stream_id}")
    async def stream_end(stream_id: str, request: Request):
        await guard("read")(request)
        if not svc.streams.drop(stream_id):
            raise HTTPException(404, "no such stream")
        return {"stream": stream_id, "ended": True}

    @app.get("/v1/map")
    async def map_info(request: Request):
        """Map size and the positions of up to `map_points_max` images (for the page's map)."""
        await guard("read")(request)
        with svc.writer.lock:
            live = [(n, svc.map.position(i)) for n, i in svc.map.ids.items()]
        points = [{"name": n, "position": p} for n, p in live if p is not None][:svc.s["map_points_max"]]
        return {"size": len(live), "points": points, "preset": svc.ext.conf["preset"]}

    @app.get("/v1/map/images/{name:path}/thumbnail")
    async def thumbnail(name: str, request: Request):
        await guard("read")(request)
        name = _known(svc, name)
        try:
            data = await asyncio.to_thread(svc.thumbnail, name)
        except ImageError as exc:
            raise HTTPException(404, f"map image {name} is not readable here ({exc})") from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=60"})

    @app.post("/v1/map/images", status_code=201)
    async def add_image(request: Request):
        """Add one image to the map: multipart `image`, `name`, optional `position` ("x,y").
        Durable when acknowledged (journaled and fsynced); an existing name is replaced."""
        await guard("write")(request)
        data, fields = await _image_and_fields(request)
        try:
            name = check_name(fields.get("name", ""))
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        position = _parse_floats(fields["position"], 2, "position (x,y)") if fields.get("position") else None
        _, desc = await svc.describe(data)
        i = await asyncio.to_thread(svc.writer.add, name, desc, data, position)
        svc.forget_thumbnail(name)  # a replaced image
        svc.metrics.map_size.set(len(svc.map.ids))
        return {"name": name, "id": i, "position": position, "map_size": len(svc.map.ids)}

    @app.delete("/v1/map/images/{name:path}")
    async def remove_image(name: str, request: Request):
        await guard("write")(request)
        name = _known(svc, name)
        await asyncio.to_thread(svc.writer.remove, name)
        svc.forget_thumbnail(name)
        return {"name": name, "removed": True, "map_size": len(svc.map.ids)}

    return app


def _known(svc: Service, name: str) -> str:
    """A client-given map image name that is valid and live (404 otherwise)."""
    try:
        check_name(name)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    if name not in svc.map.ids:
        raise HTTPException(404, f"no map image named {name}")
    return name


def build(index_dir: str | Path, keys: str | Path | None = None, settings: dict | None = None, device: str = "cpu"):
    """The ASGI app (with the body limit outermost) and its Service."""
    svc = Service(index_dir, keys, settings, device)
    return Limits(create_app(svc), svc), svc


def run(index_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, keys: str | Path | None = None,
        settings: dict | None = None, device: str = "cpu") -> None:
    """Serve until interrupted (SIGINT / SIGTERM); the journal is compacted on a clean shutdown."""
    import uvicorn

    if keys is None and host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"refusing to serve on {host} without --keys: anyone reaching it could change the map")
    app, svc = build(index_dir, keys, settings, device)
    logger.warning("serving %s (%d images, preset %s) on http://%s:%d  (docs: /docs)%s", index_dir,
                   len(svc.map.ids), svc.ext.conf["preset"], host, port, "" if keys else "  [no API keys]")
    # uvicorn re-raises the SIGTERM it handled once it has shut down: exit cleanly (0) through `finally` then
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=10)
    finally:
        svc.writer.compact()
        svc.close()
