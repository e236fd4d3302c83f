"""Does AMES re-ranking raise mAP and R@1 over the global retrieval, on places it was not trained on?

Nordland dev (winter queries vs summer map, +-2 steps): AMES (fp) is trained on the first `--train-places`
places, a binary AMES is distilled from it, and both re-rank the global top-100 of the later, disjoint places.

    .venv/bin/python bench/ames_rerank.py --data ../shared/data
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
from vprkit.data.images import list_images
from vprkit.rerank import base as rerank_step
from vprkit.rerank.ames import AMESReranker
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


def _split(data: Path, work: Path, args: argparse.Namespace) -> dict[str, Path]:
    """Train / test folders: first places for training, later places for testing (disjoint)."""
    folder, map_name, q_name = DATASETS[args.dataset][:3]
    root = data / folder
    names = list_images(root / map_name)
    train = names[:args.train_places]
    test = names[args.test_start:args.test_start + args.test_places]
    if args.test_start < args.train_places:
        raise ValueError("test places must come after the training places (disjoint sets)")
    return {"train_map": _link_subset(root / map_name, train, work / "train_map"),
            "train_q": _link_subset(root / q_name, train[::args.train_query_step], work / "train_q"),
            "test_map": _link_subset(root / map_name, test, work / "test_map"),
            "test_q": _link_subset(root / q_name, test[::args.test_query_step], work / "test_q")}


def _retrieval(map_dir: Path, q_dir: Path, work: Path, top_k: int, resize: int, gt: tuple[str, float]) -> Path:
    index = work / f"index_{map_dir.name}"
    if not index.exists():
        api.index_map(map_dir, index, preset="dinov2-gem", preprocessing={"resize_max": resize})
    return Path(api.localize(index, q_dir, top_k, work / f"res_{q_dir.name}", *gt)["out_dir"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--dataset", choices=sorted(DATASETS), default="nordland")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vprkit_bench_ames")
    p.add_argument("--train-places", type=int, default=300)
    p.add_argument("--test-start", type=int, default=1000, help="first test place (after the training places)")
    p.add_argument("--test-places", type=int, default=300)
    p.add_argument("--train-query-step", type=int, default=2)
    p.add_argument("--test-query-step", type=int, default=6)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--binary-epochs", type=int, default=3)
    p.add_argument("--resize", type=int, default=168, help="long side before DINOv2 (12x6 patches)")
    p.add_argument("--num-query-desc", type=int, default=64)
    p.add_argument("--num-map-desc", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work
    dirs = _split(args.data, work, args)
    gt = DATASETS[args.dataset][3:]
    train_res = _retrieval(dirs["train_map"], dirs["train_q"], work, 20, args.resize, gt)
    test_res = _retrieval(dirs["test_map"], dirs["test_q"], work, 100, args.resize, gt)
    budgets = {"num_query_desc": args.num_query_desc, "num_map_desc": args.num_map_desc}
    timings = {}
    t = time.perf_counter()
    common = {"val_fraction": 0.1, "cache_dir": str(work / "train_cache"), "batch_size": 16, "num_neg": 4}
    conf = train_ames.get_conf("fp", epochs=args.epochs, resize_max=args.resize, lr=5e-4, **common, **budgets)
    fp = train_ames.main(conf, train_res, work / "ames_fp", *gt)
    timings["train fp"] = time.perf_counter() - t
    t = time.perf_counter()
    conf = train_ames.get_conf("binary", epochs=args.binary_epochs, teacher=str(fp), **common)
    binary = train_ames.main(conf, train_res, work / "ames_binary", *gt)
    timings["train binary"] = time.perf_counter() - t
    rows = {}
    for name, ckpt, preset in (("AMES fp", fp, "fp"), ("AMES binary", binary, "binary")):
        conf = AMESReranker.get_conf(preset, checkpoint=str(ckpt), cache_dir=str(work / "test_cache"), **budgets)
        t = time.perf_counter()
        res = rerank_step.main(conf, test_res, work / f"rerank_{preset}", *gt)
        timings[f"re-rank {preset}"] = time.perf_counter() - t
        rows.setdefault("global", res["metrics_global"])
        rows[name] = res["metrics"]
    n_q = len(list_images(dirs["test_q"]))
    print(f"machine: {machine()}")
    print(f"train: places 0..{args.train_places - 1} ({len(list_images(dirs['train_q']))} queries); test: places "
          f"{args.test_start}..{args.test_start + args.test_places - 1} ({n_q} queries), global top-100 re-ranked; "
          f"descriptors {args.num_query_desc} query / {args.num_map_desc} map")
    print("| method | R@1 | R@5 | R@10 | mAP | mAP@10 |\n|---|---|---|---|---|---|")
    for name, m in rows.items():
        print(f"| {name} | {m['R@1']:.3f} | {m['R@5']:.3f} | {m['R@10']:.3f} | {m['mAP']:.3f} | {m['mAP@10']:.3f} |")
    print("timings (s): " + json.dumps({k: round(v, 1) for k, v in timings.items()}))
    print("(re-rank fp includes extracting the test set's local features; bench/ames_cost.py times re-ranking alone)")


if __name__ == "__main__":
    main()
