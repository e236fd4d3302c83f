"""The index folder's file names and its resumable build folder: the one place that spells them.

An index folder (`vprkit index MAP -o IDX`) holds:
  manifest.json      conf, model key, map folder, names, positions, versions (+ index choice, dimension)
  index.faiss        the FAISS index (absent for a SegVLAD index; on-disk lists beside it: index.ivfdata)
  map_features.h5    the map's global descriptors, keyed by image name (re-rankers and sequences read them)
  aggregator.npz     the fitted aggregator state (VLAD vocabulary, PCA), when the aggregator needs one
  descriptors.npy    exact descriptors for re-scoring a compressed index (`index --memory-budget`)
  journal.log, images/   additions and removals of a map grown through the service or `index --append`
A query results folder (`vprkit query`) keeps the queries' descriptors in query_features.h5 (SegVLAD:
query_segments.h5); see `vprkit.results` for the rest of it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..data.safeio import InputError, check_output, locked

INDEX_FILE, MANIFEST_FILE = "index.faiss", "manifest.json"
MAP_FEATURES, STATE_FILE = "map_features.h5", "aggregator.npz"
DESCRIPTORS_FILE, IVFDATA_FILE = "descriptors.npy", "index.ivfdata"
JOURNAL_FILE, IMAGES_DIR = "journal.log", "images"
QUERY_FEATURES, QUERY_SEGMENTS = "query_features.h5", "query_segments.h5"
SEGMENT_FEATURES, SEGMENT_STATE = "map_segments.h5", "segvlad_state.npz"  # a SegVLAD index's map and vocabulary
SEGMENTS_FILE, OWNER_FILE = "segments.npy", "segment_image.npy"


@contextmanager
def index_work(out_dir: Path) -> Iterator[Path]:
    """Lock OUT for the whole build, refuse it before any work when it is not an index, and give the resumable
    work folder beside it (`.OUT.work`, removed once the index is saved; kept after a crash for the rerun)."""
    with locked(out_dir):
        check_output(out_dir, [MANIFEST_FILE], "index")
        work = out_dir.with_name(f".{out_dir.name}.work")
        work.mkdir(parents=True, exist_ok=True)
        yield work
        shutil.rmtree(work, ignore_errors=True)


def readable(names: list[str], folder: Path, work: Path | None = None) -> list[str]:
    """`names` when some images could be read; else a clear error (and the useless work folder removed)."""
    if names:
        return names
    if work is not None:
        shutil.rmtree(work, ignore_errors=True)
    raise InputError(f"{folder}: none of its images could be read (each is named in the warnings above)")
