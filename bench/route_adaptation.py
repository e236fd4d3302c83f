"""Label-free adaptation to the user's map: NetVLAD trained on the map images alone (route neighbours as positives,
augmented copies as queries; `vprkit train netvlad train MAP -o RUN --set data.source=map`), measured with the
real queries against that map before and after, with a fixed budget (the same epochs and steps for every run).

Nordland dev (summer map, winter queries, +-2 frames): the test stretch is the last 20 % of the route (390 places,
as in bench/netvlad_training.py). Rows: the untrained NetVLAD (k-means on the stretch's map), label-free training
on the stretch's summer images only, labelled training (summer + winter pairs) on the first 60 % of the route (an
unseen stretch: the railway target), and that labelled model adapted label-free to the stretch's map.
Corridor (second traversal as queries, +-2 frames): untrained vs label-free on the map (ref/) only.
Needs the data folder: `python bench/route_adaptation.py --data ../shared/data`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import machine
from netvlad_training import NORDLAND, overrides

from vprkit.config import parse_overrides
from vprkit.evaluation.metrics import format_table
from vprkit.train import netvlad, netvlad_model

PRESET = "mobilenetv2-netvlad-vprkit"  # plain triplet loss, nearest negatives: the best row of docs/training.md
KEYS = ("R@1", "R@5", "R@10")


def label_free_conf(epochs: int, lr: float, copies: int, queries: int, resize: int, **extra) -> dict:
    """The labelled runs' settings, but queries = `copies` augmented passes over the map (route +-2 frames
    positive, beyond 10 negative), `queries` tuples per epoch so every run takes the same number of steps."""
    over = {**overrides(epochs, lr), "resize_max": resize, "data.source": "map", "data.copies": copies,
            "train.max_queries_per_epoch": queries, **extra}
    return netvlad.CONFIG.resolve(PRESET, over)


def linked(names: list[str], src: Path, dst: Path) -> Path:
    """A folder of links to some images of `src` (the map of one stretch)."""
    dst.mkdir(parents=True, exist_ok=True)
    for n in names:
        if not (dst / n).exists():
            (dst / n).symlink_to((src / n).resolve())
    return dst


def score(ev: netvlad.Session, state: dict | Path) -> dict:
    """Recall of the real queries of `ev`'s test split with the given weights (a state dict or a checkpoint)."""
    if isinstance(state, Path):
        ev.load(state, restore_rng=False)
    else:
        ev.model.load_state_dict(state)
    return netvlad_model.recall(ev.model, *ev.banks["test"], ev.places["test"])


def adapt(ev: netvlad.Session, lf: netvlad.Session, results: dict, seconds: dict, name: str) -> None:
    """Rows: untrained (k-means on the map) and label-free trained on that map, scored on `ev`'s real queries."""
    lf.init_centroids()
    results[f"{name}: untrained NetVLAD (k-means on the map)"] = score(ev, lf.model.state_dict())
    t0 = time.perf_counter()
    netvlad.train(lf)
    seconds[f"{name}: label-free"] = time.perf_counter() - t0
    results[f"{name}: label-free on the map"] = score(ev, lf.out / "best.pt")


def nordland(args, work: Path, results: dict, seconds: dict) -> None:
    summer, winter = (Path(args.data) / d for d in NORDLAND)
    lab = netvlad.Session(netvlad.CONFIG.resolve(PRESET, overrides(args.labelled_epochs, args.lr)), summer, winter,
                          work / "nordland-labelled")
    stretch = linked(lab.places["test"].m_names, summer, work / "nordland-stretch-map")
    steps = len(lab.places["train"].q_names)
    lf_conf = label_free_conf(args.epochs, args.lr, args.copies, steps, 128, **args.set)
    lf = netvlad.Session(lf_conf, stretch, None, work / "nordland-labelfree", splits=("train", "val"))
    print(f"Nordland: labelled train/val/test queries {[len(p.q_names) for p in lab.places.values()]}, "
          f"label-free map {len(lf.places['train'].m_names)} images x {args.copies} augmented copies")
    adapt(lab, lf, results, seconds, "Nordland")
    if args.skip_labelled:
        return
    t0 = time.perf_counter()
    netvlad.train(lab)
    seconds["Nordland: labelled"] = time.perf_counter() - t0
    results["Nordland: labelled on the first 60 % (unseen stretch)"] = score(lab, lab.out / "best.pt")
    both = lf.variant(label_free_conf(args.epochs, args.lr, args.copies, steps, 128,
                                      **{**args.set, "train.init": str(lab.out / "best.pt")}), work / "nordland-both")
    t0 = time.perf_counter()
    netvlad.train(both)
    seconds["Nordland: labelled + label-free"] = time.perf_counter() - t0
    results["Nordland: labelled, then label-free on the map"] = score(lab, both.out / "best.pt")


def corridor(args, work: Path, results: dict, seconds: dict) -> None:
    root = Path(args.data) / "corridor"
    eval_conf = netvlad.CONFIG.resolve(PRESET, {**overrides(1, args.lr), "resize_max": 160, "data.split": [0, 0, 1],
                                          "data.gap": 0.0})
    ev = netvlad.Session(eval_conf, root / "ref", root / "query", work / "corridor-eval", splits=("test",))
    lf_conf = label_free_conf(args.epochs, args.lr, args.copies, None, 160, **args.set)
    lf = netvlad.Session(lf_conf, root / "ref", None, work / "corridor-labelfree", splits=("train", "val"))
    adapt(ev, lf, results, seconds, "Corridor")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--work", help="run folders (default: a new temporary folder)")
    p.add_argument("--sets", nargs="+", choices=("nordland", "corridor"), default=["nordland", "corridor"])
    p.add_argument("--epochs", type=int, default=4, help="label-free epochs")
    p.add_argument("--labelled-epochs", type=int, default=8)
    p.add_argument("--copies", type=int, default=4, help="augmented copies of each map image per epoch's pool")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-labelled", action="store_true", help="Nordland: only the untrained and label-free rows")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="label-free training settings, e.g. data.self_positive=true augment.grey=0.3")
    args = p.parse_args()
    args.set = parse_overrides(args.set)
    torch.set_num_threads(args.threads)
    print(machine())
    work = Path(args.work or tempfile.mkdtemp(prefix="vprkit_route_"))
    print(f"runs in {work}; preset {PRESET}, MobileNetV2 block 13 + NetVLAD 32, last 2 blocks trained, Adam lr "
          f"{args.lr}; label-free: {args.epochs} epochs, {args.copies} augmented copies per map image, "
          f"settings {args.set or 'defaults'}")
    results: dict = {}
    seconds: dict = {}
    for name in args.sets:
        {"nordland": nordland, "corridor": corridor}[name](args, work, results, seconds)
    print(format_table(results, keys=KEYS))
    print("training seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
