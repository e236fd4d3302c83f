"""Sequence matching step (hloc style): presets + `main(conf, ...)` over a saved index and a query stream.

The queries are a stream (folder order or timestamps); each frame is localized from it and its predecessors
(`online`, usable on a robot) or from a window around it (`offline`). Writes the usual predictions.txt,
results.json (sequence metrics beside single-image ones), report.html, and sequence.txt (per frame: estimate and
confidence, the score the precision-recall metrics threshold).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..config import ConfigError, Presets, require_counts
from ..data.groundtruth import GroundTruth, MapPositions, load_ground_truth, restrict
from ..data.images import list_images
from ..data.safeio import InputError
from ..evaluation import metrics, outputs, report
from ..features import extract, h5io
from ..index import faiss_index, freshness
from ..index.layout import MAP_FEATURES, QUERY_FEATURES, STATE_FILE
from ..results import (
    RESULTS_FILE,
    SEQUENCE_FILE,
    Meter,
    gt_record,
    guarded_folder,
    load_retrieval,
    query_feature_path,
    read_results,
    stored_query_descriptors,
    write_results,
)
from . import hmm, matcher, order

_COMMON = {"mode": "online", "search": "full", "top_k": 20, "map_order": "folder", "query_order": "folder"}
_SEQSLAM = {"method": "seqslam", **_COMMON, "ds": 10, "vmin": 0.8, "vmax": 1.2, "enhance": 10, "exclude": 10,
            "neighbours": 5}
_HMM = {"method": "hmm", **_COMMON, "velocity": 1.0, "sigma": 1.0, "max_step": 4, "back": 1, "jump": 1e-3,
        "temperature": 0.02, "radius": None, "step": 0.0}
CONFS: dict[str, dict] = {
    "seqslam": _SEQSLAM,  # OpenSeqSLAM's defaults (ds 10, v 0.8-1.2, enhancement over 10 places), online
    "seqslam-offline": {**_SEQSLAM, "mode": "offline"},
    "seqslam-candidates": {**_SEQSLAM, "search": "candidates"},  # large maps: global top-K + neighbours only
    "hmm": _HMM,  # forward filtering
    "hmm-viterbi": {**_HMM, "mode": "offline"},
}
SEQUENCE_HEADER = "# query\testimate\tconfidence\n"  # of SEQUENCE_FILE (read back by `results.read_sequence`)


def check_conf(conf: dict) -> dict:
    """Refuse a mode or search no matcher implements, and counts below one."""
    if conf["mode"] not in ("online", "offline") or conf["search"] not in ("full", "candidates"):
        raise ConfigError(f"mode must be online|offline and search full|candidates, got {conf['mode']}, "
                          f"{conf['search']}")
    return require_counts(conf, "top_k", "ds")


# each preset holds every key of its method, so a SeqSLAM preset refuses the HMM's keys
CONFIG = Presets("sequence", {}, CONFS, "seqslam", check=check_conf)


def transitions(conf: dict, num_places: int, positions: np.ndarray | None) -> hmm.Transitions:
    """HMM moves: between places within `radius` when positions and a radius are given, else along the route."""
    if positions is not None and conf["radius"]:
        return hmm.position_transitions(positions, conf["radius"], conf["step"], conf["sigma"], conf["jump"])
    return hmm.route_transitions(num_places, conf["velocity"], conf["sigma"], conf["max_step"], conf["back"],
                                 conf["jump"])


def match(conf: dict, q_desc: np.ndarray, map_desc: np.ndarray, positions: np.ndarray | None = None,
          search: matcher.Search | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Localize a query stream (Q, D) on a map (M, D) in route order: (estimates, confidences, ranked places
    (Q, k), their scores), all in route order. `search` finds top-K places (candidates mode; default exact)."""
    q_desc = np.ascontiguousarray(q_desc, dtype=np.float32)
    map_desc = np.ascontiguousarray(map_desc, dtype=np.float32)
    if conf["search"] == "candidates" and search is None:
        search = matcher.exact_search(map_desc)
    if conf["method"] == "seqslam":
        return matcher.seqslam_batch(q_desc, map_desc, conf, search)
    return matcher.hmm_batch(q_desc, map_desc, conf, transitions(conf, len(map_desc), positions), search)


def map_route(mi: faiss_index.MapIndex, spec: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(index ids along the route, their positions in that order or None): the map's live images only, so a
    removed image is never a place of the route, even before its index is compacted. In folder order the
    positions are the index's own, when it has one for every image."""
    live = np.array([i for i in range(len(mi.names)) if i not in mi.deleted], dtype=np.int64)
    lay = order.layout(spec, [mi.names[i] for i in live])
    known = MapPositions.of(mi.manifest)
    if lay.positions is None and spec == "folder" and known.complete():  # `vprkit index --positions`
        lay.positions = np.asarray(known.positions, dtype=np.float64)[live]
    return live[lay.order], None if lay.positions is None else lay.positions[lay.order]


def index_search(mi: faiss_index.MapIndex, route_ids: np.ndarray) -> matcher.Search:
    """Top-K search through a saved index, answering route positions (-1 for an empty slot, and for images a
    growing map gained after the route was made: they are no place of it)."""
    route_of = np.full(len(mi.names) + 1, -1, dtype=np.int64)  # the extra slot maps faiss's -1 padding to -1
    route_of[route_ids] = np.arange(len(route_ids))
    return lambda q, k: route_of[np.minimum(mi.search(q, k)[1], len(route_of) - 1)]


def _queries(index_dir: Path, manifest: dict, query_dir: str | Path | None, results_dir: str | Path | None,
             out_dir: Path, device: str) -> tuple[Path, list[str], list[str], np.ndarray]:
    """(query folder, all its images, described ones, their descriptors), from a `vprkit query` results folder
    (its saved query features) or by describing the folder with the map's model."""
    if results_dir is not None:
        r = load_retrieval(results_dir)
        desc = stored_query_descriptors(r) if r.manifest["model_key"] == manifest["model_key"] else None
        if desc is None:
            raise InputError(f"{results_dir}: no {QUERY_FEATURES} of the index {index_dir}'s model for every query; "
                             "give the index these results were made with, or rerun `vprkit query`")
        return r.query_dir, list_images(r.query_dir), r.q_names, desc
    q_dir = Path(query_dir).resolve()
    q_all = list_images(q_dir)
    state = index_dir / STATE_FILE
    with tempfile.TemporaryDirectory() as tmp:
        feats = query_feature_path(out_dir, Path(tmp), QUERY_FEATURES, manifest["model_key"])
        q_names = extract.main(manifest["conf"], q_dir, feats, state if state.exists() else None, names=q_all,
                               device=device)
        return q_dir, q_all, q_names, h5io.read_global(feats, q_names)


def folder_name(conf: dict) -> str:
    """`sequence-PRESET` plus each setting that differs from the preset (`sequence-seqslam-ds20-enhance0`), so runs
    with other settings never share a folder; a file setting (an order CSV) by its file name."""
    preset = CONFIG.resolve(conf["preset"])
    parts = [f"{key.replace('_', '')}{Path(str(value)).stem if key.endswith('_order') else value}"
             for key, value in conf.items() if key in preset and value != preset[key]]
    return "-".join(["sequence", conf["preset"], *parts]).replace("/", "_")


def _out_folder(conf: dict, base: Path, out_dir: str | Path | None) -> Path:
    """The output folder, refused when it holds a sequence run made with other settings (it would be replaced)."""
    out_dir = guarded_folder(out_dir if out_dir is not None else base / folder_name(conf))
    if (out_dir / RESULTS_FILE).is_file():
        old = read_results(out_dir).get("conf")
        if old is not None and old != conf:
            changed = sorted(k for k in conf if old.get(k) != conf[k])
            raise InputError(f"{out_dir} holds a sequence run with other settings ({', '.join(changed)}); give "
                             "another -o, or remove it")
    return out_dir


def main(conf: dict, source: str | Path, query_dir: str | Path | None = None, out_dir: str | Path | None = None,
         *, gt: str | None = None, threshold: float | None = None, device: str = "cpu") -> Path:
    """Sequence-match a query folder against the index `source`, or (no `query_dir`) the queries of the `vprkit
    query` results folder `source` on its own index; write predictions, results.json (+ sequence and single-image
    metrics with `gt`, and the ground truth they were scored with), report.html and sequence.txt into the returned
    folder (default `sequence-PRESET[-changed settings]`). Ground truth is checked before any extraction."""
    meter = Meter()
    results_dir = Path(source) if query_dir is None else None
    index_dir = Path(read_results(source)["index"] if results_dir is not None else source)
    mi = faiss_index.load(index_dir)
    freshness.warn_if_changed(mi, index_dir)
    base = Path(results_dir) if results_dir is not None else index_dir / "results" / Path(query_dir).name
    q_listed = list_images(read_results(results_dir)["queries"] if results_dir is not None else query_dir)
    truth = load_ground_truth(gt, q_listed, mi.names, threshold, MapPositions.of(mi.manifest)) if gt else None
    out_dir = _out_folder(conf, base, out_dir)
    q_dir, q_all, q_names, q_desc = _queries(index_dir, mi.manifest, query_dir, results_dir, out_dir, device)
    route, m_pos = map_route(mi, conf["map_order"])
    q_lay = order.layout(conf["query_order"], q_names)
    est, confidence, ids, scores = match(conf, q_desc[q_lay.order], h5io.read_global(index_dir / MAP_FEATURES,
                                                                                      mi.names)[route],
                                         m_pos, index_search(mi, route))
    stream, confidence = [q_names[i] for i in q_lay.order], as_stored(confidence)
    ids = np.where(ids >= 0, route[np.maximum(ids, 0)], -1)
    truth = restrict(truth, q_all, stream) if truth is not None else None
    extra: dict = {"conf": conf, **gt_record(gt, threshold)}
    single = None
    if truth is not None:
        s_scores, s_ids = mi.search(q_desc[q_lay.order], conf["top_k"])
        extra["metrics_single"] = metrics.evaluate(s_ids, truth, scores=s_scores)
        single = report.Ranking("single image", s_ids, s_scores, extra["metrics_single"])
    write_sequence(out_dir / SEQUENCE_FILE, stream, [mi.names[e] for e in route[est]], confidence,
                   frame_errors(ids[:, 0], truth, route, len(mi.names)) if truth is not None else None)
    title = f"vprkit: {q_dir.name} on {index_dir.name}, sequence matching ({conf['preset']})"
    write_results(out_dir, index_dir, q_dir, mi.manifest, q_all, stream, ids, scores, conf["top_k"], truth,
                  extra=extra, title=title, confidence=confidence, baseline=single,
                  label=f"sequence ({conf['preset']})", route=route, meter=meter, upstream=results_dir)
    return out_dir


class FrameErrors(NamedTuple):
    """Per frame: whether the estimate is a positive, and how far it is from the query (metres when the ground
    truth has 2-D positions, else map places along the route to the nearest positive; NaN: no positive)."""

    correct: np.ndarray
    error: np.ndarray
    unit: str


def frame_errors(estimates: np.ndarray, truth: GroundTruth, route: np.ndarray, num_map: int) -> FrameErrors:
    """The correct and error columns of sequence.txt (see `FrameErrors`): `estimates` map ids, `route` the map
    ids along the route."""
    correct = np.array([e in p for e, p in zip(estimates, truth.positives)], dtype=bool)
    if truth.q_positions is not None and truth.q_positions.shape[1] == 2:
        return FrameErrors(correct, np.linalg.norm(truth.q_positions - truth.m_positions[estimates], axis=1), "m")
    place = np.full(num_map, -1, dtype=np.int64)  # route position of each map id (-1: not on the route)
    place[route] = np.arange(len(route))
    on_route = [place[p][place[p] >= 0] for p in truth.positives]
    error = np.array([np.abs(p - place[e]).min() if len(p) else np.nan for e, p in zip(estimates, on_route)])
    return FrameErrors(correct, error, "places")


def as_stored(confidence: np.ndarray) -> np.ndarray:
    """The confidences as sequence.txt holds them (6 decimals): results.json and the report are scored with what
    `load_retrieval` reads back for `compare` and `evaluate`, ties and order alike."""
    return np.array([float(f"{c:.6f}") for c in confidence], dtype=np.float64)


def write_sequence(path: Path, queries: list[str], estimates: list[str], confidence: np.ndarray,
                   errors: FrameErrors | None = None) -> None:
    """sequence.txt: per frame in stream order `query<TAB>estimate<TAB>confidence` (tabs: names may hold spaces),
    and with ground truth `<TAB>correct (0/1)<TAB>error` (the header names the error's unit: error_m, error_places)."""
    if errors is None:
        outputs.atomic_write(path, SEQUENCE_HEADER + "".join(
            f"{q}\t{m}\t{c:.6f}\n" for q, m, c in zip(queries, estimates, confidence)))
        return
    header = SEQUENCE_HEADER.rstrip("\n") + f"\tcorrect\terror_{errors.unit}\n"
    outputs.atomic_write(path, header + "".join(
        f"{q}\t{m}\t{c:.6f}\t{int(ok)}\t{err:.3f}\n"
        for q, m, c, ok, err in zip(queries, estimates, confidence, errors.correct, errors.error)))
