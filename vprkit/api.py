"""Python API: every step the CLI runs, and an in-memory path for live images.

Steps (each writes a folder a user can inspect, as its `vprkit` command does): `index_map` (`vprkit index`),
`append_map` (`index --append`), `localize` (`query`), `rerank`, `sequence`, `evaluate`, `compare`, `export`,
`segvlad_index` / `segvlad_localize`, `train_netvlad` / `train_ames` / `train_gcsa` (`vprkit train ...`) and `serve`,
each `step(conf, inputs, out, *, options) -> Path` (the output folder; `read_results` / `load_retrieval` read a
results folder back, `conf(step, preset, **overrides)` gives any step's config).

In memory: `model(index)` is an index's descriptor model, `describe(images, model)` gives descriptors of decoded
images equal to those `vprkit index` / `query` compute for the same image files (one preprocessing and batching
path, `features.extract.prepare` / `group`), and `search(index, descriptors)` ranks map images by them. The service
and the streaming localizer (`SequenceLocalizer`) describe images the same way.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .compare import main as compare
from .config import Presets, index_conf
from .data.groundtruth import (
    MapPositions,
    latlon_to_utm,
    load_ground_truth,
    positions_for,
    read_positions_csv,
    restrict,
    utm_or_none,
)
from .data.images import list_images
from .data.safeio import InputError, locked
from .evaluation import metrics, outputs
from .export import main as export
from .features import extract, h5io
from .index import faiss_index, freshness, large
from .index.layout import MAP_FEATURES, QUERY_FEATURES, STATE_FILE
from .index.work import carried, index_work, readable
from .registry import Registry
from .rerank.base import main as rerank
from .results import (
    Meter,
    Retrieval,
    check_top_k,
    gt_record,
    load_retrieval,
    query_feature_path,
    read_results,
    results_folder,
    write_results,
)
from .segvlad.api import index_map as segvlad_index
from .segvlad.api import localize as segvlad_localize
from .sequence.localizer import SequenceLocalizer
from .sequence.pipeline import main as sequence
from .train.ames import main as train_ames
from .train.gcsa import main as train_gcsa
from .train.netvlad import main as train_netvlad

__all__ = ["Matches", "Retrieval", "SequenceLocalizer", "append_map", "compare", "conf", "describe", "evaluate",
           "export", "index_map", "load_retrieval", "localize", "model", "read_results", "rerank", "search",
           "segvlad_index", "segvlad_localize", "sequence", "serve", "train_ames", "train_gcsa", "train_netvlad"]

logger = logging.getLogger("vprkit")
# step -> "module:CONFIG" (lazy: listing them imports each step); the re-rankers come from their own registry
STEPS = Registry("step config", "vprkit", {
    "index": ".features.extract:CONFIG",
    "local features": ".features.local:CONFIG",
    "segvlad index": ".segvlad.extract:CONFIG",
    "sequence": ".sequence.pipeline:CONFIG",
    "train netvlad": ".train.netvlad:CONFIG",
    "train ames": ".train.ames:CONFIG",
    "train gcsa": ".train.gcsa:CONFIG",
    "train head": ".train.head:CONFIG",
    "serve": ".service.settings:CONFIG",
})


def step_configs() -> Iterator[Presets]:
    """Every step's presets (what `vprkit presets` lists): the steps above, then each registered re-ranker."""
    from . import rerank as rerankers

    yield from (STEPS.load(name) for name in STEPS)
    yield from (rerankers.get_reranker_class(method).CONFIG for method in sorted(rerankers.REGISTRY))


def conf(step: str, preset: str | None = None, /, **overrides) -> dict:
    """A step's config, as `--preset` and `--set` give it on the command line: `step` named as `vprkit presets`
    lists it ('index', 'sequence', 'rerank ames', 'train gcsa', ...), its `preset` (the step's default when None),
    then `overrides` (nested sections as dicts; unknown keys refused with the valid ones)."""
    configs = {c.step: c for c in step_configs()}
    if step not in configs:
        raise ValueError(f"unknown step '{step}'; choose one of {sorted(configs)}")
    return configs[step].resolve(preset, overrides)


def index_map(map_dir: str | Path, out_dir: str | Path, preset: str = extract.DEFAULT_PRESET, *,
              factory: str = faiss_index.DEFAULT_FACTORY, device: str = "cpu", ray: str | None = None,
              workers: int = 2, memory_budget: str | None = None, keep_added: bool = False,
              positions: str | Path | None = None, **overrides) -> Path:
    """Extract map descriptors and save a searchable index in `out_dir`.

    Features are extracted into a work folder beside `out_dir` (resumable: rerun after a crash and
    finished images are skipped); the index folder appears only when complete. `ray` (an address, 'auto' or
    'local') extracts in shards on a Ray cluster; `memory_budget` ('2GB') picks the index from the map size
    instead of `factory` (compressed, on disk when needed, re-scored exactly; see `index.large`). Rebuilding an
    index that holds images added through the service or `--append` is refused, unless `keep_added` carries
    them over (same model only: their stored descriptors are reused). `positions` (a positions CSV: name, then
    easting/northing in metres or lat/lon in degrees, converted to UTM) gives every map image its position in the
    manifest; checked before any extraction. Without it, `@east@north@` file names give them when all have one.
    """
    map_dir, out_dir = Path(map_dir).resolve(), Path(out_dir)
    names = list_images(map_dir)
    given = map_positions(positions, names) if positions is not None else None
    by_name = dict(zip(names, given.positions)) if given is not None else {}
    if preset == extract.AUTO:
        preset, why = extract.auto_preset(map_dir, names)
        logger.warning("--preset auto: %s (%s)", preset, why)
    conf = extract.CONFIG.resolve(preset, overrides)
    with index_work(out_dir, keep_added) as work:
        added = carried(out_dir, extract.model_key(conf)) if keep_added else []
        names = readable(_extract_map(conf, map_dir, work, names, device, ray, workers), map_dir, work)
        manifest = {"conf": conf, "model_key": extract.model_key(conf), "map_dir": str(map_dir), "names": names,
                    "positions": utm_or_none(names), "versions": faiss_index.versions()}
        if given is not None:  # unreadable images were dropped from `names`
            manifest.update(positions=[by_name[n] for n in names], positions_file=str(Path(positions).resolve()),
                            utm_zone=given.zone)
        extra = {MAP_FEATURES: work / MAP_FEATURES}
        if (work / STATE_FILE).exists():
            extra[STATE_FILE] = work / STATE_FILE
        if memory_budget is None:
            desc = h5io.read_global(work / MAP_FEATURES, names)
            index = faiss_index.build(desc, factory)
            manifest.update(dim=int(desc.shape[1]), factory=factory)
        else:
            index, files = _build_large(work, names, large.parse_bytes(memory_budget), manifest)
            extra.update(files)
        faiss_index.save(out_dir, index, manifest, extra, added)
    logger.info("indexed %d map images into %s", len(names), out_dir)
    return out_dir


def map_positions(path: str | Path, names: list[str], zone: tuple[int, str] | None = None) -> MapPositions:
    """Every map image's position from a positions CSV (refused, naming the file and the row or the images it
    lacks, before any work), aligned with `names`; lat/lon degrees become UTM metres in `zone` (an index's), else
    in the zone of the map's centre."""
    rows, kind = read_positions_csv(path)
    pos = positions_for(path, rows, names, "map images")
    if kind == "latlon" and len(pos):
        pos, zone = latlon_to_utm(pos, zone)
    return MapPositions(pos.tolist(), zone if kind == "latlon" else None)


def _extract_map(conf: dict, map_dir: Path, work: Path, names: list[str], device: str, ray: str | None,
                 workers: int) -> list[str]:
    """Map features into work/map_features.h5: in this process, or in shards on Ray (in-process shards when the
    `ray` extra is not installed, with a warning)."""
    if ray is None:
        return extract.main(conf, map_dir, work / MAP_FEATURES, work / STATE_FILE, names=names, device=device)
    from .features import distributed

    return distributed.main(conf, map_dir, work / MAP_FEATURES, work / STATE_FILE, names=names, address=ray,
                            num_workers=workers, device=device)


def _build_large(work: Path, names: list[str], budget: int, manifest: dict) -> tuple:
    """Index chosen from the map size and `budget`, built chunk by chunk from the feature file (bounded memory);
    records the choice, its reason and the recall measured at build time in `manifest`."""
    staging = work / "index"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    dim = h5io.read_global(work / MAP_FEATURES, names[:1]).shape[1]
    choice = large.choose(len(names), dim, budget)
    rng = np.random.default_rng(0)
    n_train = large.train_size(choice, len(names))
    sampled = [names[i] for i in np.sort(rng.choice(len(names), n_train, replace=False))]
    chunks = (h5io.read_global(work / MAP_FEATURES, names[s:s + large.CHUNK]) for s in range(0, len(names),
                                                                                             large.CHUNK))
    # the training sample is passed without a reference kept here, so it is freed once trained
    index = large.build_chunked(chunks, len(names), dim, choice, staging, h5io.read_global(work / MAP_FEATURES,
                                                                                           sampled))
    full = large.descriptors(staging)
    probe = index if index is not None else large.read(staging / faiss_index.INDEX_FILE, True)
    recall = large.expected_recall(probe, full, choice.nprobe) if choice.rescore else 1.0
    manifest.update(dim=int(dim), factory=choice.factory, index=large.manifest_entry(choice, recall))
    logger.info("index: %s (%s); expected R@1 vs exact %.3f", choice.factory, choice.reason, recall)
    files = {large.DESCRIPTORS_FILE: staging / large.DESCRIPTORS_FILE}
    if index is None:
        files.update({faiss_index.INDEX_FILE: staging / faiss_index.INDEX_FILE,
                      large.IVFDATA_FILE: staging / large.IVFDATA_FILE})
    return index, files


def append_map(map_dir: str | Path, index_dir: str | Path, device: str = "cpu", preset: str | None = None,
               positions: str | Path | None = None, **overrides) -> list[str]:
    """Add the images of `map_dir` that the index lacks (by name), with the index's own model (refusing another
    `preset`; `overrides` may change runtime settings only); returns them. `positions` (a positions CSV) gives
    the added images their positions (lat/lon in the index's UTM zone), else `@east@north@` names do.

    Each addition is journaled durably (`index.growing`), so a crash keeps what was added and a rerun
    adds the rest; the journal is compacted into the base files at the end.
    """
    from .index.growing import MapWriter, check_name

    map_dir, index_dir = Path(map_dir).resolve(), Path(index_dir)
    writer = MapWriter(index_dir, compact_every=0)
    try:
        conf = index_conf(extract.CONFIG, extract.model_key, index_dir, writer.map.manifest["conf"], preset,
                          overrides)
        names = [check_name(n) for n in list_images(map_dir) if n not in writer.map.ids]
        zone = MapPositions.of(writer.map.manifest).zone
        by_name = dict(zip(names, map_positions(positions, names, zone).positions)) if positions is not None else {}
        if names:
            work = index_dir.with_name(f".{index_dir.name}.append")
            work.mkdir(exist_ok=True)
            state = index_dir / STATE_FILE
            names = extract.main(conf, map_dir, work / MAP_FEATURES, state if state.exists() else None, names=names,
                                 device=device)
            places = [by_name[n] for n in names] if by_name else utm_or_none(names) or [None] * len(names)
            for name, desc, pos in zip(names, h5io.read_global(work / MAP_FEATURES, names), places):
                writer.add(name, desc, (map_dir / name).read_bytes(), pos)
            writer.compact()
            shutil.rmtree(work, ignore_errors=True)
    finally:
        writer.close()
    logger.info("appended %d map images to %s", len(names), index_dir)
    return names


def localize(index_dir: str | Path, query_dir: str | Path, out_dir: str | Path | None = None, *, top_k: int = 20,
             gt: str | None = None, threshold: float | None = None, preset: str | None = None,
             device: str = "cpu", report_top: int = 5, nprobe: int | None = None, verify: bool = False,
             **overrides) -> Path:
    """Describe queries with the map's model (`overrides`: its runtime settings), search the index, write
    predictions (+ metrics with `gt`) into the returned results folder (default INDEX/results/QUERY_NAME; read it
    back with `vprkit.results`).

    Warns when map images changed since indexing: a sample of them is checked, every one with `verify`."""
    meter = Meter()
    index_dir, query_dir = Path(index_dir), Path(query_dir).resolve()
    check_top_k(top_k)
    mi = faiss_index.load(index_dir)
    freshness.warn_if_changed(mi, index_dir, verify)
    conf = index_conf(extract.CONFIG, extract.model_key, index_dir, mi.manifest["conf"], preset, overrides)
    out_dir = results_folder(out_dir, index_dir, query_dir)
    state = index_dir / STATE_FILE
    q_all = list_images(query_dir)
    # ground truth is checked before any extraction: a bad file costs nothing
    truth = load_ground_truth(gt, q_all, mi.names, threshold, MapPositions.of(mi.manifest)) if gt else None
    with locked(out_dir), tempfile.TemporaryDirectory() as tmp:
        q_feats = query_feature_path(out_dir, Path(tmp), QUERY_FEATURES, mi.manifest["model_key"])
        q_names = readable(extract.main(conf, query_dir, q_feats, state if state.exists() else None, names=q_all,
                                        device=device), query_dir)
        q_desc = h5io.read_global(q_feats, q_names)
    scores, ids = mi.search(q_desc, top_k, nprobe=nprobe)
    truth = restrict(truth, q_all, q_names) if truth is not None else None
    write_results(out_dir, index_dir, query_dir, mi.manifest, q_all, q_names, ids, scores, top_k, truth, report_top,
                  gt_record(gt, threshold), meter=meter)
    return out_dir


def evaluate(predictions: str | Path, gt: str | None = None, threshold: float | None = None,
             map_dir: str | Path | None = None, revisited: bool = False, target_precision: float | None = None) -> dict:
    """`vprkit evaluate`: metrics of a predictions.txt, or of a results folder (its ground truth by default, the map
    of its index, a sequence run's confidence), against ground truth (`map_dir`: the full map, for exact mAP;
    `revisited`: `gt` is a revisited Oxford / Paris gnd file). `target_precision` adds `operating_point`: the
    confidence threshold that reaches it and the recall there (None when no threshold does)."""
    folder = Path(predictions) if Path(predictions).is_dir() else None
    info = read_results(folder) if folder is not None else {}
    if gt is None:  # the ground truth the folder was scored with
        gt, threshold = info.get("gt"), threshold if threshold is not None else info.get("threshold")
    if gt is None:
        raise InputError(f"{predictions}: no ground truth given (--gt) or recorded in its results.json")
    if folder is not None:  # the confidence its step scored it with: a sequence run's, else the top-1 score
        r = load_retrieval(folder)
        q_names, m_names, preds, confidence, manifest = r.q_names, r.m_names, r.ids, r.query_confidence(), r.manifest
    else:
        q_names, m_names, preds, scores = outputs.read_predictions(predictions, list_images(map_dir) if map_dir
                                                                   else None)
        confidence, manifest = scores[:, 0].astype(np.float64), None
    if revisited:
        from .evaluation import revisited as rop

        return rop.evaluate(*rop.align(rop.load_gnd(gt), q_names, m_names, preds))
    truth = load_ground_truth(gt, q_names, m_names, threshold, MapPositions.of(manifest) if manifest else None)
    result = metrics.evaluate(preds, truth, scores=confidence[:, None])
    if target_precision is not None:
        correct, has_pos = metrics.top1_correct(preds, truth)
        result["operating_point"] = metrics.operating_point(confidence, correct, int(has_pos.sum()), target_precision)
    return result


def serve(index_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, keys: str | Path | None = None,
          settings: dict | None = None, device: str = "cpu") -> None:
    """`vprkit serve`: the HTTP localization service on an index, until stopped (needs the `serve` extra).
    `settings`: changes to the default preset's settings (a `preset` key picks another), or `conf("serve", ...)`."""
    from .service.server import run

    run(index_dir, host, port, keys, settings, device)


def model(index: str | Path, device: str = "cpu") -> extract.Extractor:
    """The descriptor model of an index (its preset, precision and fitted vocabulary / PCA), built once for many
    `describe` calls."""
    return extract.Extractor.with_state(faiss_index.read_manifest(index)["conf"], Path(index) / STATE_FILE, device)


def describe(images: list[Image.Image], index: str | Path | extract.Extractor, device: str = "cpu") -> np.ndarray:
    """Global descriptors (N, D) float32 of decoded images with an index's model (a folder, or `model(folder)` to
    build it once). They equal what `vprkit index` / `vprkit query` store for the same image files (float32
    storage): resizing (`resize_max` / `resize_min`), preprocessing and batching are the same code."""
    ext = index if isinstance(index, extract.Extractor) else model(index, device)
    return ext.describe_images(images)


@dataclass
class Matches:
    """A search's result: per query the top map image names, their scores and index ids (best first)."""

    names: list[list[str]]
    scores: np.ndarray  # (Q, k) similarities
    ids: np.ndarray  # (Q, k) map image numbers, -1 where the map has fewer than k images


def search(index: str | Path | faiss_index.MapIndex, descriptors: np.ndarray, top_k: int = 20,
           nprobe: int | None = None) -> Matches:
    """The `top_k` map images of each descriptor (rows of `describe`) in an index (a folder, or one loaded with
    `vprkit.index.faiss_index.load` to search many times)."""
    mi = index if isinstance(index, faiss_index.MapIndex) else faiss_index.load(index)
    scores, ids = mi.search(np.atleast_2d(descriptors), check_top_k(top_k), nprobe=nprobe)
    return Matches([[mi.names[j] for j in row if j >= 0] for row in ids], scores, ids)
