"""The CNN zoo presets against the authors' own code (fixtures made by tests/data/zoo/make_fixtures.py).

Each fixture holds the authors' key names and shapes, the input tensors of their test-time transform and the
descriptors their model produced with seeded random weights on three demo images. The test writes those weights as
the authors release them (file name, container, key names) and indexes the three images with
`vprkit index --preset NAME --checkpoint FILE`, as a user would: the stored descriptors must be the authors'.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from zoo_fixtures import ZOO_DATA, random_state, released_file

from vprkit.aggregators import get_aggregator
from vprkit.cli import main
from vprkit.features import released
from vprkit.features.extract import authors_input, zoo_conf
from vprkit.models import get_backbone, zoo

ROOT = Path(__file__).resolve().parents[1]
# fixture folder -> presets it checks (the two NetVLAD releases differ only in their weights)
FIXTURES = {
    "cosplace-r18-512": ["cosplace-r18-512"],
    "cosplace-r50-2048": ["cosplace-r50-2048"],
    "cosplace-r101-2048": ["cosplace-r101-2048"],
    "eigenplaces-r18-512": ["eigenplaces-r18-512"],
    "eigenplaces-r50-2048": ["eigenplaces-r50-2048"],
    "eigenplaces-r101-2048": ["eigenplaces-r101-2048"],
    "mixvpr-r50-4096": ["mixvpr-r50-4096"],
    "convap-r50-4096": ["convap-r50-4096"],
    "boq-r50": ["boq-r50"],
    "netvlad": ["netvlad-pitts30k", "netvlad-msls"],
}
CASES = [(f, p) for f, presets in FIXTURES.items() for p in presets]


def _spec(fixture: str) -> dict:
    return json.loads((ZOO_DATA / fixture / "spec.json").read_text())


def _entry(fixture: str, preset: str) -> zoo.ZooEntry:
    """The preset, with the fixture's smaller WPCA where it has one (spec.json `num_pcs`)."""
    entry, spec = zoo.get(preset), _spec(fixture)
    if "num_pcs" in spec:
        entry = dataclasses.replace(entry, aggregator={**entry.aggregator, "num_pcs": spec["num_pcs"]},
                                    dim=spec["num_pcs"])
    return entry


def _stored(idx: Path, names: list[str]) -> np.ndarray:
    with h5py.File(idx / "map_features.h5") as f:
        return np.stack([f[n]["global"][()] for n in names])


@pytest.mark.parametrize(("fixture", "preset"), CASES)
def test_index_stores_the_authors_descriptors(tmp_path, monkeypatch, fixture, preset):
    entry, spec = _entry(fixture, preset), _spec(fixture)
    monkeypatch.setattr(zoo, "entries", lambda original=zoo.entries: {**original(), preset: entry})
    ckpt = released_file(ZOO_DATA / fixture, tmp_path, entry.weights.filename)
    images = tmp_path / "map"
    images.mkdir()
    names = [f"{i}{Path(p).suffix}" for i, p in enumerate(spec["images"])]
    for name, src in zip(names, spec["images"], strict=True):
        shutil.copy(ROOT / src, images / name)
    idx = tmp_path / "idx"
    assert main(["index", str(images), "-o", str(idx), "--preset", preset, "--checkpoint", str(ckpt)]) == 0
    ours, theirs = _stored(idx, names), np.load(ZOO_DATA / fixture / "outputs.npy")
    assert ours.dtype == np.float32 and ours.shape == theirs.shape == (3, entry.dim)
    assert np.abs(ours - theirs).max() <= 1e-4
    assert np.abs(theirs).max() > 1e-3  # not a degenerate all-zero reference


@pytest.mark.parametrize("fixture", list(FIXTURES))
def test_preprocessing_is_the_authors_transform(fixture):
    """vprkit's resize + normalisation of the images gives the authors' input tensors (inputs.npz)."""
    entry, spec = zoo.get(FIXTURES[fixture][0]), _spec(fixture)
    backbone = get_backbone(**entry.backbone)
    backbone.mean, backbone.std = entry.mean, entry.std
    ours = torch.stack([authors_input(backbone, Image.open(ROOT / p).convert("RGB"), zoo_conf(entry)["preprocessing"])
                        for p in spec["images"]]).numpy()
    theirs = np.load(ZOO_DATA / fixture / "inputs.npz")["x"]
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1e-5
    if entry.resize is not None:
        assert tuple(theirs.shape[2:]) == entry.resize


@pytest.mark.parametrize(("fixture", "preset"), CASES)
def test_weights_source_is_the_authors(fixture, preset):
    """Where the authors' hubconf asked for a URL, the entry downloads that file under that name."""
    spec, entry = _spec(fixture), zoo.get(preset)
    if "url" in spec:
        assert entry.weights.url == spec["url"]
        assert entry.weights.filename == spec["filename"]


def test_released_keys_map_onto_the_full_size_netvlad():
    """The NetVLAD fixture's WPCA is shrunk; at the released 4096 its keys still convert to exactly vprkit's names
    and shapes (modules built on the meta device: no 512 MB matrix is allocated)."""
    entry, spec = zoo.get("netvlad-pitts30k"), _spec("netvlad")
    num_pcs = entry.aggregator["num_pcs"]
    released = {k: torch.empty([num_pcs, *s[1:]] if k.startswith("WPCA.0.") else s, device="meta")
                for k, s, _ in spec["keys"]}
    converted = zoo.cnn.from_patchnetvlad(released)
    with torch.device("meta"):
        model = torch.nn.ModuleDict({"backbone": get_backbone(**entry.backbone),
                                     "aggregator": get_aggregator(**entry.aggregator)})
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == own
    assert own["aggregator.wpca.weight"] == (4096, 64 * 512)


def test_a_file_that_does_not_match_names_the_keys(tmp_path):
    """Fault: a released file with a key missing and one renamed fails in one line naming both."""
    spec = _spec("cosplace-r18-512")
    state = random_state(spec["keys"], 0)
    del state["aggregation.3.bias"]
    state["aggregation.9.weight"] = state.pop("aggregation.3.weight")
    path = tmp_path / "ResNet18_512_cosplace.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="aggregator.fc.bias.*aggregation.9.weight") as err:
        released.build(zoo.get("cosplace-r18-512"), path)
    assert "\n" not in str(err.value)


def test_frozen_stages_stop_gradients_where_the_authors_do():
    """frozen_stages=2 (CosPlace, MixVPR, BoQ): stem, layer1, layer2 frozen; layer3 and layer4 trained."""
    net = get_backbone("resnet", depth=18, last_layer=4, frozen_stages=2)
    trained = {name.split(".")[0] for name, p in net.named_parameters() if p.requires_grad}
    frozen = {name.split(".")[0] for name, p in net.named_parameters() if not p.requires_grad}
    assert trained == {"layer3", "layer4"} and frozen == {"conv1", "bn1", "layer1", "layer2"}
    assert (net.dim, net.stride) == (512, 32)
    cut = get_backbone("resnet", depth=50, last_layer=3)
    assert (cut.dim, cut.stride) == (1024, 16) and not hasattr(cut, "layer4")
    assert all(p.requires_grad for p in cut.parameters())


def test_mixvpr_refuses_a_map_of_another_size():
    head = get_aggregator("mixvpr", in_channels=8, in_h=4, in_w=4, out_channels=4, mix_depth=1, out_rows=2)
    assert head(torch.rand(2, 8, 4, 4)).shape == (2, 8)
    with pytest.raises(ValueError, match="4x4 feature map, got \\(5, 4\\)"):
        head(torch.rand(1, 8, 5, 4))
