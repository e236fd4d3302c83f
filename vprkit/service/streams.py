"""Per-stream sequence localization: a swappable localizer per stream, expired when idle, bounded in number.

A stream localizer takes one frame's global descriptor and returns (map id, score) of the sequence-
consistent estimate. The factory is swappable (`Streams(factory)`, chosen in `service.app.Service.stream_factory`):
`vprkit.sequence.SequenceLocalizer(index, conf)` (the sequence-matching step, constant memory per stream), or
`WindowLocalizer` where the index cannot give its descriptors back (compressed indexes).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
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


class Streams:
    """Live streams by id: created on first frame, dropped after `idle_s` without frames; at most `max_streams`
    (the least recently used goes first), so memory is bounded by max_streams * one localizer. A stream fed with
    another map `generation` than its localizer's (a compaction renumbered the map) gets a new localizer: its
    window restarts, its frame count goes on."""

    def __init__(self, factory: StreamFactory, idle_s: float = 300.0, max_streams: int = 1000) -> None:
        self.factory, self.idle_s, self.max_streams = factory, idle_s, max_streams
        self._live: OrderedDict[str, tuple[StreamLocalizer, float, int, object]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, stream_id: str, frame: np.ndarray, search: Search, now: float | None = None,
            generation: object = None) -> tuple[int, float, int]:
        """(map id, score, frames seen) after feeding `frame` to the stream (a new stream when idle/unknown)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._expire(now)
            loc, _, count, made_for = self._live.pop(stream_id, (None, 0.0, 0, None))
            if loc is None or made_for != generation:
                loc = self.factory(search)
                while len(self._live) >= self.max_streams:
                    self._live.popitem(last=False)
            self._live[stream_id] = (loc, now, count + 1, generation)
        return (*loc.add(frame), count + 1)

    def drop(self, stream_id: str) -> bool:
        with self._lock:
            return self._live.pop(stream_id, None) is not None

    def __len__(self) -> int:
        return len(self._live)

    def _expire(self, now: float) -> None:
        while self._live:
            sid, (_, seen, _, _) = next(iter(self._live.items()))
            if now - seen <= self.idle_s:
                break
            del self._live[sid]
