"""Recall@1/5/10 of SegVLAD presets (the original's `segvlad-ref`, vprkit's `segvote-slic`) vs the global
dinov2-vlad preset, one run.

Needs the data folder: `python bench/segvlad_recall.py --data ../shared/data`. `--limits` cuts a set to its
first N map and query images (index-aligned, so its ground truth is unchanged). A preset whose scoring is
`reference` (run-wide min-max) is also queried with the query-independent `votes` scoring, same index.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import machine
from recall_table import DATASETS, _first

from vprkit import api
from vprkit.evaluation.metrics import format_table
from vprkit.results import read_results
from vprkit.segvlad import api as seg_api

SETS = {**DATASETS, "essex3in1_thumbs": ("essex3in1_thumbs/ref", "essex3in1_thumbs/query", "index", 0)}


def _value(text: str):
    """A --presets override value: JSON (false, 4096, [12, 48]) or else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--datasets", default="corridor,gardenspoint_mini10,essex3in1_thumbs,nordland_dev")
    p.add_argument("--presets", default="segvlad-ref,segvote-slic",
                   help="SegVLAD presets, comma-separated; PRESET+KEY=VALUE+... overrides keys")
    p.add_argument("--orders", default="3", help="SuperSegment orders, comma-separated")
    p.add_argument("--limits", default="nordland_dev=200", help="DATASET=N,... first N map and query images")
    p.add_argument("--global-preset", default="dinov2-vlad", help="'none' skips the global baseline")
    args = p.parse_args()
    root = Path(args.data)
    limits = {k: int(v) for k, v in (item.split("=") for item in args.limits.split(",") if item)}
    print(f"machine: {machine()}\n")
    for ds in args.datasets.split(","):
        map_dir, q_dir, gt, thr = SETS[ds]
        limit = limits.get(ds)
        rows, notes = {}, []
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            m, q = (_first(root / d, tmp / d, limit) for d in (map_dir, q_dir))
            if args.global_preset != "none":
                idx = api.index_map(m, tmp / "global", preset=args.global_preset)
                res = read_results(api.localize(idx, q, tmp / "res-global", top_k=10, gt=gt, threshold=thr))
                rows[f"{args.global_preset} (global)"] = res["metrics"]
            for preset in args.presets.split(","):
                for order in map(int, args.orders.split(",")):
                    t0 = time.perf_counter()
                    base, *sets = preset.split("+")
                    overrides = {k: _value(v) for k, v in (item.split("=", 1) for item in sets)}
                    seg_idx = seg_api.index_map(m, tmp / f"seg-{preset}-{order}", preset=base, order=order,
                                                **overrides)
                    t1 = time.perf_counter()
                    # the second scoring reuses the query segments of the first
                    res_dir = tmp / f"res-{preset}-{order}".replace("=", "-")
                    r = read_results(seg_api.localize(seg_idx, q, res_dir, top_k=10, gt=gt, threshold=thr))
                    t2 = time.perf_counter()
                    man = json.loads((seg_idx / "manifest.json").read_text())
                    name = f"{preset} order {order}"
                    rows[f"{name}, scoring {r['scoring']}"] = r["metrics"]
                    if r["scoring"] == "reference":
                        r = read_results(seg_api.localize(seg_idx, q, res_dir, top_k=10, gt=gt, threshold=thr,
                                                          scoring="votes"))
                        rows[f"{name}, scoring votes"] = r["metrics"]
                    notes.append(f"{name} ({man['conf']['segmenter']['name']}): "
                                 f"{man['num_segments'] / len(man['names']):.1f} segments/map image, "
                                 f"dim {man['dim']}, index {t1 - t0:.0f} s, query {t2 - t1:.0f} s (incl. extraction)")
        print(f"#### {ds} ({r['num_map']} map / {r['num_queries']} queries, gt {gt} +-{thr})")
        print(format_table(rows, keys=("R@1", "R@5", "R@10")))
        print("\n".join(notes) + "\n", flush=True)


if __name__ == "__main__":
    main()
