"""Whether the map images an index was built from are still the same files (same names with new content is the
silent way to get a stale index).

The map's features file records each image's identity when it was described (`h5io.SOURCE`: resolved path,
size, modification time). A query compares a random sample of `SAMPLE` map images with what is on disk now (one
stat and one attribute read each, so the cost is the same for 20 images or 10M); `verify=True` compares every one
(a stat per map image: minutes for 10M). Images without a recorded identity (added through the service, or
compacted since) are not judged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from pathlib import Path

import numpy as np

from ..data.safeio import file_identity
from ..features.h5io import recorded_sources
from .faiss_index import MapIndex
from .layout import MAP_FEATURES, SEGMENT_FEATURES

logger = logging.getLogger("vprkit")
SAMPLE = 64  # map images checked per query
SHOWN = 5  # changed names a warning lists


def changed_map_images(features: Path, names: list[str], path_of: Callable[[str], Path], verify: bool = False,
                       removed: Collection[int] = (), rng: np.random.Generator | None = None) -> tuple[list[str], int]:
    """(names among the checked map images whose file changed or disappeared since `features` recorded it, how
    many were checked): every image but the `removed` rows with `verify` or when there are at most SAMPLE, else
    those of a random SAMPLE."""
    rows: np.ndarray | range = range(len(names))
    if not verify and len(names) > SAMPLE:
        rng = rng if rng is not None else np.random.default_rng()
        rows = np.sort(rng.choice(len(names), SAMPLE, replace=False))
    recorded = {n: src for n, src in recorded_sources(features, (names[i] for i in rows if i not in removed)).items()
                if src is not None}
    return [n for n, src in recorded.items() if src != file_identity(path_of(n))], len(recorded)


def warn_if_changed(mi: MapIndex, index_dir: Path, verify: bool = False) -> list[str]:
    """Log one warning naming how many map images of a global index changed since indexing (and the first few)."""
    return _warn(Path(index_dir), Path(index_dir) / MAP_FEATURES, mi.names, mi.image_path, verify, mi.deleted)


def warn_if_segments_changed(manifest: dict, index_dir: Path, verify: bool = False) -> list[str]:
    """The same for a SegVLAD index (its map images are all in its map folder)."""
    map_dir = Path(manifest["map_dir"])
    return _warn(Path(index_dir), Path(index_dir) / SEGMENT_FEATURES, manifest["names"], lambda n: map_dir / n,
                 verify)


def _warn(index_dir: Path, features: Path, names: list[str], path_of: Callable[[str], Path], verify: bool,
          removed: Collection[int] = ()) -> list[str]:
    if not features.is_file():
        return []
    changed, checked = changed_map_images(features, names, path_of, verify, removed)
    if changed:
        total = len(names) - len(removed)
        count = (f"{len(changed)} of {checked} map images" if checked == total else
                 f"{len(changed)} of {checked} sampled map images (about {round(len(changed) / checked * total)} "
                 f"of {total}; --verify checks every one)")
        logger.warning("%s: %s changed or disappeared since the index was built (e.g. %s): their descriptors are "
                       "stale; rebuild the index (`vprkit index`) for correct answers", index_dir, count,
                       ", ".join(changed[:SHOWN]))
    return changed
