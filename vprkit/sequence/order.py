"""Where map places and query frames lie: an order along a route, or positions.

`spec`: 'folder' (the sorted file order is the route), 'utm' (`@east@north@` positions in the names), or a CSV
with a header `name,timestamp` (ordered by time), `name,easting,northing` or `name,lat,lon` (positions).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.groundtruth import GroundTruthError, latlon_to_metres, read_positions_csv, utm_from_names


@dataclass
class Layout:
    """`order`: indices into the name list, along the route (the stream order for queries); `positions`: (N, D)
    coordinates in list order, or None when only the order is known."""

    order: np.ndarray
    positions: np.ndarray | None = None


def _timestamps(path: Path, names: list[str]) -> np.ndarray | None:
    """Timestamps by name from a `name,timestamp` CSV, or None when the header has no timestamp column."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = [c.strip().lower() for c in reader.fieldnames or []]
        if "timestamp" not in cols or "name" not in cols:
            return None
        rows = {}
        for i, row in enumerate(reader, start=2):
            row = {k.strip().lower(): v for k, v in row.items()}
            try:
                rows[row["name"].strip()] = float(row["timestamp"])
            except (TypeError, ValueError) as exc:
                raise GroundTruthError(f"{path}:{i}: bad timestamp ({exc})") from exc
    missing = [n for n in names if n not in rows]
    if missing:
        raise GroundTruthError(f"{path}: no timestamp for {len(missing)} images, e.g. {missing[:3]}")
    return np.array([rows[n] for n in names])


def layout(spec: str, names: list[str]) -> Layout:
    """The order (and positions when given) of `names` according to `spec` (see the module docstring)."""
    if spec == "folder":
        return Layout(np.arange(len(names)))
    if spec == "utm":
        return Layout(np.arange(len(names)), utm_from_names(names))
    path = Path(spec)
    if path.suffix.lower() != ".csv" or not path.is_file():
        raise GroundTruthError(f"order '{spec}' is neither 'folder', 'utm' nor an existing .csv file")
    times = _timestamps(path, names)
    if times is not None:
        return Layout(np.argsort(times, kind="stable"))
    rows, kind = read_positions_csv(path)
    missing = [n for n in names if n not in rows]
    if missing:
        raise GroundTruthError(f"{path}: no position for {len(missing)} images, e.g. {missing[:3]}")
    pos = np.stack([rows[n] for n in names])
    if kind == "latlon":
        pos = latlon_to_metres(pos[:, 0], pos[:, 1], (float(pos[:, 0].mean()), float(pos[:, 1].mean())))
    return Layout(np.arange(len(names)), pos)
