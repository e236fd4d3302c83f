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


def _cross(o: np.ndarray, a: np.ndarray, p: np.ndarray) -> np.ndarray:
    """z of (a - o) x (p - o): > 0 when p is left of the directed line o -> a."""
    return (a[..., 0] - o[..., 0]) * (p[..., 1] - o[..., 1]) - (a[..., 1] - o[..., 1]) * (p[..., 0] - o[..., 0])


def _counter_clockwise(tri: np.ndarray) -> np.ndarray:
    """The same triangles with vertices in counter-clockwise order."""
    flip = _cross(tri[:, 0], tri[:, 1], tri[:, 2]) < 0
    return np.where(flip[:, None, None], tri[:, [0, 2, 1]], tri)


def _clip(poly: np.ndarray, e0: np.ndarray, e1: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman step for P convex polygons at once: keep the part left of e0 -> e1.

    Polygons are (P, V, 2) vertex rings in which repeated vertices are allowed (they add no area),
    so all have the same shape. Each edge emits its start vertex if inside and its crossing point
    if it crosses; a convex ring crosses a line at most twice, so V + 1 slots hold the result
    (kept points first, the last one repeated). Nothing kept: all zeros (zero area).
    """
    n, v = poly.shape[:2]
    nxt = np.roll(poly, -1, axis=1)
    dp, dn = _cross(e0[:, None], e1[:, None], poly), _cross(e0[:, None], e1[:, None], nxt)
    inside, crosses = dp >= 0, (dp >= 0) != (dn >= 0)
    t = np.where(crosses, dp / np.where(crosses, dp - dn, 1.0), 0.0)[..., None]
    out = np.stack([poly, poly + t * (nxt - poly)], axis=2).reshape(n, 2 * v, 2)
    keep = np.stack([inside, crosses], axis=2).reshape(n, 2 * v)
    pos = np.minimum(np.cumsum(keep, axis=1) - 1, v)
    last = np.take_along_axis(out, (2 * v - 1 - np.argmax(keep[:, ::-1], axis=1))[:, None, None], axis=1)
    res = np.repeat(np.where(keep.any(axis=1)[:, None, None], last, 0.0), v + 1, axis=1)
    r, c = np.nonzero(keep)
    res[r, pos[r, c]] = out[r, c]
    return res


def triangle_intersection_area(ta: np.ndarray, tb: np.ndarray) -> np.ndarray:
    """Areas of the intersections of triangle pairs ta[i], tb[i] ((P, 3, 2) each), clipped in numpy."""
    ta, tb = _counter_clockwise(ta), _counter_clockwise(tb)
    poly = ta
    for k in range(3):
        poly = _clip(poly, tb[:, k], tb[:, (k + 1) % 3])
    x, y = poly[..., 0], poly[..., 1]
    return 0.5 * np.abs((x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y).sum(axis=1))


def fov_overlap(pa: np.ndarray, ha: np.ndarray, pb: np.ndarray, hb: np.ndarray, fov_deg: float = 90.0,
                range_m: float = 50.0, backend: str = "numpy") -> np.ndarray:
    """Area of intersection of the two view triangles over the area of one (both have the same area).

    Only pairs closer than 2 * range_m can overlap. backend 'numpy' clips all those pairs at once
    (convex clipping, no per-pair Python); 'shapely' uses shapely 2's vectorised intersection.
    """
    out = np.full((len(pa), len(pb)), np.nan)
    ka = np.isfinite(pa).all(1) & np.isfinite(ha)
    kb = np.isfinite(pb).all(1) & np.isfinite(hb)
    out[np.ix_(ka, kb)] = 0.0
    if not ka.any() or not kb.any():
        return out
    ia, ib = np.flatnonzero(ka), np.flatnonzero(kb)
    tri_a = view_triangles(pa[ia], ha[ia], fov_deg, range_m)
    tri_b = view_triangles(pb[ib], hb[ib], fov_deg, range_m)
    d = np.linalg.norm(pa[ia][:, None] - pb[ib][None], axis=-1)
    ra, rb = np.nonzero(d <= 2.0 * range_m)
    if backend == "shapely":
        inter = shapely.area(shapely.intersection(shapely.polygons(tri_a[ra]), shapely.polygons(tri_b[rb])))
    elif backend == "numpy":
        inter = triangle_intersection_area(tri_a[ra], tri_b[rb])
    else:
        raise ValueError(f"unknown fov_overlap backend '{backend}'; choose numpy or shapely")
    out[ia[ra], ib[rb]] = inter / (0.5 * range_m**2 * np.sin(np.radians(fov_deg)))
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
