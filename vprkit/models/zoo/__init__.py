"""Place-recognition models trained by their authors (NetVLAD, CosPlace, MixVPR, SALAD, BoQ, MegaLoc, ...).

Each entry says how to build the authors' inference in vprkit's own modules (a registry backbone + a registry
aggregator, with the authors' parameter names), how the authors resize and normalise at test time, and where their
released weights file comes from. Families live in their own files (`cnn.py`, `vit.py`), each with a list `ENTRIES`;
this module only collects them, lazily, so importing vprkit does not build any model.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

FAMILIES = ("cnn", "vit")


@dataclass(frozen=True)
class Weights:
    """The authors' released file: where it is published and what it must hash to."""

    filename: str  # the file name as released (kept in the cache under this name)
    url: str | None  # the authors' download address (hubconf / README); None where they publish none
    sha256: str | None = None  # pinned where the authors publish one; else recorded at first download
    note: str = ""  # how to get it by hand when there is no direct URL


@dataclass(frozen=True)
class ZooEntry:
    """One preset: the authors' model, their test-time preprocessing and their weights.

    `convert` is "module:function" (relative to `vprkit.models`) that maps the released state dict (after unwrapping
    `state_dict` and similar containers, and dropping a `module.` / `model.` / `_orig_mod.` prefix that every key
    shares: `weights.read_released`) to keys `backbone.*` / `aggregator.*` of vprkit's modules; None when the
    authors' keys already start with those prefixes.
    """

    preset: str
    backbone: dict  # get_backbone(**backbone)
    aggregator: dict  # get_aggregator(**aggregator)
    resize: tuple[int, int] | None  # (height, width) the authors resize to at test time; None: as given
    dim: int  # descriptor size
    weights: Weights
    training_data: str
    license: str
    code: str  # the authors' repository (owner/name)
    paper: str
    convert: str | None = None
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    notes: str = ""
    extra: dict = field(default_factory=dict)


def entries() -> dict[str, ZooEntry]:
    """Every zoo preset by name (families imported on first use)."""
    out: dict[str, ZooEntry] = {}
    for family in FAMILIES:
        try:
            module = importlib.import_module(f"{__name__}.{family}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{family}":
                raise
            continue
        for entry in module.ENTRIES:
            out[entry.preset] = entry
    return out


def get(preset: str) -> ZooEntry:
    """The zoo entry named `preset`, or a clear error listing the names."""
    table = entries()
    if preset not in table:
        raise KeyError(f"unknown released model '{preset}'; choose one of {sorted(table)}")
    return table[preset]


def rename(state: dict, prefixes: list[tuple[str, str]]) -> dict:
    """Keys with the first matching (old prefix, new prefix) replaced: the `convert` functions' building block.
    Keys matching none are kept, so a strict load names them as unexpected."""
    out = {}
    for key, value in state.items():
        new = next((n + key[len(o):] for o, n in prefixes if key.startswith(o)), key)
        out[new] = value
    return out
