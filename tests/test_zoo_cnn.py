"""The CNN zoo presets against the authors' own code (fixtures made by tests/data/zoo/make_fixtures.py).

Each fixture holds the authors' key names and shapes, the input tensors of their test-time transform and the
descriptors their model produced with seeded random weights; the test writes those weights as the authors release
them (file name, container, key names), loads the file through `zoo.build` and compares descriptors.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from zoo_fixtures import ZOO_DATA, released_file

from vprkit.models import zoo

# fixture folder -> presets it checks (the two NetVLAD releases differ only in their weights)
FIXTURES = {
    "cosplace-r50-2048": ["cosplace-r50-2048"],
    "cosplace-r18-512": ["cosplace-r18-512"],
    "eigenplaces-r50-2048": ["eigenplaces-r50-2048"],
    "mixvpr-r50-4096": ["mixvpr-r50-4096"],
    "convap-r50-4096": ["convap-r50-4096"],
    "boq-r50": ["boq-r50"],
    "netvlad": ["netvlad-pitts30k", "netvlad-msls"],
}
CASES = [(f, p) for f, presets in FIXTURES.items() if (ZOO_DATA / f).is_dir() for p in presets]


def _spec(fixture: str) -> dict:
    return json.loads((ZOO_DATA / fixture / "spec.json").read_text())


def _entry(fixture: str, preset: str) -> zoo.ZooEntry:
    """The preset, with the fixture's smaller WPCA where it has one (spec.json `num_pcs`)."""
    entry, spec = zoo.get(preset), _spec(fixture)
    if "num_pcs" in spec:
        entry = dataclasses.replace(entry, aggregator={**entry.aggregator, "num_pcs": spec["num_pcs"]},
                                    dim=spec["num_pcs"])
    return entry


@pytest.mark.parametrize(("fixture", "preset"), CASES)
def test_descriptors_equal_the_authors(tmp_path, fixture, preset):
    entry = _entry(fixture, preset)
    path = released_file(ZOO_DATA / fixture, tmp_path, entry.weights.filename)
    backbone, aggregator = zoo.build(entry, path)
    x = torch.from_numpy(np.load(ZOO_DATA / fixture / "inputs.npz")["x"])
    if entry.resize is not None:
        assert tuple(x.shape[2:]) == entry.resize  # the authors' transform produced the entry's test size
    with torch.no_grad():
        ours = aggregator(backbone(x).local).numpy()
    theirs = np.load(ZOO_DATA / fixture / "outputs.npy")
    assert ours.shape == theirs.shape == (3, entry.dim)
    assert np.abs(ours - theirs).max() <= 1e-4
    assert np.abs(theirs).max() > 1e-3  # not a degenerate all-zero reference


@pytest.mark.parametrize(("fixture", "preset"), CASES)
def test_weights_source_is_the_authors(fixture, preset):
    """Where the authors' hubconf asked for a URL, the entry downloads that file under that name."""
    spec, entry = _spec(fixture), zoo.get(preset)
    if "url" in spec:
        assert entry.weights.url == spec["url"]
        assert entry.weights.filename == spec["filename"]
