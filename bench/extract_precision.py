"""Extraction speed (images/s) and R@1 of each backbone precision (fp32, bf16, int8) on every dev set.

For each preset and data set, every precision describes the same batches in turn (interleaved), so the speed
ratios to fp32 come from one run under the same load; images/s counts the backbone forward only (what the
precision changes). R@1 comes from the project's exact inner-product search and metrics, with each precision's
aggregator fitted on its own map features, as `vprkit index --precision P` does, and (presets with a vocabulary)
with the fp32 one shared by all, which separates the backbone's error from k-means' sensitivity.
Where int8 is supported, a reference row gives torch's default dynamic int8 (every Linear, per-tensor weight
scales, 7-bit activations), what vprkit's int8 was before its layers and scales were chosen.
Needs the data folder: `python bench/extract_precision.py --data ../shared/data` (one thread by default, for
fair ratios on a shared machine).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from common import machine

from vprkit.data.groundtruth import load_ground_truth
from vprkit.data.images import list_images
from vprkit.evaluation.metrics import evaluate
from vprkit.features import extract
from vprkit.index import faiss_index
from vprkit.models.precision import PRECISIONS, Int8Linear, full_range_int8, supports

TORCH_INT8 = "int8 torch default"  # the int8 vprkit first shipped, kept as a reference row

# name -> (map folder, query folder, ground truth spec, threshold, default image limit per side)
DATASETS = {
    "corridor": ("corridor/ref", "corridor/query", "index", 2, None),
    "gardenspoint_mini10": ("gardenspoint_mini10/ref", "gardenspoint_mini10/query", "index", 0, None),
    "essex3in1_thumbs": ("essex3in1_thumbs/ref", "essex3in1_thumbs/query", "index", 0, None),
    "nordland_dev300": ("nordland_64x32_dev/summer", "nordland_64x32_dev/winter", "index", 2, 300),
}


Outputs = list[tuple[torch.Tensor, torch.Tensor | None]]  # per batch: local features, global token


def backbone_outputs(extractors: dict[str, extract.Extractor], root: Path, names: list[str],
                     seconds: dict[str, float]) -> dict[str, Outputs]:
    """Backbone outputs of `names` at each precision, batch by batch in turn; forward time added to `seconds`."""
    first = next(iter(extractors.values()))
    outputs: dict[str, Outputs] = {p: [] for p in extractors}
    for _, images, _ in first.batches(root, names):
        for p, ext in extractors.items():
            start = time.perf_counter()
            out = ext.local(images)
            seconds[p] += time.perf_counter() - start
            outputs[p].append((out.local, out.global_token))
    return outputs


def fit_vocabularies(extractors: dict[str, extract.Extractor], maps: dict[str, Outputs], vocabulary: str) -> None:
    """`own`: each aggregator fitted on its own precision's map features (as `vprkit index --precision P` does);
    `fp32`: all use the one fitted on fp32 features (separates the backbone's error from k-means' sensitivity)."""
    for p, ext in extractors.items():
        if vocabulary == "own" or p == "fp32":
            ext.fit_local([loc for loc, _ in maps[p]])
        else:
            ext.aggregator.load_state(extractors["fp32"].aggregator.state())


def descriptors(ext: extract.Extractor, outputs: Outputs) -> np.ndarray:
    """Global descriptors from backbone outputs with the extractor's (fitted) aggregator."""
    with torch.no_grad():
        return np.concatenate([ext.aggregator(loc, tok).numpy() for loc, tok in outputs])


def torch_default_int8(conf: dict) -> extract.Extractor:
    """An fp32 extractor whose backbone gets torch's default dynamic int8 (every Linear, one weight scale per
    tensor, 7-bit activations): what `--precision int8` did before its layers and scales were chosen."""
    from torch import nn
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import quantize_dynamic

    ext = extract.Extractor(conf)
    with warnings.catch_warnings():  # torch flags the eager quantization API as deprecated
        warnings.simplefilter("ignore")
        quantize_dynamic(ext.backbone, {nn.Linear}, dtype=torch.qint8, inplace=True)
    for name, module in list(ext.backbone.named_modules()):
        if isinstance(module, DynamicLinear):
            parent, _, child = name.rpartition(".")
            setattr(ext.backbone.get_submodule(parent), child, Int8Linear(module, full_range=False))
    return ext


def run(preset: str, data: Path, datasets: list[str], limit: int | None) -> None:
    """Print one table row per data set and precision; presets with a vocabulary get R@1 with each precision's
    own vocabulary and with the fp32 one, from the same backbone outputs."""
    conf0 = extract.CONFIG.resolve(preset)
    probe_ext = extract.Extractor(conf0)
    precisions = [p for p in PRECISIONS if supports(probe_ext.backbone, p)]
    vocabularies = ("own", "fp32") if probe_ext.aggregator.needs_fit else ("own",)
    skipped = sorted(set(PRECISIONS) - set(precisions))
    note = f" ({', '.join(skipped)}: not supported, no Linear layers)" if skipped else ""
    extra = " | R@1, fp32 vocabulary | - fp32" if len(vocabularies) > 1 else ""
    print(f"### {preset}{note}")
    print(f"| data set | map / queries | precision | images/s | vs fp32 | R@1 | R@1 - fp32 | R@5{extra} |")
    print("|---" * (8 + 2 * (len(vocabularies) - 1)) + "|")
    for ds in datasets:
        map_dir, q_dir, gt, thr, default_limit = DATASETS[ds]
        n = limit or default_limit
        m_names, q_names = (list_images(data / d)[:n] for d in (map_dir, q_dir))
        extractors = {p: extract.Extractor(extract.CONFIG.resolve(preset, precision=p)) for p in precisions}
        if "int8" in precisions:
            extractors[TORCH_INT8] = torch_default_int8(extract.CONFIG.resolve(preset))
        seconds = dict.fromkeys(extractors, 0.0)
        maps = backbone_outputs(extractors, data / map_dir, m_names, seconds)
        queries = backbone_outputs(extractors, data / q_dir, q_names, seconds)
        truth = load_ground_truth(gt, q_names, m_names, thr)
        rows: dict[str, dict[str, dict]] = {}
        for vocabulary in vocabularies:
            fit_vocabularies(extractors, maps, vocabulary)
            for p, ext in extractors.items():
                index = faiss_index.MapIndex(faiss_index.build(descriptors(ext, maps[p])), {"names": m_names})
                _, ids = index.search(descriptors(ext, queries[p]), 10)
                rows.setdefault(p, {})[vocabulary] = evaluate(ids, truth)
        fp32 = rows["fp32"]
        for p, row in rows.items():
            rate = (len(m_names) + len(q_names)) / seconds[p]
            cells = [f"{row[v]['R@1']:.3f} | {row[v]['R@1'] - fp32[v]['R@1']:+.3f}" for v in vocabularies]
            cells[0] += f" | {row['own']['R@5']:.3f}"
            print(f"| {ds} | {len(m_names)} / {len(q_names)} | {p} | {rate:.2f} | {seconds['fp32'] / seconds[p]:.2f}x "
                  f"| {' | '.join(cells)} |", flush=True)
    print()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--presets", default="dinov2-vlad,mobilenetv2-gem")
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--limit", type=int, help="first N map and query images of every set (index-aligned)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: fair ratios on a shared machine)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    bits = "8 bits (the CPU has VNNI)" if full_range_int8() else "7 bits (no VNNI)"
    print(f"machine: {machine()}; int8 activations: {bits}\n")
    for preset in args.presets.split(","):
        run(preset, Path(args.data), args.datasets.split(","), args.limit)


if __name__ == "__main__":
    main()
