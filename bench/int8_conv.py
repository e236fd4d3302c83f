"""What int8 can do for a convolutional backbone on CPU with this torch: MobileNetV2 at fp32, bf16, static int8
(FX graph mode, calibrated) and dynamic int8 Conv2d; agreement with fp32 and ms/image, interleaved in one run.

Why vprkit offers bf16 but not int8 for CNNs (docs/precision.md). `python bench/int8_conv.py --data ../shared/data`
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

from vprkit.data.images import list_images, load_image, resize_to_stride
from vprkit.models import get_backbone
from vprkit.models.precision import agreement


class Trunk(nn.Module):
    """The backbone's conv trunk as a plain tensor -> tensor module (what FX can trace)."""

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def variants(trunk: nn.Module, calib: torch.Tensor) -> dict[str, tuple[nn.Module, bool]]:
    """name -> (module, run under bf16 autocast)."""
    from torch.ao.nn.quantized.dynamic import Conv2d as DynamicConv2d
    from torch.ao.quantization import default_dynamic_qconfig, get_default_qconfig_mapping, quantize_dynamic
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    static = prepare_fx(copy.deepcopy(trunk), get_default_qconfig_mapping("x86"), example_inputs=(calib[:1],))
    with torch.no_grad():
        static(calib)
    dynamic = quantize_dynamic(copy.deepcopy(trunk), {nn.Conv2d: default_dynamic_qconfig},
                               mapping={nn.Conv2d: DynamicConv2d})
    return {"fp32": (trunk, False),
            "bf16 + channels-last": (copy.deepcopy(trunk).to(memory_format=torch.channels_last), True),
            f"int8 static, FX x86 ({len(calib)} calibration images)": (convert_fx(static), False),
            "int8 dynamic Conv2d": (dynamic, False)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # torch flags the eager / FX quantization APIs as deprecated
    print(f"machine: {machine()}\n")
    model = get_backbone("mobilenetv2").eval()
    root = Path(args.data) / "corridor" / "ref"
    images = torch.stack([model.preprocess(resize_to_stride(load_image(root / n, 10**8), 320, model.stride))
                          for n in list_images(root)[:40]])
    calib, test = images[:20:2], images[21:40:4]  # disjoint images for calibration and measurement
    runs = variants(Trunk(copy.deepcopy(model.features)).eval(), calib)

    def forward(name: str, x: torch.Tensor) -> torch.Tensor:
        module, bf16 = runs[name]
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return module(x).float()

    ref = forward("fp32", test)
    agree = {name: agreement(ref, forward(name, test)) for name in runs}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name in runs:
            start = time.perf_counter()
            forward(name, test[:1])
            times[name].append(time.perf_counter() - start)
    med = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    print(f"MobileNetV2, {tuple(test.shape[2:])} px Corridor images, {len(test)} measured\n")
    print("| variant | agreement with fp32 | ms / image | vs fp32 |\n|---|---|---|---|")
    for name in runs:
        print(f"| {name} | {agree[name]:.3f} | {med[name] * 1000:.0f} | {med['fp32'] / med[name]:.2f}x |")


if __name__ == "__main__":
    main()
