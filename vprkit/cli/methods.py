"""`vprkit rerank | match-two | segvlad | sequence`: methods run on an index or on a query's results."""

from __future__ import annotations

import argparse
import json

from .. import rerank
from ..evaluation import metrics
from ..rerank import base as rerank_step
from ..results import read_results
from .common import add_gt, add_query, add_settings, at_least, overrides, positive_int, print_results, step_conf


def add(sub) -> None:
    """Register the subcommands of this module."""
    s = sub.add_parser("rerank", help="re-rank the top of a global retrieval written by `vprkit query`")
    s.add_argument("results_dir", help="a query results folder (holds results.json and predictions.txt)")
    s.add_argument("--method", required=True, help="re-ranking method (see `vprkit presets`)")
    add_settings(s, "the method's named preset")
    s.add_argument("--num-rerank", type=positive_int, help="candidates re-ranked per query (default: the method's)")
    s.add_argument("-o", "--out", help="output folder (default RESULTS_DIR/rerank-METHOD-PRESET)")
    add_gt(s)
    s.add_argument("--match-figures", type=at_least(0), default=rerank_step.MATCH_FIGURES, metavar="N",
                   help="patch-based methods: draw the verified correspondences with the top 1 for the report's "
                        f"first N queries, failures first (default {rerank_step.MATCH_FIGURES}; 0: none)")
    s.set_defaults(func=run_rerank, conf=rerank_conf)

    s = sub.add_parser("match-two", help="Patch-NetVLAD score and patch correspondences of two images")
    s.add_argument("image_a")
    s.add_argument("image_b")
    add_settings(s, "patchnetvlad preset (performance, speed, storage, ...: `vprkit presets`); the score is the "
                 "weighted sum of the per-size scores", "performance")
    s.add_argument("-o", "--out", default="patchMatchings.png", help="PNG of the verified patch correspondences")
    s.set_defaults(func=run_match_two, conf=match_two_conf)

    _add_segvlad(sub)
    _add_sequence(sub)


def rerank_conf(args: argparse.Namespace) -> dict:
    return step_conf(rerank.get_reranker_class(args.method).CONFIG, args)


def run_rerank(args: argparse.Namespace) -> None:
    """Re-rank, print global vs re-ranked metrics."""
    out = rerank_step.main(rerank_conf(args), args.results_dir, args.out, gt=args.gt, threshold=args.threshold,
                           num_rerank=args.num_rerank, match_figures=args.match_figures)
    res = read_results(out)
    if "metrics" in res:
        print(metrics.format_table({"global": res["metrics_global"], f"{args.method}": res["metrics"]}))
    print(f"predictions, pairs, results.json and report.html in {out}")


def match_two_conf(args: argparse.Namespace) -> dict:
    return step_conf(rerank.get_reranker_class("patchnetvlad").CONFIG, args)


def run_match_two(args: argparse.Namespace) -> None:
    from ..rerank import patchnetvlad

    print(json.dumps(patchnetvlad.match_two(args.image_a, args.image_b, match_two_conf(args), args.out), indent=1))


def _add_segvlad(sub) -> None:
    """`vprkit segvlad index|query`: SegVLAD as a retrieval method (segments of the whole map)."""
    from ..segvlad.extract import CONFIG

    seg = sub.add_parser("segvlad", help="SegVLAD: retrieve image segments, vote map images")
    ssub = seg.add_subparsers(dest="segvlad_command", required=True)
    s = ssub.add_parser("index", help="segment and describe a map, store all its segments")
    s.add_argument("map_dir")
    s.add_argument("-o", "--out", required=True)
    add_settings(s, f"SegVLAD preset (default {CONFIG.default})", CONFIG.default, sorted(CONFIG.presets),
                 "override preset values, dotted for nested ones (order=2, segmenter.checkpoint=sam.pth)")
    s.set_defaults(func=run_segvlad_index, conf=segvlad_conf)
    s = ssub.add_parser("query", help="localize a folder of query images against a SegVLAD index")
    add_query(s)
    add_settings(s, "refuse to run unless the index was built with this preset (or its descriptors)", None,
                 sorted(CONFIG.presets),
                 "the query's settings (top_k_segments=20, scoring=votes) and runtime ones (batch_size=4); settings "
                 "that change the index's descriptors are refused")
    s.add_argument("--top-k-segments", type=positive_int, help="map segments each query segment retrieves "
                   "(as --set top_k_segments=N; default: the index's)")
    s.add_argument("--scoring", choices=("votes", "reference"),
                   help="votes: per-query similarity votes (serving); reference: the original's min-max over the "
                        "whole run (as --set scoring=NAME; default: the index's)")
    s.set_defaults(func=run_segvlad_query, conf=segvlad_query_check)


def segvlad_conf(args: argparse.Namespace) -> dict:
    from ..segvlad import extract

    return step_conf(extract.CONFIG, args)


def run_segvlad_index(args: argparse.Namespace) -> None:
    from ..segvlad import api as seg_api

    segvlad_conf(args)
    out = seg_api.index_map(args.map_dir, args.out, args.preset, device=args.device, **overrides(args))
    print(f"SegVLAD index written to {out}")


def _segvlad_query_overrides(args: argparse.Namespace) -> dict:
    return overrides(args, {"top_k_segments": args.top_k_segments, "scoring": args.scoring})


def segvlad_query_check(args: argparse.Namespace) -> dict:
    """The settings checked before the index is read (keys, types, choices), on the preset given or the default:
    the query runs with the index's config, these applied to it."""
    from ..segvlad import extract

    return extract.CONFIG.resolve(args.preset, _segvlad_query_overrides(args))


def run_segvlad_query(args: argparse.Namespace) -> None:
    from ..segvlad import api as seg_api

    segvlad_query_check(args)
    print_results(seg_api.localize(args.index_dir, args.query_dir, args.out, top_k=args.top_k, gt=args.gt,
                                   threshold=args.threshold, device=args.device, preset=args.preset,
                                   **_segvlad_query_overrides(args)))


def _add_sequence(sub) -> None:
    """`vprkit sequence`: localize a stream of query frames (SeqSLAM, HMM)."""
    s = sub.add_parser("sequence", help="sequence matching of a query stream (SeqSLAM, HMM) on an index")
    s.add_argument("source", help="an index folder (then give QUERY_DIR), or a `vprkit query` results folder")
    s.add_argument("query_dir", nargs="?", help="query frames, in stream order (sorted names, or --set query_order)")
    s.add_argument("--method", default="seqslam", choices=["seqslam", "hmm"])
    add_settings(s, "the method's preset (e.g. seqslam-candidates, hmm-viterbi; see `vprkit presets`)",
                 set_help="override preset values (ds=20); unknown keys are refused with the valid ones")
    s.add_argument("-o", "--out", help="output folder (default .../sequence-PRESET beside the query results, plus "
                   "each setting that differs from the preset: sequence-seqslam-ds20); one holding a run with other "
                   "settings is refused")
    add_gt(s)
    s.set_defaults(func=run_sequence, conf=sequence_conf)


def sequence_conf(args: argparse.Namespace) -> dict:
    from ..sequence import pipeline as seq

    conf = seq.CONFIG.resolve(args.preset or args.method, overrides(args))
    if conf["method"] != args.method:
        raise ValueError(f"preset '{args.preset}' is a {conf['method']} preset, not {args.method}")
    return conf


def run_sequence(args: argparse.Namespace) -> None:
    from ..sequence import pipeline as seq

    conf = sequence_conf(args)
    out = seq.main(conf, args.source, args.query_dir, args.out, gt=args.gt, threshold=args.threshold,
                   device=args.device)
    res = read_results(out)
    if "metrics" in res:
        keys = ("R@1", "R@5", "Rec@100P", "Rec@99P", "AUC-PR")
        print(metrics.format_table({"single image": res["metrics_single"], conf["preset"]: res["metrics"]}, keys))
    print(f"predictions, sequence.txt, results.json and report.html in {out}")
