"""Backbone registry: one small file per model, looked up by name."""

from __future__ import annotations

from ..registry import Registry
from .base import Backbone, BackboneOutput, MissingWeightsError

# modules are imported lazily, so a missing optional package only matters for the backbone that needs it; users add
# their own with REGISTRY.register (see vprkit.registry)
REGISTRY = Registry("backbone", __name__, {
    "dinov2_vits14": ".dinov2:DinoV2",
    "dinov2": ".dinov2:DinoV2",
    "vgg19": ".vgg:VGG19",
    "vgg16": ".vgg:VGG16",
    "mobilenetv2": ".mobilenetv2:MobileNetV2",
    "pixels": ".pixels:Pixels",
    "resnet": ".resnet:ResNet",
})


def get_backbone(name: str, **conf) -> Backbone:
    """Instantiate a backbone by registry name with its config keywords."""
    return REGISTRY.create(name, **conf)


__all__ = ["Backbone", "BackboneOutput", "MissingWeightsError", "REGISTRY", "get_backbone"]
