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


def test_precision_recall_over_queries_by_top1_score():
    from vprkit.evaluation.metrics import auc_pr, precision_recall, recall_at_precision, top1_correct

    # scores out of order: sorted they are q1 (0.9, right), q3 (0.8, wrong), q0 (0.7, right), q2 (0.6, no positive)
    preds = np.array([[0], [1], [2], [0]])
    gt = GroundTruth([np.array([0]), np.array([1]), np.array([], dtype=np.int64), np.array([2])])
    correct, has_pos = top1_correct(preds, gt)
    assert correct.tolist() == [True, True, False, False] and has_pos.tolist() == [True, True, False, True]
    precision, recall, _ = precision_recall(np.array([0.7, 0.9, 0.6, 0.8]), correct, int(has_pos.sum()))
    # accepted 1..4: TP 1, 1, 2, 2; recall over the 3 queries that have a positive
    np.testing.assert_allclose(precision, [1, 1 / 2, 2 / 3, 1 / 2])
    np.testing.assert_allclose(recall, [1 / 3, 1 / 3, 2 / 3, 2 / 3])
    # trapezoids from (0, 1): 1/3 * (1 + 1) / 2 + 0 + 1/3 * (1/2 + 2/3) / 2 + 0
    assert auc_pr(precision, recall) == pytest.approx(1 / 3 + (1 / 2 + 2 / 3) / 6)
    assert recall_at_precision(precision, recall) == pytest.approx(1 / 3)
    assert recall_at_precision(precision, recall, 0.6) == pytest.approx(2 / 3)
    assert recall_at_precision(np.array([0.5]), np.array([1.0])) == 0.0


def test_recall_over_all_queries_counts_queries_without_positives_as_misses():
    """Patch-NetVLAD's compute_recall divides by every query (numQ), positives or not."""
    pred = np.array([[2, 0], [1, 3], [0, 1]])
    gt = GroundTruth([np.array([0]), np.array([], dtype=int), np.array([1])])  # hits at ranks 2, -, 2
    assert recall_at_n(pred, gt, (1, 2)) == {1: 0.0, 2: 1.0}
    assert recall_at_n(pred, gt, (1, 2, 100), all_queries=True) == {1: 0.0, 2: pytest.approx(2 / 3),
                                                                     100: pytest.approx(2 / 3)}
