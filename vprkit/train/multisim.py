"""Multi-similarity loss and miner (Wang et al., CVPR 2019) over place-batched descriptors.

As GSV-Cities-style training uses them (MixVPR, SALAD, BoQ: `pytorch-metric-learning`'s MultiSimilarityMiner with
cosine similarity and MultiSimilarityLoss with dot-product similarity, on L2-normalised descriptors). Pairs of one
label are positives, of different labels negatives. The miner keeps a positive pair (a, p) when
s_ap - epsilon < max_n s_an (some negative is nearly as similar) and a negative pair (a, n) when
s_an + epsilon > min_p s_ap; the loss of anchor a is
    1/alpha log(1 + sum_p exp(-alpha (s_ap - base))) + 1/beta log(1 + sum_n exp(beta (s_an - base)))
over its mined pairs, averaged over every anchor of the batch (anchors without mined pairs count as 0).
The reference implementation is tested against on a fixed batch (tests/test_train_multisim.py).
"""

from __future__ import annotations

import torch


def pair_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive mask, negative mask) (N, N): same label without the diagonal, different label."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def mine(sim: torch.Tensor, labels: torch.Tensor, epsilon: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """The multi-similarity miner: (kept positive pairs, kept negative pairs) as (N, N) masks of a similarity matrix."""
    pos, neg = pair_masks(labels)
    inf = torch.tensor(float("inf"), dtype=sim.dtype, device=sim.device)
    hardest_neg = torch.where(neg, sim, -inf).amax(dim=1, keepdim=True)
    easiest_pos = torch.where(pos, sim, inf).amin(dim=1, keepdim=True)
    return pos & (sim - epsilon < hardest_neg), neg & (sim + epsilon > easiest_pos)


def _log1p_sum_exp(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row log(1 + sum of exp(x) over the mask), stable for large x; 0 for an empty row."""
    x = torch.where(mask, x, torch.full_like(x, float("-inf")))
    x = torch.cat([x, torch.zeros_like(x[:, :1])], dim=1)  # the "1 +" term
    return torch.logsumexp(x, dim=1)


def multi_similarity_loss(desc: torch.Tensor, labels: torch.Tensor, alpha: float = 1.0, beta: float = 50.0,
                          base: float = 0.0, epsilon: float | None = 0.1) -> torch.Tensor:
    """Mean multi-similarity loss of L2-normalised descriptors (N, D) with place labels (N,); `epsilon` None
    uses every pair (no miner)."""
    sim = desc @ desc.T
    pos, neg = pair_masks(labels) if epsilon is None else mine(sim.detach(), labels, epsilon)
    pos_loss = _log1p_sum_exp(-alpha * (sim - base), pos) / alpha
    neg_loss = _log1p_sum_exp(beta * (sim - base), neg) / beta
    return (pos_loss + neg_loss).mean()
