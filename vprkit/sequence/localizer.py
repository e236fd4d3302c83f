"""Streaming API: `SequenceLocalizer(index, conf).add(frame) -> (estimate, score)`, one frame at a time.

Memory per stream is constant: SeqSLAM keeps its last `ds` enhanced difference rows (full search, ds x map) or
its last `ds` descriptors (candidates); the HMM keeps one belief over places.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
from PIL import Image

from ..features import extract, h5io
from ..index import faiss_index
from ..index.layout import MAP_FEATURES, STATE_FILE
from . import matcher, pipeline


class SequenceLocalizer:
    """Localize a stream of frames on a saved index (online: each estimate uses only past frames).

    `index`: an index folder (`vprkit index`) or a loaded `MapIndex` whose map descriptors are given as
    `map_desc` (one row per index id, removed images included: they are left out of the route); `conf`: a
    sequence preset name or a config from `pipeline.CONFIG.resolve`.
    `add(frame)`: `frame` is an image (PIL image or H x W (x 3) uint8 array) or its global descriptor (a vector of
    the index's dimension); returns (estimate, score): the index's map image number (`self.names[estimate]`) and
    the confidence (SeqSLAM: margin of the best line over the best one elsewhere; HMM: posterior probability).
    """

    def __init__(self, index: str | Path | faiss_index.MapIndex, conf: str | dict = "seqslam", device: str = "cpu",
                 map_desc: np.ndarray | None = None):
        self.conf = pipeline.CONFIG.resolve(conf) if isinstance(conf, str) else conf
        if self.conf["mode"] != "online":
            raise ValueError("a stream is localized online: use a preset with mode=online")
        self.index_dir = None if isinstance(index, faiss_index.MapIndex) else Path(index)
        self.index = index if self.index_dir is None else faiss_index.load(self.index_dir)
        self.names: list[str] = self.index.names
        if map_desc is None:
            if self.index_dir is None:
                raise ValueError("give map_desc with a loaded MapIndex (or pass the index folder)")
            map_desc = h5io.read_global(self.index_dir / MAP_FEATURES, self.names)
        self.order, pos = pipeline.map_route(self.index, self.conf["map_order"])
        route = np.ascontiguousarray(np.asarray(map_desc, dtype=np.float32)[self.order])
        search = pipeline.index_search(self.index, self.order)
        if self.conf["method"] == "seqslam":
            self._new_stream = lambda: matcher.SeqSLAMStream(route, self.conf, search)
        else:
            trans = pipeline.transitions(self.conf, len(route), pos)
            self._new_stream = lambda: matcher.HMMStream(route, self.conf, trans, search)
        self.stream = self._new_stream()
        self.device, self._extractor = device, None

    def fork(self) -> SequenceLocalizer:
        """Another stream on the same map: shares the map's descriptors, order and model; fresh state of its own
        (so many streams cost one map, plus each stream's window)."""
        other = copy.copy(self)
        other.stream = self._new_stream()
        return other

    def describe(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """Global descriptor of one image with the index's model, computed as offline extraction computes it."""
        if self._extractor is None:
            if self.index_dir is None:
                raise ValueError("images need the index folder (its model); pass descriptors to a loaded MapIndex")
            self._extractor = extract.Extractor.with_state(self.index.manifest["conf"],
                                                           self.index_dir / STATE_FILE, self.device)
        img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
        return self._extractor.describe_images([img])[0]

    def add(self, frame: Image.Image | np.ndarray) -> tuple[int, float]:
        """Localize the next frame of the stream: (map image number, confidence)."""
        dim = self.index.index.d
        is_desc = isinstance(frame, np.ndarray) and frame.squeeze().ndim == 1
        if is_desc and frame.size != dim:
            raise ValueError(f"descriptor of size {frame.size}, but the index holds {dim}-d descriptors")
        q = frame.ravel() if is_desc else self.describe(frame)
        place, score, _, _ = self.stream.add(q)
        return int(self.order[place]), score
