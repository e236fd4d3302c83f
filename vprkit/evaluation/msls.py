"""Mapillary SLS challenge submission: one line per query, `query_key map_key map_key ...` best first.

Keys are image keys, i.e. file stems (MSLS images are `images/<key>.jpg`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .outputs import atomic_write


def write_msls_csv(path: str | Path, q_names: list[str], m_names: list[str], ids: np.ndarray,
                   top: int | None = None) -> None:
    """Write ranked map keys per query (padding ids < 0 dropped), atomically."""
    path = Path(path)
    key = [Path(n).stem for n in m_names]
    lines = [" ".join([Path(q).stem] + [key[j] for j in row[:top] if j >= 0]) for q, row in zip(q_names, ids)]
    atomic_write(path, "\n".join(lines) + "\n")
