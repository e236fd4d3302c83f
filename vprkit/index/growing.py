"""A map that grows: add and remove images of a saved index without ever leaving it unreadable.

The protocol, under one writer per folder (an flock on `.NAME.lock` beside it, a file that stays):

- add: the image bytes are written first, fsynced, under a name derived from their content
  (`images/<sha256><ext>`), outside the writer lock (the slow part). Then, under the lock, the file is checked to
  still be there (a compaction in between may have collected it: it is written again) and the journal record
  holding the descriptor is appended and fsynced. Only then does `add` return, so an acknowledged addition
  always has its bytes on disk, and a kill at any moment loses nothing acknowledged (`faiss_index.load` replays
  the journal).
- remove: a journal record, under the lock.
- compaction (under the lock): the live map is written as a new generation `generations/N/` (base files and an
  empty journal), made current by one atomic rename of the `current` symlink; then the old generation and every
  image file no live record references are deleted. Readers resolve `current` once (`faiss_index.load`), so they
  see the old generation or the new one whole. The index folder itself is never moved or replaced: files written
  into it meanwhile (results, a user's notes) and a symlinked index path are untouched.
- a write that fails (a full disk) raises `journal.JournalUnavailable`: the change is not made and not
  acknowledged, and the next change is tried afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
from pathlib import Path

import faiss
import numpy as np

from ..data.images import EXTENSIONS, UNSAFE_NAME
from ..data.safeio import hold_lock
from ..features import h5io
from . import faiss_index, journal, large
from .faiss_index import GENERATION_FILES
from .layout import CURRENT, GENERATIONS, IMAGES_DIR
from .layout import MAP_FEATURES as FEATURES_FILE

logger = logging.getLogger("vprkit")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_NAME = 200


def check_name(name: str) -> str:
    """A map image name as stored: any name `vprkit index` accepts (spaces and any script included), as a relative
    posix path without empty, '.' or '..' parts, control characters (tabs and line breaks break the tab-separated
    outputs) or a file-system-unsafe encoding. A name is only a key: the bytes are stored under their hash."""
    parts = name.split("/") if isinstance(name, str) else [""]
    if (len(name) > MAX_NAME or _CONTROL.search(name) or UNSAFE_NAME.search(name)
            or any(p in ("", ".", "..") for p in parts)):
        raise ValueError(f"invalid image name {str(name)[:MAX_NAME]!r}: use up to {MAX_NAME} characters, no tab, "
                         "line break or control character, in '/'-separated parts that are not empty, '.' or '..'")
    return name


class LockedError(OSError):
    """Another process is writing the index folder."""


class MapWriter:
    """The single writer of an index folder; `map` is the live, searchable view (guard it with `lock`)."""

    def __init__(self, index_dir: str | Path, compact_every: int = 1000) -> None:
        self.index_dir = faiss_index.require(Path(index_dir).resolve())
        self.compact_every = compact_every
        self.lock = threading.RLock()
        self._lock_fd = _take_lock(self.index_dir)
        _finish_compaction(self.index_dir, opening=True)
        self.map = faiss_index.load(self.index_dir)
        self._journal = journal.Journal(faiss_index.base_dir(self.index_dir))
        self.pending = len(journal.read(faiss_index.base_dir(self.index_dir))[0])

    def add(self, name: str, desc: np.ndarray, image: bytes, position: list[float] | None = None) -> int:
        """Store the image and its descriptor durably, then make it searchable; returns its id."""
        check_name(name)
        desc = np.asarray(desc, dtype=np.float32).reshape(-1)
        if desc.shape[0] != self.map.index.d:
            raise ValueError(f"descriptor of {name} has dimension {desc.shape[0]}, the index {self.map.index.d}")
        if position is not None and (len(position) != 2 or not np.all(np.isfinite(position))):
            raise ValueError(f"position of {name} must be two finite numbers, got {position}")
        suffix = Path(name).suffix.lower()
        rel = f"{IMAGES_DIR}/{hashlib.sha256(image).hexdigest()}{suffix if suffix in EXTENSIONS else '.img'}"
        self._store_image(rel, image)
        record = {"op": "add", "name": name, "desc": journal.desc_to_text(desc), "file": rel,
                  "position": None if position is None else [float(v) for v in position]}
        with self.lock:
            self._store_image(rel, image)  # again only when a compaction collected it since
            self._journal.append(record)
            self.map.apply(record)
            i = self.map.ids[name]
            self._after_change()
        return i

    def remove(self, name: str) -> bool:
        """Remove a live image durably; False when there is none of that name."""
        with self.lock:
            if name not in self.map.ids:
                return False
            record = {"op": "remove", "name": name}
            self._journal.append(record)
            self.map.apply(record)
            self._after_change()
        return True

    def _after_change(self) -> None:
        self.pending += 1
        if self.compact_every and self.pending >= self.compact_every:
            self.compact()

    def _store_image(self, rel: str, image: bytes) -> None:
        """Write the bytes at `rel` (a content-derived name, never a client's), durably, unless already there."""
        path = self.index_dir / rel
        if path.exists():
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            path.parent.mkdir(exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(image)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            journal.fsync_dir(path.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise journal.JournalUnavailable(f"{path}: cannot store the image ({exc.strerror or exc}); map changes "
                                             "are refused until it can be written (free disk space)") from exc

    def compact(self) -> None:
        """Fold the journal into a new generation of base files and make it current in one atomic rename."""
        with self.lock:
            old = faiss_index.base_dir(self.index_dir)
            gen = int(old.name) + 1 if old != self.index_dir else 1  # numbered after the current one: never it
            gens = self.index_dir / GENERATIONS
            new, tmp = gens / f"{gen:06d}", gens / f".{gen:06d}.new"
            try:
                gens.mkdir(exist_ok=True)
                for stale in (tmp, new):  # left by a compaction that failed before its commit
                    shutil.rmtree(stale, ignore_errors=True)
                _write_generation(self.map, old, tmp, gen)
                os.replace(tmp, new)
                journal.fsync_dir(gens)
                _point_current(self.index_dir, new)
            except (OSError, RuntimeError) as exc:  # faiss and HDF5 raise RuntimeError on a full disk
                logger.warning("compaction of %s skipped (%s); the journal keeps every change", self.index_dir, exc)
                shutil.rmtree(tmp, ignore_errors=True)
                self.pending = 0
                return
            self._journal.close()
            self.map = faiss_index.load(self.index_dir)
            self._journal = journal.Journal(new)
            self.pending = 0
            _finish_compaction(self.index_dir)
            _collect_images(self.index_dir, self.map)

    def close(self) -> None:
        with self.lock:
            self._journal.close()
            os.close(self._lock_fd)


def added_records(index_dir: str | Path) -> list[dict]:
    """Journal records re-adding every live image of the index that was added after its build (descriptor,
    position, stored file), to carry them into a rebuilt index (`vprkit index --keep-added`)."""
    mi = faiss_index.load(index_dir)
    files = {n: f for n, f in mi.manifest.get("files", {}).items() if n in mi.ids}
    names = sorted(files)
    ids = [mi.ids[n] for n in names]
    desc = _live_descriptors(mi, faiss_index.base_dir(index_dir), names, ids) if names else []
    return [{"op": "add", "name": n, "desc": journal.desc_to_text(d), "position": mi.position(i), "file": files[n]}
            for n, i, d in zip(names, ids, desc)]


def _write_generation(mi: faiss_index.MapIndex, src: Path, dst: Path, gen: int) -> None:
    """A complete generation at `dst` holding exactly the live images of `mi`, all files fsynced."""
    dst.mkdir()
    live = mi.live_names()
    live_ids = [mi.ids[n] for n in live]
    desc = _live_descriptors(mi, src, live, live_ids)
    _write_features(src / FEATURES_FILE, dst / FEATURES_FILE, live, desc, mi.manifest.get("conf", {}))
    choice = mi.manifest.get("index")
    index = faiss_index.build(desc, mi.manifest.get("factory", faiss_index.DEFAULT_FACTORY))
    faiss.write_index(index, str(dst / faiss_index.INDEX_FILE))
    written = [FEATURES_FILE, faiss_index.INDEX_FILE, faiss_index.MANIFEST_FILE, journal.JOURNAL_FILE]
    if choice and choice.get("rescore"):
        np.save(dst / large.DESCRIPTORS_FILE, desc.astype(np.float16))
        written.append(large.DESCRIPTORS_FILE)
    positions = mi.manifest.get("positions")
    files = {n: f for n, f in mi.manifest.get("files", {}).items() if n in mi.ids}
    manifest = {**mi.manifest, "names": live, "files": files, "generation": gen,
                "positions": [positions[i] for i in live_ids] if positions else None}
    if choice:
        manifest["index"] = {**choice, "on_disk": False}  # the compacted lists are written whole, in RAM format
    (dst / faiss_index.MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    (dst / journal.JOURNAL_FILE).touch()
    for name in written:
        _fsync_file(dst / name)
    journal.fsync_dir(dst)


def _live_descriptors(mi: faiss_index.MapIndex, src: Path, live: list[str], live_ids: list[int]) -> np.ndarray:
    """Descriptors of the live images: base ones from the features file, added ones from the journal."""
    added = {r["name"]: journal.desc_from_text(r["desc"]) for r in journal.read(src)[0] if r["op"] == "add"}
    base = [n for n in live if n not in added]
    base_desc = dict(zip(base, h5io.read_global(src / FEATURES_FILE, base))) if base else {}
    return np.stack([added[n] if n in added else base_desc[n] for n in live]).astype(np.float32)


def _write_features(src: Path, dst: Path, names: list[str], desc: np.ndarray, conf: dict) -> None:
    """A features file with one global descriptor per live image, in the base file's dtype and attributes."""
    attrs = h5io.read_attrs(src) if src.exists() else {}
    dtype = np.float16 if conf.get("fp16") else np.float32
    h5io.write_batch(dst, {n: {"global": d.astype(dtype)} for n, d in zip(names, desc)}, attrs)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _point_current(index_dir: Path, generation: Path) -> None:
    """Make `generation` current: a new symlink renamed over `current` (the commit point of a compaction)."""
    tmp = index_dir / f".{CURRENT}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(generation.relative_to(index_dir), tmp)
    os.replace(tmp, index_dir / CURRENT)
    journal.fsync_dir(index_dir)


def _finish_compaction(index_dir: Path, opening: bool = False) -> None:
    """Complete whatever a compaction (possibly killed) left after its commit: the top-level base files become
    links through `current`; generations that are not current (old, or never committed) and temporary files are
    deleted. Only the writer calls this (it holds the lock). Image files being stored are written outside the lock,
    so their temporary files are left by a killed writer only, and deleted only when a writer opens (`opening`):
    deleting them after a compaction failed the additions in flight."""
    (index_dir / f".{CURRENT}.tmp").unlink(missing_ok=True)
    base = faiss_index.base_dir(index_dir)
    if base != index_dir:
        for name in GENERATION_FILES:
            top = index_dir / name
            if (base / name).exists() and not top.is_symlink():
                tmp = index_dir / f".{name}.link.tmp"
                tmp.unlink(missing_ok=True)
                os.symlink(f"{CURRENT}/{name}", tmp)
                os.replace(tmp, top)
        journal.fsync_dir(index_dir)
    gens = index_dir / GENERATIONS
    for entry in gens.iterdir() if gens.is_dir() else []:
        if entry != base:
            shutil.rmtree(entry, ignore_errors=True)
    images_tmp = list((index_dir / IMAGES_DIR).glob(".*.tmp")) if opening else []
    for tmp in list(base.glob(f".{journal.JOURNAL_FILE}.*.tmp")) + images_tmp:
        tmp.unlink(missing_ok=True)


def _collect_images(index_dir: Path, mi: faiss_index.MapIndex) -> None:
    """Delete the image files no live image refers to (called under the writer lock, right after a compaction,
    when the manifest lists every live file; an addition in flight re-stores its file under the lock)."""
    live = set(mi.manifest.get("files", {}).values())
    for path in (index_dir / IMAGES_DIR).glob("[!.]*"):
        if f"{IMAGES_DIR}/{path.name}" not in live:
            path.unlink(missing_ok=True)


def _take_lock(index_dir: Path) -> int:
    """The writer's lock (`safeio.hold_lock`: `.NAME.lock` beside the folder, the lock `vprkit index` takes)."""
    fd = hold_lock(index_dir)
    if fd is None:
        raise LockedError(f"{index_dir} is being written by another process (a running `vprkit serve`?)")
    return fd
