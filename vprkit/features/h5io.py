"""HDF5 feature files: one group per image name, written batch by batch so a crash loses one batch."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np


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


def write_batch(path: str | Path, items: dict[str, dict[str, np.ndarray]], attrs: dict | None = None) -> None:
    """Append one batch and close the file, so everything before it is safely on disk."""
    with h5py.File(path, "a") as f:
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
        for name, arrays in items.items():
            if _key(name) in f:
                del f[_key(name)]
            grp = f.create_group(_key(name))
            for k, arr in arrays.items():
                grp.create_dataset(k, data=arr)


def read_global(path: str | Path, names: list[str]) -> np.ndarray:
    """Stack the global descriptors of `names` (float32), in that order."""
    with h5py.File(path, "r") as f:
        missing = [n for n in names if f"{_key(n)}/global" not in f]
        if missing:
            raise KeyError(f"{path}: no features for {len(missing)} images, e.g. {missing[:3]}")
        return np.stack([f[f"{_key(n)}/global"][()] for n in names]).astype(np.float32)


def read_attrs(path: str | Path) -> dict:
    """File-level attributes (the extraction config that produced the features)."""
    with h5py.File(path, "r") as f:
        return dict(f.attrs)
