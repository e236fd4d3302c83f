"""The optimisers training steps offer (`train.optimizer`), built from a step's `train` settings."""

from __future__ import annotations

import torch

OPTIMIZERS = ("adam", "adamw", "sgd")


def make_optimizer(t: dict, params) -> torch.optim.Optimizer:
    """Adam / AdamW with `lr` and `weight_decay`, or SGD with `momentum` too."""
    name = t["optimizer"]
    if name == "adam":
        return torch.optim.Adam(params, lr=t["lr"], weight_decay=t["weight_decay"])
    if name == "adamw":
        return torch.optim.AdamW(params, lr=t["lr"], weight_decay=t["weight_decay"])
    if name == "sgd":
        return torch.optim.SGD(params, lr=t["lr"], momentum=t["momentum"], weight_decay=t["weight_decay"])
    raise ValueError(f"unknown optimizer '{name}'; choose one of {OPTIMIZERS}")
