"""Seeded random weights for the zoo fixtures, shared by the test and by the script that ran the authors' code.

The released models are tens of MB, too large for git; a fixture therefore commits the authors' key names and
shapes (`spec.json`, read from their model's `state_dict()`), the input tensors and the authors' output
descriptors, and both sides regenerate the same weights from the spec and a seed. Values are drawn per key from
numpy's PCG64 seeded by (seed, crc32(key)), so they do not depend on the order of keys, and are scaled so a deep
net stays finite: conv / linear weights ~ N(0, 1/fan_in), norm scales and running variances in [0.5, 1.5], biases
and running means ~ N(0, 0.1^2), GeM's p in [2.5, 3.5] (BatchNorm statistics are random too, not 0 / 1).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import torch

ZOO_DATA = Path(__file__).parent / "data" / "zoo"


def _values(key: str, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    last = key.rsplit(".", 1)[-1]
    if last in ("running_var",) or (last == "weight" and len(shape) == 1):
        return rng.uniform(0.5, 1.5, shape)
    if last == "p":
        return rng.uniform(2.5, 3.5, shape)
    if last in ("bias", "running_mean") or last.endswith("_bias"):
        return rng.normal(0.0, 0.1, shape)
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape)


def random_state(spec: list[list], seed: int) -> dict[str, torch.Tensor]:
    """Weights for the [key, shape, dtype] list `spec`; integer entries (num_batches_tracked) are zero."""
    state = {}
    for key, shape, dtype in spec:
        if dtype.startswith("torch.int"):
            state[key] = torch.zeros(shape, dtype=getattr(torch, dtype.removeprefix("torch.")))
            continue
        rng = np.random.Generator(np.random.PCG64([seed, zlib.crc32(key.encode())]))
        state[key] = torch.from_numpy(_values(key, shape, rng).astype(np.float32))
    return state


def state_spec(state: dict[str, torch.Tensor]) -> list[list]:
    """[key, shape, dtype] of a state dict, in its order."""
    return [[k, list(v.shape), str(v.dtype)] for k, v in state.items()]


def released_file(preset_dir: Path, out_dir: Path, filename: str | None = None) -> Path:
    """Write the fixture's weights as the authors release them (container and, unless given, file name from
    spec.json)."""
    spec = json.loads((preset_dir / "spec.json").read_text())
    state = random_state(spec["keys"], spec["seed"])
    path = out_dir / (filename or spec["filename"])
    torch.save(state if spec["container"] == "bare" else {spec["container"]: state}, path)
    return path
