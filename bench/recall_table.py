"""Recall@1/5/10 of every preset on Corridor, Gardens Point mini and Nordland dev (one run, one table).

Needs the data folder (the shared data, or your own copy): `python bench/recall_table.py --data ../shared/data`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import machine

from vprkit import api
from vprkit.data.images import list_images
from vprkit.evaluation.metrics import format_table
from vprkit.features.extract import CONFS
from vprkit.results import read_results

KEYS = ("R@1", "R@5", "R@10")
# name -> (map folder, query folder, ground truth spec, threshold)
DATASETS = {
    "corridor": ("corridor/ref", "corridor/query", "index", 2),
    "gardenspoint_mini10": ("gardenspoint_mini10/ref", "gardenspoint_mini10/query", "index", 0),
    "nordland_dev": ("nordland_64x32_dev/summer", "nordland_64x32_dev/winter", "index", 2),
}


def _first(src: Path, dst: Path, limit: int | None) -> Path:
    """`src`, or a folder of links to its first `limit` images (keeps index alignment of the ground truth)."""
    if limit is None:
        return src
    dst.mkdir(parents=True)
    for name in list_images(src)[:limit]:
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        (dst / name).symlink_to((src / name).resolve())
    return dst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--presets", default=",".join(CONFS))
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--limit", type=int, help="use only the first N map and query images of each set (index-aligned)")
    args = p.parse_args()
    root = Path(args.data)
    print(f"machine: {machine()}\n")
    for ds in args.datasets.split(","):
        map_dir, q_dir, gt, thr = DATASETS[ds]
        n_map, n_q = (len(list_images(root / d)[: args.limit]) for d in (map_dir, q_dir))
        print(f"### {ds} ({n_map} map / {n_q} queries, gt {gt} +-{thr})")
        print(format_table({}, keys=KEYS), flush=True)
        for preset in args.presets.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                m, q = (_first(root / d, Path(tmp) / d, args.limit) for d in (map_dir, q_dir))
                idx = api.index_map(m, Path(tmp) / "idx", preset=preset)
                res = read_results(api.localize(idx, q, Path(tmp) / "res", top_k=10, gt=gt, threshold=thr))
            row = format_table({preset: res["metrics"]}, keys=KEYS).splitlines()[-1]
            print(row, flush=True)
        print()


if __name__ == "__main__":
    main()
