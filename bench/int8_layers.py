"""Which int8 scheme for DINOv2: agreement with fp32 and speed of int8 variants of the default backbone (block 8's
value facet), per Linear kind and per quantization scheme, interleaved in one run.

A variant is `kind=scheme` pairs joined by `+` (kinds: qkv, proj, fc1, fc2 of the blocks that run whole;
unlisted kinds stay fp32). Schemes: `t7` one weight scale per tensor, 7-bit activations (torch's default);
`c7` per-channel weight scales, 7-bit activations; `c8` per-channel, 8-bit activations (vprkit's int8 on VNNI CPUs);
`tok` per-channel weights and one activation scale per token (torch._int_mm; this bench only). Agreement: mean
per-location cosine of the local features to fp32, on 4 images of each set.
`python bench/int8_layers.py --data ../shared/data` (one thread).
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from pathlib import Path

import torch
from common import machine
from torch import nn

from vprkit.data.images import list_images
from vprkit.features import extract
from vprkit.models.precision import Int8Linear, agreement, int8_targets

KINDS = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
SETS = ("corridor/ref", "essex3in1_thumbs/query", "nordland_64x32_dev/winter")
ALL = "+".join(f"{k}={{0}}" for k in KINDS)
DEFAULT_VARIANTS = [ALL.format("t7"), ALL.format("c7"), ALL.format("c8"), ALL.format("tok"),
                    *(f"{k}={s}" for s in ("c7", "tok") for k in KINDS),
                    "fc1=c8+fc2=c8", "qkv=c8+proj=c8+fc1=c8", "qkv=c8+proj=c8+fc1=tok+fc2=tok"]


class TokenInt8Linear(nn.Module):
    """int8 Linear with one activation scale per token (row) and per output channel for weights (symmetric)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach()
        scale = w.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127
        self.wq = torch.round(w / scale).to(torch.int8).t().contiguous()
        self.w_scale, self.b = scale.t().contiguous(), linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        scale = rows.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127
        y = torch._int_mm(torch.round(rows / scale).to(torch.int8), self.wq).float()
        return y.mul_(scale).mul_(self.w_scale).add_(self.b).reshape(*x.shape[:-1], -1)


def variant(base: nn.Module, spec: str) -> nn.Module:
    """A copy of `base` with each listed kind quantized with its scheme, in the blocks int8 would quantize."""
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    model, targets = copy.deepcopy(base), int8_targets(base)
    for part in filter(None, spec.split("+")):
        kind, scheme = part.split("=")
        names = [n for n in targets if n.endswith(KINDS[kind])]
        if scheme == "tok":
            replace = {n: TokenInt8Linear(model.get_submodule(n)) for n in names}
        else:
            qconfig = default_dynamic_qconfig if scheme == "t7" else per_channel_dynamic_qconfig
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_dynamic(model, dict.fromkeys(names, qconfig), inplace=True)
            replace = {n: Int8Linear(model.get_submodule(n), full_range=scheme == "c8") for n in names}
        for name, module in replace.items():
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module)
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help="comma-separated variant specs")
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {machine()}\n")
    ext = extract.Extractor(extract.CONFIG.resolve("dinov2-vlad"))
    batches = []
    for folder in SETS:
        names = list_images(Path(args.data) / folder)
        batches.append(next(ext.batches(Path(args.data) / folder, names[:: len(names) // 4][:4]))[1])
    models = {"fp32": ext.backbone} | {v: variant(ext.backbone, v) for v in args.variants.split(",")}
    seconds, agree = dict.fromkeys(models, 0.0), {v: [] for v in models}
    with torch.no_grad():
        for x in batches:
            outs = {}
            for v, model in models.items():  # interleaved: each batch through every variant in turn
                start = time.perf_counter()
                outs[v] = model(x).local
                seconds[v] += time.perf_counter() - start
            for v in models:
                agree[v].append(agreement(outs["fp32"], outs[v]))
    print("| variant | " + " | ".join(f"agreement {s.split('/')[0]}" for s in SETS) + " | vs fp32 |")
    print("|---" * (len(SETS) + 2) + "|")
    for v in models:
        cells = " | ".join(f"{a:.4f}" for a in agree[v])
        print(f"| {v} | {cells} | {seconds['fp32'] / seconds[v]:.2f}x |")


if __name__ == "__main__":
    main()
