"""Does AMES re-ranking raise mAP and R@1 over the global retrieval, on places it was not trained on?

Nordland dev (winter queries vs summer map, +-2 steps), three disjoint blocks of places, each with its own map:
AMES (fp) is trained on the first block, a binary AMES is distilled from it, lambda and temp of each are chosen
on the validation block (the last `--val-places` of the training side), and both re-rank the global top-100 of
the test block, which nothing was trained or tuned on. The training-free Chamfer re-ranker (same local features,
lambda and temp chosen the same way) is the baseline a trained AMES has to beat.

    OMP_NUM_THREADS=1 .venv/bin/python bench/ames_rerank.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from common import machine

from vprkit import api
from vprkit.data.groundtruth import ground_truth_for_kept
from vprkit.data.images import list_images
from vprkit.rerank import base as rerank_step
from vprkit.rerank import get_reranker_class
from vprkit.rerank.ames import AMESReranker, tune_fusion
from vprkit.rerank.chamfer import ChamferReranker
from vprkit.results import load_retrieval, read_results
from vprkit.train import ames as train_ames

# set -> (folder, map, queries, ground truth spec, threshold)
DATASETS = {"nordland": ("nordland_64x32_dev", "summer", "winter", "sequence", 20.0),  # frames step by 10: +-2
            "essex": ("essex3in1_thumbs", "ref", "query", "sequence", 0.0)}  # same number = same place


def _link_subset(src: Path, names: list[str], dst: Path) -> Path:
    """A folder of symlinks to `names` (a split of a shipped set without copying it)."""
    dst.mkdir(parents=True, exist_ok=True)
    for n in names:
        if not (dst / n).exists():
            (dst / n).symlink_to((src / n).resolve())
    return dst


def _split(data: Path, work: Path, args: argparse.Namespace) -> dict[str, tuple[Path, Path]]:
    """(map, queries) folders of the train, validation and test blocks of places (disjoint)."""
    folder, map_name, q_name = DATASETS[args.dataset][:3]
    root = data / folder
    names = list_images(root / map_name)
    if args.test_start < args.train_places or not 0 <= args.val_places < args.train_places:
        raise ValueError("test places must come after the training places, and validation places inside them")
    fit = args.train_places - args.val_places
    blocks = {"train": (names[:fit], args.train_query_step),
              "val": (names[fit:args.train_places], args.val_query_step),
              "test": (names[args.test_start:args.test_start + args.test_places], args.test_query_step)}
    return {b: (_link_subset(root / map_name, ns, work / f"{b}_map"),
                _link_subset(root / q_name, ns[::step], work / f"{b}_q")) for b, (ns, step) in blocks.items()}


def _retrieval(map_dir: Path, q_dir: Path, work: Path, top_k: int, resize: int, gt: tuple[str, float]) -> Path:
    index = work / f"index_{map_dir.name}"
    if not index.exists():
        api.index_map(map_dir, index, preset="dinov2-gem", preprocessing={"resize_max": resize})
    return api.localize(index, q_dir, work / f"res_{q_dir.name}", top_k=top_k, gt=gt[0], threshold=gt[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--dataset", choices=sorted(DATASETS), default="nordland")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vprkit_bench_ames")
    p.add_argument("--train-places", type=int, default=1500, help="places 0..N-1 train (validation included)")
    p.add_argument("--val-places", type=int, default=300, help="the last of the training places, for tuning")
    p.add_argument("--test-start", type=int, default=1500, help="first test place (after the training places)")
    p.add_argument("--test-places", type=int, default=500)
    p.add_argument("--train-query-step", type=int, default=1)
    p.add_argument("--val-query-step", type=int, default=3)
    p.add_argument("--test-query-step", type=int, default=1)
    p.add_argument("--preset", default="fp-chamfer", help="AMES fp training preset (fp, fp-chamfer)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--binary-epochs", type=int, default=1, help="distillation epochs (best by held-out mAP)")
    p.add_argument("--resize", type=int, default=168, help="long side before DINOv2 (12x6 patches)")
    p.add_argument("--local", default="dinov2-value", help="local-feature preset")
    p.add_argument("--num-query-desc", type=int, default=72)
    p.add_argument("--num-map-desc", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work
    blocks = _split(args.data, work, args)
    gt = DATASETS[args.dataset][3:]
    res = {b: _retrieval(m, q, work, 20 if b == "train" else 100, args.resize, gt) for b, (m, q) in blocks.items()}
    budgets = {"num_query_desc": args.num_query_desc, "num_map_desc": args.num_map_desc}
    timings = {}
    t = time.perf_counter()
    common = {"val_fraction": 0.1, "cache_dir": str(work / "train_cache"), "batch_size": 32, "num_neg": 4}
    conf = train_ames.CONFIG.resolve(args.preset, epochs=args.epochs, features=args.local, resize_max=args.resize,
                               lr=5e-4, **common, **budgets)
    fp = train_ames.main(conf, res["train"], work / "ames_fp", gt=gt[0], threshold=gt[1])
    timings["train fp"] = time.perf_counter() - t
    t = time.perf_counter()
    conf = train_ames.CONFIG.resolve("binary", epochs=args.binary_epochs, teacher=str(fp), **common)
    binary = train_ames.main(conf, res["train"], work / "ames_binary", gt=gt[0], threshold=gt[1])
    timings["train binary"] = time.perf_counter() - t
    rows, tuned = {}, {}
    cache = str(work / "eval_cache")
    methods = {"AMES fp": AMESReranker.CONFIG.resolve("fp", checkpoint=str(fp), cache_dir=cache, **budgets),
               "AMES binary": AMESReranker.CONFIG.resolve("binary", checkpoint=str(binary), cache_dir=cache, **budgets),
               "Chamfer (no training)": ChamferReranker.CONFIG.resolve(args.local, resize_max=args.resize,
                                                                               cache_dir=cache,
                                                                 **budgets)}
    val = load_retrieval(res["val"])
    truth = ground_truth_for_kept(gt[0], list_images(val.query_dir), val.q_names, val.m_names, gt[1])
    for name, conf in methods.items():
        preset = conf["preset"] if conf["method"] == "ames" else "chamfer"
        t = time.perf_counter()
        best = tune_fusion(val.ids, val.scores, get_reranker_class(conf["method"])(conf).raw_scores(val, work), truth)
        tuned[name] = best
        timings[f"tune {preset}"] = time.perf_counter() - t
        t = time.perf_counter()
        out = read_results(rerank_step.main({**conf, "lamb": best["lamb"], "temp": best["temp"]}, res["test"],
                                            work / f"rerank_{preset}", gt=gt[0], threshold=gt[1]))
        timings[f"re-rank {preset}"] = time.perf_counter() - t
        rows.setdefault("global", out["metrics_global"])
        rows[f"{name} (lambda {best['lamb']}, temp {best['temp']})"] = out["metrics"]
    n = {b: len(list_images(q)) for b, (_, q) in blocks.items()}
    fit = args.train_places - args.val_places
    print(f"machine: {machine()}")
    print(f"train: places 0..{fit - 1} ({n['train']} queries); validation (lambda, temp): places "
          f"{fit}..{args.train_places - 1} ({n['val']} queries); test: places {args.test_start}.."
          f"{args.test_start + args.test_places - 1} ({n['test']} queries), global top-100 re-ranked; local "
          f"{args.local} at {args.resize} px, {args.num_query_desc} query / {args.num_map_desc} map descriptors")
    print("validation: " + json.dumps({k: {m: round(v, 3) for m, v in b.items()} for k, b in tuned.items()}))
    print("| method | R@1 | R@5 | R@10 | mAP | mAP@10 |\n|---|---|---|---|---|---|")
    for name, m in rows.items():
        print(f"| {name} | {m['R@1']:.3f} | {m['R@5']:.3f} | {m['R@10']:.3f} | {m['mAP']:.3f} | {m['mAP@10']:.3f} |")
    print("timings (s): " + json.dumps({k: round(v, 1) for k, v in timings.items()}))
    print("(tune / re-rank include extracting local features; bench/ames_cost.py times re-ranking alone)")


if __name__ == "__main__":
    main()
