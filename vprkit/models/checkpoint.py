"""Loading vprkit training checkpoints as models: safe reading, trained models rebuilt from their saved settings,
and trained NetVLAD weights for extraction (`vprkit index --checkpoint PATH`).

Here, below every step, so extraction and re-rankers load trained models without importing training; writing
checkpoints and resuming runs stay in `vprkit.train.checkpoint`. A NetVLAD training checkpoint carries the
backbone, attention and NetVLAD weights plus an `arch` record (backbone config, aggregator config with its attention
module); the extractor builds the preset's backbone, checks the record against the preset and loads the weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..data.safeio import InputError
from .base import torch_load

logger = logging.getLogger("vprkit")

KIND = "vprkit-netvlad"
# backbone keys that do not change the architecture (where its weights came from)
_WEIGHT_SOURCES = ("checkpoint",)
# aggregator settings a checkpoint brings (defaults for checkpoints written before they existed)
_FROM_CHECKPOINT = {"attention": None, "mask_mode": "assignment"}


def read_checkpoint(path: str | Path) -> Any:
    """`torch.load` with `weights_only=True`, and clear errors for a missing, corrupt or unsafe file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    return torch_load(path)


def read_vprkit_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict, refusing files that are not vprkit checkpoints."""
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "meta" not in ckpt:
        raise ValueError(f"{path}: not a vprkit checkpoint (no 'model'/'meta' entries)")
    return ckpt


def load_trained_model(path: str | Path, build: Callable[..., torch.nn.Module], key: str,
                       hint: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A model rebuilt from the constructor arguments saved under meta[`key`], weights loaded, in eval mode.

    Lets a checkpoint be used without knowing how it was configured; `hint` says how to make a right one.
    """
    ckpt = read_vprkit_checkpoint(path)
    meta = ckpt["meta"]
    if key not in meta:
        raise ValueError(f"{path}: not a checkpoint of this kind (no '{key}'); {hint}")
    try:
        model = build(**meta[key])
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:  # settings or weights this code cannot use
        raise InputError(f"{path}: unexpected model settings or weights for this model ({exc}); {hint}") from None
    return model.eval(), meta


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


def read_trained(path: str | Path | None, kinds: tuple[str, ...]) -> dict[str, Any] | None:
    """The checkpoint dict (with its `path`) if `path` is a vprkit training checkpoint of one of `kinds` (its `meta`
    names the kind); None for other weight files. One read serves every kind a caller accepts."""
    if path is None:
        return None
    ckpt = read_checkpoint(path)
    meta = ckpt.get("meta") if isinstance(ckpt, dict) else None
    if isinstance(meta, dict) and meta.get("kind") in kinds:
        return {**ckpt, "path": str(path)}
    return None


def read_netvlad(path: str | Path | None) -> dict[str, Any] | None:
    """The checkpoint dict if `path` is a vprkit NetVLAD training checkpoint; None for other weight files."""
    return read_trained(path, (KIND,))


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
