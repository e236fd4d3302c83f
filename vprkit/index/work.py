"""The build folder of an index: locked, refused before any work when OUT is not an index, resumable after a crash."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..data.safeio import InputError, check_output, locked
from . import faiss_index
from .growing import added_records
from .layout import MARKER_FILE


@contextmanager
def index_work(out_dir: Path, keep_added: bool = False) -> Iterator[Path]:
    """Lock OUT for the whole build, refuse it before any work when it is not an index (or holds added images that
    the rebuild would drop), and give the resumable work folder beside it (`.OUT.work`, removed once the index is
    saved; kept after a crash for the rerun)."""
    check_output(out_dir, [MARKER_FILE], "index", faiss_index.is_index)  # refused before a lock file is left
    with locked(out_dir):
        check_output(out_dir, [MARKER_FILE], "index", faiss_index.is_index)
        if not keep_added:
            faiss_index.check_rebuild(out_dir)
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


def carried(out_dir: Path, model_key: str) -> list[dict]:
    """The images added to the index at `out_dir` after its build, as records for the rebuilt one (`--keep-added`;
    same model only: their stored descriptors are reused)."""
    if not faiss_index.is_index(out_dir) or not faiss_index.added_names(out_dir):
        return []
    old = faiss_index.read_manifest(out_dir)["model_key"]
    if old != model_key:
        raise InputError(f"{out_dir}: --keep-added needs the model the index was built with ({old}): the added "
                         "images' descriptors are reused")
    return added_records(out_dir)
