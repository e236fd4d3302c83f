"""Reduced-precision backbone inference (bf16 autocast, int8 dynamic quantization) and a per-machine probe.

Extraction dominates indexing time on a CPU; bf16 kernels (AVX512-BF16 / AMX) and int8 kernels (VNNI) run
the same network faster, at a small cost in accuracy that differs per model and per machine. The precision
changes the descriptors, so it is part of the descriptor's identity (the extractor's model key).

- bf16: the forward runs under `torch.autocast` (weights stay fp32, matmuls and convolutions run in bf16), the
  model in channels-last layout (oneDNN's fast path for bf16 convolutions); outputs come back as fp32.
- int8: dynamic quantization of the Linear layers the forward runs (`int8_targets`; a backbone exempts the others):
  int8 weights with one scale per output channel, activations quantized per batch with 8 bits on CPUs with VNNI
  (7 bits elsewhere). On DINOv2-S this agrees 0.997-0.998 with fp32 where torch's default (per-tensor weights,
  7 bits) agrees 0.980-0.983 (bench/int8_layers.py). Convolutions stay fp32: torch's dynamic int8 Conv2d gives
  wrong features (cosine 0.27 to fp32 on MobileNetV2) and is slower, and static int8 needs calibration data, so a
  backbone without Linear layers refuses int8.
- auto: `probe` times each precision on a dummy input once per machine, model and input size, and picks the
  fastest whose features agree with fp32 (mean per-location cosine >= AGREEMENT); the result is cached.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .base import Backbone, BackboneOutput, cache_dir

logger = logging.getLogger("vprkit")

PRECISIONS = ("fp32", "bf16", "int8")
CHOICES = (*PRECISIONS, "auto")
# How a precision is named in descriptor keys and probe caches: the int8 scheme changed (per-channel weights,
# exempt layers, 8-bit activations), so keys of the first scheme's files ("int8") no longer match.
KEYS = {"int8": "int8-v2"}
# Mean per-location cosine of the local features to fp32 that `auto` accepts. On the probe's noise input (DINOv2-S
# at 322 px) bf16 scores 0.99995 and int8 0.9973 with 8-bit activations, both keeping R@1 within 0.01 of fp32 on
# the dev sets (docs/precision.md); 7-bit activations score 0.9889 (torch's default scheme 0.982, which lost up to
# 0.014 R@1), so CPUs without VNNI do not get int8 from auto. MobileNetV2 bf16 scores 0.999; dynamic int8
# convolutions 0.32.
AGREEMENT = 0.995
PROBE_REPEATS = 3


def check(precision: str) -> str:
    """`precision` if it is a known name, else a clear error listing them."""
    if precision not in CHOICES:
        raise ValueError(f"unknown precision '{precision}'; choose one of {', '.join(CHOICES)}")
    return precision


def full_range_int8() -> bool:
    """Whether int8 activations may use all 8 bits: on CPUs with VNNI (AVX512-VNNI / AVX-VNNI) fbgemm sums uint8 x
    int8 products in int32. Without it, products are summed pairwise in int16, which 8-bit activations can
    saturate; torch's default therefore keeps 7 bits there (`reduce_range`), at four times the squared error."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


class Int8Linear(nn.Module):
    """A dynamically quantized Linear: int8 weights with one scale per output channel, activations quantized per
    batch with 8 bits where `full_range` (else 7). It still exposes float `weight` / `bias` (the dequantized int8
    values), so code that reads them directly computes with the same weights as the forward."""

    def __init__(self, quantized: nn.Module, full_range: bool) -> None:
        super().__init__()
        self.quantized, self.full_range = quantized, full_range

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = self.quantized._packed_params._packed_params
        return torch.ops.quantized.linear_dynamic(x, packed, reduce_range=not self.full_range)

    @property
    def weight(self) -> torch.Tensor:
        return self.quantized.weight().dequantize()

    @property
    def bias(self) -> torch.Tensor | None:
        return self.quantized.bias()


def int8_targets(backbone: nn.Module) -> list[str]:
    """Names of the Linear layers int8 quantizes: all but those the backbone exempts (`Backbone.int8_exempt`)."""
    exempt = backbone.int8_exempt() if isinstance(backbone, Backbone) else set()
    return [n for n, m in backbone.named_modules() if isinstance(m, nn.Linear) and n not in exempt]


def quantize_int8(backbone: nn.Module) -> nn.Module:
    """`backbone` (changed in place) with its `int8_targets` replaced by `Int8Linear`s."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    targets, full_range = int8_targets(backbone), full_range_int8()
    with warnings.catch_warnings():  # torch flags the eager quantization API as deprecated; it still works
        warnings.simplefilter("ignore")
        quantize_dynamic(backbone, dict.fromkeys(targets, per_channel_dynamic_qconfig), inplace=True)
    for name in targets:
        parent, _, child = name.rpartition(".")
        holder = backbone.get_submodule(parent)
        setattr(holder, child, Int8Linear(getattr(holder, child), full_range))
    return backbone


def supports(backbone: nn.Module, precision: str) -> bool:
    """Whether `backbone` can run at `precision` (int8 needs Linear layers to quantize)."""
    return precision != "int8" or bool(int8_targets(backbone))


def prepare(backbone: Backbone, precision: str) -> Backbone:
    """`backbone` (changed in place) set up to run at `precision` with `forward_at`."""
    if check(precision) == "auto":
        raise ValueError("precision 'auto' must be resolved with probe() before preparing a model")
    if not supports(backbone, precision):
        raise ValueError(f"int8 quantizes Linear layers and {type(backbone).__name__} has none (dynamic int8 "
                         "convolutions are wrong and slower in torch); use bf16 for convolutional backbones")
    if precision == "int8":
        if any(p.device.type != "cpu" for p in backbone.parameters()):
            raise ValueError("int8 (dynamic quantization) runs on the CPU only; use bf16 on other devices")
        quantize_int8(backbone)
    elif precision == "bf16":
        backbone.to(memory_format=torch.channels_last)
    return backbone


def forward_at(backbone: Backbone, x: torch.Tensor, precision: str) -> BackboneOutput:
    """The backbone's output for `x` computed at `precision` (a prepared model), returned as fp32."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = backbone(x)
    token = None if out.global_token is None else out.global_token.float()
    return BackboneOutput(out.local.float(), token)


def cpu_model() -> str:
    """The CPU's model name (what the probe's speed ranking depends on)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or platform.machine()


def agreement(ref: torch.Tensor, other: torch.Tensor) -> float:
    """Mean over locations of the cosine between two (B, C, h, w) feature maps."""
    return F.cosine_similarity(ref.flatten(2), other.flatten(2), dim=1).mean().item()


def probe(backbone: Backbone, model_conf: dict, size: tuple[int, int], threshold: float = AGREEMENT) -> dict:
    """Measure each precision once on this machine (cached) and pick the fastest that agrees with fp32.

    The cache file is keyed by CPU model, torch version and threads, `model_conf` and the input `size`
    (H, W); it holds the timings, agreements, the choice and the reason, which is logged.
    """
    key = {"cpu": cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "model": model_conf, "input": list(size), "threshold": threshold, "int8": KEYS["int8"]}
    path = cache_dir() / "precision" / (hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
                                        + ".json")
    if path.is_file():
        result = json.loads(path.read_text())
        logger.info("precision auto (cached in %s): %s", path, result["reason"])
        return result
    result = {"key": key, **measure(backbone, size, threshold)}
    _write_json(path, result)
    logger.info("precision auto: %s", result["reason"])
    return result


def measure(backbone: Backbone, size: tuple[int, int], threshold: float) -> dict:
    """Median seconds per forward (runs interleaved across precisions) and agreement with fp32 of each
    precision the backbone supports, then the choice and why."""
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    models = {p: prepare(copy.deepcopy(backbone), p) for p in PRECISIONS if supports(backbone, p)}
    with torch.no_grad():
        outs = {p: forward_at(m, x, p).local for p, m in models.items()}  # also the warm-up
        times: dict[str, list[float]] = {p: [] for p in models}
        for _ in range(PROBE_REPEATS):
            for p, m in models.items():
                start = time.perf_counter()
                forward_at(m, x, p)
                times[p].append(time.perf_counter() - start)
    seconds = {p: sorted(t)[len(t) // 2] for p, t in times.items()}
    agree = {p: agreement(outs["fp32"], o) for p, o in outs.items()}
    ok = [p for p in models if p == "fp32" or agree[p] >= threshold]  # fp32 is the reference: always eligible
    choice = min(ok, key=seconds.__getitem__)
    parts = [f"{p} {seconds[p] * 1000:.0f} ms ({seconds['fp32'] / seconds[p]:.2f}x fp32), cosine {agree[p]:.4f}"
             + ("" if p in ok else " (rejected)") for p in models]
    reason = f"chose {choice}, the fastest with cosine >= {threshold} to fp32: " + "; ".join(parts)
    return {"choice": choice, "seconds": seconds, "agreement": agree, "reason": reason}


def _write_json(path: Path, data: dict) -> None:
    """Write `data` to `path` atomically (a crash leaves the old file or none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)
