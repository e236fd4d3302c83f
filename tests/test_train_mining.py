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
