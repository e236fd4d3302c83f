"""`vprkit train netvlad|ames|gcsa ...`: every trainable method under one command (and the old forms)."""

from __future__ import annotations

import argparse
import json
import sys

from ..evaluation import metrics
from .common import add_gt, add_settings, step_conf

LEGACY_TRAIN = {"train-ames": ["train", "ames"]}  # old command -> new words
NETVLAD_MODES = ("cluster", "train", "test")


def add(sub) -> None:
    """Register `vprkit train` and its methods."""
    t = sub.add_parser("train", help="train a method: netvlad (cluster, train, test), ames, gcsa")
    tsub = t.add_subparsers(dest="method", required=True)
    s = tsub.add_parser("netvlad", help="NetVLAD (+ attention) on images with positions: cluster, train, test")
    s.add_argument("mode", choices=NETVLAD_MODES)
    s.add_argument("map_dir")
    s.add_argument("query_dir", nargs="?",
                   help="query images (not with --set data.source=map: label-free, the map's route gives positives)")
    s.add_argument("-o", "--out", required=True, help="run folder (centroids.npz, last.pt, best.pt, log.csv)")
    add_settings(s, "training preset (see `vprkit presets`)", "mobilenetv2-netvlad",
                 set_help="override any setting with dotted keys, e.g. train.epochs=5 data.positions=utm")
    s.add_argument("--restart", action="store_true",
                   help="train: start over instead of continuing the run in OUT (last.pt, same settings)")
    s.add_argument("--checkpoint", help="test: the trained checkpoint (default: the untrained k-means NetVLAD)")
    s.add_argument("--split", default="test", choices=["train", "val", "test"], help="test: which split")
    s.set_defaults(func=run_netvlad, conf=netvlad_conf)

    s = tsub.add_parser("ames", help="an AMES re-ranker (fp, or binary by distillation) on a retrieval")
    s.add_argument("results_dir", help="a `vprkit query` results folder (its top-k are the training candidates)")
    add_gt(s, required=True)
    s.add_argument("-o", "--out", required=True, help="run folder (checkpoints, log.csv, cached local features)")
    add_settings(s, "fp, fp-chamfer (labels + Chamfer similarity as a soft target), or binary (needs --set "
                 "teacher=FP_MODEL/best.pt)", "fp")
    s.add_argument("--restart", action="store_true", help="start over instead of resuming OUT/last.pt")
    s.set_defaults(func=run_ames, conf=ames_conf)

    s = tsub.add_parser("head", help="SALAD / BoQ / MixVPR / NetVLAD / GeM-fc head on frozen backbone tokens")
    s.add_argument("map_dir")
    s.add_argument("query_dir", nargs="?", help="query images (not with --set data.source=map: label-free)")
    s.add_argument("-o", "--out", required=True, help="run folder (best.pt, last.pt, log.csv, test.json, cache/)")
    add_settings(s, "head preset, also the index preset: dinov2s-salad, dinov2s-mixvpr, ... (`vprkit presets` lists "
                 "them and the recipes)", None,
                 set_help="override settings, e.g. recipe=salad-gsv pca=128 data.positions=index train.epochs=5")
    s.add_argument("--restart", action="store_true", help="start over instead of continuing the run in OUT")
    s.set_defaults(func=run_head, conf=head_conf)

    s = tsub.add_parser("gcsa", help="GCSA re-ranker on a retrieval of training queries")
    s.add_argument("results_dir", help="`vprkit query` results folder of the training queries")
    add_gt(s, required=True)
    s.add_argument("-o", "--out", required=True, help="training folder (checkpoints, logs)")
    s.add_argument("--map-sideinfo", help="index | sequence | utm | msls | metadata .csv")
    s.add_argument("--query-sideinfo", help="as --map-sideinfo; positions are the truth the priors are drawn from")
    add_settings(s, "GCSA training preset (see `vprkit presets`)", "position")
    s.add_argument("--restart", action="store_true", help="start over instead of continuing the run in OUT")
    s.set_defaults(func=run_gcsa, conf=gcsa_conf)


def netvlad_conf(args: argparse.Namespace) -> dict:
    from ..train import netvlad

    return step_conf(netvlad.CONFIG, args)


def run_netvlad(args: argparse.Namespace) -> None:
    from ..train import netvlad

    res = netvlad.main(netvlad_conf(args), args.map_dir, args.query_dir, args.out, mode=args.mode,
                       resume=not args.restart, checkpoint=args.checkpoint, split=args.split, device=args.device)
    if args.mode == "test":
        print(metrics.format_table({args.checkpoint or "untrained (k-means)": res}))
    else:
        print(json.dumps(res, indent=1))


def head_conf(args: argparse.Namespace) -> dict:
    from ..train import head

    return step_conf(head.CONFIG, args)


def run_head(args: argparse.Namespace) -> None:
    from ..train import head

    best = head.main(head_conf(args), args.map_dir, args.query_dir, args.out, device=args.device,
                     resume=not args.restart)
    res = json.loads((best.parent / "test.json").read_text())
    print(metrics.format_table({f"{args.preset} (test split)": res}))
    print(f"time (s): {res['seconds']}; tokens in memory: {res['token_bytes'] / 2**20:.0f} MiB")
    print(f"best model: {best} (use: vprkit index MAP -o IDX --preset {args.preset} --checkpoint {best})")


def ames_conf(args: argparse.Namespace) -> dict:
    from ..train import ames

    return step_conf(ames.CONFIG, args)


def run_ames(args: argparse.Namespace) -> None:
    from ..train import ames

    best = ames.main(ames_conf(args), args.results_dir, args.out, gt=args.gt, threshold=args.threshold,
                     resume=not args.restart)
    print(f"best model: {best} (use: vprkit rerank RESULTS --method ames --set checkpoint={best})")


def gcsa_conf(args: argparse.Namespace) -> dict:
    from ..train import gcsa

    return step_conf(gcsa.CONFIG, args)


def run_gcsa(args: argparse.Namespace) -> None:
    from ..train import gcsa

    path = gcsa.main(gcsa_conf(args), args.results_dir, args.out, gt=args.gt, map_sideinfo=args.map_sideinfo,
                     query_sideinfo=args.query_sideinfo, threshold=args.threshold, resume=not args.restart)
    print(f"checkpoint: {path}")


def modern_argv(argv: list[str]) -> list[str]:
    """Old training forms (`vprkit train-ames`, `vprkit train cluster|train|test`) rewritten to
    `vprkit train METHOD ...`, with a deprecation line giving the new form on stderr."""
    at = next((i for i, a in enumerate(argv) if not a.startswith("-") and (i == 0 or argv[i - 1] != "--device")),
              None)
    if at is None:
        return argv
    new = None
    if argv[at] in LEGACY_TRAIN:
        new = argv[:at] + LEGACY_TRAIN[argv[at]] + argv[at + 1:]
    elif argv[at] == "train" and argv[at + 1: at + 2] and argv[at + 1] in NETVLAD_MODES:
        new = argv[:at + 1] + ["netvlad"] + argv[at + 1:]
    if new is None:
        return argv
    print(f"vprkit: this form is deprecated; use: vprkit {' '.join(new)}", file=sys.stderr)
    return new
