"""Recall@1/5/10 of the global retrieval (vgg19-netvlad) and of Patch-NetVLAD re-ranking with each preset.

The reference presets (patch scores only, as the original) and vprkit's `+global` variants (fused with the
global score) side by side; a `+global` preset reuses its reference preset's patch features.

One run, one table per dataset: `python bench/patchnetvlad_recall.py --data ../shared/data`.
Images are resized for the patches to --resize (Nordland: --nordland-resize) instead of the presets'
640x480, and the performance presets are run at --performance-pcs dims: both to fit a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import machine
from recall_table import DATASETS, _first

from vprkit import api
from vprkit.evaluation.metrics import format_table
from vprkit.rerank import base
from vprkit.rerank.patchnetvlad import PatchNetVLAD
from vprkit.results import read_results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--presets", default="speed,storage,performance,speed+global,storage+global,performance+global")
    p.add_argument("--num-rerank", type=int, default=20)
    p.add_argument("--limit", type=int, default=200, help="first N map and query images of Nordland (index-aligned)")
    p.add_argument("--resize", default="[320,240]")
    p.add_argument("--nordland-resize", default="[256,128]")
    p.add_argument("--performance-pcs", type=int, default=512)
    p.add_argument("--set", nargs="*", default=["fit_max_images=40"], help="extra KEY=VALUE for every preset")
    args = p.parse_args()
    from vprkit.config import parse_overrides

    root, extra = Path(args.data).resolve(), parse_overrides(args.set)  # absolute: --limit links into it
    print(f"machine: {machine()}\n")
    for ds in args.datasets.split(","):
        map_dir, q_dir, gt, thr = DATASETS[ds]
        limit = args.limit if ds.startswith("nordland") else None
        resize = json.loads(args.nordland_resize if ds.startswith("nordland") else args.resize)
        with tempfile.TemporaryDirectory() as tmp:
            m, q = (_first(root / d, Path(tmp) / d, limit) for d in (map_dir, q_dir))
            idx = api.index_map(m, Path(tmp) / "idx", preset="vgg19-netvlad")
            res = read_results(api.localize(idx, q, Path(tmp) / "res", top_k=args.num_rerank, gt=gt, threshold=thr))
            rows = {"global vgg19-netvlad": res["metrics"]}
            for preset in args.presets.split(","):
                over = {"resize": resize, "backbone_cache": str(Path(tmp) / "backbone.h5"), **extra}
                if preset.startswith("performance"):  # same 8 dims per PQ byte as the -pq presets
                    over["num_pcs"] = args.performance_pcs
                    if preset.endswith("-pq"):
                        over["pq_bytes"] = args.performance_pcs // 8
                conf = PatchNetVLAD.CONFIG.resolve(preset, **over)
                out_dir = Path(tmp) / "res" / f"rerank-{preset}"
                shared = Path(tmp) / "res" / f"rerank-{preset.removesuffix('+global')}" / "cache"
                if preset.endswith("+global") and shared.is_dir():  # same patch features: reuse them
                    out_dir.mkdir(parents=True)
                    (out_dir / "cache").symlink_to(shared)
                out = read_results(base.main(conf, Path(tmp) / "res", out_dir, gt=gt, threshold=thr,
                                             num_rerank=args.num_rerank))
                rows[f"patchnetvlad {preset}"] = out["metrics"]
                print(f"  {ds} {preset}: {json.dumps({k: out['metrics'][k] for k in ('R@1', 'R@5', 'R@10')})}",
                      flush=True)
        print(f"### {ds} ({res['num_map']} map / {res['num_queries']} queries, gt {gt} +-{thr}, "
              f"top-{args.num_rerank} re-ranked, patches at {resize[0]}x{resize[1]})")
        print(format_table(rows, keys=("R@1", "R@5", "R@10")) + "\n", flush=True)


if __name__ == "__main__":
    main()
