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
    q_positions: np.ndarray | None = None  # (Q, D) when made from positions (metres, or frames)
    m_positions: np.ndarray | None = None

    @property
    def num_queries(self) -> int:
        return len(self.positives)


def from_positions(q_pos: np.ndarray, m_pos: np.ndarray, threshold: float) -> GroundTruth:
    """Map images within `threshold` (same units as the positions) of each query."""
    q_pos = np.asarray(q_pos, dtype=np.float64).reshape(len(q_pos), -1)
    m_pos = np.asarray(m_pos, dtype=np.float64).reshape(len(m_pos), -1)
    if q_pos.shape[1] != m_pos.shape[1]:
        raise GroundTruthError(f"query positions are {q_pos.shape[1]}-D but map positions {m_pos.shape[1]}-D")
    if not (np.isfinite(threshold) and threshold >= 0):  # a negative one matched nothing, NaN everything
        raise GroundTruthError(f"the positive distance threshold must be a finite number >= 0, got {threshold}")
    tree = cKDTree(m_pos)
    hits = tree.query_ball_point(q_pos, r=threshold)
    return GroundTruth([np.array(sorted(h), dtype=np.int64) for h in hits], q_pos, m_pos)


_UTM = re.compile(r"@(-?[\d.]+)@(-?[\d.]+)@")


def utm_from_names(names: list[str]) -> np.ndarray:
    """Positions from VPR-methods-evaluation names: `@utm_east@utm_north@...`."""
    out = []
    for name in names:
        m = _UTM.search(Path(name).name)
        if m is None:
            raise GroundTruthError(f"{name}: no '@utm_east@utm_north@' position in the file name")
        try:
            out.append((float(m.group(1)), float(m.group(2))))
        except ValueError:
            raise GroundTruthError(f"{name}: '@{m.group(1)}@{m.group(2)}@' is not a position (two numbers, "
                                   "'@utm_east@utm_north@')") from None
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


Zone = tuple[int, str]  # a UTM zone: number and latitude band letter
SETS = ("map", "query")  # the values of a positions CSV's optional `set` column


def read_positions_sets(path: str | Path) -> tuple[dict[str, dict[str, np.ndarray]], str]:
    """A positions CSV: header `name,easting,northing` or `name,lat,lon`, optionally with a `set` column (`map` or
    `query`) so a map run and a query run may share frame names (robot logs, Nordland). Returns positions by
    name for each set (without a `set` column both sets are the same rows) and the kind ('utm' or 'latlon').
    A bad row is refused naming the file and its line."""
    path = Path(path)
    with io.StringIO(read_text(path), newline="") as f:
        reader = csv.DictReader(f)
        cols = [c.strip().lower() for c in (reader.fieldnames or [])]
        kind = "latlon" if {"lat", "lon"} <= set(cols) else "utm" if {"easting", "northing"} <= set(cols) else ""
        if "name" not in cols or not kind:
            raise GroundTruthError(f"{path}: header must be 'name,lat,lon' or 'name,easting,northing' (and "
                                   f"optionally 'set'), got {cols}")
        keys = ("lat", "lon") if kind == "latlon" else ("easting", "northing")
        sets: dict[str, dict[str, np.ndarray]] = {s: {} for s in SETS}
        for i, row in enumerate(reader, start=2):
            row = {(k or "").strip().lower(): v for k, v in row.items()}
            where = f"{path}:{i}"
            part = (row.get("set") or "").strip().lower() if "set" in cols else ""
            if part not in ("", *SETS):
                raise GroundTruthError(f"{where}: set '{part}' is neither 'map' nor 'query'")
            rows = sets[part or "map"]
            name = (row["name"] or "").strip()
            if not name:
                raise GroundTruthError(f"{where}: no image name")
            if name in rows:
                raise GroundTruthError(f"{where}: '{name}' appears twice{f' in the {part} set' if part else ''}; "
                                       "give each image one position (a `set` column tells map and query apart)")
            rows[name] = _row_position(row, keys, f"{where}: '{name}'")
            if kind == "latlon":
                check_latlon(*rows[name], where)
    if "set" not in cols:
        sets["query"] = sets["map"]
    return sets, kind


def _row_position(row: dict, keys: tuple[str, str], where: str) -> np.ndarray:
    """A row's two coordinates, refused (`where`: the line and name) when missing, not numbers or not finite."""
    try:
        pos = np.array([float(row[keys[0]]), float(row[keys[1]])])
    except (TypeError, ValueError):
        raise GroundTruthError(f"{where}: '{row.get(keys[0])}', '{row.get(keys[1])}' are not two numbers "
                               f"({keys[0]}, {keys[1]})") from None
    if not np.isfinite(pos).all():
        raise GroundTruthError(f"{where} has no finite position ({row[keys[0]]}, {row[keys[1]]})")
    return pos


def read_positions_csv(path: str | Path) -> tuple[dict[str, np.ndarray], str]:
    """Positions by name and kind from a positions CSV without map / query sets (see `read_positions_sets`)."""
    sets, kind = read_positions_sets(path)
    return sets["map"], kind


def latlon_to_utm(latlon: np.ndarray, zone: Zone | None = None) -> tuple[np.ndarray, Zone]:
    """(N, 2) lat/lon degrees to UTM east/north metres (the `utm` package), all in one zone: `zone`, or the one
    of the points' mean (so a route across a zone border stays one frame); returns the positions and the zone."""
    import utm

    latlon = np.asarray(latlon, dtype=np.float64).reshape(-1, 2)
    if zone is None:
        zone = tuple(utm.from_latlon(float(latlon[:, 0].mean()), float(latlon[:, 1].mean()))[2:])
    east, north, _, _ = utm.from_latlon(latlon[:, 0], latlon[:, 1], force_zone_number=int(zone[0]),
                                        force_zone_letter=str(zone[1]))
    return np.stack([east, north], axis=1), (int(zone[0]), str(zone[1]))


def positions_for(path: str | Path, rows: dict[str, np.ndarray], names: list[str], what: str) -> np.ndarray:
    """(N, 2) positions of `names` from `rows`, refused naming the file when an image has no row."""
    missing = [n for n in names if n not in rows]
    if missing:
        raise GroundTruthError(f"{path}: no position for {len(missing)} {what}, e.g. {missing[:3]}")
    return np.stack([rows[n] for n in names]) if names else np.zeros((0, 2))


def check_latlon(lat: float, lon: float, where: str) -> None:
    """Refuse a coordinate no place on Earth has (a swapped or scaled column would give wrong distances)."""
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise GroundTruthError(f"{where}: latitude {lat:g}, longitude {lon:g} outside [-90, 90], [-180, 180]")


@dataclass
class MapPositions:
    """An index's map positions in metres (the manifest's `positions`, aligned with its names; None where
    unknown) and the UTM zone lat/lon positions were converted in (None for positions given in metres)."""

    positions: list | None
    zone: Zone | None = None

    @classmethod
    def of(cls, manifest: dict) -> MapPositions:
        zone = manifest.get("utm_zone")
        return cls(manifest.get("positions"), None if zone is None else (int(zone[0]), str(zone[1])))

    def complete(self) -> bool:
        return bool(self.positions) and all(p is not None for p in self.positions)


QUERY_PREFIX, MAP_PREFIX = "query=", "map="


def positions_spec(query_csv: str | Path | None, map_csv: str | Path | None = None) -> str:
    """The ground truth spec of `--gt-query FILE [--gt-map FILE]`: 'query=FILE[;map=FILE]' (absolute paths, so a
    results.json that records it can be scored again from anywhere)."""
    parts = [f"{prefix}{Path(f).resolve()}" for prefix, f in ((QUERY_PREFIX, query_csv), (MAP_PREFIX, map_csv)) if f]
    return ";".join(parts)


def _spec_files(spec: str) -> tuple[Path, Path | None]:
    """(query positions CSV, map positions CSV or None: the index's) of a 'query=FILE[;map=FILE]' spec."""
    parts = dict(p.split("=", 1) for p in spec.split(";") if "=" in p)
    if "query" not in parts:
        raise GroundTruthError(f"ground truth '{spec}': the map's positions alone score nothing; give the queries' "
                               "positions too (--gt-query FILE.csv)")
    files = [Path(parts[k]) if k in parts else None for k in ("query", "map")]
    for f in files:
        if f is not None and not f.is_file():
            raise GroundTruthError(f"ground truth positions file {f} not found")
    return files[0], files[1]


def _metres(pos: np.ndarray, kind: str, zone: Zone | None) -> tuple[np.ndarray, Zone | None]:
    return latlon_to_utm(pos, zone) if kind == "latlon" else (pos, zone)


def _map_metres(path: Path | None, m_names: list[str], known: MapPositions | None) -> tuple[np.ndarray, Zone | None]:
    """Map positions from the CSV `path` when it has every map image (or no index positions exist), else the
    index's own (`vprkit index --positions`, `@east@north@` names)."""
    if path is not None:
        sets, kind = read_positions_sets(path)
        if known is None or not known.complete() or all(n in sets["map"] for n in m_names):
            return _metres(positions_for(path, sets["map"], m_names, "map images"), kind, known and known.zone)
    if known is None or not known.complete():
        raise GroundTruthError("no map positions: give a map positions file (--gt-map) or build the index with "
                               "`vprkit index --positions FILE.csv`")
    return np.asarray(known.positions, dtype=np.float64), known.zone


def csv_positions(q_csv: str | Path, q_names: list[str], m_names: list[str], map_csv: str | Path | None = None,
                  known: MapPositions | None = None, map_from_index: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Query and map positions in metres: queries from `q_csv` (its `query` set), the map from `map_csv` (default:
    `q_csv`'s `map` set; with `map_from_index`, the index's positions `known`) or, for images the file lacks, the
    index's; lat/lon go to UTM in one zone (the index's, else the map's)."""
    q_csv = Path(q_csv)
    map_file = None if map_from_index else Path(map_csv) if map_csv is not None else q_csv
    m, zone = _map_metres(map_file, m_names, known)
    sets, kind = read_positions_sets(q_csv)
    q, _ = _metres(positions_for(q_csv, sets["query"], q_names, "queries"), kind, zone)
    return q, m


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
    if utm_q.ndim != 2 or utm_db.ndim != 2 or utm_q.shape[1] != utm_db.shape[1]:
        raise GroundTruthError(f"{path}: utmQ and utmDb must be (N, D) position arrays of one D, got shapes "
                               f"{utm_q.shape} and {utm_db.shape}")
    if len(utm_q) != num_queries or len(utm_db) != num_map:
        raise GroundTruthError(
            f"{path}: ground truth has {len(utm_q)} queries / {len(utm_db)} map images but the image lists "
            f"have {num_queries} / {num_map}"
        )
    for key, pos in (("utmQ", utm_q), ("utmDb", utm_db)):
        bad = np.flatnonzero(~np.isfinite(np.asarray(pos, dtype=np.float64)).all(axis=1))
        if len(bad):
            raise GroundTruthError(f"{path}: {key} has {len(bad)} non-finite positions (NaN/inf), first at row "
                                   f"{bad[0]}")
    if not (np.isfinite(thr) and thr >= 0):
        raise GroundTruthError(f"{path}: posDistThr must be a finite number >= 0, got {thr}")
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


def load_ground_truth(spec: str, q_names: list[str], m_names: list[str], threshold: float | None = None,
                      known: MapPositions | None = None) -> GroundTruth:
    """Pick the format from `spec`: 'utm' (names), 'sequence' (frame numbers, default tolerance 2),
    'index' (query i matches map i, default tolerance 2 steps), 'query=FILE[;map=FILE]' (positions CSVs; the map's
    default to the index's positions `known`), a `.npz` (Patch-NetVLAD), a `.csv` (positions, with `map` / `query`
    sets when runs share names) or any other file (positives list)."""
    if spec == "utm":
        return from_positions(utm_from_names(q_names), utm_from_names(m_names), threshold or DEFAULT_THRESHOLD_M)
    if spec == "index":
        tol = 2.0 if threshold is None else threshold
        return from_positions(np.arange(len(q_names), dtype=np.float64), np.arange(len(m_names), dtype=np.float64),
                              tol)
    if spec == "sequence":
        tol = 2.0 if threshold is None else threshold
        return from_positions(frame_index_from_names(q_names), frame_index_from_names(m_names), tol)
    if spec.startswith((QUERY_PREFIX, MAP_PREFIX)):
        q_csv, map_csv = _spec_files(spec)
        return from_positions(*csv_positions(q_csv, q_names, m_names, map_csv, known, map_from_index=map_csv is None),
                              threshold or DEFAULT_THRESHOLD_M)
    path = Path(spec)
    if not path.is_file():
        raise GroundTruthError(f"ground truth '{spec}' is neither 'utm', 'sequence', 'index' nor an existing file")
    if path.suffix == ".npz":
        return from_patchnetvlad_npz(path, len(q_names), len(m_names), threshold)
    if path.suffix == ".csv":
        return from_positions(*csv_positions(path, q_names, m_names, known=known), threshold or DEFAULT_THRESHOLD_M)
    return from_positives_file(path, q_names, m_names)


def restrict(truth: GroundTruth, q_all: list[str], q_kept: list[str]) -> GroundTruth:
    """`truth` (made over the whole query folder, so index-aligned formats stay aligned) restricted to the
    queries that were actually described (broken images skipped)."""
    row = [{n: i for i, n in enumerate(q_all)}[n] for n in q_kept]
    q_pos = truth.q_positions[row] if truth.q_positions is not None else None
    return GroundTruth([truth.positives[i] for i in row], q_pos, truth.m_positions)


def ground_truth_for_kept(spec: str, q_all: list[str], q_kept: list[str], m_names: list[str],
                          threshold: float | None = None, known: MapPositions | None = None) -> GroundTruth:
    """Ground truth built over the whole query folder, then restricted to the described queries (`restrict`)."""
    return restrict(load_ground_truth(spec, q_all, m_names, threshold, known), q_all, q_kept)
