"""Sequence matching step (hloc style): presets + `main(conf, ...)` over a saved index and a query stream.

The queries are a stream (folder order or timestamps); each frame is localized from it and its predecessors
(`online`, usable on a robot) or from a window around it (`offline`). Writes the usual predictions.txt,
results.json (sequence metrics beside single-image ones), report.html, and sequence.txt (per frame: estimate and
confidence, the score the precision-recall metrics threshold).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from .. import api
from ..data.groundtruth import ground_truth_for_kept
from ..data.images import list_images
from ..evaluation import metrics, outputs
from ..features import extract, h5io
from ..index import faiss_index
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
QUERY_FEATURES = "query_features.h5"


def get_conf(preset: str, **overrides) -> dict:
    """A copy of a preset with `overrides`; unknown keys are refused (a typo would otherwise be ignored)."""
    if preset not in CONFS:
        raise KeyError(f"unknown sequence preset '{preset}'; choose one of {sorted(CONFS)}")
    conf = {**CONFS[preset], "preset": preset}
    unknown = sorted(set(overrides) - set(conf))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown} for sequence preset '{preset}'; known: {sorted(conf)}")
    conf.update(overrides)
    if conf["mode"] not in ("online", "offline") or conf["search"] not in ("full", "candidates"):
        raise ValueError(f"mode must be online|offline and search full|candidates, got {conf['mode']}, "
                         f"{conf['search']}")
    return conf


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
    removed image is never a place of the route, even before its index is compacted."""
    live = np.array([i for i in range(len(mi.names)) if i not in mi.deleted], dtype=np.int64)
    lay = order.layout(spec, [mi.names[i] for i in live])
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
        results_dir = Path(results_dir)
        info_path, feats = results_dir / "results.json", results_dir / QUERY_FEATURES
        if not info_path.is_file() or not feats.is_file():
            raise FileNotFoundError(f"{results_dir}: not a `vprkit query` results folder (needs results.json and "
                                    f"{QUERY_FEATURES})")
        info = json.loads(info_path.read_text())
        q_dir = Path(info["queries"])
        q_all = list_images(q_dir)
        skipped = set(info.get("skipped_queries", []))
        q_names = [n for n in q_all if n not in skipped]
        return q_dir, q_all, q_names, h5io.read_global(feats, q_names)
    q_dir = Path(query_dir).resolve()
    q_all = list_images(q_dir)
    state = index_dir / api.STATE_FILE
    with tempfile.TemporaryDirectory() as tmp:
        feats = api.query_feature_path(out_dir, Path(tmp), QUERY_FEATURES, manifest["model_key"])
        q_names = extract.main(manifest["conf"], q_dir, feats, state if state.exists() else None, names=q_all,
                               device=device)
        return q_dir, q_all, q_names, h5io.read_global(feats, q_names)


def main(conf: dict, index_dir: str | Path | None, query_dir: str | Path | None = None,
         out_dir: str | Path | None = None, gt: str | None = None, threshold: float | None = None,
         results_dir: str | Path | None = None, device: str = "cpu") -> dict:
    """Sequence-match a query folder against an index, or the queries of a `vprkit query` results folder (index
    None: the one it was made with); write predictions, results.json (+ sequence and single-image metrics with
    `gt`), report.html and sequence.txt."""
    if (query_dir is None) == (results_dir is None):
        raise ValueError("give either a query folder or a `vprkit query` results folder")
    if index_dir is None:
        info = Path(results_dir) / "results.json"
        if not info.is_file():
            raise FileNotFoundError(f"{info} not found: give a `vprkit query` results folder or INDEX QUERY_DIR")
        index_dir = json.loads(info.read_text())["index"]
    index_dir = Path(index_dir)
    mi = faiss_index.load(index_dir)
    base = Path(results_dir) if results_dir is not None else index_dir / "results" / Path(query_dir).name
    out_dir = Path(out_dir) if out_dir is not None else base / f"sequence-{conf['preset']}"
    out_dir.mkdir(parents=True, exist_ok=True)
    q_dir, q_all, q_names, q_desc = _queries(index_dir, mi.manifest, query_dir, results_dir, out_dir, device)
    m_names = mi.names
    map_desc = h5io.read_global(index_dir / api.MAP_FEATURES, m_names)
    route, m_pos = map_route(mi, conf["map_order"])
    q_lay = order.layout(conf["query_order"], q_names)
    est, confidence, ids, scores = match(conf, q_desc[q_lay.order], map_desc[route], m_pos, index_search(mi, route))
    stream = [q_names[i] for i in q_lay.order]
    ids = np.where(ids >= 0, route[np.maximum(ids, 0)], -1)
    est = route[est]
    outputs.atomic_write(out_dir / "sequence.txt", "# query estimate confidence\n" + "".join(
        f"{q} {m_names[e]} {c:.6f}\n" for q, e, c in zip(stream, est, confidence)))
    truth = ground_truth_for_kept(gt, q_all, stream, m_names, threshold) if gt is not None else None
    extra: dict = {"conf": conf}
    if truth is not None:
        s_scores, s_ids = mi.search(q_desc[q_lay.order], conf["top_k"])
        extra["metrics_single"] = metrics.evaluate(s_ids, truth, scores=s_scores)
    title = f"vprkit: {q_dir.name} on {index_dir.name}, sequence matching ({conf['preset']})"
    return api.write_results(out_dir, index_dir, q_dir, mi.manifest, q_all, stream, ids, scores, conf["top_k"], truth,
                             extra=extra, title=title, confidence=confidence)
