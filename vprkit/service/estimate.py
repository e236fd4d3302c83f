"""A position estimate and a confidence from a ranked list of map images (and an optional position prior)."""

from __future__ import annotations

import numpy as np


def posterior(scores: np.ndarray, positions: list[list[float] | None], temp: float,
              prior: tuple[float, float, float] | None = None) -> np.ndarray:
    """Weights of the candidates: softmax(score / temp), times a Gaussian prior N((x, y), sigma) on their
    positions when one is given (candidates without a position keep their weight), renormalised."""
    z = (np.asarray(scores, dtype=np.float64) - np.max(scores)) / temp
    w = np.exp(z)
    if prior is not None:
        x, y, sigma = prior
        for i, p in enumerate(positions):
            if p is not None:
                w[i] *= np.exp(-((p[0] - x) ** 2 + (p[1] - y) ** 2) / (2 * sigma ** 2))
        if w.sum() <= 0:  # the prior excludes every candidate: fall back to the appearance weights
            w = np.exp(z)
    return w / w.sum()


def estimate(names: list[str], positions: list[list[float] | None], weights: np.ndarray, radius: float) -> dict:
    """The best candidate; with positions, the weighted mean position of the candidates within `radius` of it
    and their total weight as the confidence; without, the best's own weight."""
    best = int(np.argmax(weights))
    if positions[best] is None:
        return {"name": names[best], "position": None, "confidence": float(weights[best])}
    p0 = np.asarray(positions[best])
    near = [i for i, p in enumerate(positions) if p is not None and np.hypot(*(np.asarray(p) - p0)) <= radius]
    w = weights[near]
    pos = (np.asarray([positions[i] for i in near]) * w[:, None]).sum(0) / w.sum()
    return {"name": names[best], "position": [float(v) for v in pos], "confidence": float(w.sum())}
