"""Multi-similarity loss and miner against a hand computation and against pytorch-metric-learning (the reference
the GSV-Cities-trained models use) on fixed batches; P x K place batches keep places apart."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vprkit.train import multisim
from vprkit.train.place_batches import place_batches


def _unit(*vecs):
    return F.normalize(torch.tensor(vecs, dtype=torch.float64), dim=1)


def test_miner_and_loss_by_hand():
    # 4 descriptors, places 0 0 1 1; similarities chosen so the miner drops one positive and one negative pair
    x = _unit([1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [0.0, 1.0])
    labels = torch.tensor([0, 0, 1, 1])
    s = (x @ x.T).numpy()
    pos, neg = multisim.mine(x @ x.T, labels, epsilon=0.1)
    # anchor 0: s01=0.6 positive; negatives s02=0.8, s03=0 -> keep (0,1) (0.6-0.1 < 0.8); keep (0,2) (0.8+0.1 > 0.6),
    # drop (0,3) (0+0.1 < 0.6)
    assert pos[0].tolist() == [False, True, False, False]
    assert neg[0].tolist() == [False, False, True, False]
    # anchor 2: positive s23=0.6, negatives s20=0.8, s21=0.96: keep all three
    assert pos[2].tolist() == [False, False, False, True] and neg[2].tolist() == [True, True, False, False]
    alpha, beta, base = 2.0, 10.0, 0.5
    expect = []
    for a in range(4):
        p = [s[a, j] for j in range(4) if pos[a, j]]
        n = [s[a, j] for j in range(4) if neg[a, j]]
        lp = math.log(1 + sum(math.exp(-alpha * (v - base)) for v in p)) / alpha if p else 0.0
        ln = math.log(1 + sum(math.exp(beta * (v - base)) for v in n)) / beta if n else 0.0
        expect.append(lp + ln)
    got = multisim.multi_similarity_loss(x, labels, alpha, beta, base, 0.1)
    assert got.item() == pytest.approx(np.mean(expect), rel=1e-12)


def test_loss_and_miner_match_pytorch_metric_learning():
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning import losses, miners
    from pytorch_metric_learning.distances import CosineSimilarity, DotProductSimilarity

    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(6).repeat_interleave(4)  # P=6 places x K=4 images
    x = F.normalize(torch.randn(24, 16, generator=gen, dtype=torch.float64) + 0.8 * torch.randn(6, 16, generator=gen,
                    dtype=torch.float64).repeat_interleave(4, 0), dim=1)
    miner = miners.MultiSimilarityMiner(epsilon=0.1, distance=CosineSimilarity())
    a1, p, a2, n = miner(x, labels)
    pos, neg = multisim.mine(x @ x.T, labels, 0.1)
    assert sorted(zip(a1.tolist(), p.tolist())) == sorted(map(tuple, pos.nonzero().tolist()))
    assert sorted(zip(a2.tolist(), n.tolist())) == sorted(map(tuple, neg.nonzero().tolist()))
    assert 0 < len(a1) < 72 and 0 < len(a2) < 24 * 20  # the miner really drops pairs on this batch
    loss_fn = losses.MultiSimilarityLoss(alpha=1.0, beta=50.0, base=0.0, distance=DotProductSimilarity())
    ref = loss_fn(x, labels, (a1, p, a2, n))
    got = multisim.multi_similarity_loss(x, labels, 1.0, 50.0, 0.0, 0.1)
    assert got.item() == pytest.approx(ref.item(), rel=1e-9)
    # and without a miner, every pair
    assert multisim.multi_similarity_loss(x, labels, 2.0, 40.0, 0.5, None).item() == pytest.approx(
        losses.MultiSimilarityLoss(alpha=2.0, beta=40.0, base=0.5, distance=DotProductSimilarity())(
            x, labels).item(), rel=1e-9)
    # gradients agree too, through the L2 normalisation every head ends with (the reference normalises again)
    za, zb = (2 * x).clone().requires_grad_(), (2 * x).clone().requires_grad_()
    loss_fn(F.normalize(za, dim=1), labels, miner(F.normalize(za, dim=1), labels)).backward()
    multisim.multi_similarity_loss(F.normalize(zb, dim=1), labels, 1.0, 50.0, 0.0, 0.1).backward()
    np.testing.assert_allclose(za.grad.numpy(), zb.grad.numpy(), rtol=1e-7, atol=1e-12)


def _route(n, pos_thr, neg_thr):
    pos = np.arange(n)
    positives = [np.flatnonzero(np.abs(pos - i) <= pos_thr) for i in range(n)]
    non_neg = [np.flatnonzero(np.abs(pos - i) <= neg_thr) for i in range(n)]
    return positives, non_neg


def test_place_batches_keep_places_apart_and_use_each_query_once():
    positives, non_neg = _route(200, 2, 6)
    positives[7] = np.zeros(0, int)  # a query without positives is never a place
    rng = np.random.default_rng(0)
    near = np.array([[(i + d) % 200 for d in (1, 9, 20)] for i in range(200)])  # some neighbours are too close
    batches = place_batches(positives, non_neg, 8, 4, rng, near, hard=0.5)
    seen = [p.query for b in batches for p in b]
    assert len(seen) == len(set(seen)) and 7 not in seen
    assert len(seen) > 150  # nearly every place is used in an epoch
    for b in batches:
        assert 2 <= len(b) <= 8
        for p in b:
            assert len(p.images) == 3 and set(p.images) <= set(positives[p.query].tolist())
            assert len(set(p.images)) == 3  # five positives: drawn without replacement
        for p in b:
            for o in b:
                if o is not p:  # no image of another place is a non-negative of this one
                    assert not set(non_neg[p.query]) & set(positives[o.query])
    hard_pairs = sum(b[i + 1].query in near[b[i].query] for b in batches for i in range(len(b) - 1))
    assert hard_pairs > 0.2 * len(seen)  # hard neighbours (9 or 20 away) were used
