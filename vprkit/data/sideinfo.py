"""Non-visual side information per image: position, heading (compass angle), radio signals.

Every modality is optional per image: unknown values are NaN (position, heading) or None (radio),
never zeros, so a re-ranker can mask them instead of reading "at the origin, facing north, hears
nothing". Bad values (NaN or infinite positions, headings outside 0-360) are handled with a
warning that names the source and the count: non-finite becomes unknown, headings are wrapped.

Sources (`load_sideinfo` spec):
- 'index' / 'sequence' / 'utm': positions from the image order / frame numbers / `@east@north@` names
  (the same readers as the ground truth).
- 'msls': the Mapillary SLS layout, `postprocessed.csv` (easting, northing) and `raw.csv` (lat, lon,
  ca = compass angle) beside the `images/` folder, rows keyed by image key (file stem).
- a `.csv` file, vprkit's metadata CSV: header `name` plus any of `lat,lon` | `easting,northing` |
  `x[,y]`, `heading` (degrees clockwise from north), `radio` (`id:rssi_dbm;id:rssi_dbm`). Empty
  cells are unknown.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .groundtruth import check_latlon, frame_index_from_names, latlon_to_metres, utm_from_names

logger = logging.getLogger("vprkit")
Radio = dict[str, float]


@dataclass
class SideInfo:
    """Side information of a list of images, aligned with `names` (NaN / None = unknown)."""

    names: list[str]
    position: np.ndarray  # (N, D) metres or route units, NaN rows unknown
    heading: np.ndarray  # (N,) degrees clockwise from north in [0, 360), NaN unknown
    radio: list[Radio | None]  # transmitter id -> RSSI (dBm); None unknown
    origin: tuple[float, float] | None = None  # lat/lon origin when positions came from lat/lon
    source: str = ""
    notes: list[str] = field(default_factory=list)

    def subset(self, idx: np.ndarray) -> SideInfo:
        """The side information of images `idx` (same order)."""
        idx = np.asarray(idx, dtype=np.int64)
        return SideInfo([self.names[i] for i in idx], self.position[idx], self.heading[idx],
                        [self.radio[i] for i in idx], self.origin, self.source)

    def has(self, modality: str) -> np.ndarray:
        """(N,) bool: which images know `modality` ('position', 'heading', 'fov', 'radio')."""
        pos = np.isfinite(self.position).all(axis=1)
        if modality == "position":
            return pos
        if modality == "heading":
            return np.isfinite(self.heading)
        if modality == "fov":
            return pos & np.isfinite(self.heading) & (self.position.shape[1] == 2)
        if modality == "radio":
            return np.array([r is not None for r in self.radio], dtype=bool)
        raise KeyError(f"unknown side modality '{modality}'; choose position, heading, fov or radio")


def unknown(names: list[str], dim: int = 2, source: str = "none") -> SideInfo:
    """Side information with every modality unknown."""
    n = len(names)
    return SideInfo(list(names), np.full((n, dim), np.nan), np.full(n, np.nan), [None] * n, source=source)


def clean(info: SideInfo) -> SideInfo:
    """Make bad values defined: non-finite positions unknown, headings wrapped into [0, 360), with warnings."""
    bad_pos = ~np.isfinite(info.position).all(axis=1) & ~np.isnan(info.position).all(axis=1)  # given, not usable
    if bad_pos.any():
        info.position[bad_pos] = np.nan
        _note(info, f"{bad_pos.sum()} positions with NaN/inf or missing coordinates treated as unknown, e.g. "
                    f"{[info.names[i] for i in np.flatnonzero(bad_pos)[:3]]}")
    h = info.heading
    outside = np.isfinite(h) & ((h < 0) | (h >= 360))
    if outside.any():
        _note(info, f"{outside.sum()} headings outside [0, 360) wrapped modulo 360, e.g. "
                    f"{[info.names[i] for i in np.flatnonzero(outside)[:3]]}")
    info.heading = np.where(np.isfinite(h), np.mod(h, 360.0), np.nan)
    for i, r in enumerate(info.radio):
        if r is not None and not all(np.isfinite(list(r.values()))):
            info.radio[i] = {k: v for k, v in r.items() if np.isfinite(v)}
            _note(info, f"{info.names[i]}: non-finite radio signal strengths dropped")
    return info


def _note(info: SideInfo, msg: str) -> None:
    info.notes.append(msg)
    logger.warning("side information %s: %s", info.source, msg)


def parse_radio(text: str, where: str) -> Radio | None:
    """`id:rssi;id:rssi` to a dict; empty text is unknown (None), '-' is 'heard nothing' ({})."""
    text = text.strip()
    if not text:
        return None
    if text == "-":
        return {}
    out: Radio = {}
    for item in text.split(";"):
        tid, sep, value = item.strip().rpartition(":")
        try:
            if not sep or not tid:
                raise ValueError(item)
            out[tid] = float(value)
        except ValueError as exc:
            raise ValueError(f"{where}: radio entry '{item}' is not 'transmitter_id:rssi_dbm'") from exc
    return out


def _float(text: str | None, where: str) -> float:
    """A CSV cell as float; empty or missing is NaN (unknown)."""
    if text is None or not text.strip():
        return np.nan
    try:
        return float(text)
    except ValueError as exc:
        raise ValueError(f"{where}: '{text}' is not a number") from exc


def read_metadata_csv(path: str | Path, names: list[str], origin: tuple[float, float] | None = None) -> SideInfo:
    """vprkit's metadata CSV (see the module docstring); images without a row have everything unknown."""
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = {c.strip().lower() for c in reader.fieldnames or []}
        if "name" not in cols:
            raise ValueError(f"{path}: metadata CSV needs a 'name' column, got {sorted(cols)}")
        pos_cols = next((c for c in (("lat", "lon"), ("easting", "northing"), ("x", "y"), ("x",))
                         if set(c) <= cols), ())
        rows = {}
        for i, row in enumerate(reader, start=2):
            row = {k.strip().lower(): v for k, v in row.items() if k is not None}
            where = f"{path}:{i}"
            pos = [_float(row.get(c), where) for c in pos_cols]
            if pos_cols == ("lat", "lon") and np.isfinite(pos).all():
                check_latlon(*pos, where)
            rows[row["name"].strip()] = (pos, _float(row.get("heading"), where),
                                         parse_radio(row.get("radio") or "", where))
    info = unknown(names, max(len(pos_cols), 1), str(path))
    missing = [n for n in names if n not in rows]
    if missing:
        _note(info, f"{len(missing)} images have no row (all side information unknown), e.g. {missing[:3]}")
    for j, n in enumerate(names):
        if n in rows:
            pos, info.heading[j], info.radio[j] = rows[n]
            if pos_cols:
                info.position[j] = pos
    info = clean(info)  # before the lat/lon conversion, so the warning names what the file says
    if pos_cols == ("lat", "lon"):
        info.position, info.origin = _latlon(info.position, origin)
    return info


def _latlon(latlon: np.ndarray, origin: tuple[float, float] | None) -> tuple[np.ndarray, tuple[float, float]]:
    """Lat/lon to local metres; the origin is the mean of the known positions unless given (share it!)."""
    known = np.isfinite(latlon).all(axis=1)
    if origin is None:
        origin = (float(latlon[known, 0].mean()), float(latlon[known, 1].mean())) if known.any() else (0.0, 0.0)
    return latlon_to_metres(latlon[:, 0], latlon[:, 1], origin), origin


def _read_rows(path: Path, cols: tuple[str, ...]) -> dict[str, list[float]]:
    """key -> values of `cols` from an MSLS csv (first column is the pandas index)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if {"key", *cols} - set(reader.fieldnames or []):
            raise ValueError(f"{path}: expected columns {['key', *cols]}, got {reader.fieldnames}")
        return {r["key"]: [_float(r[c], f"{path}: key {r['key']}") for c in cols] for r in reader}


def read_msls(image_dir: str | Path, names: list[str], origin: tuple[float, float] | None = None) -> SideInfo:
    """Mapillary SLS: positions from postprocessed.csv (UTM), else raw.csv (lat/lon); heading = raw.csv 'ca'."""
    image_dir = Path(image_dir)
    root = next((d for d in (image_dir, image_dir.parent) if (d / "raw.csv").is_file()
                 or (d / "postprocessed.csv").is_file()), None)
    if root is None:
        raise FileNotFoundError(f"{image_dir}: no MSLS raw.csv / postprocessed.csv here or in the parent folder")
    keys = [Path(n).stem for n in names]
    info = unknown(names, 2, f"msls:{root}")
    raw = _read_rows(root / "raw.csv", ("lon", "lat", "ca")) if (root / "raw.csv").is_file() else {}
    if (root / "postprocessed.csv").is_file():
        utm = _read_rows(root / "postprocessed.csv", ("easting", "northing"))
        info.position = np.array([utm.get(k, [np.nan, np.nan]) for k in keys], dtype=np.float64)
    elif raw:
        lonlat = np.array([raw.get(k, [np.nan, np.nan, np.nan])[:2] for k in keys], dtype=np.float64)
        info.position, info.origin = _latlon(lonlat[:, ::-1], origin)
    info.heading = np.array([raw.get(k, [np.nan] * 3)[2] for k in keys], dtype=np.float64)
    missing = [n for n, k in zip(names, keys) if k not in raw]
    if missing:
        _note(info, f"{len(missing)} images have no raw.csv row (heading unknown), e.g. {missing[:3]}")
    return clean(info)


def load_sideinfo(spec: str | None, names: list[str], image_dir: str | Path | None = None,
                  origin: tuple[float, float] | None = None) -> SideInfo:
    """Side information for `names` from `spec` (see the module docstring); None / 'none': all unknown.

    Pass the map's `origin` when loading queries so lat/lon positions of both share one frame.
    """
    if spec in (None, "", "none"):
        return unknown(names)
    if spec == "index":
        info = unknown(names, 1, spec)
        info.position = np.arange(len(names), dtype=np.float64)[:, None]
        return info
    if spec in ("sequence", "utm"):
        info = unknown(names, 1 if spec == "sequence" else 2, spec)
        info.position = frame_index_from_names(names) if spec == "sequence" else utm_from_names(names)
        return info
    if spec == "msls":
        if image_dir is None:
            raise ValueError("side information 'msls' needs the image folder")
        return read_msls(image_dir, names, origin)
    path = Path(spec)
    if path.suffix.lower() != ".csv" or not path.is_file():
        raise FileNotFoundError(f"side information '{spec}' is neither index/sequence/utm/msls nor an existing .csv")
    return read_metadata_csv(path, names, origin)


def simulate_prior(info: SideInfo, sigma: float, seed: int = 0) -> SideInfo:
    """Noisy position measurements (a GPS-like prior): true position + N(0, sigma^2) on each axis."""
    rng = np.random.default_rng(seed)
    noisy = info.position + rng.normal(0.0, sigma, info.position.shape)
    return SideInfo(info.names, noisy, info.heading.copy(), list(info.radio), info.origin, info.source,
                    [*info.notes, noise_model(sigma, seed)])


def noise_model(sigma: float, seed: int) -> str:
    """The stated noise model of simulated query positions (printed with every evaluation)."""
    return (f"query positions simulated as ground truth + independent Gaussian noise, sigma = {sigma:g} position "
            f"units per axis (seed {seed})")
