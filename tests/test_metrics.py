"""Recall@N and (m)AP on hand-made rankings."""

import numpy as np
import pytest

from vprkit.data.groundtruth import GroundTruth
from vprkit.evaluation.metrics import average_precision, evaluate, mean_average_precision, recall_at_n


def test_recall_hand_case():
    preds = np.array([[0, 1, 2], [2, 1, 0], [1, 2, 0], [0, 1, 2]])
    gt = GroundTruth([np.array([0]), np.array([0]), np.array([2]), np.array([], dtype=np.int64)])
    # query 3 has no positive: left out. q0 hit@1, q1 hit@3, q2 hit@2
    assert recall_at_n(preds, gt, ns=(1, 2, 3)) == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: 1.0}
    assert evaluate(preds, gt, ns=(1,))["queries_without_positives"] == 1


def test_average_precision_hand_case():
    rel = np.array([1, 0, 1, 0], dtype=bool)
    # precisions at hits: 1/1, 2/3 ; 3 positives in total
    assert average_precision(rel, 3) == pytest.approx((1 + 2 / 3) / 3)
    # AP@2: hits within 2 = first only, denominator min(2, 3) = 2
    assert average_precision(rel, 3, k=2) == pytest.approx(1 / 2)


def test_map_over_queries():
    preds = np.array([[0, 1], [1, 0]])
    gt = GroundTruth([np.array([0]), np.array([0])])
    assert mean_average_precision(preds, gt) == pytest.approx((1 + 0.5) / 2)


def test_size_mismatch():
    with pytest.raises(ValueError, match="ground truth covers"):
        recall_at_n(np.zeros((2, 1), int), GroundTruth([np.array([0])]))


def test_recall_over_all_queries_counts_queries_without_positives_as_misses():
    """Patch-NetVLAD's compute_recall divides by every query (numQ), positives or not."""
    pred = np.array([[2, 0], [1, 3], [0, 1]])
    gt = GroundTruth([np.array([0]), np.array([], dtype=int), np.array([1])])  # hits at ranks 2, -, 2
    assert recall_at_n(pred, gt, (1, 2)) == {1: 0.0, 2: 1.0}
    assert recall_at_n(pred, gt, (1, 2, 100), all_queries=True) == {1: 0.0, 2: pytest.approx(2 / 3),
                                                                     100: pytest.approx(2 / 3)}
