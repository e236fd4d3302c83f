"""Training-free retrieval expansions on global descriptors: database-side augmentation and alpha-QE.

Both replace a descriptor by a similarity-weighted sum of itself and its nearest map neighbours
(Radenovic et al., "Fine-tuning CNN image retrieval", alpha-QE / DBA): weights are sim ** alpha, the
descriptor itself has weight 1, and the result is L2-normalised. They help when neighbours in the map are
the same place (landmarks, dense routes) and hurt when the top neighbours are confusers.
"""

from __future__ import annotations

import numpy as np


def _expand(x: np.ndarray, db: np.ndarray, k: int, alpha: float, skip_self: bool) -> np.ndarray:
    """x_i + sum_j max(sim_ij, 0) ** alpha * db_j over x_i's top-k map neighbours, L2-normalised."""
    x = np.asarray(x, dtype=np.float32)
    db = np.asarray(db, dtype=np.float32)
    if k <= 0:
        return x
    sims = x @ db.T
    if skip_self:
        np.fill_diagonal(sims, -np.inf)
    k = min(k, db.shape[0] - int(skip_self))
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    w = np.maximum(np.take_along_axis(sims, top, axis=1), 0.0) ** alpha
    out = x + np.einsum("nk,nkd->nd", w, db[top])
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def database_augment(db: np.ndarray, k: int = 2, alpha: float = 3.0) -> np.ndarray:
    """DBA: each map descriptor merged with its k nearest other map descriptors."""
    return _expand(db, db, k, alpha, skip_self=True)


def alpha_query_expansion(queries: np.ndarray, db: np.ndarray, k: int = 2, alpha: float = 3.0) -> np.ndarray:
    """alpha-QE: each query merged with its k nearest map descriptors (search again with the result)."""
    return _expand(queries, db, k, alpha, skip_self=False)
