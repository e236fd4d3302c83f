"""The de-attention code's forms (`*-ref`): outputs of the original on fixed inputs (tests/data/deattention_orig,
see its SOURCE.txt), its parameter names, BAM's combination, and where a mask acts in NetVLAD."""

from pathlib import Path

import numpy as np
import pytest
import torch

from vprkit.aggregators.netvlad import NetVLAD
from vprkit.models.attention import get_attention
from vprkit.models.attention.deattention_ref import DeAttentionRef
from vprkit.models.segmentation import class_ids
from vprkit.train.losses import guidance_loss

DATA = Path(__file__).parent / "data" / "deattention_orig"


def _fixture(name):
    with np.load(DATA / f"{name}.npz") as f:
        arrays = {k: f[k] for k in f.files}
    state = {k[len("state."):]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith("state.")}
    return arrays, state


def test_deattention_ref_matches_the_original_on_fixed_input():
    arrays, state = _fixture("deattention")
    head = DeAttentionRef(8)
    head.load_original(state)
    head.eval()
    with torch.no_grad():
        x, mask = head(torch.from_numpy(arrays["x"]))
    np.testing.assert_allclose(mask.numpy(), arrays["mask"], atol=1e-5)
    np.testing.assert_allclose((x * mask).numpy(), arrays["y"], atol=1e-5)  # the original returns x * mask


def test_deattention_ref_has_the_original_names_and_shapes():
    _, state = _fixture("deattention")
    head = DeAttentionRef(8)
    own = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state.items() if not k.startswith(("crn_downsample.", "crn_upsample."))}
    assert own == theirs
    assert own["crn_conv1.0.weight"] == (32, 8, 3, 3) and own["crn_conv2.0.weight"] == (32, 8, 5, 5)
    assert own["crn_conv3.0.weight"] == (20, 8, 7, 7) and own["crn_conv4.0.weight"] == (1, 84, 1, 1)
    assert head.crn_conv1[0].padding_mode == "reflect"
    # a checkpoint's keys under the original's module name load, its unused modules dropped
    prefixed = {f"deattention.{k}": v for k, v in state.items()} | {"pool.centroids": torch.zeros(2, 8)}
    head.load_original(prefixed, prefix="deattention.")
    assert torch.equal(head.crn_conv3[0].weight, state["crn_conv3.0.weight"])
    # the mask sees L2-normalised features: scaling a location changes nothing
    head.eval()
    x = torch.randn(1, 8, 5, 7)
    scale = torch.rand(1, 1, 5, 7) + 0.5
    assert torch.allclose(head(x)[1], head(x * scale)[1], atol=1e-5)


def test_bam_ref_matches_the_original_and_its_product_formula():
    arrays, state = _fixture("bam")
    bam = get_attention("bam-ref", 32)
    bam.load_state_dict(state)
    bam.eval()
    x = torch.from_numpy(arrays["x"])
    with torch.no_grad():
        y, weight = bam(x)
        c, s = bam.channel(x), bam.spatial_att.gate_s(x)
    assert weight is None
    np.testing.assert_allclose(y.numpy(), arrays["y"], atol=1e-5)
    np.testing.assert_allclose(c.numpy(), arrays["channel"], atol=1e-5)
    np.testing.assert_allclose(s.numpy(), arrays["spatial"], atol=1e-5)
    # hand formula on the gates: (1 + sigmoid(C * S)) * x, not vprkit's (1 + sigmoid(C + S)) * x
    cn, sn, xn = arrays["channel"][:, :, None, None], arrays["spatial"], arrays["x"]
    np.testing.assert_allclose(arrays["y"], (1 + 1 / (1 + np.exp(-cn * sn))) * xn, atol=1e-5)
    assert np.abs(arrays["y"] - (1 + 1 / (1 + np.exp(-(cn + sn)))) * xn).max() > 1e-2


def test_bam_ref_pools_the_first_square_window_as_the_original():
    bam = get_attention("bam-ref", 32).eval()
    x = torch.randn(2, 32, 4, 6)
    changed = x.clone()
    changed[..., 4:] += 5.0  # columns beyond the first 4x4 window
    with torch.no_grad():
        assert torch.allclose(bam.channel(x), bam.channel(changed))
    with pytest.raises(ValueError, match="H <= W < 2H; got 4x8"):
        bam(torch.randn(2, 32, 4, 8))


def _numpy_netvlad(x: np.ndarray, w: np.ndarray, b: np.ndarray, c: np.ndarray, mask=None) -> np.ndarray:
    """NetVLAD re-derived: per-location L2, softmax assignment (times `mask`), residual sums, intra + L2 norms."""
    f = x.reshape(x.shape[0], x.shape[1], -1)  # (B, C, N)
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    logits = np.einsum("kc,bcn->bkn", w, f) + b[None, :, None]
    a = np.exp(logits - logits.max(axis=1, keepdims=True))
    a = a / a.sum(axis=1, keepdims=True)
    if mask is not None:
        a = a * mask.reshape(mask.shape[0], 1, -1)
    v = np.einsum("bkn,bcn->bkc", a, f) - a.sum(axis=2)[..., None] * c[None]
    v = v / np.linalg.norm(v, axis=2, keepdims=True)
    v = v.reshape(x.shape[0], -1)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("attention", ["deattention-ref", "crn-ref", "deattention"])
def test_features_mode_mask_cancels_in_netvlad(attention):
    torch.manual_seed(0)
    vlad = NetVLAD(num_clusters=4, dim=8, alpha=10.0, attention=attention, mask_mode="features")
    vlad.init_from_centroids(torch.nn.functional.normalize(torch.randn(4, 8), dim=1).numpy())
    with torch.no_grad():  # a mask far from uniform
        for p in vlad.attention.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    vlad.eval()
    x = torch.rand(2, 8, 5, 7) + 0.05
    with torch.no_grad():
        got = vlad(x).numpy()
        mask = vlad.attend(x)[1].numpy()
    assert mask.std() > 0.01
    w = vlad.conv.weight.detach().numpy()[:, :, 0, 0]
    b, c = vlad.conv.bias.detach().numpy(), vlad.centroids.detach().numpy()
    np.testing.assert_allclose(got, _numpy_netvlad(x.numpy(), w, b, c), atol=1e-5)  # as if there were no mask
    # vprkit's assignment mode does change the descriptor: the mask weights each location's assignment
    vlad.mask_mode = "assignment"
    with torch.no_grad():
        weighted = vlad(x).numpy()
    np.testing.assert_allclose(weighted, _numpy_netvlad(x.numpy(), w, b, c, mask), atol=1e-5)
    assert np.abs(weighted - got).max() > 1e-3


def test_chain_feeds_the_masked_features_to_se():
    torch.manual_seed(0)
    vlad = NetVLAD(num_clusters=4, dim=16, attention="deattention-ref+se-ref", mask_mode="features").eval()
    head, se = vlad.attention
    x = torch.rand(1, 16, 5, 7)
    with torch.no_grad():
        y, weight = vlad.attend(x)
        _, mask = head(x)
        expected, _ = se(x * mask)
    assert torch.allclose(y, expected, atol=1e-6) and torch.equal(weight, mask)
    assert [k.split(".")[1] for k in vlad.state_dict() if k.startswith("attention.")][-1] == "1"


def test_bicubic_guidance_resize_keeps_corners_as_the_original():
    guidance = torch.ones(1, 1, 4, 4)
    guidance[..., 0, 0] = guidance[..., 0, 3] = guidance[..., 3, 0] = guidance[..., 3, 3] = 0.0
    mask = torch.zeros(1, 1, 2, 2)
    # aligned-corner bicubic samples the four corners exactly: all 0, the loss of a zero mask is 0
    assert float(guidance_loss(mask, guidance, "mse", "bicubic")) == pytest.approx(0.0, abs=1e-7)
    # area averaging: each 2x2 block has one 0 and three 1s -> 0.75 everywhere
    assert float(guidance_loss(mask, guidance, "mse", "area")) == pytest.approx(0.75 ** 2)


def test_reference_guidance_classes_are_the_originals_train_ids():
    # the original's Cityscapes categories: sky = train id 10, human = person 11 + rider 12,
    # vehicle = car 13, truck 14, bus 15, train 16, motorcycle 17, bicycle 18
    assert class_ids(["human", "vehicle", "sky"]) == list(range(10, 19))
    assert class_ids(["human"]) == [11, 12] and class_ids(["sky"]) == [10]


def test_checkpoints_bring_their_mask_mode_and_old_ones_mean_assignment():
    from vprkit.models import checkpoint as trained

    model, agg = {"name": "mobilenetv2", "layer": 13}, {"name": "netvlad", "num_clusters": 4}
    new = {"path": "new.pt", "meta": {"arch": trained.arch_record(model, {**agg, "attention": "deattention-ref",
                                                                         "mask_mode": "features"})}}
    got = trained.aggregator_conf(new, model, agg)
    assert (got["attention"], got["mask_mode"]) == ("deattention-ref", "features")
    old = {"path": "old.pt", "meta": {"arch": {"model": model, "aggregator": {**agg, "attention": "crn"}}}}
    assert trained.aggregator_conf(old, model, agg)["mask_mode"] == "assignment"  # written before mask_mode existed


def test_unknown_mask_mode_is_refused():
    with pytest.raises(ValueError, match="unknown mask_mode 'both'"):
        NetVLAD(num_clusters=4, dim=8, attention="crn-ref", mask_mode="both")
