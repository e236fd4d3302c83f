"""Aggregators turn dense local features (B, C, h, w) into one global descriptor per image.

Each lives in its own file; `get_aggregator(name, **conf)` picks one by name (`REGISTRY.register` adds one).
Aggregators that need fitting on the map (VLAD vocabulary, PCA, NetVLAD centroids) expose `fit(local_features)`
and `state()` / `load_state()` as plain numpy arrays so they can be saved without pickle.
"""

from __future__ import annotations

from ..registry import Registry
from .base import Aggregator

REGISTRY = Registry("aggregator", __name__, {
    "cls": ".cls:ClsToken", "gem": ".gem:GeM", "vlad": ".vlad:VLAD", "netvlad": ".netvlad:NetVLAD",
    "flatten": ".flatten:Flatten",
    # the heads of released models (vprkit.models.zoo), with their authors' parameter names
    "boq": ".boq:BoQ", "cosplace": ".cosplace:CosPlace", "mixvpr": ".mixvpr:MixVPR", "convap": ".convap:ConvAP",
    "netvlad_wpca": ".netvlad_wpca:NetVLADWPCA", "salad": ".salad:SALAD", "megaloc": ".megaloc:MegaLoc",
    "token_head": ".token_head:TokenHead",  # a head on frozen tokens, trained by `vprkit train head`
})


def get_aggregator(name: str, **conf) -> Aggregator:
    """Instantiate an aggregator by registry name."""
    return REGISTRY.create(name, **conf)


__all__ = ["Aggregator", "REGISTRY", "get_aggregator"]
