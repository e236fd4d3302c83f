"""What one server holds (`Service`): the map (its single writer), the model, the batcher, keys, limits, streams,
thumbnails and metrics; the routers only translate HTTP to these methods and back.

Every call that searches or changes the map takes the writer's lock; the routers run them in worker threads, so
the event loop only parses requests and sends answers.
"""

from __future__ import annotations

import asyncio
import io
import re
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.images import ImageError, PixelLimitError, decode_image, load_image
from ..features.extract import Extractor
from ..index.growing import MapWriter
from ..index.layout import STATE_FILE
from ..sequence.localizer import SequenceLocalizer
from .auth import KeyStore, RateLimiter
from .batching import Batcher
from .estimate import estimate, posterior
from .metrics import Metrics
from .middleware import Refused
from .settings import CONFIG
from .streams import Feeds, StreamLocalizer, Streams, WindowLocalizer

_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


class Service:
    """Everything one server holds: the map (writer), the model, the batcher, keys, limits, streams, metrics."""

    def __init__(self, index_dir: str | Path, keys: str | Path | None = None, settings: dict | None = None,
                 device: str = "cpu", token: str | None = None) -> None:
        over = dict(settings or {})  # changes to the default preset, or a whole config (its `preset` taken)
        self.s = CONFIG.resolve(over.pop("preset", None), over)
        self.keys = KeyStore(keys, token)  # first: a bad keys file is refused before the model loads
        self.writer = MapWriter(index_dir, self.s["compact_every"])
        self.ext = Extractor.with_state(self.writer.map.manifest["conf"], Path(index_dir) / STATE_FILE, device)
        self.metrics = Metrics()
        self.batcher = Batcher(lambda x: self.ext.describe(x)[0].astype(np.float32), self.s["max_batch"],
                               self.s["batch_wait_ms"] / 1000, self.metrics.batch.observe)
        self.limiter = RateLimiter(self.s["rate_per_s"], self.s["rate_burst"])
        self.streams = Streams(self.stream_factory, self.s["stream_idle_s"], self.s["max_streams"],
                               self.s["stream_history"])
        self.feeds = Feeds()
        self._rerank = None
        self._sequence: tuple | None = None  # (map, its size, SequenceLocalizer the streams fork from)
        self._thumbs: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()  # the lazily built re-ranker and the thumbnail cache
        self.closed = False
        self.stopping = lambda: self.closed  # whether the server is stopping (`server.run` asks uvicorn)
        self.metrics.map_size.set(len(self.writer.map.ids))

    @property
    def map(self):
        return self.writer.map

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
        """Uploaded bytes -> RGB image; 413 over the pixel limit (also past PIL's own bomb limit), 422 when not a
        readable image (the message never shows Python object reprs)."""
        if not data:
            raise Refused(422, "empty image")
        try:
            return decode_image(io.BytesIO(data), "uploaded image", self.s["max_pixels"])
        except PixelLimitError as exc:
            raise Refused(413, str(exc)) from None
        except ImageError as exc:
            if isinstance(exc.__cause__, Image.DecompressionBombError):
                raise Refused(413, f"uploaded image: over the limit of {self.s['max_pixels']} pixels") from None
            raise Refused(422, _OBJECT_REPR.sub("", str(exc))) from None

    def prepare(self, data: bytes):
        """Uploaded bytes -> (decoded image, the model's input tensor): the service's one preprocessing call."""
        img = self.decode(data)
        return img, self.ext.prepare(img)  # as offline extraction prepares the same file (resize_max / resize_min)

    async def describe(self, data: bytes) -> tuple[Image.Image, np.ndarray]:
        """Decode + preprocess in a worker thread, then the batched forward pass."""
        img, x = await asyncio.to_thread(self.prepare, data)
        return img, await self.batcher.submit(x)

    def search(self, desc: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        with self.writer.lock:
            return self.map.search(np.asarray(desc, dtype=np.float32).reshape(1, -1), k)

    def candidates(self, ids: np.ndarray) -> tuple[list[str], list]:
        """Names and positions of map ids (ids the map no longer holds are left out)."""
        with self.writer.lock:
            ok = [int(i) for i in ids if 0 <= i < len(self.map.names)]
            return [self.map.names[i] for i in ok], [self.map.position(i) for i in ok]

    def ranked(self, desc: np.ndarray, k: int) -> tuple[np.ndarray, list[str], list]:
        """(scores, names, positions) of the top k, under one lock: a compaction cannot renumber in between."""
        with self.writer.lock:
            scores, ids = self.search(desc, k)
            names, positions = self.candidates(ids[0])
        return scores[0][:len(names)], names, positions

    def localize(self, img: Image.Image | None, desc: np.ndarray, top_k: int, rerank: bool,
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

    def stream_frame(self, stream_id: str, desc: np.ndarray) -> dict:
        """Feed one frame to its stream (under the writer lock: the localizer searches the live map, which an
        addition must not change mid-search; a compaction makes a new map object, so streams begun before it get
        a localizer of the new numbering); the sequence estimate, the frame's own best match and the stream's
        state: localized when the estimate's confidence reaches `stream_min_confidence`, else lost. The answer
        is kept in the stream's history."""
        with self.writer.lock:
            i, confidence, frames = self.streams.add(stream_id, desc, self.search, generation=id(self.map))
            names, positions = self.candidates(np.array([i]))
            single = self.localize(None, desc, 1, False, None)["matches"]
        localized = bool(names) and confidence >= self.s["stream_min_confidence"]
        confidence = confidence if np.isfinite(confidence) else None  # no other place to compare with
        answer = {"stream": stream_id, "frames": frames, "time": time.time(),
                  "state": "localized" if localized else "lost",
                  "estimate": {"name": names[0], "position": positions[0], "confidence": confidence,
                               "score": confidence} if names else None,
                  "frame_best": single[0] if single else None}
        self.streams.remember(stream_id, answer)
        return answer

    def _live_names(self) -> list[str]:
        with self.writer.lock:
            return self.map.live_names()

    def live_points(self) -> tuple[int, list[dict]]:
        """(live map size, names and positions of up to `map_points_max` positioned images)."""
        with self.writer.lock:
            live = [(n, self.map.position(i)) for n, i in self.map.ids.items()]
        points = [{"name": n, "position": p} for n, p in live if p is not None][:self.s["map_points_max"]]
        return len(live), points

    def known(self, name: str) -> str:
        """A client-given map image name that is live (404 otherwise): only ever a key of the manifest, so any
        name `vprkit index` accepted (spaces, unicode) works here."""
        with self.writer.lock:
            if name not in self.map.ids:
                raise Refused(404, f"no map image named {name[:300]!r}")
        return name

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
        """Stop the batcher and release the writer (once)."""
        if not self.closed:
            self.closed = True
            self.batcher.close()
            self.writer.close()
