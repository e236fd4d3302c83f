"""Prediction files: tab-separated text (query, rank, map image, score), hloc pairs, JSON; all written atomically.

Fields are separated by tabs so any file name (spaces included) round-trips; files from older versions
(space-separated) are still read. The formats are described in docs/formats.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..data.images import UNSAFE_NAME
from ..data.safeio import InputError, atomic_savez, atomic_write, read_text, replacing

__all__ = ["atomic_savez", "atomic_write", "replacing", "write_predictions", "write_pairs", "write_json",
           "read_predictions", "split_fields"]
SEP = "\t"


def write_predictions(path: str | Path, q_names: list[str], m_names: list[str], ids: np.ndarray,
                      scores: np.ndarray) -> None:
    """One line per (query, rank): `query<TAB>rank<TAB>map_image<TAB>score`."""
    _check_names(path, q_names + m_names)
    lines = [SEP.join(("# query", "rank", "map_image", "score"))]
    for qi, q in enumerate(q_names):
        lines += [SEP.join((q, str(r + 1), m_names[j], f"{s:.6f}")) for r, (j, s) in enumerate(zip(ids[qi], scores[qi]))
                  if j >= 0]
    atomic_write(Path(path), "\n".join(lines) + "\n")


def _check_names(path: str | Path, names: list[str]) -> None:
    """Names the line formats cannot hold (a tab or a line break inside) are refused before anything is written."""
    bad = [n for n in names if UNSAFE_NAME.search(n)]
    if bad:
        raise InputError(f"{path}: cannot write image names holding a tab or line break, e.g. {bad[0]!r}")


def split_fields(line: str) -> list[str]:
    """Fields of a line: tab-separated when the line has a tab (any name), else whitespace (older files)."""
    return line.split(SEP) if SEP in line else line.split()


def write_pairs(path: str | Path, q_names: list[str], m_names: list[str], ids: np.ndarray) -> None:
    """hloc pairs file: `query map_image` per line, best first."""
    lines = [f"{q} {m_names[j]}" for qi, q in enumerate(q_names) for j in ids[qi] if j >= 0]
    atomic_write(Path(path), "\n".join(lines) + "\n")


def write_json(path: str | Path, data: dict) -> None:
    atomic_write(Path(path), json.dumps(data, indent=1, default=float))


def read_predictions(path: str | Path, m_names: list[str] | None = None
                     ) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """Parse a predictions.txt into (query names, map names, ranked map indices padded with -1, their scores
    padded with NaN).

    Without `m_names` the map list is the set of predicted images, which is enough for Recall@N
    but undercounts positives for mAP: pass the full map list when you have it.
    """
    lines = [(i, line) for i, line in enumerate(read_text(path).splitlines(), start=1)
             if line.strip() and not line.startswith("#")]
    rows = [split_fields(line) for _, line in lines]
    bad = [i for (i, _), r in zip(lines, rows) if len(r) != 4]
    if bad:
        raise InputError(f"{path}: line {bad[0]} is not 'query<TAB>rank<TAB>map_image<TAB>score'")
    q_names = list(dict.fromkeys(r[0] for r in rows))
    m_names = m_names if m_names is not None else sorted({r[2] for r in rows})
    m_index = {n: i for i, n in enumerate(m_names)}
    ranked: dict[str, list[tuple[int, float]]] = {q: [] for q in q_names}
    for q, _, m, score in rows:
        if m not in m_index:
            raise InputError(f"{path}: map image '{m}' is not in the map list")
        try:
            ranked[q].append((m_index[m], float(score)))
        except ValueError:
            raise InputError(f"{path}: score '{score}' of {q} / {m} is not a number") from None
    width = max(map(len, ranked.values()), default=0)
    preds = np.full((len(q_names), width), -1, dtype=np.int64)
    scores = np.full((len(q_names), width), np.nan, dtype=np.float32)
    for i, q in enumerate(q_names):
        if ranked[q]:
            preds[i, : len(ranked[q])], scores[i, : len(ranked[q])] = zip(*ranked[q])
    return q_names, m_names, preds, scores

