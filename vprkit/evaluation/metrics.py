"""Retrieval metrics over ranked predictions.

Recall@N: share of queries with at least one positive among their first N predictions
(queries without any positive in the map are left out and counted separately, as in
NetVLAD's evaluation). AP uses the number of positives as denominator; AP@k uses min(k, #pos).
"""

from __future__ import annotations

import numpy as np

from ..data.groundtruth import GroundTruth

DEFAULT_NS = (1, 5, 10, 20)


def _hits(predictions: np.ndarray, gt: GroundTruth) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (Q, k) relevance of each prediction, and a mask of queries that have positives."""
    if len(predictions) != gt.num_queries:
        raise ValueError(f"{len(predictions)} queries predicted but ground truth covers {gt.num_queries}")
    rel = np.zeros(predictions.shape, dtype=bool)
    for i, pos in enumerate(gt.positives):
        rel[i] = np.isin(predictions[i], pos)
    has_pos = np.array([len(p) > 0 for p in gt.positives], dtype=bool)
    return rel, has_pos


def recall_at_n(predictions: np.ndarray, gt: GroundTruth, ns=DEFAULT_NS, all_queries: bool = False
                ) -> dict[int, float]:
    """Recall@N for each N (N beyond the prediction length uses all predictions).

    `all_queries` divides by every query, those without positives counting as misses (Patch-NetVLAD's recall).
    """
    rel, has_pos = _hits(predictions, gt)
    rel = rel if all_queries else rel[has_pos]
    if not len(rel):
        return {n: float("nan") for n in ns}
    return {n: float(rel[:, :n].any(axis=1).mean()) for n in ns}


def average_precision(rel: np.ndarray, num_pos: int, k: int | None = None) -> float:
    """AP of one ranked relevance vector; with `k`, AP@k normalised by min(k, num_pos)."""
    rel = rel if k is None else rel[:k]
    denom = num_pos if k is None else min(k, num_pos)
    if denom == 0:
        return float("nan")
    precision = np.cumsum(rel) / np.arange(1, len(rel) + 1)
    return float((precision * rel).sum() / denom)


def mean_average_precision(predictions: np.ndarray, gt: GroundTruth, k: int | None = None) -> float:
    """mAP (or mAP@k) over queries that have positives."""
    rel, has_pos = _hits(predictions, gt)
    aps = [average_precision(rel[i], len(gt.positives[i]), k) for i in np.flatnonzero(has_pos)]
    return float(np.mean(aps)) if aps else float("nan")


def evaluate(predictions: np.ndarray, gt: GroundTruth, ns=DEFAULT_NS, map_ks=(5, 10)) -> dict:
    """All metrics as one JSON-ready dict."""
    has_pos = sum(len(p) > 0 for p in gt.positives)
    out = {f"R@{n}": v for n, v in recall_at_n(predictions, gt, ns).items()}
    out["mAP"] = mean_average_precision(predictions, gt)
    out.update({f"mAP@{k}": mean_average_precision(predictions, gt, k) for k in map_ks})
    out["num_queries"] = gt.num_queries
    out["queries_without_positives"] = gt.num_queries - has_pos
    return out


def format_table(results: dict[str, dict], keys=("R@1", "R@5", "R@10", "R@20", "mAP@10")) -> str:
    """Markdown-style table of metrics, one row per method."""
    lines = ["| method | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, res in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{res.get(k, float('nan')):.3f}" for k in keys) + " |")
    return "\n".join(lines)
