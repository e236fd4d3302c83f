"""Chamfer re-ranking of one query at a time (training-free), as `vprkit rerank --method chamfer` does offline.

Offline, local features of all queries and of the whole map are extracted up front; a service sees one
query at a time, so the map's local features are computed when a candidate is first needed and kept in
a bounded LRU cache, and the whitening is fitted once on an even sample of `whiten_images` map images.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.images import load_image
from ..features import local
from ..rerank.ames import fuse
from ..rerank.chamfer import ChamferReranker, score_candidates, whitening


class OnlineChamfer:
    """`rerank(image, ids, scores)` -> fused (ids, scores); thread-safe (one model, one lock)."""

    def __init__(self, image_path: Callable[[str], Path], overrides: dict | None = None, cache_images: int = 2000,
                 device: str = "cpu") -> None:
        self.conf = ChamferReranker.CONFIG.resolve(None, overrides)
        self.fconf = local.CONFIG.resolve(self.conf["features"], {"preprocessing.resize_max": self.conf["resize_max"]})
        self.image_path, self.cache_images = image_path, cache_images
        self.ext = local.LocalExtractor(self.fconf, device)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._sim = None
        self._lock = threading.Lock()

    def rows(self, img: Image.Image, k: int) -> np.ndarray:
        """The top-k local rows (K, 5 + D) of one decoded image."""
        x = self.ext.prepare(img)
        return local.select_top(*(t.cpu() for t in self.ext.salient(x[None])), k)[0]

    def _map_rows(self, name: str) -> np.ndarray:
        if name in self._cache:
            self._cache.move_to_end(name)
            return self._cache[name]
        row = self.rows(load_image(self.image_path(name), self.fconf["max_pixels"]), self.conf["num_map_desc"])
        self._cache[name] = row.astype(np.float16)
        while len(self._cache) > self.cache_images:
            self._cache.popitem(last=False)
        return self._cache[name]

    def _whitening(self, map_names: Callable[[], list[str]]):
        if self._sim is None:
            map_names = map_names()
            sample = np.unique(np.linspace(0, len(map_names) - 1, self.conf["whiten_images"]).round().astype(int))
            rows = np.stack([self._map_rows(map_names[i]) for i in sample])
            self._sim = whitening(*local.split(rows), self.conf["dim"])
        return self._sim

    def rerank(self, img: Image.Image, cand_names: list[str], scores: np.ndarray,
               map_names: Callable[[], list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Order (indices into cand_names, fused scores), best first; `map_names` (the live map, asked for only
        once) gives the whitening sample."""
        with self._lock:
            sim = self._whitening(map_names)
            q_desc, q_valid = local.split(self.rows(img, self.conf["num_query_desc"]))
            m_desc, m_valid = local.split(np.stack([self._map_rows(n) for n in cand_names]))
            raw = score_candidates(sim, q_desc, q_valid, m_desc, m_valid).numpy()[None]
        order = np.arange(len(cand_names))[None]
        ids, fused = fuse(order, np.asarray(scores, dtype=np.float32)[None], raw, self.conf["lamb"], self.conf["temp"])
        return ids[0], fused[0]
