"""The build folder of an index: locked, refused before any work when OUT is not an index, resumable after a crash."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..data.safeio import InputError, check_output, locked
from .layout import MANIFEST_FILE


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
