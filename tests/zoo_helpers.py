"""A test-only released model: the tiny conv backbone + GeM, registered as a zoo preset with its own weights file.

Its preprocessing differs from vprkit's defaults on purpose (a fixed 16x20 resize, mean 0.5 / std 0.25), so a test
that re-derives its descriptors by hand shows the authors' preprocessing is the one applied.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyBackbone
from PIL import Image

from vprkit.models import zoo

ENTRY = zoo.ZooEntry(
    preset="test-tiny-gem", backbone={"name": "tiny"}, aggregator={"name": "gem", "p": 3.0}, resize=(16, 20), dim=8,
    weights=zoo.Weights("tiny_gem.pth", None, note="built by the test"), training_data="none (test)",
    license="MIT", code="vprkit/tests", paper="-", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def released_state(seed: int = 1) -> dict[str, torch.Tensor]:
    """Random weights under the entry's key names (what an author's file holds after conversion)."""
    gen = torch.Generator().manual_seed(seed)
    return {"backbone.conv.weight": torch.randn(8, 3, 4, 4, generator=gen),
            "backbone.conv.bias": torch.randn(8, generator=gen) * 0.1, "aggregator.p": torch.tensor(2.5)}


@pytest.fixture(name="register")
def registry(monkeypatch):
    """Register entries (default: ENTRY) as zoo presets, the tiny conv as their backbone; returns the function."""
    original = zoo.entries
    from vprkit.models import REGISTRY

    monkeypatch.setitem(REGISTRY, "tiny", TinyBackbone)

    def add(*entries: zoo.ZooEntry) -> None:
        added = {e.preset: e for e in (entries or (ENTRY,))}
        monkeypatch.setattr(zoo, "entries", lambda: {**original(), **added})

    return add


def with_weights(**fields) -> zoo.ZooEntry:
    """ENTRY with other `Weights` fields (url, sha256, filename)."""
    return dataclasses.replace(ENTRY, weights=dataclasses.replace(ENTRY.weights, **fields))


def reference_descriptor(image: Path, state: dict[str, torch.Tensor]) -> np.ndarray:
    """The entry's descriptor re-derived in numpy: PIL bilinear resize to 16x20, (x/255 - 0.5) / 0.25, the 4x4
    stride-4 conv + ReLU, GeM with the file's p, L2."""
    img = Image.open(image).convert("RGB").resize((20, 16), Image.Resampling.BILINEAR)
    x = (np.asarray(img, dtype=np.float64) / 255.0 - 0.5) / 0.25  # (16, 20, 3)
    w, b = state["backbone.conv.weight"].double().numpy(), state["backbone.conv.bias"].double().numpy()
    blocks = x.reshape(4, 4, 5, 4, 3).transpose(0, 2, 4, 1, 3)  # (gy, gx, c, ky, kx)
    feat = np.maximum(np.einsum("yxcij,ocij->yxo", blocks, w) + b, 0.0)
    p = float(state["aggregator.p"])
    pooled = (np.clip(feat, 1e-6, None) ** p).mean((0, 1)) ** (1.0 / p)
    return pooled / np.linalg.norm(pooled)
