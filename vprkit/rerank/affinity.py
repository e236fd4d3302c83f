"""Pairwise affinities between two sets of images, one function per kind of information.

Each returns an (Na, Nb) float array in [0, 1] (visual: [-1, 1]) with NaN where either image lacks
the information, so the model can mask unknown pairs rather than read them as "unrelated".
"""

from __future__ import annotations

import numpy as np
import shapely

from ..data.sideinfo import Radio


def visual(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of global descriptors (zero vectors give 0, not NaN)."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def positional(pa: np.ndarray, pb: np.ndarray, scale: float) -> np.ndarray:
    """exp(-d^2 / (2 scale^2)) of the Euclidean distance d: 1 at the same place, ~0 beyond 3 scales."""
    d2 = ((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 / (2.0 * scale**2))


def view_triangles(pos: np.ndarray, heading_deg: np.ndarray, fov_deg: float, range_m: float) -> np.ndarray:
    """(N, 3, 2) view triangles: the camera, and the two ends of the view at `range_m`, `fov_deg` apart.

    Headings are compass angles (clockwise from north = +y), so the view direction is (sin h, cos h).
    """
    half = np.radians(fov_deg) / 2.0
    h = np.radians(heading_deg)[:, None] + np.array([-half, half])[None, :]  # (N, 2)
    ends = pos[:, None, :] + range_m * np.stack([np.sin(h), np.cos(h)], axis=-1)
    return np.concatenate([pos[:, None, :], ends], axis=1)


def fov_overlap(pa: np.ndarray, ha: np.ndarray, pb: np.ndarray, hb: np.ndarray, fov_deg: float = 90.0,
                range_m: float = 50.0) -> np.ndarray:
    """Area of intersection of the two view triangles over the area of one (both have the same area).

    Only pairs closer than 2 * range_m can overlap; their intersections are computed in one
    vectorised shapely call.
    """
    out = np.full((len(pa), len(pb)), np.nan)
    ka = np.isfinite(pa).all(1) & np.isfinite(ha)
    kb = np.isfinite(pb).all(1) & np.isfinite(hb)
    out[np.ix_(ka, kb)] = 0.0
    if not ka.any() or not kb.any():
        return out
    ia, ib = np.flatnonzero(ka), np.flatnonzero(kb)
    tri_a = shapely.polygons(view_triangles(pa[ia], ha[ia], fov_deg, range_m))
    tri_b = shapely.polygons(view_triangles(pb[ib], hb[ib], fov_deg, range_m))
    d = np.linalg.norm(pa[ia][:, None] - pb[ib][None], axis=-1)
    ra, rb = np.nonzero(d <= 2.0 * range_m)
    area = 0.5 * range_m**2 * np.sin(np.radians(fov_deg))
    out[ia[ra], ib[rb]] = shapely.area(shapely.intersection(tri_a[ra], tri_b[rb])) / area
    return out


def radio(ra: list[Radio | None], rb: list[Radio | None], scale_db: float = 10.0) -> np.ndarray:
    """Signal similarity over shared transmitters, normalised by all transmitters either image hears:

        sum over shared t of exp(-|rssi_a(t) - rssi_b(t)| / scale_db)  /  |union of transmitters|

    Two images that hear no transmitter in common get 0 (they are probably far apart); an image
    without radio data gives NaN (unknown), so does a pair where both heard nothing.
    """
    ids = sorted({t for r in (*ra, *rb) if r for t in r})
    col = {t: j for j, t in enumerate(ids)}

    def dense(rs: list[Radio | None]) -> np.ndarray:
        m = np.full((len(rs), len(ids)), np.nan)
        for i, r in enumerate(rs):
            for t, v in (r or {}).items():
                m[i, col[t]] = v
        return m

    a, b = dense(ra), dense(rb)
    ha, hb = np.isfinite(a), np.isfinite(b)
    shared = ha[:, None, :] & hb[None, :, :]
    sim = np.where(shared, np.exp(-np.abs(np.nan_to_num(a)[:, None] - np.nan_to_num(b)[None]) / scale_db), 0.0)
    union = (ha[:, None, :] | hb[None, :, :]).sum(-1)
    out = np.where(union > 0, sim.sum(-1) / np.maximum(union, 1), np.nan)
    known = np.array([r is not None for r in ra])[:, None] & np.array([r is not None for r in rb])[None, :]
    return np.where(known, out, np.nan)
