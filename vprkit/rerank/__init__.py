"""Re-rankers: re-order the top-N of a global retrieval (Patch-NetVLAD, SegVLAD, AMES, Chamfer, GCSA).

Each method is one module in this package with a `Reranker` subclass and its named presets; the
registry maps a method name to "module:class" and imports lazily, so a method's optional
dependencies only matter when it is used. `base.main(conf, results_dir, ...)` is the pipeline step.
"""

from __future__ import annotations

from ..registry import Registry
from ..results import Retrieval, load_retrieval
from .base import Reranker

# method name -> class or "module:class" (".module" is relative to this package); REGISTRY.register adds one
REGISTRY = Registry("re-ranking method", __name__, {
    "patchnetvlad": ".patchnetvlad:PatchNetVLAD",
    "gcsa": ".gcsa:GCSAReranker",
    "ames": ".ames:AMESReranker",
    "chamfer": ".chamfer:ChamferReranker",
    "segvlad": ".segvlad:SegVLADReranker",
}, group="vprkit.rerankers")


def get_reranker_class(method: str) -> type[Reranker]:
    """The Reranker class registered under `method`."""
    return REGISTRY.load(method)


__all__ = ["REGISTRY", "Reranker", "Retrieval", "get_reranker_class", "load_retrieval"]
