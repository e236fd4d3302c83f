"""Precision-recall, AUC-PR and recall at a precision on hand-computed cases."""

import numpy as np
import pytest

from vprkit.data.groundtruth import GroundTruth
from vprkit.evaluation.metrics import auc_pr, evaluate, precision_recall, recall_at_precision


def test_precision_recall_hand_case():
    p, r, thr = precision_recall(np.array([0.6, 0.9, 0.7, 0.8]), np.array([True, True, True, False]))
    # by score: 0.9 ok, 0.8 wrong, 0.7 ok, 0.6 ok; 4 queries with a positive
    assert thr.tolist() == [0.9, 0.8, 0.7, 0.6]
    assert p == pytest.approx([1, 1 / 2, 2 / 3, 3 / 4])
    assert r == pytest.approx([1 / 4, 1 / 4, 2 / 4, 3 / 4])
    # trapezoids from (0, 1): 0.25 * 1 + 0 + 0.25 * (1/2 + 2/3) / 2 + 0.25 * (2/3 + 3/4) / 2
    assert auc_pr(p, r) == pytest.approx(0.25 + 0.25 * (7 / 6) / 2 + 0.25 * (17 / 12) / 2)
    assert recall_at_precision(p, r, 1.0) == pytest.approx(0.25)
    assert recall_at_precision(p, r, 0.7) == pytest.approx(0.75)  # 3/4 precision >= 0.7


def test_ties_form_one_point_and_no_perfect_threshold():
    p, r, _ = precision_recall(np.array([0.9, 0.9, 0.5]), np.array([True, False, True]), num_positive=3)
    assert p == pytest.approx([1 / 2, 2 / 3]) and r == pytest.approx([1 / 3, 2 / 3])
    assert recall_at_precision(p, r, 1.0) == 0.0


def test_nan_scores_are_one_group_after_every_other():
    """A query without matches (NaN score) is the least confident, all of them at one threshold: what results.json,
    the report's curve, evaluate and compare all get, whichever of them sees the NaN."""
    p, r, thr = precision_recall(np.array([np.nan, 0.5, np.nan, 0.9]), np.array([False, True, True, False]))
    # 0.9 wrong (P 0), 0.5 ok (P 1/2, R 1/4), both NaNs at once (P 2/4, R 2/4)
    assert thr.tolist() == [0.9, 0.5, -np.inf]
    assert p == pytest.approx([0, 1 / 2, 2 / 4]) and r == pytest.approx([0, 1 / 4, 2 / 4])


def test_evaluate_counts_queries_without_positive_as_false_positives():
    preds = np.array([[0, 1], [1, 0], [2, 0]])
    scores = np.array([[0.9, 0.1], [0.8, 0.1], [0.7, 0.1]])
    gt = GroundTruth([np.array([0]), np.array([], dtype=np.int64), np.array([2])])
    res = evaluate(preds, gt, ns=(1,), scores=scores)
    # 0.9 ok (P 1, R 1/2), 0.8 is a query without positive (P 1/2), 0.7 ok (P 2/3, R 1)
    assert res["Rec@100P"] == pytest.approx(0.5)
    assert res["Rec@99P"] == pytest.approx(0.5)
    assert res["AUC-PR"] == pytest.approx(0.5 * 1 + 0 + 0.5 * (1 / 2 + 2 / 3) / 2)
    assert res["R@1"] == 1.0
