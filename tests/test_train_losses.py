"""Triplet / sTML losses and the de-attention guidance loss against hand-computed values."""

import math

import pytest
import torch

from vprkit.train.losses import get_loss, guidance_loss, stml_loss, triplet_loss


def _vecs():
    # q at origin; p at distance 0.3; negatives at distance 1.0 (far) and 0.2 (hard)
    q = torch.tensor([[0.0, 0.0]])
    p = torch.tensor([[0.3, 0.0]])
    n = torch.tensor([[[0.0, 1.0], [0.0, 0.2]]])
    return q, p, n


def test_triplet_hand_values():
    q, p, n = _vecs()
    # far negative: max(0, 0.3 + 0.1 - 1.0) = 0 (zero region); hard: 0.3 + 0.1 - 0.2 = 0.2
    assert triplet_loss(q, p, n[:, :1]).item() == pytest.approx(0.0, abs=1e-6)
    assert triplet_loss(q, p, n[:, 1:]).item() == pytest.approx(0.2, abs=1e-6)
    assert triplet_loss(q, p, n).item() == pytest.approx(0.1, abs=1e-6)  # mean over the two negatives


def test_stml_hand_values():
    q, p, n = _vecs()
    d_pn_far, d_pn_hard = math.hypot(0.3, 1.0), math.hypot(0.3, 0.2)
    # far: 0.3 + 0.1 - 1.0 + 1.4 - 1.044 = -0.244 -> 0; hard: 0.3 + 0.1 - 0.2 + 1.4 - 0.3606 = 1.2394
    assert stml_loss(q, p, n[:, :1]).item() == pytest.approx(max(0.0, 0.3 + 0.1 - 1.0 + 1.4 - d_pn_far), abs=1e-6)
    assert stml_loss(q, p, n[:, :1]).item() == 0.0
    assert stml_loss(q, p, n[:, 1:]).item() == pytest.approx(0.3 + 0.1 - 0.2 + 1.4 - d_pn_hard, abs=1e-6)
    # with m_pn = 0 the extra term only subtracts d(p, n): hard gives 0.2 - 0.3606 < 0 -> 0
    assert stml_loss(q, p, n[:, 1:], margin_pn=0.0).item() == 0.0


def test_mask_excludes_padded_negatives_and_gradients_are_finite():
    q, p, n = _vecs()
    mask = torch.tensor([[False, True]])
    assert triplet_loss(q, p, n, mask).item() == pytest.approx(0.2, abs=1e-6)
    x = torch.zeros(1, 2, requires_grad=True)  # q == p: zero distance must not give NaN gradients
    loss = get_loss("stml", margin=0.1, margin_pn=1.4)(x, torch.zeros(1, 2), n)
    loss.backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(KeyError, match="unknown loss"):
        get_loss("contrastive")


def test_guidance_loss_zero_when_mask_equals_guidance():
    g = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])
    assert guidance_loss(g.clone(), g, "mse").item() == 0.0
    assert guidance_loss(g.clone(), g, "bce").item() == 0.0
    m = torch.full_like(g, 0.5)
    assert guidance_loss(m, g, "mse").item() == pytest.approx(0.25)
    assert guidance_loss(m, g, "bce").item() == pytest.approx(math.log(2), abs=1e-6)
    # guidance at image resolution is area-averaged to the mask size: 4x4 of quadrants -> 2x2
    big = g.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert guidance_loss(g.clone(), big).item() == 0.0
    with pytest.raises(ValueError, match="unknown guidance loss"):
        guidance_loss(m, g, "l1")
