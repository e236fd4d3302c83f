"""`vprkit index | query | evaluate | compare | export | models | demo`: the map, its queries and their results."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import api
from ..features.extract import AUTO, CONFIG, DEFAULT_PRESET
from ..index.faiss_index import DEFAULT_FACTORY
from ..models.precision import CHOICES as PRECISION_CHOICES
from .common import add_gt, add_query, add_settings, distance, fraction, overrides, positive_int, print_results


def add(sub) -> None:
    """Register the subcommands of this module."""
    s = sub.add_parser("index", help="extract map descriptors and build a saved index")
    s.add_argument("map_dir")
    s.add_argument("-o", "--out", required=True, help="index folder to create")
    add_settings(s, f"global descriptor preset (default {DEFAULT_PRESET}); 'auto' picks one from the map's images "
                 "and says why; with --append: refuse unless the index has this preset", None,
                 [AUTO, *sorted(CONFIG.presets)])
    s.add_argument("--positions", metavar="FILE.csv",
                   help="map image positions: a CSV 'name,easting,northing' (metres) or 'name,lat,lon' (degrees, "
                        "converted to UTM); kept in the index for ground truth, reports, sequences and the service "
                        "(with --append: the added images')")
    s.add_argument("--factory", default=DEFAULT_FACTORY, help="FAISS factory string, e.g. 'IVF1024,PQ32'")
    s.add_argument("--batch-size", type=positive_int)
    s.add_argument("--resize-max", type=positive_int, help="long image side before the backbone")
    s.add_argument("--fp16", action="store_true", default=None, help="store descriptors as float16")
    s.add_argument("--checkpoint", help="local weights file for the preset's backbone (e.g. an official DINOv2 .pth), "
                   "or a released model's file as its authors publish it (default: downloaded into the cache)")
    s.add_argument("--arch", help="DINOv2 size for --checkpoint: vits14, vitb14, vitl14, vitg14")
    s.add_argument("--append", action="store_true",
                   help="add MAP_DIR's new images to the existing index OUT (journaled, crash-safe)")
    s.add_argument("--keep-added", action="store_true",
                   help="rebuilding an index that holds images added through `serve` or --append: carry them over "
                        "(same model; without it such a rebuild is refused)")
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
    s.set_defaults(func=run_index, conf=index_conf)

    s = sub.add_parser("query", help="localize a folder of query images against an index")
    add_query(s)
    add_settings(s, "refuse to run unless the index was built with this preset",
                 set_help="runtime settings of the index's extraction (batch_size=4, max_pixels=...); settings that "
                          "change the descriptors are refused")
    s.add_argument("--nprobe", type=positive_int,
                   help="IVF lists visited per query (IVF indexes only; more = exact-er)")
    s.add_argument("--verify", action="store_true",
                   help="check every map image against the index for changes since indexing (default: a sample)")
    s.set_defaults(func=run_query)

    s = sub.add_parser("evaluate", help="metrics of a predictions.txt or a results folder against ground truth")
    s.add_argument("predictions", help="a predictions.txt, or a results folder (its recorded ground truth by default; "
                                       "a sequence run's confidence)")
    add_gt(s)
    s.add_argument("--target-precision", type=fraction, metavar="P",
                   help="also print the confidence threshold that reaches precision P (e.g. 0.99) and the recall there")
    s.add_argument("--map-dir", help="full map folder (for exact mAP); default: images named in the predictions")
    s.add_argument("--revisited", action="store_true",
                   help="--gt is a revisited Oxford/Paris gnd file (.pkl or .json): easy/medium/hard mAP and mP@k")
    s.set_defaults(func=run_evaluate)

    s = sub.add_parser("compare", help="results folders in one table: metrics, cost, per-query wins and losses, "
                                       "significance against the first")
    s.add_argument("results", nargs="+", metavar="RESULTS", help="two or more results folders (the first, A, is the "
                   "reference of the significance test and of the report)")
    s.add_argument("-o", "--out", default="compare",
                   help="folder for table.md / .csv / .tex, per_query.csv, report.html and compare.json")
    s.add_argument("--gt", help="ground truth (default: the one the first folder's results.json records)")
    s.add_argument("--threshold", type=distance)
    s.set_defaults(func=run_compare)

    s = sub.add_parser("export", help="a results folder as hloc or Kapture retrieval files")
    s.add_argument("results_dir")
    s.add_argument("--format", required=True, choices=["hloc", "kapture"])
    s.add_argument("-o", "--out", required=True, help="output folder")
    s.set_defaults(func=run_export)

    s = sub.add_parser("models", help="the authors' released models: size, training data, license, weights, cached")
    s.set_defaults(func=run_models)

    s = sub.add_parser("demo", help="run the whole pipeline on the shipped Corridor set")
    s.add_argument("-o", "--out", default="vprkit_demo")
    s.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(CONFIG.presets))
    s.set_defaults(func=run_demo)


def _index_overrides(args: argparse.Namespace) -> dict:
    """The dedicated flags as settings, then `--set`."""
    checkpoint = str(Path(args.checkpoint).resolve()) if args.checkpoint else None  # queries may run elsewhere
    return overrides(args, {"batch_size": args.batch_size, "preprocessing.resize_max": args.resize_max,
                            "fp16": args.fp16, "precision": args.precision, "model.checkpoint": checkpoint,
                            "model.arch": args.arch})


def index_conf(args: argparse.Namespace) -> dict:
    """The extraction config, checked before any work ('auto' is checked with the default preset: the map
    decides it when the step runs)."""
    preset = args.preset if args.preset not in (None, AUTO) else DEFAULT_PRESET
    return CONFIG.resolve(preset, _index_overrides(args))


def run_index(args: argparse.Namespace) -> None:
    over = _index_overrides(args)
    if args.append:
        added = api.append_map(args.map_dir, args.out, args.device, preset=None if args.preset == AUTO else args.preset,
                               positions=args.positions, **over)
        print(f"{len(added)} images appended to {args.out}")
        return
    index_conf(args)
    out = api.index_map(args.map_dir, args.out, args.preset or DEFAULT_PRESET, factory=args.factory,
                        device=args.device, ray=args.ray, workers=args.workers, memory_budget=args.memory_budget,
                        keep_added=args.keep_added, positions=args.positions, **over)
    print(f"index written to {out}")


def run_query(args: argparse.Namespace) -> None:
    print_results(api.localize(args.index_dir, args.query_dir, args.out, top_k=args.top_k, gt=args.gt,
                               threshold=args.threshold, preset=args.preset, device=args.device, nprobe=args.nprobe,
                               verify=args.verify, **overrides(args)))


def run_evaluate(args: argparse.Namespace) -> None:
    res = api.evaluate(args.predictions, args.gt, args.threshold, args.map_dir, args.revisited, args.target_precision)
    print(json.dumps(res, indent=1))
    if args.target_precision is not None:
        point = res["operating_point"]
        print(f"precision >= {args.target_precision:g}: " + (
            f"accept matches with confidence >= {point['confidence_threshold']:.6g}: recall {point['recall']:.3f} "
            f"(precision {point['precision']:.3f})" if point else "no confidence threshold reaches it"))


def run_compare(args: argparse.Namespace) -> None:
    from .. import compare

    out = compare.main(args.results, args.out, gt=args.gt, threshold=args.threshold)
    res = json.loads((out / compare.COMPARE_FILE).read_text(encoding="utf-8"))
    print((out / f"{compare.TABLE_STEM}.md").read_text(encoding="utf-8"))
    print(f"B right where A wrong: {res['b_wins']}, A right where B wrong: {res['a_wins']} "
          f"(both right {res['both_right']}, both wrong {res['both_wrong']})\nreport: {res['report']}")


def run_export(args: argparse.Namespace) -> None:
    from .. import export

    print(f"{args.format} files in {export.main(args.results_dir, args.out, fmt=args.format)}")


def run_demo(args: argparse.Namespace) -> None:
    from .. import demo

    demo.main(args.out, args.preset, args.device)


def run_models(args: argparse.Namespace) -> None:
    """`vprkit models`: one row per released model (the weights column says where the file comes from)."""
    from ..models import weights, zoo

    rows = [("preset", "dim", "input", "training data", "license", "cached", "weights")]
    for name, e in sorted(zoo.entries().items()):
        size = "x".join(map(str, e.resize)) if e.resize else "as given"
        rows.append((name, str(e.dim), size, e.training_data, e.license, "yes" if weights.is_cached(e) else "no",
                     e.weights.url or e.weights.note or e.code))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    print(f"cache: {weights.weights_dir()}; index with one: vprkit index MAP -o IDX --preset NAME [--checkpoint FILE]")
