"""Extraction speed (images/s) and R@1 of each backbone precision (fp32, bf16, int8) on every dev set.

For each preset and data set, every precision describes the same batches in turn (interleaved), so the speed
ratios to fp32 come from one run under the same load; images/s counts the backbone forward only (what the
precision changes). Each precision fits its own aggregator on its own map features, as `vprkit index
--precision P` would, and R@1 comes from the project's exact inner-product search and metrics.
Needs the data folder: `python bench/extract_precision.py --data ../shared/data` (one thread by default, for
fair ratios on a shared machine).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from common import machine

from vprkit.data.groundtruth import load_ground_truth
from vprkit.data.images import list_images
from vprkit.evaluation.metrics import evaluate
from vprkit.features import extract
from vprkit.index import faiss_index
from vprkit.models.precision import PRECISIONS, supports

# name -> (map folder, query folder, ground truth spec, threshold, default image limit per side)
DATASETS = {
    "corridor": ("corridor/ref", "corridor/query", "index", 2, None),
    "gardenspoint_mini10": ("gardenspoint_mini10/ref", "gardenspoint_mini10/query", "index", 0, None),
    "essex3in1_thumbs": ("essex3in1_thumbs/ref", "essex3in1_thumbs/query", "index", 0, None),
    "nordland_dev300": ("nordland_64x32_dev/summer", "nordland_64x32_dev/winter", "index", 2, 300),
}


def describe_set(extractors: dict[str, extract.Extractor], root: Path, names: list[str], seconds: dict[str, float],
                 fit: str | None) -> dict[str, np.ndarray]:
    """Global descriptors of `names` at each precision, batch by batch in turn; forward time added to `seconds`.
    With `fit="own"` each extractor's aggregator is first fitted on its own local features of these images, with
    `fit="fp32"` all use the vocabulary fitted on fp32 features (isolates the backbone's error from k-means')."""
    first = next(iter(extractors.values()))
    local: dict[str, list[torch.Tensor]] = {p: [] for p in extractors}
    tokens: dict[str, list[torch.Tensor | None]] = {p: [] for p in extractors}
    for _, images, _ in first.batches(root, names):
        for p, ext in extractors.items():
            start = time.perf_counter()
            out = ext.local(images)
            seconds[p] += time.perf_counter() - start
            local[p].append(out.local)
            tokens[p].append(out.global_token)
    out_desc = {}
    for p, ext in extractors.items():
        if fit and ext.aggregator.needs_fit:
            if fit == "own" or p == "fp32":
                ext.fit_local(local[p])
            else:
                ext.aggregator.load_state(extractors["fp32"].aggregator.state())
        with torch.no_grad():
            out_desc[p] = np.concatenate([ext.aggregator(loc, tok).numpy() for loc, tok in zip(local[p], tokens[p])])
    return out_desc


def run(preset: str, data: Path, datasets: list[str], limit: int | None, vocabulary: str) -> None:
    """Print one table row per data set and precision."""
    conf0 = extract.get_conf(preset)
    probe_model = extract.Extractor(conf0).backbone
    precisions = [p for p in PRECISIONS if supports(probe_model, p)]
    skipped = sorted(set(PRECISIONS) - set(precisions))
    note = f" ({', '.join(skipped)}: not supported, no Linear layers)" if skipped else ""
    print(f"### {preset}, {vocabulary} vocabulary{note}")
    print("| data set | map / queries | precision | images/s | vs fp32 | R@1 | R@1 - fp32 | R@5 |")
    print("|---|---|---|---|---|---|---|---|")
    for ds in datasets:
        map_dir, q_dir, gt, thr, default_limit = DATASETS[ds]
        n = limit or default_limit
        m_names, q_names = (list_images(data / d)[:n] for d in (map_dir, q_dir))
        extractors = {p: extract.Extractor(extract.get_conf(preset, precision=p)) for p in precisions}
        seconds = dict.fromkeys(precisions, 0.0)
        m_desc = describe_set(extractors, data / map_dir, m_names, seconds, fit=vocabulary)
        q_desc = describe_set(extractors, data / q_dir, q_names, seconds, fit=None)
        truth = load_ground_truth(gt, q_names, m_names, thr)
        rows = {}
        for p in precisions:
            _, ids = faiss_index.MapIndex(faiss_index.build(m_desc[p]), {}).search(q_desc[p], 10)
            rows[p] = evaluate(ids, truth)
        for p in precisions:
            rate = (len(m_names) + len(q_names)) / seconds[p]
            r1 = rows[p]["R@1"]
            print(f"| {ds} | {len(m_names)} / {len(q_names)} | {p} | {rate:.2f} | {seconds['fp32'] / seconds[p]:.2f}x "
                  f"| {r1:.3f} | {r1 - rows['fp32']['R@1']:+.3f} | {rows[p]['R@5']:.3f} |", flush=True)
    print()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--presets", default="dinov2-vlad,mobilenetv2-gem")
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--limit", type=int, help="first N map and query images of every set (index-aligned)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: fair ratios on a shared machine)")
    p.add_argument("--vocabulary", choices=("own", "fp32"), default="own",
                   help="own: each precision fits its aggregator on its own features (as an index would); fp32: all "
                        "use the fp32 one, to separate the backbone's error from k-means' sensitivity")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    print(f"machine: {machine()}\n")
    for preset in args.presets.split(","):
        run(preset, Path(args.data), args.datasets.split(","), args.limit, args.vocabulary)


if __name__ == "__main__":
    main()
