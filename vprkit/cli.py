"""Command line: `vprkit index | query | rerank | evaluate | train | demo | presets`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import api, demo, rerank
from .data.groundtruth import load_ground_truth
from .data.images import list_images
from .evaluation import metrics, outputs
from .features.extract import CONFS, DEFAULT_PRESET
from .index.faiss_index import DEFAULT_FACTORY
from .models.precision import CHOICES as PRECISION_CHOICES
from .rerank import base as rerank_step


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vprkit", description="Visual place recognition: index a map, localize queries.")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("index", help="extract map descriptors and build a saved index")
    s.add_argument("map_dir")
    s.add_argument("-o", "--out", required=True, help="index folder to create")
    s.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(CONFS))
    s.add_argument("--factory", default=DEFAULT_FACTORY, help="FAISS factory string, e.g. 'IVF1024,PQ32'")
    s.add_argument("--batch-size", type=int)
    s.add_argument("--resize-max", type=int, help="long image side before the backbone")
    s.add_argument("--fp16", action="store_true", default=None, help="store descriptors as float16")
    s.add_argument("--checkpoint", help="local weights file for the preset's backbone (e.g. an official DINOv2 .pth)")
    s.add_argument("--arch", help="DINOv2 size for --checkpoint: vits14, vitb14, vitl14, vitg14")
    s.add_argument("--precision", choices=PRECISION_CHOICES,
                   help="backbone arithmetic: fp32 (default), bf16, int8 (Linear layers), or auto: the fastest that "
                        "agrees with fp32 on this machine (probed once, cached); queries use the index's")

    s = sub.add_parser("query", help="localize a folder of query images against an index")
    s.add_argument("index_dir")
    s.add_argument("query_dir")
    s.add_argument("--top-k", type=int, default=20)
    s.add_argument("-o", "--out", help="results folder (default INDEX/results/QUERY_NAME)")
    s.add_argument("--gt", help="ground truth: 'utm', 'sequence', 'index', a .npz, a .csv or a positives file")
    s.add_argument("--threshold", type=float, help="positive distance (m; frames for 'sequence')")
    s.add_argument("--preset", help="refuse to run unless the index was built with this preset")
    s.add_argument("--nprobe", type=int, help="IVF lists visited per query (IVF indexes only; more = exact-er)")

    s = sub.add_parser("evaluate", help="metrics of a predictions.txt against ground truth")
    s.add_argument("predictions")
    s.add_argument("--gt", required=True)
    s.add_argument("--threshold", type=float)
    s.add_argument("--map-dir", help="full map folder (for exact mAP); default: images named in the predictions")
    s.add_argument("--revisited", action="store_true",
                   help="--gt is a revisited Oxford/Paris gnd file (.pkl or .json): easy/medium/hard mAP and mP@k")

    s = sub.add_parser("rerank", help="re-rank the top of a global retrieval written by `vprkit query`")
    s.add_argument("results_dir", help="a query results folder (holds results.json and predictions.txt)")
    s.add_argument("--method", required=True, help="re-ranking method (see `vprkit presets`)")
    s.add_argument("--preset", help="the method's named preset")
    s.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override any preset parameter (VALUE parsed as JSON when it can be)")
    s.add_argument("--num-rerank", type=int, help="candidates re-ranked per query (default: the method's)")
    s.add_argument("-o", "--out", help="output folder (default RESULTS_DIR/rerank-METHOD-PRESET)")
    s.add_argument("--gt", help="ground truth, as for `vprkit query`")
    s.add_argument("--threshold", type=float)

    s = sub.add_parser("train", help="train NetVLAD (+ attention) on images with positions: cluster, train, test")
    s.add_argument("mode", choices=["cluster", "train", "test"])
    s.add_argument("map_dir")
    s.add_argument("query_dir")
    s.add_argument("-o", "--out", required=True, help="run folder (centroids.npz, last.pt, best.pt, log.csv)")
    s.add_argument("--preset", default="mobilenetv2-netvlad", help="training preset (see `vprkit presets`)")
    s.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override any setting with dotted keys, e.g. train.epochs=5 data.positions=utm")
    s.add_argument("--restart", action="store_true",
                   help="train: start over instead of continuing the run in OUT (last.pt, same settings)")
    s.add_argument("--checkpoint", help="test: the trained checkpoint (default: the untrained k-means NetVLAD)")
    s.add_argument("--split", default="test", choices=["train", "val", "test"], help="test: which split")

    s = sub.add_parser("train-ames", help="train an AMES re-ranker (fp, or binary by distillation) on a retrieval")
    s.add_argument("results_dir", help="a `vprkit query` results folder (its top-k are the training candidates)")
    s.add_argument("--gt", required=True, help="ground truth, as for `vprkit query`")
    s.add_argument("--threshold", type=float)
    s.add_argument("-o", "--out", required=True, help="run folder (checkpoints, log.csv, cached local features)")
    s.add_argument("--preset", default="fp", help="fp, fp-chamfer (labels + Chamfer similarity as a soft target), "
                   "or binary (needs --set teacher=FP_MODEL/best.pt)")
    s.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override any training setting")
    s.add_argument("--restart", action="store_true", help="start over instead of resuming OUT/last.pt")

    _segvlad_parser(sub)

    s = sub.add_parser("match-two", help="Patch-NetVLAD score and patch correspondences of two images")
    s.add_argument("image_a")
    s.add_argument("image_b")
    s.add_argument("--preset", default="performance", help="patchnetvlad preset (performance, speed, storage)")
    s.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override any preset parameter")
    s.add_argument("-o", "--out", default="patchMatchings.png", help="PNG of the verified patch correspondences")

    s = sub.add_parser("demo", help="run the whole pipeline on the shipped Corridor set")
    s.add_argument("-o", "--out", default="vprkit_demo")
    s.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(CONFS))

    sub.add_parser("presets", help="list the named presets")
    return p


def _segvlad_parser(sub) -> None:
    """`vprkit segvlad index|query`: SegVLAD as a retrieval method (segments of the whole map)."""
    from .segvlad.extract import CONFS as SEG_CONFS
    from .segvlad.extract import DEFAULT_PRESET as SEG_DEFAULT

    seg = sub.add_parser("segvlad", help="SegVLAD: retrieve image segments, vote map images")
    ssub = seg.add_subparsers(dest="segvlad_command", required=True)
    s = ssub.add_parser("index", help="segment and describe a map, store all its segments")
    s.add_argument("map_dir")
    s.add_argument("-o", "--out", required=True)
    s.add_argument("--preset", default=SEG_DEFAULT, choices=sorted(SEG_CONFS))
    s.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override preset values, dotted for nested ones (order=2, segmenter.checkpoint=sam.pth)")
    s = ssub.add_parser("query", help="localize a folder of query images against a SegVLAD index")
    s.add_argument("index_dir")
    s.add_argument("query_dir")
    s.add_argument("--top-k", type=int, default=20)
    s.add_argument("--top-k-segments", type=int, help="map segments each query segment retrieves")
    s.add_argument("-o", "--out")
    s.add_argument("--gt")
    s.add_argument("--threshold", type=float)


def _segvlad(args: argparse.Namespace) -> None:
    from .segvlad import api as seg_api

    if args.segvlad_command == "index":
        out = seg_api.index_map(args.map_dir, args.out, args.preset, args.device, **parse_overrides(args.set))
        print(f"SegVLAD index written to {out}")
    else:
        res = seg_api.localize(args.index_dir, args.query_dir, args.top_k, args.out, args.gt, args.threshold,
                               args.device, top_k_segments=args.top_k_segments)
        if "metrics" in res:
            print(metrics.format_table({res["preset"]: res["metrics"]}))
        print(f"predictions, pairs, results.json and report.html in {res['out_dir']}")


def _evaluate_file(path: str, gt: str, threshold: float | None, map_dir: str | None, revisited: bool = False
                   ) -> dict:
    """Score a predictions.txt against ground truth."""
    q_names, m_names, preds, _ = outputs.read_predictions(path, list_images(map_dir) if map_dir else None)
    if revisited:
        from .evaluation import revisited as rop

        return rop.evaluate(*rop.align(rop.load_gnd(gt), q_names, m_names, preds))
    return metrics.evaluate(preds, load_ground_truth(gt, q_names, m_names, threshold))


def _model_overrides(args: argparse.Namespace) -> dict:
    """Preset sections changed by CLI flags (each section is replaced whole, so start from the preset's)."""
    preset = CONFS[args.preset]
    over: dict = {}
    if args.resize_max:
        over["preprocessing"] = {**preset["preprocessing"], "resize_max": args.resize_max}
    checkpoint = str(Path(args.checkpoint).resolve()) if args.checkpoint else None  # queries may run elsewhere
    extra = {k: v for k, v in (("checkpoint", checkpoint), ("arch", args.arch)) if v}
    if extra:
        over["model"] = {**preset["model"], **extra}
    return over


def parse_overrides(pairs: list[str]) -> dict:
    """`key=value` strings to a dict; values are JSON when they parse (numbers, lists, true), else strings."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got '{pair}'")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _rerank(args: argparse.Namespace) -> None:
    """`vprkit rerank`: re-rank, print global vs re-ranked metrics."""
    cls = rerank.get_reranker_class(args.method)
    conf = cls.get_conf(args.preset, **parse_overrides(args.set))
    res = rerank_step.main(conf, args.results_dir, args.out, args.gt, args.threshold, args.num_rerank)
    if "metrics" in res:
        print(metrics.format_table({"global": res["metrics_global"], f"{args.method}": res["metrics"]}))
    print(f"predictions, pairs, results.json and report.html in {res['out_dir']}")


def _train(args: argparse.Namespace) -> None:
    """`vprkit train MODE`: print what the mode produced."""
    from .train import netvlad

    conf = netvlad.get_conf(args.preset, parse_overrides(args.set))
    res = netvlad.main(conf, args.map_dir, args.query_dir, args.out, args.mode, not args.restart, args.checkpoint,
                       args.split, args.device)
    if args.mode == "test":
        print(metrics.format_table({args.checkpoint or "untrained (k-means)": res}))
    else:
        print(json.dumps(res, indent=1))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        if args.command == "index":
            out = api.index_map(args.map_dir, args.out, args.preset, args.factory, args.device,
                                batch_size=args.batch_size, fp16=args.fp16, precision=args.precision,
                                **_model_overrides(args))
            print(f"index written to {out}")
        elif args.command == "query":
            res = api.localize(args.index_dir, args.query_dir, args.top_k, args.out, args.gt, args.threshold,
                               args.preset, args.device, nprobe=args.nprobe)
            if "metrics" in res:
                print(metrics.format_table({res["preset"]: res["metrics"]}))
            print(f"predictions, pairs, results.json and report.html in {res['out_dir']}")
        elif args.command == "evaluate":
            res = _evaluate_file(args.predictions, args.gt, args.threshold, args.map_dir, args.revisited)
            print(json.dumps(res, indent=1))
        elif args.command == "rerank":
            _rerank(args)
        elif args.command == "train":
            _train(args)
        elif args.command == "train-ames":
            from .train import ames as train_ames

            conf = train_ames.get_conf(args.preset, device=args.device, **parse_overrides(args.set))
            best = train_ames.main(conf, args.results_dir, args.out, args.gt, args.threshold, not args.restart)
            print(f"best model: {best} (use: vprkit rerank RESULTS --method ames --set checkpoint={best})")
        elif args.command == "segvlad":
            _segvlad(args)
        elif args.command == "match-two":
            from .rerank import patchnetvlad

            conf = patchnetvlad.PatchNetVLAD.get_conf(args.preset, device=args.device, **parse_overrides(args.set))
            print(json.dumps(patchnetvlad.match_two(args.image_a, args.image_b, conf, args.out), indent=1))
        elif args.command == "demo":
            demo.main(args.out, args.preset, args.device)
        elif args.command == "presets":
            for name, conf in CONFS.items():
                print(f"{name:18s} {json.dumps(conf)}" + ("  (default)" if name == DEFAULT_PRESET else ""))
            from .segvlad.extract import CONFS as SEG_CONFS

            for name, conf in SEG_CONFS.items():
                print(f"segvlad {name:14s} {json.dumps(conf)}")
            for method in sorted(rerank.REGISTRY):
                cls = rerank.get_reranker_class(method)
                for name, conf in cls.confs.items():
                    print(f"rerank {method} {name:12s} {json.dumps({**cls.default_conf, **conf})}")
            from .train import netvlad

            for name, conf in netvlad.CONFS.items():
                print(f"train {name:28s} {json.dumps(conf)}")
    except (FileNotFoundError, ValueError, KeyError, OSError) as exc:
        print(f"vprkit: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
