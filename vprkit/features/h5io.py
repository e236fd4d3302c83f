"""HDF5 feature files: one group per image name, written batch by batch so a crash loses one batch.

Each group records the identity of the image it was computed from (`source`: resolved path, size, mtime), so
a cache is reused only for the same file; a file damaged by a crash or a full disk is salvaged (`salvage`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import h5py
import numpy as np

from ..data.safeio import ensure_space, file_identity, replacing, writing

logger = logging.getLogger("vprkit")
SOURCE = "source"


def _key(name: str) -> str:
    """HDF5 treats '/' as nesting, which is what we want for relative paths; '.' parts are not allowed."""
    return name


def finished_names(path: str | Path, key: str = "global") -> set[str]:
    """Names whose `key` dataset (the global descriptor by default) is already in the file."""
    path = Path(path)
    if not path.exists():
        return set()
    done: set[str] = set()
    try:
        with h5py.File(path, "r") as f:
            f.visititems(lambda n, obj: done.add(n.removesuffix(f"/{key}"))
                         if isinstance(obj, h5py.Dataset) and n.endswith(f"/{key}") else None)
    except OSError as exc:
        raise OSError(f"{path}: unreadable feature file ({exc}); delete it or choose another output") from exc
    return done


def write_batch(path: str | Path, items: dict[str, dict[str, np.ndarray]], attrs: dict | None = None,
                root: str | Path | None = None) -> None:
    """Append one batch and close the file, so everything before it is safely on disk. With `root`, each
    group records the identity of the image file `root/name` it was computed from. Refused before it starts
    when the disk is (nearly) full, so HDF5 never meets a failing write."""
    ensure_space(path, 2 * sum(a.nbytes for arrays in items.values() for a in arrays.values()) + 8192 * len(items))
    with writing(path, (RuntimeError,)), h5py.File(path, "a") as f:
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
        for name, arrays in items.items():
            if _key(name) in f:
                del f[_key(name)]
            grp = f.create_group(_key(name))
            for k, arr in arrays.items():
                grp.create_dataset(k, data=arr)
            if root is not None:
                grp.attrs[SOURCE] = file_identity(Path(root) / name)


def recorded_sources(path: str | Path, names: Iterable[str]) -> dict[str, str | None]:
    """The file identity each stored image recorded when it was described (None: recorded none); names not stored
    are left out."""
    with h5py.File(path, "r") as f:
        return {n: f[_key(n)].attrs.get(SOURCE) for n in names if _key(n) in f}


def changed_sources(path: str | Path, root: str | Path, names: list[str]) -> set[str]:
    """Names whose stored features were computed from another file than `root/name` is now (or record none)."""
    return {n for n, src in recorded_sources(path, names).items() if src != file_identity(Path(root) / n)}


def salvage(path: str | Path) -> None:
    """Make an existing feature file readable again after a crash or a full disk: every image whose datasets
    still read back is copied to a fresh file that replaces it; a file HDF5 cannot open at all is removed.
    Both cases are logged with the file name."""
    path = Path(path)
    if not path.exists() or _intact(path):
        return
    try:
        with h5py.File(path, "r") as src, replacing(path) as tmp, h5py.File(tmp, "w") as dst:
            dst.attrs.update(dict(src.attrs))
            kept = sum(_copy_if_readable(src, dst, n) for n in _image_groups(src))
        logger.warning("%s was damaged (interrupted write or full disk); kept the %d images that read back, the "
                       "rest are computed again", path, kept)
    except OSError:
        os.replace(path, path.with_name(path.name + ".damaged"))
        logger.warning("%s could not be opened (interrupted write or full disk); moved aside to %s.damaged and "
                       "starting it again", path, path.name)


def _intact(path: Path) -> bool:
    """Whether every dataset of the file reads back."""
    try:
        with h5py.File(path, "r") as f:
            f.visititems(lambda _, obj: obj[()] if isinstance(obj, h5py.Dataset) else None)
            dict(f.attrs)
        return True
    except (OSError, RuntimeError, KeyError, ValueError):
        return False


def _image_groups(f: h5py.File) -> list[str]:
    """Names of the groups that hold datasets (one per image), as far as the file's links still read."""
    names: dict[str, None] = {}

    def visit(name: str) -> None:
        if "/" in name:
            names[name.rsplit("/", 1)[0]] = None

    try:
        f.visit(visit)
    except (OSError, RuntimeError, KeyError):
        pass
    return [n for n in names if _is_image_group(f, n)]


def _is_image_group(f: h5py.File, name: str) -> bool:
    try:
        return any(isinstance(obj, h5py.Dataset) for obj in f[name].values())
    except (OSError, RuntimeError, KeyError):
        return True  # unreadable: `_copy_if_readable` drops it


def _copy_if_readable(src: h5py.File, dst: h5py.File, name: str) -> bool:
    """Copy one image's group if all its datasets and attributes read back; True when copied."""
    try:
        grp = src[_key(name)]
        arrays = {k: grp[k][()] for k in grp}
        attrs = dict(grp.attrs)
    except (OSError, RuntimeError, KeyError, ValueError):
        return False
    out = dst.create_group(_key(name))
    out.attrs.update(attrs)
    for k, arr in arrays.items():
        out.create_dataset(k, data=arr)
    return True


def read_global(path: str | Path, names: list[str]) -> np.ndarray:
    """Stack the global descriptors of `names` (float32), in that order; an empty (0, 0) array for no names."""
    if not names:
        return np.empty((0, 0), np.float32)
    with h5py.File(path, "r") as f:
        missing = [n for n in names if f"{_key(n)}/global" not in f]
        if missing:
            raise KeyError(f"{path}: no features for {len(missing)} images, e.g. {missing[:3]}")
        return np.stack([f[f"{_key(n)}/global"][()] for n in names]).astype(np.float32)


def read_attrs(path: str | Path) -> dict:
    """File-level attributes (the extraction config that produced the features)."""
    try:
        with h5py.File(path, "r") as f:
            return dict(f.attrs)
    except OSError as exc:
        raise OSError(f"{path}: unreadable feature file ({exc})") from exc
