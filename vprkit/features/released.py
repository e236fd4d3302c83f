"""Released models as extractors: a zoo entry's backbone + head with the authors' weights loaded.

This sits in `features` because it joins a backbone (models) with its head (aggregators); the zoo registry itself
(`vprkit.models.zoo`) only describes the entries.
"""

from __future__ import annotations

from pathlib import Path

from ..aggregators import Aggregator, get_aggregator
from ..models import Backbone, get_backbone, zoo
from ..models import weights as released


def build(entry: zoo.ZooEntry, checkpoint_path: str | Path) -> tuple[Backbone, Aggregator]:
    """The authors' inference in eval mode: backbone + aggregator with the released weights loaded strictly and the
    backbone normalising as the authors do. The aggregator needs no fitting: its trained state is in the file."""
    backbone, aggregator = get_backbone(**entry.backbone), get_aggregator(**entry.aggregator)
    backbone.mean, backbone.std = entry.mean, entry.std
    released.load_weights(entry, backbone, aggregator, checkpoint_path)
    aggregator.needs_fit = False
    return backbone.eval(), aggregator.eval()


def modules(model_conf: dict) -> tuple[Backbone, Aggregator]:
    """A released model with its weights: `checkpoint` when given, else the authors' file (cached or downloaded)."""
    entry = zoo.get(model_conf["zoo"])
    return build(entry, model_conf.get("checkpoint") or released.fetch(entry))
