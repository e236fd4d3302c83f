"""Cost of each released model (`vprkit models`) on this CPU: extraction time per image at fp32 / bf16 / int8 (where
int8 applies: backbones with Linear layers), descriptor bytes, and the size of an exact index per million images.

Random weights (cost does not depend on them): each preset's backbone + aggregator are built from its zoo entry
and run on one image of the authors' test-time size (the `--full-size` for presets that take images as given),
batch 1, precisions interleaved, the median of `--repeats` timed runs after a warm-up, forward + aggregation.
`python bench/zoo_cost.py [--presets a b] [--repeats 3] [--threads 1]` (one thread by default: a shared machine).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from common import machine

from vprkit.aggregators import get_aggregator
from vprkit.models import MissingWeightsError, get_backbone, zoo
from vprkit.models import precision as precisions

BYTES = 4  # float32: the descriptor stored in map_features.h5 and in the exact (Flat) index


def size_of(entry: zoo.ZooEntry, full: tuple[int, int]) -> tuple[int, int]:
    """The input the authors run at: their fixed resize, else `full` (images as given)."""
    return tuple(entry.resize) if entry.resize else full


def models(entry: zoo.ZooEntry) -> dict[str, tuple[torch.nn.Module, torch.nn.Module]]:
    """The preset's (backbone, aggregator) at each precision it supports, random weights, eval mode."""
    backbone, aggregator = get_backbone(**entry.backbone).eval(), get_aggregator(**entry.aggregator).eval()
    out = {}
    for p in precisions.PRECISIONS:
        if precisions.supports(backbone, p):
            out[p] = (precisions.prepare(copy.deepcopy(backbone), p), aggregator)
    return out


@torch.no_grad()
def seconds_per_image(nets: dict, size: tuple[int, int], repeats: int) -> dict[str, float]:
    """Median forward + aggregation time of one image at each precision, the precisions interleaved."""
    x = torch.randn(1, 3, *size)
    times: dict[str, list[float]] = {p: [] for p in nets}
    for r in range(repeats + 1):
        for p, (backbone, aggregator) in nets.items():
            start = time.perf_counter()
            out = precisions.forward_at(backbone, x, p)
            aggregator(out.local, out.global_token)
            if r:  # the first round warms up
                times[p].append(time.perf_counter() - start)
    return {p: statistics.median(t) for p, t in times.items()}


def row(name: str, entry: zoo.ZooEntry, full: tuple[int, int], repeats: int) -> str:
    """One markdown table row for `name`."""
    try:
        nets = models(entry)
    except (MissingWeightsError, KeyError, ValueError) as exc:
        return f"| {name} | not built here: {exc} |"
    backbone, aggregator = nets["fp32"]
    params = sum(p.numel() for m in (backbone, aggregator) for p in m.parameters()) / 1e6
    secs = seconds_per_image(nets, size_of(entry, full), repeats)
    cell = {p: f"{secs[p]:.2f}" if p in secs else "n/a" for p in precisions.PRECISIONS}
    desc = entry.dim * BYTES
    h, w = size_of(entry, full)
    return (f"| {name} | {h}x{w}{'' if entry.resize else ' (as given)'} | {params:.1f} | {cell['fp32']} | "
            f"{cell['bf16']} | {cell['int8']} | {entry.dim} | {desc:,} | {desc * 1e6 / 1e9:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="*", help="default: every zoo preset")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--full-size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"),
                        help="input for presets that take images as given (CosPlace, EigenPlaces, MegaLoc)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    table = zoo.entries()
    print(machine())
    print("| preset | input | params (M) | fp32 s/img | bf16 s/img | int8 s/img | dim | descriptor bytes | "
          "exact index GB / 1M images |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.presets or sorted(table):
        print(row(name, table[name], tuple(args.full_size), args.repeats), flush=True)


if __name__ == "__main__":
    main()
