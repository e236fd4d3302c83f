"""Deterministic random weights for the DINOv2 zoo fixtures (SALAD, BoQ-DINOv2, MegaLoc).

A ViT-B checkpoint is 350-900 MB, too large for git, and the authors' DINOv2 depth is fixed by their hub code, so
the fixture weights are rebuilt here from a seed: one `torch.Generator` draws `torch.randn(shape)` for every key of
the authors' state dict in their order (tests/data/zoo/<preset>/keys.json), scaled by `_scale` so a 12-block ViT
stays numerically tame. tests/data/zoo/make_vit_fixtures.py fed exactly these tensors to the authors' code (same
function, same seed); `state_sha256` over names, shapes and bytes proves it (recorded in SOURCE.json).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ZOO_DATA = Path(__file__).with_name("data") / "zoo"
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _scale(name: str, x: torch.Tensor) -> torch.Tensor:
    """Standard-normal draw -> a plausible value for the parameter `name` (LayerNorms randomised too)."""
    leaf = name.rsplit(".", 1)[-1]
    if x.ndim == 0:  # SALAD's dustbin score
        return 1.0 + 0.5 * x
    if leaf in ("pos_embed", "cls_token", "mask_token", "queries"):
        return x
    if leaf == "gamma":  # LayerScale
        return 0.1 * x
    if x.ndim == 1 and leaf == "weight":  # LayerNorm scale
        return 1.0 + 0.2 * x
    if name == "aggregator.linear.weight":  # MegaLoc's projection reads an L2-normalised vector (norm 1)
        return x
    if leaf.endswith("bias"):
        return 0.1 * x
    return x / math.sqrt(x[0].numel())  # Linear / Conv: unit-variance outputs for unit-variance inputs


def read_keys(preset: str) -> list[tuple[str, tuple[int, ...]]]:
    """The authors' state-dict keys and shapes, in their order."""
    rows = json.loads((ZOO_DATA / preset / "keys.json").read_text())
    return [(name, tuple(shape)) for name, shape in rows]


def random_state(keys: list[tuple[str, tuple[int, ...]]], seed: int) -> dict[str, torch.Tensor]:
    """One seeded generator, one draw per key in the given order."""
    gen = torch.Generator().manual_seed(seed)
    return {name: _scale(name, torch.randn(shape, generator=gen)).contiguous() for name, shape in keys}


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """Hash of names, shapes and float32 bytes in order (independent of the file format that stores them)."""
    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def tensor_sha256(x: torch.Tensor) -> str:
    """Hash of a float32 tensor's shape and bytes."""
    return hashlib.sha256(f"{tuple(x.shape)}".encode() + x.float().contiguous().numpy().tobytes()).hexdigest()


def to_input(images_u8: np.ndarray, tensor_resize: list[int] | None = None) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float, exactly as torchvision computes ToTensor, then (BoQ) Resize of the
    float tensor (bicubic, antialiased), then Normalize."""
    x = torch.from_numpy(images_u8).permute(0, 3, 1, 2).contiguous().float().div(255)
    if tensor_resize is not None:
        x = F.interpolate(x, size=tuple(tensor_resize), mode="bicubic", align_corners=False, antialias=True)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return x.sub(mean).div(std)


def save_released(state: dict[str, torch.Tensor], path: Path) -> Path:
    """Write `state` in the authors' released format, chosen by file name (`.safetensors` or a torch pickle)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path
