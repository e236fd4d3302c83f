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


def recall_at_n(predictions: np.ndarray, gt: GroundTruth, ns=DEFAULT_NS) -> dict[int, float]:
    """Recall@N for each N (N beyond the prediction length uses all predictions)."""
    rel, has_pos = _hits(predictions, gt)
    rel = rel[has_pos]
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


def top1_correct(predictions: np.ndarray, gt: GroundTruth) -> tuple[np.ndarray, np.ndarray]:
    """Whether each query's first prediction is a positive, and which queries have a positive at all."""
    rel, has_pos = _hits(predictions[:, :1], gt)
    return rel[:, 0], has_pos


def precision_recall(scores: np.ndarray, correct: np.ndarray, has_positive: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of accepting the k most confident queries, for k = 1..Q.

    Queries are sorted by descending top-1 score (stable, so ties keep query order); an accepted query is a
    true positive when its top-1 is correct, otherwise a false positive (including queries with no positive
    in the map). Recall divides by the number of queries that have a positive (`has_positive`; all when None),
    as in sequence-matching evaluations (SeqSLAM-style P-R over a match threshold).
    """
    scores, correct = np.asarray(scores, dtype=np.float64), np.asarray(correct, dtype=bool)
    num_pos = int(np.sum(has_positive)) if has_positive is not None else len(correct)
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(correct[order])
    precision = tp / np.arange(1, len(tp) + 1)
    recall = tp / num_pos if num_pos else np.zeros(len(tp))
    return precision, recall


def auc_pr(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under the P-R curve by the trapezoid rule, the curve starting at (recall 0, precision 1)."""
    if not len(precision):
        return float("nan")
    return float(np.trapezoid(np.r_[1.0, precision], np.r_[0.0, recall]))


def recall_at_precision(precision: np.ndarray, recall: np.ndarray, min_precision: float = 1.0) -> float:
    """Largest recall reached while precision is at least `min_precision` (0 if never)."""
    ok = np.asarray(precision) >= min_precision - 1e-12
    return float(np.max(np.asarray(recall)[ok])) if ok.any() else 0.0
