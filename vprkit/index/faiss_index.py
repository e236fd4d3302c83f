"""Build, save, load and search a FAISS index of map descriptors.

The index folder is written to a temporary sibling and swapped into place (`safeio.output_folder`), so it
is never half-written, a path that is not an index is never touched, and an old index's results/ are kept. Its
manifest (model config, dimension, image list, positions, versions) lets a
query run refuse features from another model with a clear message.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from ..data.safeio import InputError, content_hash, output_folder, writing

INDEX_FILE, MANIFEST_FILE = "index.faiss", "manifest.json"
DEFAULT_FACTORY = "Flat"


@dataclass
class MapIndex:
    """A FAISS index plus the manifest describing what it holds."""

    index: faiss.Index
    manifest: dict

    @property
    def names(self) -> list[str]:
        return self.manifest["names"]

    def search(self, queries: np.ndarray, k: int, chunk: int = 1024, nprobe: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, indices) per query, in query chunks so memory stays bounded for any map size."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.index.d:
            raise ValueError(f"query descriptors have shape {queries.shape}; the index expects dimension "
                             f"{self.index.d}")
        if nprobe is not None:
            faiss.ParameterSpace().set_index_parameter(self.index, "nprobe", nprobe)
        k = min(k, self.index.ntotal)
        scores = np.empty((len(queries), k), dtype=np.float32)
        ids = np.empty((len(queries), k), dtype=np.int64)
        for s in range(0, len(queries), chunk):
            scores[s:s + chunk], ids[s:s + chunk] = self.index.search(queries[s:s + chunk], k)
        return scores, ids


def build(descriptors: np.ndarray, factory: str = DEFAULT_FACTORY, train_max: int = 200_000,
          seed: int = 0) -> faiss.Index:
    """Inner-product index from a FAISS factory string ('Flat', 'IVF1024,PQ32', 'HNSW32', ...)."""
    x = np.ascontiguousarray(descriptors, dtype=np.float32)
    index = faiss.index_factory(x.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        sample = x if len(x) <= train_max else x[rng.choice(len(x), train_max, replace=False)]
        index.train(sample)
    index.add(x)
    return index


def versions() -> dict[str, str]:
    """Library versions recorded in the manifest, for reproducibility."""
    import torch

    from .. import __version__

    return {"vprkit": __version__, "faiss": faiss.__version__, "torch": torch.__version__, "numpy": np.__version__}


def save(out_dir: str | Path, index: faiss.Index | None, manifest: dict, extra_files: dict[str, Path] | None = None
         ) -> Path:
    """Write index + manifest (+ extra files, copied in) as `out_dir`, atomically (index None: no index.faiss)."""
    out_dir = Path(out_dir)
    with output_folder(out_dir, [MANIFEST_FILE], "index") as tmp:
        if index is not None:
            with writing(out_dir / INDEX_FILE, (RuntimeError,)):
                faiss.write_index(index, str(tmp / INDEX_FILE))
        with writing(out_dir / MANIFEST_FILE):
            (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
            for name, src in (extra_files or {}).items():
                shutil.copy2(src, tmp / name)
    return out_dir


def read_manifest(index_dir: str | Path) -> dict:
    """An index's manifest, with one clear error when it is missing, truncated or not a vprkit manifest."""
    path = Path(index_dir) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{index_dir}: not a vprkit index (no {MANIFEST_FILE}); build one with "
                                "`vprkit index MAP_DIR -o OUT`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: corrupt or truncated manifest ({exc}); rebuild the index") from None
    if not isinstance(manifest, dict) or not {"conf", "names", "map_dir"} <= set(manifest):
        raise InputError(f"{path}: not a vprkit manifest (needs conf, names, map_dir); rebuild the index")
    return manifest


def fingerprint(index_dir: str | Path) -> str:
    """Hash of an index's manifest: results record it, so they are never read against another index."""
    return content_hash(Path(index_dir) / MANIFEST_FILE)


def load(index_dir: str | Path) -> MapIndex:
    """Load a saved index, with a clear error when the folder is not one or its files are damaged."""
    index_dir = Path(index_dir)
    if not (index_dir / INDEX_FILE).is_file():
        raise FileNotFoundError(f"{index_dir}: not a vprkit index (expected {MANIFEST_FILE} and {INDEX_FILE}); "
                                "build one with `vprkit index MAP_DIR -o OUT`")
    manifest = read_manifest(index_dir)
    try:
        index = faiss.read_index(str(index_dir / INDEX_FILE))
    except RuntimeError as exc:
        reason = str(exc).strip().rpartition("Error: ")[2] or "unreadable"  # faiss's own words, without its C++ frame
        raise InputError(f"{index_dir / INDEX_FILE}: corrupt or truncated FAISS index ({reason}); rebuild the "
                         "index") from None
    if index.ntotal != len(manifest["names"]):
        raise InputError(f"{index_dir / INDEX_FILE}: holds {index.ntotal} vectors but the manifest lists "
                         f"{len(manifest['names'])} images; rebuild the index")
    return MapIndex(index, manifest)
