"""The de-attention paper's training runs as its code computes them (reference presets) against vprkit's variants:
NetVLAD on MobileNetV2 trained on the first part of Nordland dev, tested on a later part.

Rows: the k-means-initialised (untrained) NetVLAD, then per method its reference preset and its `-vprkit` variant
(triplet and sTML differ only in mining: margin-violating negatives vs always the 10 nearest; CRN and de-attention
also in the head and where the mask acts). All over the same images (the frozen backbone runs once and is shared).
Nordland has no segmentation masks and no Cityscapes weights are available here, so de-attention runs unguided.
The original's BAM cannot run on Nordland's 2:1 feature maps (it pools one HxH window), so BAM is not compared.
Needs the data folder: `python bench/netvlad_training.py --data ../shared/data`.

Split by place along the route (frame order): train on the first 60 % of places, validate (model selection,
early stopping) on the next 20 %, test on the last 20 %, with 10-frame gaps between the parts.
Positives: +-2 frames (the usual Nordland tolerance); negatives: more than 10 frames away.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import machine

from vprkit.evaluation.metrics import format_table
from vprkit.train import netvlad

NORDLAND = ("nordland_64x32_dev/summer", "nordland_64x32_dev/winter")
METHODS = {  # method -> reference preset; vprkit's variant is PRESET-vprkit
    "triplet": "mobilenetv2-netvlad",
    "sTML": "mobilenetv2-netvlad-stml",
    "CRN + triplet": "mobilenetv2-crn-netvlad",
    "de-attention + sTML (unguided)": "mobilenetv2-deattention-stml",
}


def overrides(epochs: int, lr: float) -> dict:
    """The Nordland settings shared by every variant (see the module docstring); no guidance source."""
    return {"resize_max": 128, "guidance.source": None, "data.positions": "index", "data.pos_thr": 2.0,
            "data.neg_thr": 10.0, "data.split": [0.6, 0.2, 0.2], "data.gap": 10.0, "train.epochs": epochs,
            "train.train_layers": 2, "train.lr": lr, "train.lr_step": 3, "train.neg_samples": 200,
            "train.cache_refresh": 100, "train.patience": 3}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--work", help="run folders (default: a new temporary folder)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (all variants)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    p.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(machine())
    map_dir, query_dir = (Path(args.data) / d for d in NORDLAND)
    work = Path(args.work or tempfile.mkdtemp(prefix="vprkit_netvlad_"))
    print(f"runs in {work}")
    conf = netvlad.CONFIG.resolve("mobilenetv2-netvlad", overrides(args.epochs, args.lr))
    base = netvlad.Session(conf, map_dir, query_dir,
                           work / "untrained")
    results = {"untrained (k-means init)": netvlad.test(base)}
    seconds, skipped = {}, {}
    for method in args.methods:
        for kind, preset in (("reference", METHODS[method]), ("vprkit", f"{METHODS[method]}-vprkit")):
            row = f"{method}: {kind}"
            s = base.variant(netvlad.CONFIG.resolve(preset, overrides(args.epochs, args.lr)), work / preset)
            t0 = time.perf_counter()
            last = netvlad.train(s)
            seconds[row] = time.perf_counter() - t0
            skipped[row] = last["skipped_no_violating"]
            results[f"{row} (`{preset}`)"] = netvlad.test(s, s.out / "best.pt")
    sizes = {k: len(v.q_names) for k, v in base.places.items()}
    print(f"Nordland dev, winter queries vs summer map, 128x64 input, MobileNetV2 block 13 + NetVLAD (32 clusters), "
          f"last 2 blocks trained, {args.epochs} epochs max, Adam lr {args.lr}; queries per split {sizes}; test split:")
    print(format_table(results, keys=("R@1", "R@5", "R@10", "R@20")))
    print("train queries skipped in the last epoch for want of a margin-violating negative: "
          + ", ".join(f"{k} {v}" for k, v in skipped.items()))
    first = next(iter(seconds))
    print(f"training time relative to {first}: "
          + ", ".join(f"{k} {v / seconds[first]:.2f}" for k, v in seconds.items()))

if __name__ == "__main__":
    main()
