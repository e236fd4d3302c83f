"""Mining: best positive and hardest negatives from cached descriptors; degenerate queries counted."""

import numpy as np

from vprkit.train.mining import Miner, mine_one, sample_negatives


def test_mine_one_picks_closest_positive_and_hardest_negatives():
    q = np.array([0.0, 0.0])
    db = np.array([[3.0, 0], [1.0, 0], [0.5, 0], [2.0, 0], [0.1, 0], [5.0, 0]])
    # positives 0 and 1 -> the closer is 1; negative candidates 2, 3, 5 (and a duplicate) -> 2, 3 hardest
    pos, negs = mine_one(q, db, np.array([0, 1]), np.array([5, 3, 2, 3]), num_negs=2)
    assert pos == 1
    assert negs.tolist() == [2, 3]
    assert mine_one(q, db, np.array([], dtype=int), np.array([2]), 1) is None
    assert mine_one(q, db, np.array([1]), np.array([], dtype=int), 1) is None


def test_sample_negatives_never_returns_non_negatives():
    rng = np.random.default_rng(0)
    out = sample_negatives(100, np.arange(0, 90), 50, rng)
    assert sorted(out.tolist()) == list(range(90, 100))  # fewer than asked: all of them
    out = sample_negatives(100, np.arange(0, 10), 20, rng)
    assert len(out) == 20 and len(set(out.tolist())) == 20 and out.min() >= 10


def test_miner_skips_and_counts_degenerate_queries():
    db = np.eye(4)
    qs = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]])
    positives = [np.array([0]), np.array([], dtype=int), np.array([2])]
    non_neg = [np.array([0, 1]), np.array([1]), np.array([0, 1, 2, 3])]  # query 2: every map image is near
    miner = Miner(positives, non_neg, num_map=4, num_negs=5, neg_samples=10)
    miner.refresh(qs, db)
    out = miner.mine([0, 1, 2], np.random.default_rng(0))
    assert [t.query for t in out] == [0]
    assert out[0].positive == 0 and sorted(out[0].negatives.tolist()) == [2, 3]
    assert (miner.stats.no_positive, miner.stats.no_negative, miner.stats.few_negatives) == (1, 1, 1)
    assert sorted(miner.previous[0][miner.previous[0] >= 0].tolist()) == [2, 3]  # remembered for next time


def _line(*xs):
    """Points on a line as 2-D descriptors (distances along it are exact)."""
    return np.array([[x, 0.0] for x in xs])


def test_violating_mining_keeps_only_margin_violating_negatives_and_skips_queries_without():
    # query 0 at 0, its positive (map 0) at distance 1.0; negatives at 0.5, 1.05, 1.2 and 3.0.
    # The original keeps d(q,n) < d(q,p) + margin = 1.1 in Euclidean distance: 0.5 and 1.05 (1.05 would fail a
    # squared-distance test: 1.05^2 > 1^2 + 0.1). Query 1 at 10: positive at 10.2, negatives 1.0 and 2.0 away.
    db = _line(1.0, 0.5, 1.05, 1.2, 3.0, 11.0, 12.0, 10.2)
    qs = _line(0.0, 10.0)
    positives = [np.array([0]), np.array([7])]
    non_neg = [np.array([0, 5, 6, 7]), np.array([0, 1, 2, 3, 4, 7])]
    miner = Miner(positives, non_neg, num_map=8, num_negs=10, neg_samples=100, margin=0.1)
    miner.refresh(qs, db)
    out = miner.mine([0, 1], np.random.default_rng(0))
    assert [t.query for t in out] == [0]
    assert out[0].positive == 0 and out[0].negatives.tolist() == [1, 2]  # nearest first
    assert miner.stats.no_violating == 1 and miner.stats.no_negative == 0
    assert (miner.previous[1] == -1).all()  # a skipped query keeps its (empty) negative cache
    # vprkit's way: the nearest negatives whether or not they violate, and no query skipped
    nearest = Miner(positives, non_neg, num_map=8, num_negs=10, neg_samples=100)
    nearest.refresh(qs, db)
    got = {t.query: t.negatives.tolist() for t in nearest.mine([0, 1], np.random.default_rng(0))}
    assert got == {0: [1, 2, 3, 4], 1: [5, 6]}


def test_mine_one_with_margin_counts_a_tie_as_not_violating():
    # d(q,p) = 1, margin 0.5: a negative at exactly 1.5 is not kept (strict <, as the original)
    pos, negs = mine_one(np.zeros(2), _line(1.0, 1.5, 1.25), np.array([0]), np.array([1, 2]), 10, margin=0.5)
    assert pos == 0 and negs.tolist() == [2]
