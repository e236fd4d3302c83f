"""DeepLabV3 with a MobileNetV2 trunk (output stride 16, ASPP rates 6/12/18), 19 Cityscapes classes.

Module names follow the widely used `deeplabv3_mobilenet` PyTorch implementation
(`backbone.low_level_features`, `backbone.high_level_features`, `classifier.classifier.*`), so its
Cityscapes checkpoints (a dict with `model_state`) load with `strict=True` from a user's path. No such
weights ship here: without a checkpoint the trunk starts from the offline ImageNet MobileNetV2
weights and the head is random, which is only good for fine-tuning or tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..base import IMAGENET_MEAN, IMAGENET_STD, MissingWeightsError, load_state_dict, torch_load
from ..mobilenetv2 import SETTINGS, _build_features, default_checkpoint


def _bn_relu(conv: nn.Conv2d) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(conv.out_channels), nn.ReLU(inplace=True))


class ASPPPooling(nn.Sequential):
    """Image-level branch: global average, 1x1 conv, broadcast back."""

    def __init__(self, inp: int, out: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(inp, out, 1, bias=False), nn.BatchNorm2d(out),
                         nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(super().forward(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3 and an image-level branch, projected."""

    def __init__(self, inp: int, rates: tuple[int, int, int], out: int = 256) -> None:
        super().__init__()
        self.convs = nn.ModuleList([_bn_relu(nn.Conv2d(inp, out, 1, bias=False))]
                                   + [_bn_relu(nn.Conv2d(inp, out, 3, padding=r, dilation=r, bias=False))
                                      for r in rates] + [ASPPPooling(inp, out)])
        self.project = nn.Sequential(nn.Conv2d(5 * out, out, 1, bias=False), nn.BatchNorm2d(out),
                                     nn.ReLU(inplace=True), nn.Dropout(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([c(x) for c in self.convs], dim=1))


def _dilate(features: nn.Sequential, output_stride: int) -> None:
    """Replace strides beyond `output_stride` by dilation (parameter shapes unchanged)."""
    stride, dilation, idx = 2, 1, 1
    for _, _, n, s in SETTINGS:
        previous = dilation
        if stride == output_stride:
            step, dilation = 1, dilation * s
        else:
            step, stride = s, stride * s
        for i in range(n):
            dw = next(m for m in features[idx].conv.modules() if isinstance(m, nn.Conv2d) and m.groups > 1)
            d = previous if i == 0 else dilation
            dw.stride, dw.dilation, dw.padding = (step if i == 0 else 1,) * 2, (d, d), (d, d)
            idx += 1


class DeepLabV3MobileNetV2(nn.Module):
    """Cityscapes-style segmenter: `labels(image)` gives per-pixel class ids at the image size."""

    def __init__(self, checkpoint: str | None = None, num_classes: int = 19, output_stride: int = 16) -> None:
        super().__init__()
        features = _build_features()[0][:-1]  # up to the 320-d block
        _dilate(features, output_stride)
        self.backbone = nn.Module()
        self.backbone.low_level_features = features[:4]
        self.backbone.high_level_features = features[4:]
        rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        self.classifier = nn.Module()
        self.classifier.classifier = nn.Sequential(ASPP(320, rates), nn.Conv2d(256, 256, 3, padding=1, bias=False),
                                                   nn.BatchNorm2d(256), nn.ReLU(inplace=True),
                                                   nn.Conv2d(256, num_classes, 1))
        if checkpoint is not None:
            self._load(Path(checkpoint))
        else:
            state = load_state_dict(default_checkpoint())
            features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()
                                      if k.startswith("features.") and int(k.split(".")[1]) < len(features)})
        self.eval()

    def _load(self, path: Path) -> None:
        if not path.is_file():
            raise MissingWeightsError(f"segmentation checkpoint not found: {path}")
        state = torch_load(path, "segmentation checkpoint")
        for key in ("model_state", "state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        state = {k.removeprefix("module."): v for k, v in state.items()}
        try:
            self.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"{path}: not a DeepLabV3-MobileNetV2 checkpoint ({exc})") from exc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes, H, W) at the input size."""
        f = self.backbone.high_level_features(self.backbone.low_level_features(x))
        return F.interpolate(self.classifier.classifier(f), size=x.shape[-2:], mode="bilinear", align_corners=False)

    @torch.no_grad()
    def labels(self, image: Image.Image) -> torch.Tensor:
        """Per-pixel Cityscapes train ids (H, W) of an RGB image."""
        arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        x = (torch.from_numpy(arr).permute(2, 0, 1) - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(
            IMAGENET_STD)[:, None, None]
        device = next(self.parameters()).device
        return self(x[None].to(device))[0].argmax(0).cpu()
