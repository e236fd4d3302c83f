"""The append log of an index folder: map changes made after the index was built (or last compacted).

One record per line, `CRC32(hex) JSON\\n`, written with one `pwrite` at the end of the last intact record and
fsynced before the caller acknowledges the change. A failed or short write (a full disk) is cut off at once and the
change refused (`JournalUnavailable`); while the cut fails every change is refused, so no acknowledged record ever
follows a torn one. Readers skip a damaged line (a torn tail, or a torn line that an older vprkit left with intact
records after it) and keep reading; the writer reports what was skipped when it opens the journal. Records:

    {"op": "add", "name": ..., "desc": base64 float32, "position": [x, y] | null, "file": "images/<sha256>.jpg"}
    {"op": "remove", "name": ...}

This module only reads and writes records; `faiss_index.load` applies them and `growing.MapWriter`
produces them (and folds them into new base files when compacting).
"""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .layout import JOURNAL_FILE

logger = logging.getLogger("vprkit")


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


_RECORD = re.compile(rb"[0-9a-f]{8} [{]")  # where a record starts


@dataclass
class Scan:
    """What a journal holds: its intact records in order, where the last one ends, and the damaged spans
    skipped ((offset, length) each)."""

    records: list[dict] = field(default_factory=list)
    end: int = 0
    skipped: list[tuple[int, int]] = field(default_factory=list)


def scan(index_dir: str | Path) -> Scan:
    """Every intact record; a damaged line is skipped, and an intact record glued to a torn one (an older
    vprkit appended after a short write) is found inside it. No journal: an empty scan."""
    path = Path(index_dir) / JOURNAL_FILE
    out, offset = Scan(), 0
    if not path.exists():
        return out
    with open(path, "rb") as f:
        for line in f:
            start = 0
            for m in _RECORD.finditer(line):
                rec = _decode(line[m.start():])
                if rec is not None:
                    if m.start() > start:
                        out.skipped.append((offset + start, m.start() - start))
                    out.records.append(rec)
                    start = len(line)
                    break
            if start < len(line):
                out.skipped.append((offset, len(line)))
            else:
                out.end = offset + len(line)
            offset += len(line)
    return out


def read(index_dir: str | Path) -> tuple[list[dict], int]:
    """(intact records in order, byte offset where the last intact record ends); no journal: ([], 0)."""
    s = scan(index_dir)
    return s.records, s.end


def desc_to_text(desc: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(desc, dtype="<f4").tobytes()).decode()


def desc_from_text(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float32)


class Journal:
    """The open log of one writer: every `append` is on disk (fsynced) when it returns, or refused."""

    def __init__(self, index_dir: str | Path) -> None:
        self.path = Path(index_dir) / JOURNAL_FILE
        found = scan(index_dir)
        for offset, length in found.skipped:
            logger.warning("%s: skipped %d damaged bytes at offset %d (a write torn by a crash or a full disk; "
                           "it was never acknowledged)", self.path, length, offset)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        if found.skipped:  # rewrite the intact records only, so damage never sits before a new record
            self._rewrite(found.records)
        else:
            self._good = found.end
            self._cut()
        fsync_dir(self.path.parent)

    def _rewrite(self, records: list[dict]) -> None:
        data = b"".join(encode(r) for r in records)
        tmp = self.path.with_name(f".{JOURNAL_FILE}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY)
        self._good = len(data)

    def _cut(self) -> None:
        """Drop whatever follows the last intact record (a torn write), durably."""
        if os.fstat(self._fd).st_size != self._good:
            os.ftruncate(self._fd, self._good)
            os.fsync(self._fd)

    def append(self, record: dict) -> None:
        """Write one record durably at the end of the intact log, or raise `JournalUnavailable` with the
        log cut back to its intact end (the change is then not made)."""
        data = encode(record)
        try:
            self._cut()  # a cut that failed after an earlier failed write is retried first
            written = os.pwrite(self._fd, data, self._good)
            if written != len(data):
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(data)} bytes)")
            os.fsync(self._fd)
        except OSError as exc:
            try:
                self._cut()
            except OSError:
                pass  # retried before the next append; until it succeeds every append is refused
            raise JournalUnavailable(f"{self.path}: cannot write the map's journal ({exc.strerror or exc}); map "
                                     "changes are refused until it can be written (free disk space)") from exc
        self._good += len(data)

    def close(self) -> None:
        os.close(self._fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or creation inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
