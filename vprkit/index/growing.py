"""A map that grows: add and remove images of a saved index without ever leaving it unreadable.

Durability: an addition first stores the image bytes under `images/<sha256><ext>` (fsynced), then
appends a journal record holding its descriptor (fsynced); only then does `add` return. A kill at any
moment therefore loses nothing acknowledged, and `faiss_index.load` replays the journal.

Compaction folds the journal into new base files (`map_features.h5`, `index.faiss`, `manifest.json`,
an empty journal) built in a sibling folder that is then swapped with the index folder in one atomic
`renameat2(RENAME_EXCHANGE)`, so readers see the old folder or the new one, never a mix.
One writer per folder, enforced by a lock file beside it (`.NAME.lock`).
"""

from __future__ import annotations

import ctypes
import fcntl
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

from ..data.images import EXTENSIONS
from ..features import h5io
from . import faiss_index, journal
from .layout import IMAGES_DIR
from .layout import MAP_FEATURES as FEATURES_FILE

logger = logging.getLogger("vprkit")
_NAME = re.compile(r"[A-Za-z0-9@_+-][A-Za-z0-9@_.+,=-]*(/[A-Za-z0-9@_+-][A-Za-z0-9@_.+,=-]*)*")
MAX_NAME = 200


def check_name(name: str) -> str:
    """A map image name as stored (a relative posix path of safe characters, no '.' or '..' parts)."""
    if not isinstance(name, str) or len(name) > MAX_NAME or not _NAME.fullmatch(name):
        raise ValueError(f"invalid image name {name[:MAX_NAME]!r}: use up to {MAX_NAME} letters, digits and @_+-.,= "
                         "in '/'-separated parts that do not start with '.'")
    return name


class LockedError(OSError):
    """Another process is writing the index folder."""


class MapWriter:
    """The single writer of an index folder; `map` is the live, searchable view (guard it with `lock`)."""

    def __init__(self, index_dir: str | Path, compact_every: int = 1000) -> None:
        self.index_dir = faiss_index.require(index_dir)
        self.compact_every = compact_every
        self.lock = threading.RLock()
        self._lock_fd = _take_lock(self.index_dir)
        _clean_leftovers(self.index_dir)
        self.map = faiss_index.load(self.index_dir)
        self.pending = len(journal.read(self.index_dir)[0])
        self._journal = journal.Journal(self.index_dir)

    def add(self, name: str, desc: np.ndarray, image: bytes, position: list[float] | None = None) -> int:
        """Store the image and its descriptor durably, then make it searchable; returns its id."""
        check_name(name)
        desc = np.asarray(desc, dtype=np.float32).reshape(-1)
        if desc.shape[0] != self.map.index.d:
            raise ValueError(f"descriptor of {name} has dimension {desc.shape[0]}, the index {self.map.index.d}")
        if position is not None and (len(position) != 2 or not np.all(np.isfinite(position))):
            raise ValueError(f"position of {name} must be two finite numbers, got {position}")
        rel = self._store_image(name, image)
        record = {"op": "add", "name": name, "desc": journal.desc_to_text(desc), "file": rel,
                  "position": None if position is None else [float(v) for v in position]}
        with self.lock:
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

    def _store_image(self, name: str, image: bytes) -> str:
        """Write the bytes under a content-addressed name (never a client's name), durably; returns it."""
        suffix = Path(name).suffix.lower()
        rel = f"{IMAGES_DIR}/{hashlib.sha256(image).hexdigest()}{suffix if suffix in EXTENSIONS else '.img'}"
        path = self.index_dir / rel
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            with open(tmp, "wb") as f:
                f.write(image)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            journal.fsync_dir(path.parent)
        return rel

    def compact(self) -> None:
        """Fold the journal into new base files and swap the folder in atomically (Linux renameat2)."""
        with self.lock:
            tmp = self.index_dir.with_name(f".{self.index_dir.name}.compact")
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                _write_compacted(self.map, self.index_dir, tmp)
                _exchange(tmp, self.index_dir)
            except OSError as exc:
                logger.warning("compaction of %s skipped (%s); the journal keeps every change", self.index_dir, exc)
                shutil.rmtree(tmp, ignore_errors=True)
                self.pending = 0
                return
            self._journal.close()
            shutil.rmtree(tmp, ignore_errors=True)  # the old folder, now under the temporary name
            self.map = faiss_index.load(self.index_dir)
            self._journal = journal.Journal(self.index_dir)
            self.pending = 0

    def close(self) -> None:
        with self.lock:
            self._journal.close()
            os.close(self._lock_fd)


def _write_compacted(mi: faiss_index.MapIndex, src: Path, dst: Path) -> None:
    """A complete index folder at `dst` holding exactly the live images of `mi`, all files fsynced."""
    live = mi.live_names()
    live_ids = [mi.ids[n] for n in live]
    shutil.copytree(src, dst, copy_function=os.link,
                    ignore=lambda d, names: [n for n in names if Path(d) == src and n in
                                             (faiss_index.INDEX_FILE, faiss_index.MANIFEST_FILE, FEATURES_FILE,
                                              journal.JOURNAL_FILE, IMAGES_DIR)])
    files = {n: f for n, f in mi.manifest.get("files", {}).items() if n in mi.ids}
    for rel in set(files.values()):
        (dst / rel).parent.mkdir(exist_ok=True)
        os.link(src / rel, dst / rel)
    desc = _live_descriptors(mi, src, live, live_ids)
    _write_features(src / FEATURES_FILE, dst / FEATURES_FILE, live, desc, mi.manifest.get("conf", {}))
    index = faiss_index.build(desc, mi.manifest.get("factory", faiss_index.DEFAULT_FACTORY))
    faiss.write_index(index, str(dst / faiss_index.INDEX_FILE))
    positions = mi.manifest.get("positions")
    manifest = {**mi.manifest, "names": live, "files": files,
                "positions": [positions[i] for i in live_ids] if positions else None}
    (dst / faiss_index.MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    for path in (dst / faiss_index.INDEX_FILE, dst / faiss_index.MANIFEST_FILE, dst / FEATURES_FILE):
        _fsync_file(path)
    for d in (dst / IMAGES_DIR, dst):
        if d.exists():
            journal.fsync_dir(d)


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


def _exchange(a: Path, b: Path) -> None:
    """Swap two folders in one atomic step (Linux renameat2 RENAME_EXCHANGE), then make it durable."""
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "renameat2"):
        raise OSError("renameat2 is not available on this system")
    at_fdcwd, rename_exchange = -100, 2
    if libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"renameat2 {a} <-> {b}: {os.strerror(err)}")
    journal.fsync_dir(b.parent)


def _take_lock(index_dir: Path) -> int:
    """An exclusive lock on `.NAME.lock` beside the folder (it survives the folder swap)."""
    fd = os.open(index_dir.with_name(f".{index_dir.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LockedError(f"{index_dir} is being written by another process (a running `vprkit serve`?)") from None
    return fd


def _clean_leftovers(index_dir: Path) -> None:
    """Remove a compaction folder a crash left behind (before or after the swap, it is never the live one)."""
    shutil.rmtree(index_dir.with_name(f".{index_dir.name}.compact"), ignore_errors=True)
