"""DeepLabV3-MobileNetV2 segmenter: shapes, output stride, checkpoint round trip, guidance masks."""

import pytest
import torch

from vprkit.models.segmentation import class_ids, guidance_from_labels
from vprkit.models.segmentation.deeplabv3_mobilenet import DeepLabV3MobileNetV2

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def seg():
    from conftest import weights_file

    from vprkit.models import mobilenetv2

    weights_file(mobilenetv2.FDET_PACKAGE, mobilenetv2.FDET_FILE, mobilenetv2.FDET_PIP)
    return DeepLabV3MobileNetV2()


def test_shapes_and_output_stride(seg):
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert seg(x).shape == (1, 19, 64, 96)
        high = seg.backbone.high_level_features(seg.backbone.low_level_features(x))
    assert high.shape == (1, 320, 4, 6)  # output stride 16: the last stride-2 block is dilated instead


def test_checkpoint_round_trip_and_clear_errors(seg, tmp_path):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in seg.classifier.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    torch.save({"model_state": seg.state_dict(), "cur_itrs": 1}, tmp_path / "city.pth")  # the common layout
    other = DeepLabV3MobileNetV2(str(tmp_path / "city.pth"))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(seg(x), other(x))
    torch.save({"model_state": {"classifier.weight": torch.zeros(3)}}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth: not a DeepLabV3-MobileNetV2 checkpoint"):
        DeepLabV3MobileNetV2(str(tmp_path / "bad.pth"))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.pth: not a readable segmentation checkpoint"):
        DeepLabV3MobileNetV2(str(tmp_path / "junk.pth"))


def test_guidance_from_labels():
    assert class_ids(["human"]) == [11, 12]
    assert class_ids(["vehicle", "human"]) == [11, 12, 13, 14, 15, 16, 17, 18]
    labels = torch.tensor([[0, 11], [13, 10]])  # road, person / car, sky
    assert guidance_from_labels(labels, class_ids(["vehicle", "human"])).tolist() == [[1.0, 0.0], [0.0, 1.0]]
    with pytest.raises(KeyError, match="unknown class"):
        class_ids(["dog"])
