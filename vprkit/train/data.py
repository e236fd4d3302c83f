"""Training data from any vprkit dataset: positives, negatives and a place-disjoint split.

Positions come from file names (`utm`, `sequence`), image order (`index`: query i is at map i's
place), a positions `.csv`, or a Pittsburgh / Tokyo `.mat` dataset spec (NetVLAD's dbStruct). As in
NetVLAD's protocol, map images within `pos_thr` of a query are its potential positives and those
beyond `neg_thr` its negatives (the band between is ambiguous and never used). A positives-list file
works too: its positives are the only non-negatives.

The split is by place, so no place is seen in training and validation: with positions, parts are
consecutive stretches along the principal axis of the query positions, separated by a `gap`; with a
positives list, whole connected groups of queries and their positives go to one part.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..data.groundtruth import (
    GroundTruthError,
    csv_positions,
    frame_index_from_names,
    from_positions,
    from_positives_file,
    utm_from_names,
)
from ..data.images import list_images

SPLITS = ("train", "val", "test")


@dataclass
class MatSpec:
    """A NetVLAD dataset spec: image names (relative to the map / query roots) and UTM positions (its
    distance thresholds are not used: `data.pos_thr` / `data.neg_thr` apply, 10 / 25 m by default as in NetVLAD)."""

    m_names: list[str]
    q_names: list[str]
    m_pos: np.ndarray
    q_pos: np.ndarray


def _field(struct, *names: str):
    for name in names:
        if name in struct.dtype.names:
            return struct[name]
    raise GroundTruthError(f"dataset spec has none of the fields {names} (has {struct.dtype.names})")


def _names(arr) -> list[str]:
    return [str(np.asarray(x).reshape(-1)[0]).strip() for x in np.asarray(arr).reshape(-1)]


def read_mat_spec(path: str | Path) -> MatSpec:
    """Read a Pittsburgh (`pitts30k_train.mat`) or Tokyo (`tokyoTM_train.mat`) spec with scipy.io.

    Field names differ between releases (dbImage / dbImageFns, utmDb stored 2 x N), so fields are
    looked up by name with the known aliases.
    """
    from scipy.io import loadmat

    path = Path(path)
    try:
        mat = loadmat(path)
    except (OSError, ValueError) as exc:
        raise GroundTruthError(f"{path}: not a readable .mat file ({exc})") from exc
    if "dbStruct" not in mat:
        keys = sorted(k for k in mat if not k.startswith('_'))
        raise GroundTruthError(f"{path}: no 'dbStruct' in the .mat file (keys: {keys})")
    s = mat["dbStruct"].reshape(-1)[0]
    m_pos = np.asarray(_field(s, "utmDb"), dtype=np.float64)
    q_pos = np.asarray(_field(s, "utmQ"), dtype=np.float64)
    m_names = _names(_field(s, "dbImage", "dbImageFns"))
    q_names = _names(_field(s, "qImage", "qImageFns"))
    m_pos = m_pos.T if m_pos.shape[0] == 2 and m_pos.shape[1] == len(m_names) else m_pos
    q_pos = q_pos.T if q_pos.shape[0] == 2 and q_pos.shape[1] == len(q_names) else q_pos
    if len(m_pos) != len(m_names) or len(q_pos) != len(q_names):
        raise GroundTruthError(f"{path}: {len(m_names)} map names but {len(m_pos)} positions, "
                               f"{len(q_names)} query names but {len(q_pos)} positions")
    return MatSpec(m_names, q_names, m_pos, q_pos)


def read_positions(spec: str, q_names: list[str], m_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(query positions, map positions), each (N, D), from a positions spec."""
    if spec == "utm":
        return utm_from_names(q_names), utm_from_names(m_names)
    if spec == "sequence":
        return frame_index_from_names(q_names), frame_index_from_names(m_names)
    if spec == "index":
        if len(q_names) != len(m_names):
            raise GroundTruthError(f"positions 'index' needs as many queries as map images "
                                   f"({len(q_names)} vs {len(m_names)})")
        pos = np.arange(len(q_names), dtype=np.float64)[:, None]
        return pos, pos.copy()
    if spec.endswith(".csv"):
        return csv_positions(spec, q_names, m_names)
    raise GroundTruthError(f"positions '{spec}': use 'utm', 'sequence', 'index', a .csv, a .mat or a positives file")


def split_by_place(q_pos: np.ndarray, m_pos: np.ndarray, fractions: list[float],
                   gap: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Consecutive stretches along the principal axis of the query positions, `gap` apart.

    Part i holds the queries (and map images) whose projection lies in [cut_{i-1} + gap, cut_i), where
    the cuts are quantiles of the query projections at the cumulative `fractions`.
    """
    centre = q_pos.mean(axis=0)
    axis = np.linalg.svd(q_pos - centre, full_matrices=False)[2][0] if len(q_pos) > 1 else np.eye(q_pos.shape[1])[0]
    axis = axis if axis[np.argmax(np.abs(axis))] > 0 else -axis  # deterministic sign: "first part" first
    qp, mp = (q_pos - centre) @ axis, (m_pos - centre) @ axis
    cuts = np.quantile(qp, np.cumsum(fractions) / np.sum(fractions))
    cuts[-1] = np.inf
    parts, lo = [], -np.inf
    for hi in cuts:
        parts.append((np.flatnonzero((qp >= lo) & (qp < hi)), np.flatnonzero((mp >= lo) & (mp < hi))))
        lo = hi + gap
    return parts


def split_by_groups(positives: list[np.ndarray], num_map: int,
                    fractions: list[float]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Place-disjoint parts for a positives list: connected query/map groups, in query order."""
    nq = len(positives)
    rows = np.concatenate([np.full(len(p), i) for i, p in enumerate(positives)] + [np.zeros(0, int)]).astype(int)
    cols = np.concatenate(list(positives) + [np.zeros(0, int)]).astype(int) + nq
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(nq + num_map, nq + num_map))
    _, label = connected_components(graph, directed=False)
    first = {}
    for i in range(nq):
        first.setdefault(label[i], i)
    bounds = np.cumsum(fractions) / np.sum(fractions) * nq
    part_of_group = {g: int(np.searchsorted(bounds, q, side="right")) for g, q in first.items()}
    parts = []
    for k in range(len(fractions)):
        qs = np.array([i for i in range(nq) if part_of_group[label[i]] == k], dtype=np.int64)
        ms = np.array([j for j in range(num_map) if part_of_group.get(label[nq + j], -1) == k], dtype=np.int64)
        parts.append((qs, ms))
    return parts


@dataclass
class PlaceSet:
    """Queries and map images of one split, with positives / non-negatives as local map indices."""

    q_names: list[str]
    m_names: list[str]
    positives: list[np.ndarray]
    non_negatives: list[np.ndarray]

    @property
    def num_without_positive(self) -> int:
        return sum(len(p) == 0 for p in self.positives)

    def without(self, bad_queries: list[int], bad_map: list[int]) -> PlaceSet:
        """The same set minus some queries and map images (unreadable files), re-indexed."""
        if not bad_queries and not bad_map:
            return self
        keep_q = np.setdiff1d(np.arange(len(self.q_names)), bad_queries)
        keep_m = np.setdiff1d(np.arange(len(self.m_names)), bad_map)
        return PlaceSet([self.q_names[i] for i in keep_q], [self.m_names[j] for j in keep_m],
                        _restrict(self.positives, keep_q, keep_m), _restrict(self.non_negatives, keep_q, keep_m))


def _restrict(lists: list[np.ndarray], q_idx: np.ndarray, m_idx: np.ndarray) -> list[np.ndarray]:
    """Per-query index arrays re-expressed in the split's local map indexing (others dropped)."""
    local = np.full(max(int(m_idx.max()) + 1 if len(m_idx) else 0, 1), -1, dtype=np.int64)
    local[m_idx] = np.arange(len(m_idx))
    out = []
    for q in q_idx:
        idx = lists[q][lists[q] < len(local)]
        out.append(np.sort(local[idx][local[idx] >= 0]))
    return out


def load_splits(data: dict, map_dir: str | Path, query_dir: str | Path) -> dict[str, PlaceSet]:
    """The train / val / test place sets described by a training config's `data` section."""
    spec = data["positions"]
    if spec.endswith(".mat"):
        mat = read_mat_spec(spec)
        q_names, m_names = mat.q_names, mat.m_names
        for root, names in ((Path(query_dir), q_names), (Path(map_dir), m_names)):
            missing = [n for n in names if not (root / n).is_file()]
            if missing:
                raise FileNotFoundError(f"{spec}: {len(missing)} images not found under {root}, e.g. {missing[:3]}")
    else:
        q_names, m_names = list_images(query_dir), list_images(map_dir)
    if spec.endswith(".mat") or spec in ("utm", "sequence", "index") or spec.endswith(".csv"):
        q_pos, m_pos = (mat.q_pos, mat.m_pos) if spec.endswith(".mat") else read_positions(spec, q_names, m_names)
        positives = from_positions(q_pos, m_pos, data["pos_thr"]).positives
        non_negatives = from_positions(q_pos, m_pos, data["neg_thr"]).positives
        gap = data["neg_thr"] if data.get("gap") is None else data["gap"]
        parts = split_by_place(q_pos, m_pos, data["split"], gap)
    else:
        positives = from_positives_file(spec, q_names, m_names).positives
        non_negatives = positives
        parts = split_by_groups(positives, len(m_names), data["split"])
    return {name: PlaceSet([q_names[i] for i in qi], [m_names[j] for j in mi], _restrict(positives, qi, mi),
                           _restrict(non_negatives, qi, mi)) for name, (qi, mi) in zip(SPLITS, parts)}
