"""Checkpoints of `vprkit train head` as extraction models (`vprkit index --preset NAME --checkpoint RUN/best.pt`);
below the features layer, as the NetVLAD checkpoints (models/checkpoint.py).

The checkpoint holds the head's weights (`TokenHead` state dict) and an `arch` record: the backbone settings, the
head's full configuration (it may differ from the preset's, e.g. a PCA size chosen in training: the checkpoint
brings it) and the preprocessing. The backbone must be the preset's; it keeps its own weights (frozen in training).
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


def load_weights(ckpt: dict, aggregator: torch.nn.Module) -> None:
    """Load the trained head (projection included); it then needs no fitting."""
    try:
        aggregator.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise ValueError(f"{ckpt['path']}: weights do not fit the head ({exc})") from exc
    aggregator.needs_fit = False
