"""SeqSLAM's image descriptor: a greyscale thumbnail whose patches are each normalised to zero mean, unit std.

Milford & Wyeth (2012) / OpenSeqSLAM: grey level, downsample to 64x32 (Lanczos), z-normalise every 8x8 patch.
OpenSeqSLAM then rounds each value to an integer around 127 (uint8 storage); we keep the float z-scores.
No learned weights: the "local features" are the normalised pixels themselves (one channel).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .base import Backbone, BackboneOutput


def patch_normalise(grey: np.ndarray, patch: int) -> np.ndarray:
    """Each `patch` x `patch` block minus its mean, over its sample std (flat blocks become 0); trailing rows or
    columns that do not fill a block are normalised as smaller blocks."""
    out = np.zeros_like(grey, dtype=np.float32)
    for y in range(0, grey.shape[0], patch):
        for x in range(0, grey.shape[1], patch):
            block = grey[y:y + patch, x:x + patch].astype(np.float64)
            std = block.std(ddof=1) if block.size > 1 else 0.0
            if std > 0:
                out[y:y + patch, x:x + patch] = (block - block.mean()) / std
    return out


class Pixels(Backbone):
    """Patch-normalised greyscale thumbnail of `width` x `height` pixels (no network)."""

    stride = 1
    dim = 1

    def __init__(self, width: int = 64, height: int = 32, patch: int = 8):
        super().__init__()
        self.size, self.patch = (width, height), patch

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """RGB image -> (1, height, width) patch-normalised grey levels."""
        grey = np.asarray(image.convert("L").resize(self.size, Image.Resampling.LANCZOS), dtype=np.float32)
        return torch.from_numpy(patch_normalise(grey, self.patch))[None]

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        return BackboneOutput(local=x)
