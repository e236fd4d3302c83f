"""Segmenters: one interface (`Segmenter`: RGB image -> label map, or a stack of possibly overlapping masks).

`slic` (scikit-image superpixels), `slic_scales` (SLIC at several scales, overlapping masks) and
`dino_kmeans` (clusters of the backbone's tokens) work out of the box; `sam` runs Segment Anything from
a checkpoint the user supplies. Modules are imported lazily so a missing optional package only matters
for the segmenter that needs it.
"""

from __future__ import annotations

from ..registry import Registry
from .base import Segmenter

REGISTRY = Registry("segmenter", __name__, {"slic": ".slic:SLIC", "slic_scales": ".slic:SLICScales",
                                            "dino_kmeans": ".dino_kmeans:DinoKMeans", "sam": ".sam:SAM"})


def get_segmenter(name: str, **conf) -> Segmenter:
    """Instantiate a segmenter by registry name with its config keywords."""
    return REGISTRY.create(name, **conf)


__all__ = ["REGISTRY", "Segmenter", "get_segmenter"]
