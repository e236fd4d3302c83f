"""Backbone registry: one small file per model, looked up by name."""

from __future__ import annotations

import importlib

from .base import Backbone, BackboneOutput, MissingWeightsError

# name -> "module:class"; modules are imported lazily so a missing optional package only
# matters for the backbone that needs it.
REGISTRY: dict[str, str] = {
    "dinov2_vits14": "dinov2:DinoV2",
    "dinov2": "dinov2:DinoV2",
    "vgg19": "vgg:VGG19",
    "vgg16": "vgg:VGG16",
    "mobilenetv2": "mobilenetv2:MobileNetV2",
    "pixels": "pixels:Pixels",
    "resnet": "resnet:ResNet",
}


def get_backbone(name: str, **conf) -> Backbone:
    """Instantiate a backbone by registry name with its config keywords."""
    if name not in REGISTRY:
        raise KeyError(f"unknown backbone '{name}'; choose one of {sorted(REGISTRY)}")
    module_name, cls_name = REGISTRY[name].split(":")
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, cls_name)(**conf)


__all__ = ["Backbone", "BackboneOutput", "MissingWeightsError", "REGISTRY", "get_backbone"]
