"""ResNet-18/50/101 (He et al. 2016) in plain PyTorch, with torchvision's parameter names.

Place-recognition authors build on torchvision's ResNets and cut them: CosPlace / EigenPlaces keep all four stages
(stride 32), MixVPR, Conv-AP and BoQ drop `layer4` (stride 16, the map of `layer3`). `last_layer` picks the cut;
`frozen_stages` freezes the stem (0) and the stages up to it (k: stem + layer1..k), as those authors do for
training (all of them freeze up to `layer2`). Bottlenecks stride in their 3x3 conv (torchvision's "v1.5"). The
state dict reads `conv1.*`, `bn1.*`, `layerN.M.*`, so a torchvision ImageNet checkpoint loads with `checkpoint=`
(its `fc.*` and any cut stage are left out); zoo checkpoints are mapped to these names by `models.zoo`.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Backbone, BackboneOutput, load_state_dict, load_strict

# depth -> (block kind, blocks per stage)
DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch)


def _downsample(in_ch: int, out_ch: int, stride: int) -> nn.Sequential | None:
    """1x1 conv + BN on the shortcut when the shape changes (torchvision's `downsample.0/1`)."""
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), _bn(out_ch))


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _bn(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = _bn(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_ch, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 with 4x expansion (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1):
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = _bn(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = _bn(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = _bn(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(Backbone):
    """ResNet trunk up to `layer{last_layer}`; randomly initialised unless `checkpoint` is given."""

    def __init__(self, depth: int = 50, last_layer: int = 4, frozen_stages: int = -1, checkpoint: str | None = None):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"unknown ResNet depth {depth}; choose one of {sorted(DEPTHS)}")
        if not 1 <= last_layer <= 4:
            raise ValueError(f"last_layer must be 1..4, got {last_layer}")
        kind, blocks = DEPTHS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = _bn(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_ch = 64
        for i in range(last_layer):
            width = 64 * 2**i
            stage = [block(in_ch, width, stride=1 if i == 0 else 2)]
            in_ch = width * block.expansion
            stage += [block(in_ch, width) for _ in range(blocks[i] - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.last_layer = last_layer
        self.dim = in_ch
        self.stride = 2 ** (last_layer + 1)
        if checkpoint is not None:
            state = load_state_dict(checkpoint)
            load_strict(self, {k: v for k, v in state.items() if k in self.state_dict()}, checkpoint)
        self.freeze(frozen_stages)

    def stages(self) -> list[nn.Module]:
        """Stem (conv1 + bn1) then each kept stage, in order."""
        stem = nn.ModuleList([self.conv1, self.bn1])
        return [stem] + [getattr(self, f"layer{i + 1}") for i in range(self.last_layer)]

    def freeze(self, frozen_stages: int) -> None:
        """Stop gradients through the stem (0) and stages 1..`frozen_stages`; -1 trains everything."""
        for stage in self.stages()[: frozen_stages + 1]:
            stage.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.last_layer):
            x = getattr(self, f"layer{i + 1}")(x)
        return BackboneOutput(x)


__all__ = ["ResNet", "DEPTHS"]
