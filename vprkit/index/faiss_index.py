"""Build, save, load and search a FAISS index of map descriptors.

The index folder is written to a temporary sibling and swapped into place (`safeio.output_folder`), so it
is never half-written, a path that is not an index is never touched, and every file of the old folder that vprkit
did not write (results/, a user's notes) is kept. An index is recognised by its marker file (`vprkit-index.json`:
format name, version, the files the build wrote); an index written before the marker existed is recognised by a
manifest with vprkit's fields. Its manifest (model config, dimension, image list, positions, versions) lets a
query run refuse features from another model with a clear message. Images added or removed after the build are
in the folder's journal (`journal.py`), applied on load.

Generations: a compaction (`growing.MapWriter.compact`) writes new base files into `generations/N/` and switches
the symlink `current` to it in one atomic rename; the top-level base files are then symlinks through `current`.
`load` resolves `current` once and reads every file from that generation, retrying when a compaction replaced it
meanwhile, so a reader sees one generation whole, never a mix. See docs/service.md for the layout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from ..data.safeio import InputError, content_hash, output_folder, writing
from . import journal, large
from .layout import (
    CURRENT,
    DESCRIPTORS_FILE,
    FORMAT,
    FORMAT_VERSION,
    GENERATIONS,
    IMAGES_DIR,
    INDEX_FILE,
    IVFDATA_FILE,
    MANIFEST_FIELDS,
    MANIFEST_FILE,
    MARKER_FILE,
    OWNER_FILE,
    SEGMENT_FEATURES,
    SEGMENT_STATE,
    SEGMENTS_FILE,
    STATE_FILE,
)
from .layout import MAP_FEATURES as FEATURES_FILE

DEFAULT_FACTORY = "Flat"
# the base files one compaction replaces together (one generation)
GENERATION_FILES = (MANIFEST_FILE, INDEX_FILE, FEATURES_FILE, journal.JOURNAL_FILE, DESCRIPTORS_FILE)
# what the map writer adds to an index folder after the build
GROWING_ENTRIES = {journal.JOURNAL_FILE, IMAGES_DIR, GENERATIONS, CURRENT, f".{CURRENT}.tmp"}
# files of an index written before the marker existed (vprkit's own, replaced by a rebuild)
LEGACY_FILES = {INDEX_FILE, MANIFEST_FILE, FEATURES_FILE, STATE_FILE, DESCRIPTORS_FILE, IVFDATA_FILE, SEGMENT_STATE,
                SEGMENT_FEATURES, SEGMENTS_FILE, OWNER_FILE}


@dataclass
class MapIndex:
    """A FAISS index plus the manifest describing what it holds (ids never reused; removed ids masked)."""

    index: faiss.Index
    manifest: dict
    index_dir: Path | None = None
    deleted: set[int] = field(default_factory=set)
    full: np.ndarray | None = None  # stored exact descriptors (memory-mapped) that re-score a compressed shortlist

    def __post_init__(self) -> None:
        self.ids = {n: i for i, n in enumerate(self.names)}  # live name -> id

    @property
    def names(self) -> list[str]:
        return self.manifest["names"]

    def live_names(self) -> list[str]:
        return [n for i, n in enumerate(self.names) if i not in self.deleted]

    def position(self, i: int) -> list[float] | None:
        pos = self.manifest.get("positions")
        return pos[i] if pos else None

    def image_path(self, name: str) -> Path:
        """Where a map image's bytes are: the index's own copy for added images, else the map folder."""
        rel = self.manifest.get("files", {}).get(name)
        if rel is not None and self.index_dir is not None:
            return self.index_dir / rel
        return Path(self.manifest["map_dir"]) / name

    def add(self, name: str, desc: np.ndarray, position: list[float] | None = None, file: str | None = None
            ) -> int:
        """Append one image (replacing a live one of the same name); returns its id."""
        self.remove(name)
        i = len(self.names)
        self.index.add(np.ascontiguousarray(desc, dtype=np.float32).reshape(1, -1))
        self.names.append(name)
        pos = self.manifest.get("positions")
        if position is not None and pos is None:
            pos = self.manifest["positions"] = [None] * i
        if pos is not None:
            pos.append(None if position is None else [float(v) for v in position])
        if file is not None:
            self.manifest.setdefault("files", {})[name] = file
        self.ids[name] = i
        return i

    def remove(self, name: str) -> bool:
        """Mask a live image out of every later search; False when there is none of that name."""
        i = self.ids.pop(name, None)
        if i is None:
            return False
        self.deleted.add(i)
        return True

    def apply(self, record: dict) -> None:
        """One journal record."""
        if record["op"] == "add":
            self.add(record["name"], journal.desc_from_text(record["desc"]), record.get("position"),
                     record.get("file"))
        elif record["op"] == "remove":
            self.remove(record["name"])
        else:
            raise ValueError(f"unknown journal operation {record['op']!r}")

    def search(self, queries: np.ndarray, k: int, chunk: int = 1024, nprobe: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, indices) per query, in query chunks so memory stays bounded for any map size."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.index.d:
            raise ValueError(f"query descriptors have shape {queries.shape}; the index expects dimension "
                             f"{self.index.d}")
        nprobe = nprobe if nprobe is not None else self.manifest.get("index", {}).get("nprobe")
        if nprobe is not None:
            large.set_nprobe(self.index, nprobe)
        k = min(k, self.index.ntotal - len(self.deleted))
        shortlist = max(k, self.manifest.get("index", {}).get("shortlist", 0)) if self.full is not None else k
        deep = min(shortlist + len(self.deleted), self.index.ntotal)
        scores = np.empty((len(queries), k), dtype=np.float32)
        ids = np.empty((len(queries), k), dtype=np.int64)
        for s in range(0, len(queries), chunk):
            sc, ix = self.index.search(queries[s:s + chunk], deep)
            if self.full is not None:
                sc, ix = large.rescore(queries[s:s + chunk], ix, self.full, deep, sc)
            if self.deleted:
                sc, ix = _drop(sc, ix, self.deleted, k)
            scores[s:s + chunk], ids[s:s + chunk] = sc[:, :k], ix[:, :k]
        return scores, ids


def _drop(scores: np.ndarray, ids: np.ndarray, deleted: set[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's first k results that are not deleted (order kept; -1 / -inf padded)."""
    keep = ~np.isin(ids, list(deleted)) & (ids >= 0)
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    ok = np.take_along_axis(keep, order, 1)
    return (np.where(ok, np.take_along_axis(scores, order, 1), -np.inf),
            np.where(ok, np.take_along_axis(ids, order, 1), -1))


def build(descriptors: np.ndarray, factory: str = DEFAULT_FACTORY, train_max: int = 200_000,
          seed: int = 0) -> faiss.Index:
    """Inner-product index from a FAISS factory string ('Flat', 'IVF1024,PQ32', 'HNSW32', ...); a factory FAISS
    cannot build for these descriptors is refused with FAISS's reason (InputError)."""
    x = np.ascontiguousarray(descriptors, dtype=np.float32)
    try:
        index = faiss.index_factory(x.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            rng = np.random.default_rng(seed)
            sample = x if len(x) <= train_max else x[rng.choice(len(x), train_max, replace=False)]
            index.train(sample)
    except RuntimeError as exc:
        reason = re.split(r"failed: |\.cpp:\d+: (?:Error: )?", str(exc).strip().splitlines()[-1])[-1]
        raise InputError(f"--factory {factory!r}: FAISS cannot build it for {len(x)} descriptors of dimension "
                         f"{x.shape[1]} ({reason}); the extracted features are kept, rerun with another factory "
                         "(e.g. Flat)") from None
    index.add(x)
    return index


def versions() -> dict[str, str]:
    """Library versions recorded in the manifest, for reproducibility."""
    import torch

    from .. import __version__

    return {"vprkit": __version__, "faiss": faiss.__version__, "torch": torch.__version__, "numpy": np.__version__}


def save(out_dir: str | Path, index: faiss.Index | None, manifest: dict, extra_files: dict[str, Path] | None = None,
         added: list[dict] = ()) -> Path:
    """Write index + manifest (+ extra files, copied in) + marker as `out_dir`, atomically (index None: no
    index.faiss); the old folder's files that vprkit did not write are kept. `added`: journal records of images
    carried over from the old index at `out_dir` (their files are linked in), applied on load."""
    out_dir = Path(out_dir)
    with output_folder(out_dir, [MARKER_FILE], "index", is_own=is_index, owned=own_entries) as tmp:
        if index is not None:
            with writing(out_dir / INDEX_FILE, (RuntimeError,)):
                faiss.write_index(index, str(tmp / INDEX_FILE))
        with writing(out_dir / MANIFEST_FILE):
            (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
            for name, src in (extra_files or {}).items():
                shutil.copy2(src, tmp / name)
            _carry(out_dir, tmp, added)
            files = sorted(p.name for p in tmp.iterdir()) + [MARKER_FILE]
            (tmp / MARKER_FILE).write_text(json.dumps({"format": FORMAT, "version": FORMAT_VERSION, "files": files}))
    return out_dir


def _carry(old: Path, new: Path, added: list[dict]) -> None:
    """The `added` records as the new folder's journal, with their image files linked from the old folder."""
    if not added:
        return
    (new / IMAGES_DIR).mkdir()
    for rel in {r["file"] for r in added}:
        os.link(old / rel, new / rel)
    (new / journal.JOURNAL_FILE).write_bytes(b"".join(journal.encode(r) for r in added))


def check_rebuild(out_dir: str | Path) -> None:
    """Refuse to rebuild an index that holds images added after its build: a rebuild from the map folder would
    silently drop them (their bytes are only in the index's images/)."""
    if not Path(out_dir).is_dir() or not is_index(out_dir) or not (Path(out_dir) / INDEX_FILE).exists():
        return
    added = added_names(out_dir)
    if added:
        raise InputError(f"{out_dir}: holds {len(added)} images added after it was built (through `vprkit serve` "
                         f"or `index --append`, e.g. {', '.join(added[:3])}), which a rebuild from the map folder "
                         "would drop; pass --keep-added to carry them over into the new index, or choose another -o")


def _marker(path: Path) -> dict | None:
    """The folder's marker when it is vprkit's (refused when a newer vprkit wrote it), else None."""
    try:
        marker = json.loads((path / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != FORMAT:
        return None
    if not isinstance(marker.get("version"), int) or marker["version"] > FORMAT_VERSION:
        raise InputError(f"{path / MARKER_FILE}: an index of format version {marker.get('version')}, written by a "
                         f"newer vprkit (this one reads up to version {FORMAT_VERSION}); upgrade vprkit")
    return marker


def _legacy_manifest(path: Path) -> bool:
    """A manifest with vprkit's fields: an index written before the marker existed."""
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and MANIFEST_FIELDS <= set(manifest)


def is_index(path: str | Path) -> bool:
    """Whether a folder is a vprkit index: its marker, or (older indexes) a manifest with vprkit's fields."""
    path = Path(path)
    return (path / MARKER_FILE).exists() and _marker(path) is not None or _legacy_manifest(path)


def own_entries(index_dir: str | Path) -> set[str]:
    """The entries of an index folder that vprkit wrote (a rebuild replaces them and keeps every other)."""
    marker = _marker(Path(index_dir))
    built = set(marker.get("files", [])) if marker else LEGACY_FILES
    return built | GROWING_ENTRIES | {MARKER_FILE}


def added_names(index_dir: str | Path) -> list[str]:
    """Live images added after the build (through `vprkit serve` or `index --append`); their bytes are in the
    index's images/ folder, not in the map folder, so a rebuild from the map would drop them."""
    files = dict(read_manifest(index_dir).get("files") or {})
    for record in journal.read(base_dir(index_dir))[0]:
        if record["op"] == "add" and record.get("file"):
            files[record["name"]] = record["file"]
        else:
            files.pop(record["name"], None)
    return sorted(files)


def read_manifest(index_dir: str | Path) -> dict:
    """An index's manifest, with one clear error when it is missing, truncated or not a vprkit manifest."""
    path = Path(index_dir) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{index_dir}: not a vprkit index (no {MANIFEST_FILE}); build one with "
                                "`vprkit index MAP_DIR -o OUT`")
    _marker(Path(index_dir))  # refuses an index of a newer format
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: corrupt or truncated manifest ({exc}); rebuild the index") from None
    if not isinstance(manifest, dict) or not MANIFEST_FIELDS <= set(manifest):
        raise InputError(f"{path}: not a vprkit manifest (needs conf, names, map_dir); rebuild the index")
    return manifest


def fingerprint(index_dir: str | Path) -> str:
    """Hash of an index's manifest: results record it, so they are never read against another index."""
    return content_hash(Path(index_dir) / MANIFEST_FILE)


def require(index_dir: str | Path) -> Path:
    """The folder, when it holds an index; else a clear error."""
    index_dir = Path(index_dir)
    if not (index_dir / INDEX_FILE).is_file():
        raise FileNotFoundError(f"{index_dir}: not a vprkit index (expected {MANIFEST_FILE} and {INDEX_FILE}); "
                                "build one with `vprkit index MAP_DIR -o OUT`")
    return index_dir


def base_dir(index_dir: str | Path) -> Path:
    """The folder of the current generation's base files: INDEX/generations/N once compacted, else INDEX."""
    try:
        return Path(index_dir) / os.readlink(Path(index_dir) / CURRENT)
    except FileNotFoundError:
        return Path(index_dir)


def load(index_dir: str | Path, tries: int = 50) -> MapIndex:
    """Load a saved index with its journal applied, with a clear error when the folder is not one or its files
    are damaged. Every file comes from one generation: when a compaction switched generations during the read
    (a file of the old one vanished, or the top-level files were being turned into links), it reads again."""
    index_dir = require(index_dir)
    for _ in range(tries):
        base = base_dir(index_dir)
        try:
            mi = _load_generation(index_dir, base)
        except (OSError, InputError):
            if base_dir(index_dir) == base:
                raise
            continue
        if base_dir(index_dir) == base:
            return mi
    raise InputError(f"{index_dir}: compacted {tries} times while being read; try again")


def _load_generation(index_dir: Path, base: Path) -> MapIndex:
    """The index whose base files are in `base` (`index_dir` itself, or one of its generations)."""
    manifest = read_manifest(base)
    choice = manifest.get("index", {})
    try:
        index = large.read(base / INDEX_FILE, choice.get("on_disk", False))
    except RuntimeError as exc:
        reason = str(exc).strip().rpartition("Error: ")[2] or "unreadable"  # faiss's own words, without its C++ frame
        raise InputError(f"{index_dir / INDEX_FILE}: corrupt or truncated FAISS index ({reason}); rebuild the "
                         "index") from None
    if index.ntotal != len(manifest["names"]):
        raise InputError(f"{index_dir / INDEX_FILE}: holds {index.ntotal} vectors but the manifest lists "
                         f"{len(manifest['names'])} images; rebuild the index")
    mi = MapIndex(index, manifest, index_dir, full=large.descriptors(base) if choice.get("rescore") else None)
    for record in journal.read(base)[0]:
        mi.apply(record)
    return mi
