"""Heads trained with `vprkit train head` on frozen backbone tokens vs the same heads untrained.

Nordland dev (winter queries vs summer map, +-2 places): train on the first 60 % of the route, validate on the next
20 %, test on the last 20 % (10-place gaps), as bench/netvlad_training.py; single-image R@1 and online SeqSLAM
(ds=10) on the test stretch. `--label-free` adds Corridor and ESSEX3IN1 trained on their maps alone
(data.source=map) and tested on their real queries. Token caches are shared by the runs (--work/cache), so the
backbone runs once per image and backbone; each row prints its time split (tokens, load, train).
`python bench/train_heads.py --data ../shared/data [--presets dinov2s-salad ...] [--label-free]`
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import machine
from PIL import Image

from vprkit.data.groundtruth import GroundTruth
from vprkit.evaluation import metrics
from vprkit.sequence import pipeline
from vprkit.train import head
from vprkit.train.head_model import evaluated

NORDLAND = {"data.positions": "index", "data.pos_thr": 2.0, "data.neg_thr": 10.0, "data.split": [0.6, 0.2, 0.2],
            "data.gap": 10.0}
LABEL_FREE = {  # dataset -> (map, queries, overrides): Corridor is a route (+-2 frames), ESSEX3IN1 separate places
    "corridor": ("corridor/ref", "corridor/query", {"data.positions": "index", "data.pos_thr": 2.0,
                                                    "data.neg_thr": 5.0}),
    "essex3in1": ("essex3in1_thumbs/ref", "essex3in1_thumbs/query", {"data.positions": "index",
                                                                     "data.pos_thr": 0.0, "data.neg_thr": 0.5}),
}


def stopped(data: Path, names: list[str], level: float = 2.0) -> np.ndarray:
    """Frames where the train stands (a station): the frame differs from the one before it (10 frames earlier) by
    less than `level` grey levels on average in both seasons. Such frames look the same, and +-2 places can only be
    hit by chance there."""
    def still(season: str) -> np.ndarray:
        grey = [np.asarray(Image.open(data / season / n).convert("L"), dtype=np.float32) for n in names]
        return np.array([False] + [np.abs(a - b).mean() < level for a, b in zip(grey[1:], grey[:-1])])

    return still("summer") & still("winter")


def recalls(s: head.Session, data: Path, split: str = "test", ds: int = 10) -> dict:
    """R@1 of the split's queries one by one and with online SeqSLAM over their stream in route order (OpenSeqSLAM's
    defaults, and without its local contrast enhancement: enhance=0), on all queries and on those where the train
    moves (`stopped`)."""
    q, m = (evaluated(s.model, t).cpu().numpy() for t in s.banks[split])
    ps = s.places[split]
    moving = ~stopped(data, ps.q_names)
    single = np.argsort(-(q @ m.T), axis=1)[:, :1]
    out = {}
    for name, over in (("SeqSLAM", {}), ("SeqSLAM enhance=0", {"enhance": 0})):
        ids = pipeline.match(pipeline.CONFIG.resolve("seqslam", ds=ds, **over), q, m)[2]
        out[f"{name} R@1"] = metrics.evaluate(ids, GroundTruth(ps.positives))["R@1"]
        if over:
            out[f"moving {name} R@1"] = metrics.evaluate(
                ids[moving], GroundTruth([p for p, keep in zip(ps.positives, moving) if keep]))["R@1"]
    out["moving R@1"] = metrics.evaluate(single[moving], GroundTruth(
        [p for p, keep in zip(ps.positives, moving) if keep]))["R@1"]
    out["moving queries"] = int(moving.sum())
    return out


def epochs(args) -> dict:
    return {} if args.epochs is None else {"train.epochs": args.epochs}


def nordland(args, work: Path, rows: dict) -> None:
    data = Path(args.data) / "nordland_64x32_dev"
    for preset in args.presets:
        over = {**NORDLAND, "cache.dir": args.cache, **epochs(args), **args.set}
        conf = head.CONFIG.resolve(preset, over)
        t0 = time.perf_counter()
        best = head.main(conf, data / "summer", data / "winter", work / preset)  # first: its time includes tokens
        whole = time.perf_counter() - t0
        s = head.Session(conf, data / "summer", data / "winter", work / f"{preset}-untrained")
        base = head.test(s)
        rows[f"Nordland {preset} untrained"] = {**base, **recalls(s, data)}
        s = head.Session(conf, data / "summer", data / "winter", work / preset)
        res = head.test(s, best)
        rows[f"Nordland {preset} trained"] = {**res, **recalls(s, data)}
        split = json.loads((work / preset / "test.json").read_text())["seconds"]
        print(f"{preset}: untrained R@1 {base['R@1']:.3f}, trained {res['R@1']:.3f}, SeqSLAM ds=10 "
              f"{rows[f'Nordland {preset} trained']['SeqSLAM R@1']:.3f}; the run took {whole:.0f} s "
              f"(tokens, load, train: {split}); {time.perf_counter() - t0:.0f} s with the baseline", flush=True)


def label_free(args, work: Path, rows: dict) -> None:
    for name, (map_dir, query_dir, over) in LABEL_FREE.items():
        if name not in args.datasets:
            continue
        for preset in args.presets:
            data = Path(args.data)
            conf = head.CONFIG.resolve(preset, {**over, "data.source": "map", "cache.dir": args.cache,
                                                **epochs(args), **args.set})
            tconf = head.CONFIG.resolve(preset, {**over, "data.split": [0.0, 0.0, 1.0], "data.gap": 0.0,
                                                 "cache.dir": args.cache})
            s = head.Session(tconf, data / map_dir, data / query_dir, work / f"{name}-{preset}-test", splits=("test",))
            rows[f"{name} {preset} untrained"] = head.test(s)
            best = head.main(conf, data / map_dir, None, work / f"{name}-{preset}")
            rows[f"{name} {preset} label-free"] = head.test(s, best)
            print(f"{name} {preset}: untrained R@1 {rows[f'{name} {preset} untrained']['R@1']:.3f}, label-free "
                  f"{rows[f'{name} {preset} label-free']['R@1']:.3f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--work", help="run folders and token caches (default: a new temporary folder)")
    p.add_argument("--cache", help="token cache folder (default WORK/cache)")
    p.add_argument("--presets", nargs="+", default=sorted(head.CONFIG.presets))
    p.add_argument("--epochs", type=int, help="train.epochs (default: the preset's)")
    p.add_argument("--set", nargs="*", default=[], help="training overrides KEY=VALUE (JSON values)")
    p.add_argument("--label-free", action="store_true", help="also Corridor and ESSEX3IN1, label-free")
    p.add_argument("--skip-nordland", action="store_true")
    p.add_argument("--datasets", nargs="+", default=list(LABEL_FREE), help="--label-free: which datasets")
    args = p.parse_args()
    from vprkit.config import parse_overrides

    args.set = parse_overrides(args.set)
    print(machine())
    work = Path(args.work or tempfile.mkdtemp(prefix="vprkit_heads_"))
    args.cache = args.cache or str(work / "cache")
    print(f"runs in {work}")
    rows: dict[str, dict] = {}
    if not args.skip_nordland:
        nordland(args, work, rows)
    if args.label_free:
        label_free(args, work, rows)
    seq = ("SeqSLAM R@1", "SeqSLAM enhance=0 R@1", "moving R@1", "moving SeqSLAM enhance=0 R@1")
    keys = ("R@1", "R@5", "R@10") + (seq if not args.skip_nordland else ())
    print(metrics.format_table({k: {**dict.fromkeys(seq, np.nan), **v} for k, v in rows.items()}, keys=keys))
    print(f"torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
