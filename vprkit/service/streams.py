"""Per-stream sequence localization: a swappable localizer per stream, expired when idle, bounded in number.

A stream localizer takes one frame's global descriptor and returns (map id, score) of the sequence-
consistent estimate. The factory is swappable (`Streams(factory)`, chosen in `service.app.Service.stream_factory`):
`vprkit.sequence.SequenceLocalizer(index, conf)` (the sequence-matching step, constant memory per stream), or
`WindowLocalizer` where the index cannot give its descriptors back (compressed indexes).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]  # (1, D) -> (scores (1, k), ids (1, k))


class StreamLocalizer(Protocol):
    def add(self, frame: np.ndarray) -> tuple[int, float]:
        """Feed one frame's descriptor (D,); the sequence-consistent (map id, score)."""
        ...


class WindowLocalizer:
    """Sequence matching over the last `window` frames' top-k lists (memory: window * k numbers).

    Each candidate c of the newest frame and each velocity v (map frames per query frame) is scored by
    the mean over the window of frame t-j's similarity to map id c - v*j (its top-k score, or that
    frame's k-th score when c - v*j is not in its top-k): a straight-line path through the map, as
    SeqSLAM scores sequences, using only what the per-frame searches returned.
    """

    def __init__(self, search: Search, window: int = 10, k: int = 20, velocities: tuple[float, ...] = (0, 1, 2, -1)
                 ) -> None:
        self.search, self.k, self.velocities = search, k, velocities
        self.frames: deque[tuple[dict[int, float], float]] = deque(maxlen=window)

    def add(self, frame: np.ndarray) -> tuple[int, float]:
        scores, ids = self.search(np.asarray(frame, dtype=np.float32)[None], self.k)
        ok = ids[0] >= 0
        self.frames.append((dict(zip(ids[0][ok].tolist(), scores[0][ok].tolist())), float(scores[0][ok].min())))
        newest = list(self.frames)[::-1]
        best = (-1, -np.inf)
        for c in newest[0][0]:
            for v in self.velocities:
                s = np.mean([f.get(int(round(c - v * j)), floor) for j, (f, floor) in enumerate(newest)])
                if s > best[1]:
                    best = (c, float(s))
        return best


StreamFactory = Callable[[Search], StreamLocalizer]


@dataclass
class _Stream:
    localizer: StreamLocalizer
    seen: float  # time.monotonic() of its last frame
    frames: int
    generation: object  # the map its localizer was made for
    history: deque = field(default_factory=deque)  # its last answers (dicts), for the page and GET /v1/streams/{id}


class Streams:
    """Live streams by id: created on first frame, dropped after `idle_s` without frames; at most `max_streams`
    (the least recently used goes first), each keeping its last `history` answers, so memory is bounded by
    max_streams * (one localizer + history answers). A stream fed with another map `generation` than its
    localizer's (a compaction renumbered the map) gets a new localizer: its window restarts, its frame count and
    history go on."""

    def __init__(self, factory: StreamFactory, idle_s: float = 300.0, max_streams: int = 1000,
                 history: int = 100) -> None:
        self.factory, self.idle_s, self.max_streams, self.history_len = factory, idle_s, max_streams, history
        self._live: OrderedDict[str, _Stream] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, stream_id: str, frame: np.ndarray, search: Search, now: float | None = None,
            generation: object = None) -> tuple[int, float, int]:
        """(map id, score, frames seen) after feeding `frame` to the stream (a new stream when idle/unknown)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._expire(now)
            st = self._live.pop(stream_id, None)
            if st is None:
                st = _Stream(None, now, 0, None, deque(maxlen=self.history_len))
            if st.localizer is None or st.generation != generation:
                st.localizer, st.generation = self.factory(search), generation
                while len(self._live) >= self.max_streams:
                    self._live.popitem(last=False)
            st.seen, st.frames = now, st.frames + 1
            self._live[stream_id] = st
        return (*st.localizer.add(frame), st.frames)

    def remember(self, stream_id: str, answer: dict) -> None:
        """Keep `answer` (one frame's) in the stream's history, when the stream is still live."""
        with self._lock:
            if stream_id in self._live:
                self._live[stream_id].history.append(answer)

    def history(self, stream_id: str) -> list[dict] | None:
        """The stream's last answers, oldest first; None for no live stream of that id."""
        with self._lock:
            st = self._live.get(stream_id)
            return None if st is None else list(st.history)

    def summary(self, now: float | None = None) -> list[dict]:
        """Every live stream, most recently fed first: id, frames, seconds since its last frame, last answer."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._expire(now)
            return [{"stream": sid, "frames": st.frames, "idle_s": now - st.seen,
                     "last": st.history[-1] if st.history else None} for sid, st in reversed(self._live.items())]

    def drop(self, stream_id: str) -> bool:
        with self._lock:
            return self._live.pop(stream_id, None) is not None

    def __len__(self) -> int:
        return len(self._live)

    def _expire(self, now: float) -> None:
        while self._live:
            sid, st = next(iter(self._live.items()))
            if now - st.seen <= self.idle_s:
                break
            del self._live[sid]


class Feeds:
    """Who watches which stream (the page's live view): one bounded asyncio queue per watcher, filled by
    `publish` on the event loop. A watcher that falls behind loses its oldest answers: a robot's frames never wait
    for a page."""

    def __init__(self, depth: int = 64) -> None:
        self.depth = depth
        self._watchers: dict[str, set[asyncio.Queue]] = {}

    def subscribe(self, stream_id: str) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(self.depth)
        self._watchers.setdefault(stream_id, set()).add(q)
        return q

    def unsubscribe(self, stream_id: str, q: asyncio.Queue) -> None:
        qs = self._watchers.get(stream_id, set())
        qs.discard(q)
        if not qs:
            self._watchers.pop(stream_id, None)

    def publish(self, stream_id: str, answer: dict) -> None:
        for q in self._watchers.get(stream_id, ()):
            if q.full():
                q.get_nowait()
            q.put_nowait(answer)

    def __len__(self) -> int:
        return sum(map(len, self._watchers.values()))
