"""Trained NetVLAD checkpoints as models for extraction (`vprkit index --checkpoint PATH`).

A training checkpoint (vprkit.train.checkpoint format) carries the backbone, attention and NetVLAD
weights plus an `arch` record (backbone config, aggregator config with its attention module). The
extractor builds the preset's backbone, checks the record against the preset and loads the weights.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from .checkpoint import read_checkpoint

logger = logging.getLogger("vprkit")

KIND = "vprkit-netvlad"
# backbone keys that do not change the architecture (where its weights came from)
_WEIGHT_SOURCES = ("checkpoint",)
# aggregator settings a checkpoint brings (defaults for checkpoints written before they existed)
_FROM_CHECKPOINT = {"attention": None, "mask_mode": "assignment"}


def arch_record(model_conf: dict, agg_conf: dict, preprocessing: dict | None = None) -> dict:
    """What must match between a checkpoint and the model it is loaded into (+ the preprocessing it was
    trained with, which only warns when it differs)."""
    model = {k: v for k, v in model_conf.items() if k not in _WEIGHT_SOURCES}
    agg = {**_FROM_CHECKPOINT, **{k: v for k, v in agg_conf.items() if k != "dim"}}
    return {"model": model, "aggregator": agg, "preprocessing": preprocessing}


def arch_mismatch(expected: dict, found: dict) -> list[str]:
    """Human-readable differences 'section.key: checkpoint X, model Y'."""
    out = []
    for section in ("model", "aggregator"):
        a, b = found.get(section, {}), expected.get(section, {})
        if section == "aggregator":
            a = {**_FROM_CHECKPOINT, **a}
        out += [f"{section}.{k}: checkpoint {a.get(k)!r}, here {b.get(k)!r}" for k in sorted(set(a) | set(b))
                if a.get(k) != b.get(k)]
    return out


def read(path: str | Path | None) -> dict[str, Any] | None:
    """The checkpoint dict if `path` is a vprkit NetVLAD training checkpoint; None for other weight files."""
    if path is None:
        return None
    ckpt = read_checkpoint(path)
    meta = ckpt.get("meta") if isinstance(ckpt, dict) else None
    if isinstance(meta, dict) and meta.get("kind") == KIND:
        ckpt["path"] = str(path)
        return ckpt
    return None


def aggregator_conf(ckpt: dict, model_conf: dict, agg_conf: dict, preprocessing: dict | None = None) -> dict:
    """The preset's aggregator config with the checkpoint's attention module and mask mode, after checking that the
    checkpoint was trained from this backbone and NetVLAD size (clear error naming each mismatch)."""
    found = ckpt["meta"]["arch"]
    trained_pre = found.get("preprocessing")
    if preprocessing is not None and trained_pre is not None and preprocessing != trained_pre:
        logger.warning("%s was trained with preprocessing %s but is used with %s (pass --resize-max to match)",
                       ckpt["path"], trained_pre, preprocessing)
    brought = {k: found["aggregator"].get(k, default) for k, default in _FROM_CHECKPOINT.items()}
    expected = arch_record(model_conf, {**agg_conf, **brought})
    diff = arch_mismatch(expected, found)
    if diff:
        raise ValueError(f"{ckpt['path']} was trained for another architecture: " + "; ".join(diff))
    return {**agg_conf, **brought}


def load_weights(ckpt: dict, backbone: torch.nn.Module, aggregator: torch.nn.Module) -> None:
    """Load `backbone.*` and `aggregator.*` weights; the aggregator then needs no k-means fit."""
    state = ckpt["model"]
    for prefix, module in (("backbone.", backbone), ("aggregator.", aggregator)):
        part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(part)
        except RuntimeError as exc:
            raise ValueError(f"{ckpt['path']}: weights do not fit the {prefix[:-1]} ({exc})") from exc
    aggregator.needs_fit = False
