"""Segmenters: one interface (`Segmenter`: RGB image -> label map, or a stack of possibly overlapping masks).

`slic` (scikit-image superpixels), `slic_scales` (SLIC at several scales, overlapping masks) and
`dino_kmeans` (clusters of the backbone's tokens) work out of the box; `sam` runs Segment Anything from
a checkpoint the user supplies. Modules are imported lazily so a missing optional package only matters
for the segmenter that needs it.
"""

from __future__ import annotations

import importlib

from .base import Segmenter

REGISTRY: dict[str, str] = {"slic": "slic:SLIC", "slic_scales": "slic:SLICScales",
                            "dino_kmeans": "dino_kmeans:DinoKMeans", "sam": "sam:SAM"}


def get_segmenter(name: str, **conf) -> Segmenter:
    """Instantiate a segmenter by registry name with its config keywords."""
    if name not in REGISTRY:
        raise KeyError(f"unknown segmenter '{name}'; choose one of {sorted(REGISTRY)}")
    module_name, cls_name = REGISTRY[name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module_name}"), cls_name)(**conf)


__all__ = ["REGISTRY", "Segmenter", "get_segmenter"]
