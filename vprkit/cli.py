"""Command line: `vprkit index | query | rerank | sequence | evaluate | compare | export | train | serve | keys | demo |
presets`."""

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
from .features.extract import AUTO, CONFS, DEFAULT_PRESET
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
    s.add_argument("--preset", default=DEFAULT_PRESET, choices=[AUTO, *sorted(CONFS)],
                   help="global descriptor preset; 'auto' picks one from the map's images and says why")
    s.add_argument("--factory", default=DEFAULT_FACTORY, help="FAISS factory string, e.g. 'IVF1024,PQ32'")
    s.add_argument("--batch-size", type=positive_int)
    s.add_argument("--resize-max", type=int, help="long image side before the backbone")
    s.add_argument("--fp16", action="store_true", default=None, help="store descriptors as float16")
    s.add_argument("--checkpoint", help="local weights file for the preset's backbone (e.g. an official DINOv2 .pth)")
    s.add_argument("--arch", help="DINOv2 size for --checkpoint: vits14, vitb14, vitl14, vitg14")
    s.add_argument("--append", action="store_true",
                   help="add MAP_DIR's new images to the existing index OUT (journaled, crash-safe)")
    s.add_argument("--ray", nargs="?", const="auto", metavar="ADDRESS",
                   help="extract in shards on a Ray cluster: 'auto' (a running cluster, else a local one; the "
                        "default when no ADDRESS is given), 'local', or an address such as ray://head:10001")
    s.add_argument("--workers", type=positive_int, default=2, help="--ray: extraction actors")
    s.add_argument("--memory-budget", metavar="SIZE",
                   help="choose the index from the map size and this much RAM, e.g. 2GB (overrides --factory): "
                        "exact, IVF-PQ in RAM or on disk, shortlist re-scored exactly")
    s.add_argument("--precision", choices=PRECISION_CHOICES,
                   help="backbone arithmetic: fp32 (default), bf16, int8 (Linear layers), or auto: the fastest that "
                        "agrees with fp32 on this machine (probed once, cached); queries use the index's")

    s = sub.add_parser("query", help="localize a folder of query images against an index")
    s.add_argument("index_dir")
    s.add_argument("query_dir")
    s.add_argument("--top-k", type=positive_int, default=20)
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
    s.add_argument("--num-rerank", type=positive_int, help="candidates re-ranked per query (default: the method's)")
    s.add_argument("-o", "--out", help="output folder (default RESULTS_DIR/rerank-METHOD-PRESET)")
    s.add_argument("--gt", help="ground truth, as for `vprkit query`")
    s.add_argument("--threshold", type=float)
    s.add_argument("--match-figures", type=at_least(0), default=rerank_step.MATCH_FIGURES, metavar="N",
                   help="patch-based methods: draw the verified correspondences with the top 1 for the report's "
                        f"first N queries, failures first (default {rerank_step.MATCH_FIGURES}; 0: none)")

    _train_parser(sub)

    s = sub.add_parser("compare", help="two results folders side by side: metrics, per-query wins and losses")
    s.add_argument("results_a")
    s.add_argument("results_b")
    s.add_argument("-o", "--out", default="compare", help="folder for report.html and compare.json")
    s.add_argument("--gt", help="ground truth (default: the one RESULTS_A's results.json records)")
    s.add_argument("--threshold", type=float)

    s = sub.add_parser("export", help="a results folder as hloc or Kapture retrieval files")
    s.add_argument("results_dir")
    s.add_argument("--format", required=True, choices=["hloc", "kapture"])
    s.add_argument("-o", "--out", required=True, help="output folder")
    _segvlad_parser(sub)
    _sequence_parser(sub)

    s = sub.add_parser("match-two", help="Patch-NetVLAD score and patch correspondences of two images")
    s.add_argument("image_a")
    s.add_argument("image_b")
    s.add_argument("--preset", default="performance", help="patchnetvlad preset (performance, speed, storage, ...: "
                   "`vprkit presets`); the score is the weighted sum of the per-size scores")
    s.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override any preset parameter")
    s.add_argument("-o", "--out", default="patchMatchings.png", help="PNG of the verified patch correspondences")

    s = sub.add_parser("demo", help="run the whole pipeline on the shipped Corridor set")
    s.add_argument("-o", "--out", default="vprkit_demo")
    s.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(CONFS))

    sub.add_parser("presets", help="list the named presets")
    _serve_parser(sub)
    return p


def _serve_parser(sub) -> None:
    """`vprkit serve INDEX` and `vprkit keys add`: the localization service (needs the `serve` extra)."""
    from .service.commands import add_parsers

    add_parsers(sub, parse_overrides)


def _train_parser(sub) -> None:
    """`vprkit train netvlad|ames|gcsa ...`: every trainable method under one command."""
    t = sub.add_parser("train", help="train a method: netvlad (cluster, train, test), ames, gcsa")
    tsub = t.add_subparsers(dest="method", required=True)
    s = tsub.add_parser("netvlad", help="NetVLAD (+ attention) on images with positions: cluster, train, test")
    s.add_argument("mode", choices=["cluster", "train", "test"])
    s.add_argument("map_dir")
    s.add_argument("query_dir", nargs="?",
                   help="query images (not with --set data.source=map: label-free, the map's route gives positives)")
    s.add_argument("-o", "--out", required=True, help="run folder (centroids.npz, last.pt, best.pt, log.csv)")
    s.add_argument("--preset", default="mobilenetv2-netvlad", help="training preset (see `vprkit presets`)")
    s.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override any setting with dotted keys, e.g. train.epochs=5 data.positions=utm")
    s.add_argument("--restart", action="store_true",
                   help="train: start over instead of continuing the run in OUT (last.pt, same settings)")
    s.add_argument("--checkpoint", help="test: the trained checkpoint (default: the untrained k-means NetVLAD)")
    s.add_argument("--split", default="test", choices=["train", "val", "test"], help="test: which split")

    s = tsub.add_parser("ames", help="an AMES re-ranker (fp, or binary by distillation) on a retrieval")
    s.add_argument("results_dir", help="a `vprkit query` results folder (its top-k are the training candidates)")
    s.add_argument("--gt", required=True, help="ground truth, as for `vprkit query`")
    s.add_argument("--threshold", type=float)
    s.add_argument("-o", "--out", required=True, help="run folder (checkpoints, log.csv, cached local features)")
    s.add_argument("--preset", default="fp", help="fp, fp-chamfer (labels + Chamfer similarity as a soft target), "
                   "or binary (needs --set teacher=FP_MODEL/best.pt)")
    s.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override any training setting")
    s.add_argument("--restart", action="store_true", help="start over instead of resuming OUT/last.pt")

    s = tsub.add_parser("gcsa", help="GCSA re-ranker on a retrieval of training queries")
    s.add_argument("results_dir", help="`vprkit query` results folder of the training queries")
    s.add_argument("--gt", required=True, help="ground truth, as for `vprkit query`")
    s.add_argument("--threshold", type=float)
    s.add_argument("-o", "--out", required=True, help="training folder (checkpoints, logs)")
    s.add_argument("--map-sideinfo", help="index | sequence | utm | msls | metadata .csv")
    s.add_argument("--query-sideinfo", help="as --map-sideinfo; positions are the truth the priors are drawn from")
    s.add_argument("--preset", default="position", help="GCSA training preset (see `vprkit presets`)")
    s.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override conf keys (JSON values)")
    s.add_argument("--restart", action="store_true", help="start over instead of continuing the run in OUT")


LEGACY_TRAIN = {"train-ames": ["train", "ames"]}  # old command -> new words
NETVLAD_MODES = ("cluster", "train", "test")


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
    s.add_argument("--top-k", type=positive_int, default=20)
    s.add_argument("--top-k-segments", type=positive_int, help="map segments each query segment retrieves")
    s.add_argument("--scoring", choices=("votes", "reference"),
                   help="votes: per-query similarity votes (serving); reference: the original's min-max over the "
                        "whole run (default: the index's preset)")
    s.add_argument("-o", "--out")
    s.add_argument("--gt")
    s.add_argument("--threshold", type=float)


def _sequence_parser(sub) -> None:
    """`vprkit sequence`: localize a stream of query frames (SeqSLAM, HMM)."""
    s = sub.add_parser("sequence", help="sequence matching of a query stream (SeqSLAM, HMM) on an index")
    s.add_argument("source", help="an index folder (then give QUERY_DIR), or a `vprkit query` results folder")
    s.add_argument("query_dir", nargs="?", help="query frames, in stream order (sorted names, or --set query_order)")
    s.add_argument("--method", default="seqslam", choices=["seqslam", "hmm"])
    s.add_argument("--preset", help="the method's preset (e.g. seqslam-candidates, hmm-viterbi; see `vprkit presets`)")
    s.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override preset values (ds=20)")
    s.add_argument("-o", "--out", help="output folder (default .../sequence-PRESET beside the query results)")
    s.add_argument("--gt", help="ground truth, as for `vprkit query`")
    s.add_argument("--threshold", type=float)


def _sequence(args: argparse.Namespace) -> None:
    from .sequence import pipeline as seq

    conf = seq.get_conf(args.preset or args.method, **parse_overrides(args.set))
    if conf["method"] != args.method:
        raise ValueError(f"preset '{args.preset}' is a {conf['method']} preset, not {args.method}")
    if args.query_dir is None:
        res = seq.main(conf, None, None, args.out, args.gt, args.threshold, args.source, args.device)
    else:
        res = seq.main(conf, args.source, args.query_dir, args.out, args.gt, args.threshold, device=args.device)
    if "metrics" in res:
        keys = ("R@1", "R@5", "Rec@100P", "Rec@99P", "AUC-PR")
        print(metrics.format_table({"single image": res["metrics_single"], conf["preset"]: res["metrics"]}, keys))
    print(f"predictions, sequence.txt, results.json and report.html in {res['out_dir']}")


def _segvlad(args: argparse.Namespace) -> None:
    from .segvlad import api as seg_api

    if args.segvlad_command == "index":
        out = seg_api.index_map(args.map_dir, args.out, args.preset, args.device, **parse_overrides(args.set))
        print(f"SegVLAD index written to {out}")
    else:
        res = seg_api.localize(args.index_dir, args.query_dir, args.top_k, args.out, args.gt, args.threshold,
                               args.device, top_k_segments=args.top_k_segments, scoring=args.scoring)
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
    res = rerank_step.main(conf, args.results_dir, args.out, args.gt, args.threshold, args.num_rerank,
                           args.match_figures)
    if "metrics" in res:
        print(metrics.format_table({"global": res["metrics_global"], f"{args.method}": res["metrics"]}))
    print(f"predictions, pairs, results.json and report.html in {res['out_dir']}")


def _train(args: argparse.Namespace) -> None:
    """`vprkit train METHOD ...`: run the method's training `main` and print what it produced."""
    if args.method == "ames":
        from .train import ames as train_ames

        conf = train_ames.get_conf(args.preset, device=args.device, **parse_overrides(args.set))
        best = train_ames.main(conf, args.results_dir, args.out, args.gt, args.threshold, not args.restart)
        print(f"best model: {best} (use: vprkit rerank RESULTS --method ames --set checkpoint={best})")
        return
    if args.method == "gcsa":
        from .train import gcsa

        conf = gcsa.get_conf(args.preset, **parse_overrides(args.set))
        path = gcsa.main(conf, args.results_dir, args.gt, args.out, args.map_sideinfo, args.query_sideinfo,
                         args.threshold, not args.restart)
        print(f"checkpoint: {path}")
        return
    from .train import netvlad

    conf = netvlad.get_conf(args.preset, parse_overrides(args.set))
    res = netvlad.main(conf, args.map_dir, args.query_dir, args.out, args.mode, not args.restart, args.checkpoint,
                       args.split, args.device)
    if args.mode == "test":
        print(metrics.format_table({args.checkpoint or "untrained (k-means)": res}))
    else:
        print(json.dumps(res, indent=1))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(modern_argv(sys.argv[1:] if argv is None else list(argv)))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        if args.command == "index" and args.append:
            added = api.append_map(args.map_dir, args.out, args.device, batch_size=args.batch_size)
            print(f"{len(added)} images appended to {args.out}")
        elif args.command in ("serve", "keys", "replay"):
            args.run(args)
        elif args.command == "index":
            out = api.index_map(args.map_dir, args.out, args.preset, args.factory, args.device, ray=args.ray,
                                workers=args.workers, memory_budget=args.memory_budget,
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
        elif args.command == "compare":
            from . import compare

            res = compare.main(args.results_a, args.results_b, args.out, args.gt, args.threshold)
            print(metrics.format_table(res["metrics"]))
            print(f"B right where A wrong: {res['b_wins']}, A right where B wrong: {res['a_wins']} "
                  f"(both right {res['both_right']}, both wrong {res['both_wrong']})\nreport: {res['report']}")
        elif args.command == "export":
            from . import export

            print("\n".join(map(str, export.main(args.results_dir, args.format, args.out))))
        elif args.command == "segvlad":
            _segvlad(args)
        elif args.command == "sequence":
            _sequence(args)
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
            from .sequence.pipeline import CONFS as SEQ_CONFS

            for name, conf in SEQ_CONFS.items():
                print(f"sequence {name:18s} {json.dumps(conf)}")
            from .train import netvlad

            for name, conf in netvlad.CONFS.items():
                print(f"train {name:28s} {json.dumps(conf)}")
    except (FileNotFoundError, ValueError, KeyError) as exc:  # bad input (InputError is a ValueError)
        print(f"vprkit: error: {exc.args[0] if isinstance(exc, KeyError) and exc.args else exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a failed write (WriteError names the file), or another system error
        print(f"vprkit: error: {exc}", file=sys.stderr)
        return 1
    return 0


def at_least(minimum: int):
    """argparse type: an integer >= `minimum` (smaller counts are refused with exit code 2)."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    parse.__name__ = "integer"  # argparse's "invalid integer value: 'x'"
    return parse


positive_int = at_least(1)


if __name__ == "__main__":
    sys.exit(main())
