"""Retrieval metrics over ranked predictions.

Recall@N: share of queries with at least one positive among their first N predictions
(queries without any positive in the map are left out and counted separately, as in
NetVLAD's evaluation). AP uses the number of positives as denominator; AP@k uses min(k, #pos).

Precision-recall from a match score (VPR-Bench, robotics papers): each query's best match is accepted when its
score reaches a threshold; precision = correct accepted / accepted, recall = correct accepted / queries that have
a positive (a query without one can only be a false positive). One curve point per distinct score.
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


def precision_recall(scores: np.ndarray, correct: np.ndarray, num_positive: int | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds), one point per distinct score, thresholds descending.

    `scores`: each query's match confidence (higher = surer; NaN, a query without matches, is the lowest);
    `correct`: whether its best match is right; `num_positive`: queries that have a positive in the map (default:
    all of them).
    """
    scores, correct = np.asarray(scores, dtype=np.float64), np.asarray(correct, dtype=bool)
    if scores.shape != correct.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and correct {correct.shape} must be equal-length vectors")
    scores = np.nan_to_num(scores, nan=-np.inf, posinf=np.inf, neginf=-np.inf)  # NaNs: one group, last
    order = np.argsort(-scores, kind="stable")
    s, c = scores[order], correct[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]  # last query of each group of equal scores
    tp = np.cumsum(c)[last]
    denom = len(scores) if num_positive is None else num_positive
    recall = tp / denom if denom else np.full(len(last), np.nan)
    return tp / (last + 1), recall, s[last]


def auc_pr(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under the P-R curve by the trapezoid rule, the curve starting at recall 0 with its first precision."""
    if not len(precision):
        return float("nan")
    r, p = np.r_[0.0, recall], np.r_[precision[0], precision]
    return float(np.sum((r[1:] - r[:-1]) * (p[1:] + p[:-1]) / 2))


def recall_at_precision(precision: np.ndarray, recall: np.ndarray, min_precision: float = 1.0) -> float:
    """Highest recall over thresholds whose precision is at least `min_precision` (0 when none is)."""
    ok = precision >= min_precision - 1e-12
    return float(recall[ok].max()) if ok.any() else 0.0


def operating_point(scores: np.ndarray, correct: np.ndarray, num_positive: int | None, min_precision: float
                    ) -> dict | None:
    """The confidence threshold to accept matches at (>=) for the highest recall at precision >= `min_precision`
    (the highest such threshold when several give that recall), with its precision and recall; None when no
    threshold reaches the precision."""
    p, r, thr = precision_recall(scores, correct, num_positive)
    ok = np.flatnonzero(p >= min_precision - 1e-12)
    if not len(ok):
        return None
    best = ok[np.argmax(r[ok])]
    return {"target_precision": min_precision, "confidence_threshold": float(thr[best]),
            "precision": float(p[best]), "recall": float(r[best])}


def score_metrics(scores: np.ndarray, correct: np.ndarray, num_positive: int | None = None) -> dict:
    """AUC-PR and recall at 100 % and 99 % precision, JSON-ready."""
    p, r, _ = precision_recall(scores, correct, num_positive)
    return {"AUC-PR": auc_pr(p, r), "Rec@100P": recall_at_precision(p, r, 1.0),
            "Rec@99P": recall_at_precision(p, r, 0.99)}


def evaluate(predictions: np.ndarray, gt: GroundTruth, ns=DEFAULT_NS, map_ks=(5, 10),
             scores: np.ndarray | None = None) -> dict:
    """All metrics as one JSON-ready dict; with `scores` (Q, k) the first column is each query's confidence and
    the precision-recall metrics (AUC-PR, Rec@100P, Rec@99P) are added."""
    has_pos = sum(len(p) > 0 for p in gt.positives)
    out = {f"R@{n}": v for n, v in recall_at_n(predictions, gt, ns).items()}
    out["mAP"] = mean_average_precision(predictions, gt)
    out.update({f"mAP@{k}": mean_average_precision(predictions, gt, k) for k in map_ks})
    if scores is not None and len(predictions):
        rel, _ = _hits(predictions[:, :1], gt)
        out.update(score_metrics(np.asarray(scores)[:, 0], rel[:, 0], has_pos))
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
