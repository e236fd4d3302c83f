"""Does GCSA with a noisy position prior beat visual-only retrieval and visual-only GCSA? (Nordland dev)

Nordland dev: 2000 places, summer map, winter queries, same file name = same place; the place index
is the position along the route. Places 0-999 train GCSA, places 1000-1999 (a disjoint stretch of
the route) evaluate it. Query position priors are simulated (noise model printed with the table).

    python bench/gcsa_nordland.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import machine

from vprkit import api
from vprkit.data.groundtruth import load_ground_truth
from vprkit.data.images import list_images
from vprkit.data.sideinfo import load_sideinfo, noise_model, simulate_prior
from vprkit.evaluation import metrics
from vprkit.rerank import base as rerank_step
from vprkit.rerank.gcsa import GCSAReranker, order
from vprkit.results import load_retrieval, read_results
from vprkit.train import gcsa as train_gcsa

THRESHOLD = 2  # a map image is a positive within +-2 places


def _part(src: Path, dst: Path, lo: int, hi: int) -> Path:
    """A folder of links to images lo..hi-1 of `src` (sorted order), so index positions restart at 0."""
    if not dst.exists():
        dst.mkdir(parents=True)
        for name in list_images(src)[lo:hi]:
            (dst / name).symlink_to((src / name).resolve())
    return dst


def _retrieve(root: Path, work: Path, part: str, lo: int, hi: int, preset: str, resize: int, top_k: int) -> Path:
    """Index the summer part, query the winter part; returns the results folder."""
    m = _part(root / "summer", work / part / "summer", lo, hi)
    q = _part(root / "winter", work / part / "winter", lo, hi)
    idx = work / part / "index"
    if not idx.exists():
        api.index_map(m, idx, preset=preset, preprocessing={"resize_max": resize})
    res = work / part / "results"
    if not (res / "results.json").exists():
        api.localize(idx, q, res, top_k=top_k, gt="index", threshold=THRESHOLD)
    return res


def _prior_only(res: Path, sigma: float, seed: int) -> dict:
    """Baseline: the retrieved candidates sorted by distance to the noisy prior alone (no vision)."""
    r = load_retrieval(res)
    q = simulate_prior(load_sideinfo("index", r.q_names), sigma, seed).position
    m = load_sideinfo("index", r.m_names).position
    dist = np.abs(m[r.ids, 0] - q[:, :1])
    ids, _ = order(r.ids, -dist)
    return metrics.evaluate(ids, load_ground_truth("index", r.q_names, r.m_names, THRESHOLD))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "vprkit_bench_gcsa"),
                   help="folder for indexes, results and checkpoints (reused by reruns)")
    p.add_argument("--preset", default="dinov2-gem", help="global descriptor (the visual channel)")
    p.add_argument("--resize-max", type=int, default=126, help="long image side (the 64x32 images are upsampled)")
    p.add_argument("--sigma", type=float, default=3.0, help="std of the simulated query prior, in places")
    p.add_argument("--top-k", type=int, default=100)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for this small network "
                   "on a shared CPU)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    root, work = Path(args.data) / "nordland_64x32_dev", Path(args.work)
    print(f"machine: {machine()}")
    t0 = time.perf_counter()
    train_res = _retrieve(root, work, "train", 0, 1000, args.preset, args.resize_max, args.top_k)
    eval_res = _retrieve(root, work, "eval", 1000, 2000, args.preset, args.resize_max, args.top_k)
    t_retrieval = time.perf_counter() - t0
    rows, times = {}, {}
    for name, preset in (("GCSA visual affinities only", "visual"), ("GCSA visual + position", "position")):
        t = time.perf_counter()
        conf = train_gcsa.CONFIG.resolve(preset, query_prior_sigma=args.sigma, num_candidates=args.top_k,
                                   side={"position_scale": args.sigma})  # affinity scale = prior uncertainty
        tag = f"{preset}-sigma{args.sigma:g}"
        ckpt = train_gcsa.main(conf, train_res, work / f"train-{tag}", gt="index", map_sideinfo="index",
                               query_sideinfo="index", threshold=THRESHOLD)
        times[f"train {preset}"] = time.perf_counter() - t
        t = time.perf_counter()
        rconf = GCSAReranker.CONFIG.resolve("route", checkpoint=str(ckpt), query_prior_sigma=args.sigma)
        out = read_results(rerank_step.main(rconf, eval_res, work / f"rerank-{tag}", gt="index", threshold=THRESHOLD,
                                            num_rerank=args.top_k))
        times[f"rerank {preset}"] = time.perf_counter() - t
        rows.setdefault("visual-only retrieval (" + args.preset + ")", out["metrics_global"])
        rows[name] = out["metrics"]
    rows["position prior only (no vision)"] = _prior_only(eval_res, args.sigma, 0)
    print(f"\nNordland dev, train places 0-999, evaluate places 1000-1999 (1000 winter queries vs 1000 summer map "
          f"images), top-{args.top_k} re-ranked, positives +-{THRESHOLD} places.")
    print(f"Noise model: {noise_model(args.sigma, 0)} (1 unit = 1 place)\n")
    print(metrics.format_table(rows, keys=("mAP@10", "R@1", "R@5", "R@10")))
    spent = ", ".join(f"{k} {v:.0f}" for k, v in times.items())
    print(f"\nseconds: retrieval (both parts) {t_retrieval:.0f}, {spent}")


if __name__ == "__main__":
    main()
