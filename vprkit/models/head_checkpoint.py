"""Checkpoints of `vprkit train head` as extraction models (`vprkit index --preset NAME --checkpoint RUN/best.pt`);
below the features layer, as the NetVLAD checkpoints (models/checkpoint.py).

The checkpoint holds the head's weights (`TokenHead` state dict) and an `arch` record: the backbone settings, the
head's full configuration (it may differ from the preset's, e.g. a PCA size chosen in training: the checkpoint
brings it) and the preprocessing. The backbone must be the preset's; it keeps its own weights, but for the last
blocks a run fine-tuned (`train.finetune`), which the checkpoint holds under their backbone names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .checkpoint import read_trained

KIND = "vprkit-head"


def read(path: str | Path | None) -> dict[str, Any] | None:
    """The checkpoint dict if `path` is a head-training checkpoint; None for other weight files."""
    return read_trained(path, (KIND,))


def aggregator_conf(ckpt: dict, model_conf: dict, agg_conf: dict, preprocessing: dict) -> dict:
    """The head configuration the checkpoint was trained with, after checking it was trained for this preset's
    head, backbone and preprocessing (one line naming each difference)."""
    arch = ckpt["meta"]["arch"]
    head = (arch["aggregator"].get("head", {}).get("name"), agg_conf.get("head", {}).get("name"))
    diff = [f"{section}: checkpoint {arch[section]}, here {here}" for section, here in
            (("model", model_conf), ("preprocessing", preprocessing)) if arch[section] != here]
    diff += [f"head: checkpoint {head[0]}, here {head[1]}"] if head[0] != head[1] else []
    if diff:
        raise ValueError(f"{ckpt['path']} was trained for another preset: " + "; ".join(diff))
    return dict(arch["aggregator"])


def load_weights(ckpt: dict, aggregator: torch.nn.Module, backbone: torch.nn.Module | None = None) -> None:
    """Load the trained head (projection included; it then needs no fitting) and, for a run that fine-tuned the
    backbone's last blocks, those blocks into `backbone` (names as the backbone's own)."""
    head, tail = _parts(ckpt["model"])
    try:
        aggregator.load_state_dict(head)
        if tail:
            if backbone is None:
                raise RuntimeError("it holds fine-tuned backbone blocks but no backbone was given")
            unexpected = backbone.load_state_dict(tail, strict=False).unexpected_keys
            if unexpected:
                raise RuntimeError(f"backbone keys it lacks: {unexpected[:3]}")
    except RuntimeError as exc:
        raise ValueError(f"{ckpt['path']}: weights do not fit the model ({exc})") from exc
    aggregator.needs_fit = False


def _parts(state: dict) -> tuple[dict, dict]:
    """(head, backbone) weights: `aggregator.*` / `backbone.*` (train/head_model.py); earlier checkpoints held the
    head's weights alone."""
    if not any(k.startswith("aggregator.") for k in state):
        return state, {}
    return ({k.removeprefix("aggregator."): v for k, v in state.items() if k.startswith("aggregator.")},
            {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")})
