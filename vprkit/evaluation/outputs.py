"""Prediction files: plain text (query, rank, map image, score), hloc pairs, JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_predictions(path: str | Path, q_names: list[str], m_names: list[str], ids: np.ndarray,
                      scores: np.ndarray) -> None:
    """One line per (query, rank): `query rank map_image score`."""
    lines = ["# query rank map_image score"]
    for qi, q in enumerate(q_names):
        lines += [f"{q} {r + 1} {m_names[j]} {s:.6f}" for r, (j, s) in enumerate(zip(ids[qi], scores[qi])) if j >= 0]
    _atomic_write(Path(path), "\n".join(lines) + "\n")


def write_pairs(path: str | Path, q_names: list[str], m_names: list[str], ids: np.ndarray) -> None:
    """hloc pairs file: `query map_image` per line, best first."""
    lines = [f"{q} {m_names[j]}" for qi, q in enumerate(q_names) for j in ids[qi] if j >= 0]
    _atomic_write(Path(path), "\n".join(lines) + "\n")


def write_json(path: str | Path, data: dict) -> None:
    _atomic_write(Path(path), json.dumps(data, indent=1, default=float))
