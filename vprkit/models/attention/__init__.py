"""Attention modules placed between a backbone and NetVLAD, one small file each, chosen by name.

Every module maps features (B, C, h, w) to `(features, weight)`: the (possibly channel-reweighted)
features, same shape, and a spatial weight (B, 1, h, w) in [0, 1] or None. NetVLAD multiplies each
location's soft assignment by the weight (`mask_mode="assignment"`), or the features as the de-attention
code does (`mask_mode="features"`; see vprkit.aggregators.netvlad).

The `*-ref` modules are the de-attention code's forms, with its initialisation and parameter names. The last
layer of every other module starts at zero, so its gates start at a uniform sigmoid(0) = 0.5, which
NetVLAD's normalisations cancel: an attention model starts exactly as the k-means-initialised NetVLAD
and training moves it from there instead of from a random reweighting.
"""

from __future__ import annotations

from torch import nn

from ...registry import Registry

REGISTRY = Registry("attention module", __name__, {
    "crn": ".crn:CRN",
    "bam": ".bam:BAM",
    "cbam": ".cbam:CBAM",
    "se": ".se:SE",
    "deattention": ".deattention:DeAttention",
    # the de-attention paper's code (deepguider/deattention_with_stml_for_vpr), for its reference presets
    "crn-ref": ".deattention_ref:DeAttentionRef",
    "bam-ref": ".bam_ref:BAMRef",
    "deattention-ref": ".deattention_ref:DeAttentionRef",
    "se-ref": ".se_ref:SERef",
}, group="vprkit.attention")


def get_attention(name: str, dim: int, **conf) -> nn.Module:
    """Instantiate an attention module by registry name for `dim`-channel features."""
    return REGISTRY.create(name, dim, **conf)


def zero_init(layer: nn.Module) -> nn.Module:
    """Zero weight and bias (see the module docstring)."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def hidden(dim: int, reduction: int) -> int:
    """Bottleneck width of squeeze/excitation-style MLPs (at least 4 channels)."""
    return max(dim // reduction, 4)


__all__ = ["REGISTRY", "get_attention", "hidden", "zero_init"]
