"""Prediction files: plain text (query, rank, map image, score), hloc pairs, JSON; atomic file writes."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary sibling of `path` to write to: renamed over `path` when the block succeeds, removed when
    it fails, so readers never see a half-written file and a failed write leaves the old one intact."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: Path, text: str) -> None:
    """Write text through a temporary sibling (see `replacing`)."""
    with replacing(path) as tmp:
        tmp.write_text(text)


def atomic_savez(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Arrays as one uncompressed .npz (no pickle needed to read it back), written through `replacing`."""
    with replacing(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def write_predictions(path: str | Path, q_names: list[str], m_names: list[str], ids: np.ndarray,
                      scores: np.ndarray) -> None:
    """One line per (query, rank): `query rank map_image score`."""
    lines = ["# query rank map_image score"]
    for qi, q in enumerate(q_names):
        lines += [f"{q} {r + 1} {m_names[j]} {s:.6f}" for r, (j, s) in enumerate(zip(ids[qi], scores[qi])) if j >= 0]
    atomic_write(Path(path), "\n".join(lines) + "\n")


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
    rows = [line.split() for line in Path(path).read_text().splitlines() if line.strip() and not line.startswith("#")]
    bad = [i for i, r in enumerate(rows) if len(r) != 4]
    if bad:
        raise ValueError(f"{path}: expected 'query rank map_image score' lines, line {bad[0] + 2} is not")
    q_names = list(dict.fromkeys(r[0] for r in rows))
    m_names = m_names if m_names is not None else sorted({r[2] for r in rows})
    m_index = {n: i for i, n in enumerate(m_names)}
    ranked: dict[str, list[tuple[int, float]]] = {q: [] for q in q_names}
    for q, _, m, score in rows:
        if m not in m_index:
            raise ValueError(f"{path}: map image '{m}' is not in the map list")
        ranked[q].append((m_index[m], float(score)))
    width = max(map(len, ranked.values()), default=0)
    preds = np.full((len(q_names), width), -1, dtype=np.int64)
    scores = np.full((len(q_names), width), np.nan, dtype=np.float32)
    for i, q in enumerate(q_names):
        if ranked[q]:
            preds[i, : len(ranked[q])], scores[i, : len(ranked[q])] = zip(*ranked[q])
    return q_names, m_names, preds, scores
