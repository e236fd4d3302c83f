"""The authors' released weights: read as released, mapped to vprkit's names, loaded strictly; or downloaded.

A released file is read as its authors published it: a bare state dict or one inside a `state_dict` / `model`
container (`.ckpt`, `.pth`, `.pth.tar`, read with `weights_only=True`), or a `.safetensors` file (MegaLoc). A
prefix that every key shares (DataParallel's `module.`, a wrapping module's `model.`, torch.compile's
`_orig_mod.`) is dropped; the zoo entry's `convert` then maps the keys to `backbone.*` / `aggregator.*`, and the
load is strict, with one line naming the missing and unexpected keys otherwise.

Without a local file, `fetch` downloads the authors' URL into the cache (`cache_dir()/weights`), with a progress
bar, resume of a partial file (HTTP Range), an atomic rename and a SHA-256 check: against the hash the authors
publish where they do, else against the one recorded beside the file at its first download. Where the file cannot
be had (no network, no URL, HTTP error), the error is one line saying which file to get from where and the
`--checkpoint` to pass instead.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from tqdm import tqdm

from ..data.safeio import InputError, atomic_write, locked
from .base import cache_dir, load_strict, read_state_dict

if TYPE_CHECKING:
    from .zoo import ZooEntry

WRAPPERS = ("module.", "model.", "_orig_mod.")
CHUNK = 1 << 20
TIMEOUT_S = 20  # per socket operation: a refused connection or a failed DNS lookup fails at once anyway
ATTEMPTS = 3  # transfers per call; each one after a dropped connection resumes where the last stopped


class WeightsUnavailable(FileNotFoundError):
    """The released file cannot be had here; the message says what to get from where and how to pass it."""


class _Interrupted(Exception):
    """The connection dropped mid-file; what arrived is kept in the partial file."""


def read_released(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a released file (safetensors or a torch checkpoint), unwrapped, wrapper prefix dropped."""
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise WeightsUnavailable(f"weights file not found: {path}")
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(path, device="cpu")
        except (SafetensorError, OSError) as exc:
            raise InputError(f"{path}: not a readable safetensors file ({exc})") from None
    else:
        state = read_state_dict(path)
    return strip_wrappers(state)


def strip_wrappers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a prefix of `WRAPPERS` while every key starts with it (a whole model saved inside a wrapper); a prefix
    only some keys share is a part's name and stays."""
    for _ in range(len(WRAPPERS)):
        prefix = next((p for p in WRAPPERS if state and all(k.startswith(p) for k in state)), None)
        if prefix is None:
            break
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def convert(entry: ZooEntry, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entry's `convert` ("module:function" under vprkit.models) applied; the state itself without one."""
    if entry.convert is None:
        return state
    module, function = entry.convert.split(":")
    return getattr(importlib.import_module(f"vprkit.models.{module}"), function)(state)


def load_weights(entry: ZooEntry, backbone: nn.Module, aggregator: nn.Module, path: str | Path) -> None:
    """Load the released file at `path` into `backbone` + `aggregator`, strictly (one-line error otherwise)."""
    state = convert(entry, read_released(path))
    load_strict(nn.ModuleDict({"backbone": backbone, "aggregator": aggregator}), state, path)


def weights_dir() -> Path:
    """The cache folder of released files."""
    return cache_dir() / "weights"


def cached_path(entry: ZooEntry) -> Path:
    """Where the entry's released file is kept in the cache (under its released name)."""
    return weights_dir() / entry.weights.filename


def is_cached(entry: ZooEntry) -> bool:
    """Whether the released file is in the cache (complete: partial downloads end in `.part`)."""
    return cached_path(entry).is_file()


def fetch(entry: ZooEntry, progress: bool = True) -> Path:
    """The entry's released file: from the cache when there (its hash checked), else downloaded into it."""
    dest = cached_path(entry)
    if dest.is_file():
        verify(entry, dest, dest)
        return dest
    if entry.weights.url is None:
        raise WeightsUnavailable(f"{entry.preset}: the authors publish no direct download; {by_hand(entry)}")
    with locked(dest):  # two processes never write one partial file (a second is refused, in one line)
        download(entry, dest, progress)
    return dest


def download(entry: ZooEntry, dest: Path, progress: bool) -> None:
    """The authors' URL into `dest`, through `dest.part` (resumed after a dropped connection), checked, renamed."""
    part = dest.with_name(dest.name + ".part")
    for _ in range(ATTEMPTS):
        try:
            transfer(entry, part, progress)
            break
        except _Interrupted:
            continue
    else:
        raise WeightsUnavailable(f"{entry.preset}: the download of {entry.weights.url} was cut {ATTEMPTS} times; "
                                 f"rerun to resume from the {part.stat().st_size} bytes kept in {part}, or "
                                 f"{by_hand(entry)}")
    verify(entry, part, dest)
    os.replace(part, dest)


def by_hand(entry: ZooEntry) -> str:
    """How to get the file without vprkit's download: where from, and the flag to pass."""
    w = entry.weights
    where = w.url or w.note or f"the authors' repository {entry.code}"
    return f"get {w.filename} from {where} and pass --checkpoint /path/to/{w.filename}"


def transfer(entry: ZooEntry, part: Path, progress: bool) -> None:
    """Download into `part`, continuing after the bytes it holds when the server honours the Range request."""
    url = entry.weights.url
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "vprkit"} | ({"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the partial file is not a prefix the server knows: start again
            part.unlink()
            raise _Interrupted from None
        raise WeightsUnavailable(f"{entry.preset}: {url} answered HTTP {exc.code} {exc.reason}; {by_hand(entry)}"
                                 ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise WeightsUnavailable(f"{entry.preset}: cannot download {url} (no network? {reason}); {by_hand(entry)}"
                                 ) from None
    with resp:
        resumed = resp.status == 206 and resp.headers.get("Content-Range", "").startswith(f"bytes {have}-")
        start = have if resumed else 0
        length = resp.headers.get("Content-Length")
        total = start + int(length) if length else None
        with open(part, "ab" if resumed else "wb") as f, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                desc=entry.weights.filename, disable=not progress) as bar:
            try:
                while chunk := resp.read(CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
            except (http.client.IncompleteRead, ConnectionError, TimeoutError):
                raise _Interrupted from None
            finally:
                f.flush()
                os.fsync(f.fileno())
    if total is not None and part.stat().st_size < total:
        raise _Interrupted


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify(entry: ZooEntry, path: Path, dest: Path) -> None:
    """Check `path` (the download, or the cached `dest`) against the pinned hash, else the one recorded at the
    first download (`dest.sha256`), recording it when there is none yet; a bad new download is removed."""
    digest, record = sha256(path), dest.with_name(dest.name + ".sha256")
    expected = entry.weights.sha256 or (record.read_text().strip() if record.is_file() else None)
    if expected is None:
        atomic_write(record, digest + "\n")
        return
    if digest != expected:
        source = "published by the authors" if entry.weights.sha256 else f"recorded at first download in {record}"
        if path != dest:
            path.unlink()
            raise InputError(f"{entry.preset}: the download of {entry.weights.url} has SHA-256 {digest}, not "
                             f"{expected} ({source}); removed it")
        raise InputError(f"{dest}: SHA-256 {digest} is not {expected} ({source}); delete it to download again")
