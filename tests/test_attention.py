"""Attention modules keep shapes and pass gradients; NetVLAD uses their spatial weight."""

import pytest
import torch

from vprkit.aggregators.netvlad import NetVLAD
from vprkit.models.attention import REGISTRY, get_attention


@pytest.mark.parametrize("name", sorted(n for n in REGISTRY if not n.endswith("-ref")))  # -ref: the original's init
def test_attention_starts_as_plain_netvlad(name):
    torch.manual_seed(0)
    plain = NetVLAD(num_clusters=4, dim=16)
    with_att = NetVLAD(num_clusters=4, dim=16, attention=name)
    with_att.load_state_dict({**with_att.state_dict(), **plain.state_dict()})
    x = torch.randn(2, 16, 5, 7)
    assert torch.allclose(with_att(x), plain(x), atol=1e-6)
    # and training can start: the zero-initialised last layer gets a gradient
    (with_att(x) * torch.randn(2, 64)).sum().backward()
    assert sum(p.grad.abs().sum() for p in with_att.attention.parameters() if p.grad is not None) > 0


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_attention_shapes_and_gradients(name):
    torch.manual_seed(0)
    att = get_attention(name, 16).eval()  # -ref: a bias right before batch norm gets no gradient in train mode
    with torch.no_grad():  # as after some training: no layer at zero
        for p in att.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(2, 16, 5, 7, requires_grad=True)
    y, weight = att(x)
    assert y.shape == x.shape
    if weight is not None:
        assert weight.shape == (2, 1, 5, 7)
        assert ((weight >= 0) & (weight <= 1)).all()
    loss = y.pow(2).sum() + (0 if weight is None else (weight * torch.randn_like(weight)).sum())
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, p in att.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_netvlad_weight_scales_each_location():
    torch.manual_seed(0)
    vlad = NetVLAD(num_clusters=4, dim=8)
    x = torch.randn(1, 8, 3, 3)
    plain = vlad(x)
    # a constant weight cancels in the final normalisation
    assert torch.allclose(vlad.pool(x, torch.full((1, 1, 3, 3), 0.3)), plain, atol=1e-6)
    # a weight that is zero except at one location equals NetVLAD of that location alone
    w = torch.zeros(1, 1, 3, 3)
    w[..., 1, 2] = 1.0
    assert torch.allclose(vlad.pool(x, w), vlad(x[..., 1:2, 2:3]), atol=1e-6)


def test_netvlad_attention_by_name_and_unknown_name():
    vlad = NetVLAD(num_clusters=4, dim=8, attention="crn")
    assert vlad(torch.randn(2, 8, 4, 4)).shape == (2, 32)
    assert any(k.startswith("attention.") for k in vlad.state())
    with pytest.raises(KeyError, match="unknown attention"):
        NetVLAD(num_clusters=4, dim=8, attention="transformer")
