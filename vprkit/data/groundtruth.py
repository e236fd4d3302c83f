"""Ground truth: which map images are correct for each query.

Every format ends up as positions (N, D) for queries and map (metres, or frame indices for
sequences) and a threshold, or as an explicit positives list. Positives within the threshold are
found with a KD-tree, so a 1M map never builds a query x map distance matrix.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from .safeio import InputError, read_text

DEFAULT_THRESHOLD_M = 25.0
EARTH_RADIUS_M = 6_371_000.0


class GroundTruthError(InputError):
    """Ground truth that does not fit the images it describes."""


@dataclass
class GroundTruth:
    """Positive map indices for each query (an array per query, possibly empty)."""

    positives: list[np.ndarray]

    @property
    def num_queries(self) -> int:
        return len(self.positives)


def from_positions(q_pos: np.ndarray, m_pos: np.ndarray, threshold: float) -> GroundTruth:
    """Map images within `threshold` (same units as the positions) of each query."""
    q_pos = np.asarray(q_pos, dtype=np.float64).reshape(len(q_pos), -1)
    m_pos = np.asarray(m_pos, dtype=np.float64).reshape(len(m_pos), -1)
    if q_pos.shape[1] != m_pos.shape[1]:
        raise GroundTruthError(f"query positions are {q_pos.shape[1]}-D but map positions {m_pos.shape[1]}-D")
    tree = cKDTree(m_pos)
    hits = tree.query_ball_point(q_pos, r=threshold)
    return GroundTruth([np.array(sorted(h), dtype=np.int64) for h in hits])


_UTM = re.compile(r"@(-?[\d.]+)@(-?[\d.]+)@")


def utm_from_names(names: list[str]) -> np.ndarray:
    """Positions from VPR-methods-evaluation names: `@utm_east@utm_north@...`."""
    out = []
    for name in names:
        m = _UTM.search(Path(name).name)
        if m is None:
            raise GroundTruthError(f"{name}: no '@utm_east@utm_north@' position in the file name")
        out.append((float(m.group(1)), float(m.group(2))))
    return np.array(out)


def utm_or_none(names: list[str]) -> list[list[float]] | None:
    """Positions from `@east@north@` file names as lists (for a manifest), or None when a name lacks them."""
    try:
        return utm_from_names(names).tolist()
    except GroundTruthError:
        return None


def frame_index_from_names(names: list[str]) -> np.ndarray:
    """Sequence positions: the last integer in each file stem (e.g. images-00042.png -> 42)."""
    out = []
    for name in names:
        nums = re.findall(r"\d+", Path(name).stem)
        if not nums:
            raise GroundTruthError(f"{name}: no frame number in the file name")
        out.append(int(nums[-1]))
    return np.array(out, dtype=np.float64)[:, None]


def latlon_to_metres(lat: np.ndarray, lon: np.ndarray, origin: tuple[float, float]) -> np.ndarray:
    """Local east/north metres around `origin` (equirectangular: < 0.1% error over a few km)."""
    lat0, lon0 = np.radians(origin[0]), np.radians(origin[1])
    east = EARTH_RADIUS_M * (np.radians(lon) - lon0) * np.cos(lat0)
    north = EARTH_RADIUS_M * (np.radians(lat) - lat0)
    return np.stack([east, north], axis=1)


def read_positions_csv(path: str | Path) -> tuple[dict[str, np.ndarray], str]:
    """CSV with a header `name,lat,lon` or `name,easting,northing`; returns positions by name and kind."""
    path = Path(path)
    with io.StringIO(read_text(path), newline="") as f:
        reader = csv.DictReader(f)
        cols = [c.strip().lower() for c in (reader.fieldnames or [])]
        kind = "latlon" if {"lat", "lon"} <= set(cols) else "utm" if {"easting", "northing"} <= set(cols) else ""
        if "name" not in cols or not kind:
            raise GroundTruthError(f"{path}: header must be 'name,lat,lon' or 'name,easting,northing', got {cols}")
        keys = ("lat", "lon") if kind == "latlon" else ("easting", "northing")
        rows = {}
        for i, row in enumerate(reader, start=2):
            row = {k.strip().lower(): v for k, v in row.items()}
            name = (row["name"] or "").strip()
            if name in rows:
                raise GroundTruthError(f"{path}:{i}: '{name}' appears twice; give each image one position")
            try:
                rows[name] = np.array([float(row[keys[0]]), float(row[keys[1]])])
            except (TypeError, ValueError) as exc:
                raise GroundTruthError(f"{path}:{i}: bad number ({exc})") from exc
    return rows, kind


def csv_positions(path: str | Path, q_names: list[str], m_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Query and map positions in metres from a positions CSV (lat/lon converted around the map's centre)."""
    rows, kind = read_positions_csv(path)
    missing = [n for n in q_names + m_names if n not in rows]
    if missing:
        raise GroundTruthError(f"{path}: no position for {len(missing)} images, e.g. {missing[:3]}")
    q = np.stack([rows[n] for n in q_names])
    m = np.stack([rows[n] for n in m_names])
    if kind == "latlon":
        origin = (float(m[:, 0].mean()), float(m[:, 1].mean()))
        q, m = latlon_to_metres(q[:, 0], q[:, 1], origin), latlon_to_metres(m[:, 0], m[:, 1], origin)
    return q, m


def from_csv(path: str | Path, q_names: list[str], m_names: list[str], threshold: float) -> GroundTruth:
    """Ground truth from a positions CSV covering both query and map names."""
    return from_positions(*csv_positions(path, q_names, m_names), threshold)


def from_patchnetvlad_npz(path: str | Path, num_queries: int, num_map: int,
                          threshold: float | None = None) -> GroundTruth:
    """Patch-NetVLAD `.npz` (utmQ, utmDb, posDistThr); sizes must match the image lists."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = {"utmQ", "utmDb"} - set(data.files)
            if missing:
                raise GroundTruthError(f"{path}: missing arrays {sorted(missing)}")
            utm_q, utm_db = data["utmQ"], data["utmDb"]
            thr = float(threshold if threshold is not None else data["posDistThr"] if "posDistThr" in data.files
                        else DEFAULT_THRESHOLD_M)
    except (EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        if isinstance(exc, GroundTruthError):
            raise
        raise GroundTruthError(f"{path}: empty or corrupt .npz ground truth ({type(exc).__name__}: {exc})") from None
    if len(utm_q) != num_queries or len(utm_db) != num_map:
        raise GroundTruthError(
            f"{path}: ground truth has {len(utm_q)} queries / {len(utm_db)} map images but the image lists "
            f"have {num_queries} / {num_map}"
        )
    return from_positions(utm_q, utm_db, thr)


def read_name_list(path: str | Path) -> list[str]:
    """Patch-NetVLAD image-name list: one relative path per line."""
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]


def from_positives_file(path: str | Path, q_names: list[str], m_names: list[str]) -> GroundTruth:
    """Explicit positives: one line per query, `query_name<TAB>map_name[<TAB>map_name ...]` (tabs: any names,
    spaces included), or, in lines without a tab, names separated by whitespace or commas (older files)."""
    path = Path(path)
    m_index = {n: i for i, n in enumerate(m_names)}
    table: dict[str, np.ndarray] = {}
    for lineno, line in enumerate(read_text(path).splitlines(), start=1):
        parts = [p for p in line.split("\t") if p] if "\t" in line else line.replace(",", " ").split()
        if not parts or parts[0].startswith("#"):
            continue
        unknown = [p for p in parts[1:] if p not in m_index]
        if unknown:
            raise GroundTruthError(f"{path}:{lineno}: unknown map images {unknown[:3]}")
        table[parts[0]] = np.array(sorted(m_index[p] for p in parts[1:]), dtype=np.int64)
    missing = [n for n in q_names if n not in table]
    if missing:
        raise GroundTruthError(f"{path}: no line for {len(missing)} queries, e.g. {missing[:3]}")
    return GroundTruth([table[n] for n in q_names])


def load_ground_truth(spec: str, q_names: list[str], m_names: list[str],
                      threshold: float | None = None) -> GroundTruth:
    """Pick the format from `spec`: 'utm' (names), 'sequence' (frame numbers, default tolerance 2),
    'index' (query i matches map i, default tolerance 2 steps),
    a `.npz` (Patch-NetVLAD), a `.csv` (positions) or any other file (positives list)."""
    if spec == "utm":
        return from_positions(utm_from_names(q_names), utm_from_names(m_names), threshold or DEFAULT_THRESHOLD_M)
    if spec == "index":
        tol = 2.0 if threshold is None else threshold
        return from_positions(np.arange(len(q_names), dtype=np.float64), np.arange(len(m_names), dtype=np.float64),
                              tol)
    if spec == "sequence":
        tol = 2.0 if threshold is None else threshold
        return from_positions(frame_index_from_names(q_names), frame_index_from_names(m_names), tol)
    path = Path(spec)
    if not path.is_file():
        raise GroundTruthError(f"ground truth '{spec}' is neither 'utm', 'sequence' nor an existing file")
    if path.suffix == ".npz":
        return from_patchnetvlad_npz(path, len(q_names), len(m_names), threshold)
    if path.suffix == ".csv":
        return from_csv(path, q_names, m_names, threshold or DEFAULT_THRESHOLD_M)
    return from_positives_file(path, q_names, m_names)


def ground_truth_for_kept(spec: str, q_all: list[str], q_kept: list[str], m_names: list[str],
                          threshold: float | None = None) -> GroundTruth:
    """Ground truth built over the whole query folder (so index-aligned formats stay aligned), then
    restricted to the queries that were actually described (broken images skipped)."""
    truth = load_ground_truth(spec, q_all, m_names, threshold)
    row = {n: i for i, n in enumerate(q_all)}
    return GroundTruth([truth.positives[row[n]] for n in q_kept])
