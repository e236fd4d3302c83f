"""Safe files, in one place for every step: clean errors, atomic writes, guarded output folders, locks and
fingerprints of inputs.

- `InputError`: bad input or a refused output; the message names the file and the problem (CLI: one line,
  exit code 2). `WriteError`: a write that failed (disk full, permissions), naming the file.
- `replacing` / `atomic_write` / `atomic_savez`: a file is replaced whole or not at all.
- `check_output` + `output_folder`: a command that writes a folder (`-o OUT`) never writes over, or deletes,
  something that is not its own kind of folder; it builds the new folder beside OUT and swaps it in only when
  complete, carrying over every entry of the old folder that vprkit did not write (`results/`, a user's notes);
  a symlinked OUT stays a symlink (its target is rebuilt).
- `hold_lock` / `locked`: an advisory lock (flock) on `.OUT.lock` beside OUT, a file that is never deleted (deleting
  it let a second writer lock a new file while the first still held the old one).
- `file_identity` / `inputs_fingerprint` / `content_hash`: what a cache entry was computed from, so a cache is
  reused only for the same input files and the same fitted state.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np


class InputError(ValueError):
    """Bad input (or an output path that must not be written), with the file and the problem in the message."""


class WriteError(OSError):
    """Writing a file failed (disk full, read-only, permissions); the message names the file."""


@contextmanager
def writing(path: str | Path, also: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """Turn a failed write (OSError, or the `also` types: faiss and HDF5 raise RuntimeError) into a `WriteError`
    naming `path` and saying when the disk is full."""
    try:
        yield
    except WriteError:
        raise
    except (OSError, *also) as exc:
        code = getattr(exc, "errno", None) or (errno.ENOSPC if "No space left" in str(exc) else None)
        why = "disk full (ENOSPC)" if code == errno.ENOSPC else (getattr(exc, "strerror", None) or str(exc))
        err = WriteError(f"{path}: cannot write: {why}")
        err.errno = code or errno.EIO
        raise err from exc


def ensure_space(path: str | Path, nbytes: int, margin: int = 1 << 20) -> None:
    """Refuse, before it starts, a write of about `nbytes` that would fill the disk under `path`: HDF5 can
    crash the process (segfault) or leave its file unusable when the disk fills in the middle of a write."""
    folder = Path(path).parent
    st = os.statvfs(folder if folder.exists() else Path.cwd())
    free = st.f_bavail * st.f_frsize
    if free < nbytes + margin:
        err = WriteError(f"{path}: cannot write: disk full (ENOSPC): {free} bytes free, about {nbytes + margin} "
                         "needed; free some space and run the same command again (finished work is kept)")
        err.errno = errno.ENOSPC
        raise err


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary sibling of `path` to write to: renamed over `path` when the block succeeds, removed when
    it fails, so readers never see a half-written file and a failed write leaves the old one intact."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with writing(path):
            yield tmp
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, text: str) -> None:
    """Write text through a temporary sibling (see `replacing`)."""
    with replacing(path) as tmp:
        tmp.write_text(text)


def atomic_savez(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Arrays as one uncompressed .npz (no pickle needed to read it back), written through `replacing`."""
    with replacing(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def read_text(path: str | Path) -> str:
    """A text file as UTF-8 (a leading byte-order mark ignored), with a clear error when it is not one."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None


def check_output(path: str | Path, markers: Iterable[str], what: str,
                 is_own: Callable[[Path], bool] | None = None) -> None:
    """Refuse an output folder path that holds something else than a vprkit `what` or nothing: a `what` is a
    folder for which `is_own` holds, or (without `is_own`) one with an entry matching a glob pattern of `markers`.
    The user's files are never written over or deleted. A symlink is judged by its target."""
    path = Path(path).resolve()
    _recover(path)
    if not path.exists() and not path.is_symlink():
        return
    markers = list(markers)
    if not path.is_dir():
        raise InputError(f"{path}: exists and is not a folder; refusing to replace it with a vprkit {what} "
                         "(choose another -o)")
    own = is_own(path) if is_own is not None else any(next(path.glob(m), None) is not None for m in markers)
    if own or not any(path.iterdir()):
        return
    raise InputError(f"{path}: exists and is not a vprkit {what} (no {' or '.join(markers)} in it); refusing to "
                     "write into it (choose another -o, or empty it yourself)")


def _old(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def _recover(path: Path) -> None:
    """Finish a folder swap that a crash interrupted after the old folder was moved aside."""
    if not path.exists() and _old(path).is_dir():
        os.replace(_old(path), path)


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o777 & ~mask


def hold_lock(path: str | Path) -> int | None:
    """An open descriptor holding the exclusive flock on `.NAME.lock` beside `path` (symlinks resolved, so every
    spelling of a folder shares one lock), or None when another process holds it. Closing it releases the lock;
    the file stays, so every writer locks the same file."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold the lock of `path` (`hold_lock`) while writing it; a second writer is refused at once."""
    fd = hold_lock(path)
    if fd is None:
        raise InputError(f"{path}: another vprkit process is writing it (lock .{Path(path).resolve().name}.lock "
                         "beside it); wait for it to finish")
    try:
        yield
    finally:
        os.close(fd)


@contextmanager
def output_folder(path: str | Path, markers: Iterable[str], what: str, is_own: Callable[[Path], bool] | None = None,
                  owned: Callable[[Path], set[str]] = lambda old: set()) -> Iterator[Path]:
    """A new, empty folder beside `path` to build the output in; swapped in for `path` when the block succeeds,
    removed when it fails. Every entry of the old folder that vprkit did not write (not in `owned(old)`, not
    rebuilt) is carried into the new one. A symlinked `path` stays a symlink: its target is the folder rebuilt.
    Refuses paths that are not a vprkit `what` (see `check_output`). Created with the user's umask. Callers hold
    `locked(path)` around the whole run (extraction included), so two writers never share a work file."""
    path = Path(path).resolve()
    check_output(path, markers, what, is_own)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.new"):  # left by a killed run (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".new", dir=path.parent))
    try:
        tmp.chmod(_umask_mode())
        yield tmp
        _swap_in(tmp, path, owned)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(new: Path, path: Path, owned: Callable[[Path], set[str]]) -> None:
    """Rename `new` to `path`. An existing `path`'s entries that vprkit did not write are first hard-linked into
    `new` (so a crash at any step loses none of them), then `path` is moved aside and removed."""
    if not path.exists():
        os.replace(new, path)
        return
    mine = owned(path)
    for entry in path.iterdir():
        if entry.name not in mine and not (new / entry.name).exists() and not entry.is_symlink() and entry.is_dir():
            shutil.copytree(entry, new / entry.name, symlinks=True, copy_function=os.link)
        elif entry.name not in mine and not (new / entry.name).exists():
            os.link(entry, new / entry.name, follow_symlinks=False)
    old = _old(path)
    shutil.rmtree(old, ignore_errors=True)
    os.replace(path, old)
    os.replace(new, path)
    shutil.rmtree(old, ignore_errors=True)


def file_identity(path: str | Path) -> str:
    """Resolved path, size and modification time of a file: changes whenever the file is replaced or edited."""
    path = Path(path).resolve()
    try:
        st = path.stat()
    except OSError:
        return f"{path}|missing"
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


def inputs_fingerprint(root: str | Path, names: list[str]) -> str:
    """One short hash of the identities of `names` under `root` (keys caches of a whole image list)."""
    h = hashlib.sha1()
    for name in names:
        h.update(file_identity(Path(root) / name).encode() + b"\n")
    return h.hexdigest()[:16]


def content_hash(path: str | Path) -> str:
    """sha1 of a file's bytes (fitted states, manifests, checkpoints: what a cached result was computed with)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]
