"""The append log of an index folder: map changes made after the index was built.

One record per line, `CRC32(hex) JSON\\n`, written with one `write` and fsynced before the caller
acknowledges the change. A crash can only tear the last line; readers stop at the first line whose
checksum fails, and the writer cuts such a tail off before appending. Records:

    {"op": "add", "name": ..., "desc": base64 float32, "position": [x, y] | null, "file": "images/<sha256>.jpg"}
    {"op": "remove", "name": ...}

This module only reads and writes records; `faiss_index.load` applies them and `growing.MapWriter`
produces them (and folds them into the base files when compacting).
"""

from __future__ import annotations

import base64
import json
import os
import zlib
from pathlib import Path

import numpy as np

from .layout import JOURNAL_FILE


class JournalUnavailable(OSError):
    """The journal cannot be written now (disk full, torn tail not repaired): map changes are refused until it can.

    The service answers 503 with this message; nothing is acknowledged that is not durable."""


def encode(record: dict) -> bytes:
    """One checksummed line."""
    body = json.dumps(record, separators=(",", ":"), sort_keys=True).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


def _decode(line: bytes) -> dict | None:
    """The record of a complete, intact line, else None (a torn or corrupted tail)."""
    if not line.endswith(b"\n") or len(line) < 10 or line[8:9] != b" ":
        return None
    body = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(body):
            return None
        return json.loads(body)
    except ValueError:
        return None


def read(index_dir: str | Path) -> tuple[list[dict], int]:
    """(intact records in order, byte length of the intact prefix); no journal: ([], 0)."""
    path = Path(index_dir) / JOURNAL_FILE
    if not path.exists():
        return [], 0
    records, good = [], 0
    with open(path, "rb") as f:
        for line in f:
            rec = _decode(line)
            if rec is None:
                break
            records.append(rec)
            good += len(line)
    return records, good


def desc_to_text(desc: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(desc, dtype="<f4").tobytes()).decode()


def desc_from_text(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float32)


class Journal:
    """The open log of one writer: every `append` is on disk (fsynced) when it returns."""

    def __init__(self, index_dir: str | Path) -> None:
        self.path = Path(index_dir) / JOURNAL_FILE
        _, good = read(index_dir)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        os.ftruncate(self._fd, good)  # drop a torn tail left by a crash
        os.lseek(self._fd, good, os.SEEK_SET)
        os.fsync(self._fd)
        fsync_dir(self.path.parent)

    def append(self, record: dict) -> None:
        data = encode(record)
        if os.write(self._fd, data) != len(data):
            raise OSError(f"{self.path}: short write")
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or creation inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
