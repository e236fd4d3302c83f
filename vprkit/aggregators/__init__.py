"""Aggregators turn dense local features (B, C, h, w) into one global descriptor per image.

Each lives in its own file; `get_aggregator(name, **conf)` picks one by name. Aggregators that
need fitting on the map (VLAD vocabulary, PCA, NetVLAD centroids) expose `fit(local_features)`
and `state()` / `load_state()` as plain numpy arrays so they can be saved without pickle.
"""

from __future__ import annotations

from .base import Aggregator
from .boq import BoQ
from .cls import ClsToken
from .convap import ConvAP
from .cosplace import CosPlace
from .flatten import Flatten
from .gem import GeM
from .megaloc import MegaLoc
from .mixvpr import MixVPR
from .netvlad import NetVLAD
from .netvlad_wpca import NetVLADWPCA
from .salad import SALAD
from .vlad import VLAD

REGISTRY: dict[str, type[Aggregator]] = {"cls": ClsToken, "gem": GeM, "vlad": VLAD, "netvlad": NetVLAD,
                                          "flatten": Flatten, "boq": BoQ, "cosplace": CosPlace, "mixvpr": MixVPR,
                                          "convap": ConvAP, "netvlad_wpca": NetVLADWPCA, "salad": SALAD,
                                          "megaloc": MegaLoc}


def get_aggregator(name: str, **conf) -> Aggregator:
    """Instantiate an aggregator by registry name."""
    if name not in REGISTRY:
        raise KeyError(f"unknown aggregator '{name}'; choose one of {sorted(REGISTRY)}")
    return REGISTRY[name](**conf)


__all__ = ["Aggregator", "REGISTRY", "get_aggregator"]
