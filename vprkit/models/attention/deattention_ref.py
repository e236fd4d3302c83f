"""The original de-attention head (Choi et al., Pattern Recognition 2023; deepguider/deattention_with_stml_for_vpr).

Multi-scale context filters of 3x3, 5x5 and 7x7 (32, 32 and 20 channels, reflect padding), each conv -> ReLU ->
batch norm, on the L2-normalised features at full resolution, fused by a 1x1 conv -> ReLU -> batch norm into one
logit per location, then a sigmoid. The original's CRN ("existing attention" baseline) is the same head, so the
registry's `crn-ref` is this class too. The original multiplies the mask into the features (NetVLAD's
`mask_mode="features"`), where NetVLAD's per-location L2 normalisation cancels it.

Submodules carry the original's names (`crn_conv1` .. `crn_conv4`, each `.0` conv and `.2` batch norm), so an
original checkpoint's `deattention.*` / `crn_attention.*` weights load with `load_original`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# modules the original builds but never runs in forward; their weights are in its checkpoints
UNUSED_ORIGINAL = ("crn_downsample.", "crn_upsample.")


def _branch(inp: int, out: int, kernel: int, padding_mode: str) -> nn.Sequential:
    """conv -> ReLU -> batch norm, in the original's order."""
    conv = nn.Conv2d(inp, out, kernel, padding=kernel // 2, padding_mode=padding_mode)
    return nn.Sequential(conv, nn.ReLU(), nn.BatchNorm2d(out))


class DeAttentionRef(nn.Module):
    """Spatial mask in [0, 1] from multi-scale context of the L2-normalised features; features pass through."""

    def __init__(self, dim: int, widths: tuple[int, int, int] = (32, 32, 20), padding_mode: str = "reflect") -> None:
        super().__init__()
        self.crn_conv1 = _branch(dim, widths[0], 3, padding_mode)
        self.crn_conv2 = _branch(dim, widths[1], 5, padding_mode)
        self.crn_conv3 = _branch(dim, widths[2], 7, padding_mode)
        self.crn_conv4 = _branch(sum(widths), 1, 1, "zeros")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xn = F.normalize(x, p=2, dim=1)
        multi = torch.cat([self.crn_conv1(xn), self.crn_conv2(xn), self.crn_conv3(xn)], dim=1)
        return x, torch.sigmoid(self.crn_conv4(multi))

    def load_original(self, state: dict[str, torch.Tensor], prefix: str = "") -> None:
        """Load the original's weights: keys under `prefix` (e.g. "deattention."), its unused modules dropped."""
        own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        self.load_state_dict({k: v for k, v in own.items() if not k.startswith(UNUSED_ORIGINAL)})
