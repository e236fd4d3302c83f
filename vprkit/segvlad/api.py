"""SegVLAD as a retrieval method: `index_map` (map -> segment store) and `localize` (queries -> rankings)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import h5py
import numpy as np

from ..config import index_conf
from ..data.groundtruth import MapPositions, load_ground_truth, restrict, utm_or_none
from ..data.images import list_images
from ..data.safeio import locked
from ..index import faiss_index, freshness
from ..index.layout import QUERY_SEGMENTS, SEGMENT_FEATURES, SEGMENT_STATE
from ..index.work import index_work, readable
from ..results import Meter, check_top_k, query_feature_path, results_folder, write_results
from . import extract
from .index import OWNER_FILE, SEGMENTS_FILE, SegmentIndex, rank_hits, write_store

logger = logging.getLogger("vprkit")
STATE_FILE, MAP_FEATURES = SEGMENT_STATE, SEGMENT_FEATURES


def index_map(map_dir: str | Path, out_dir: str | Path, preset: str = extract.DEFAULT_PRESET, *, device: str = "cpu",
              **overrides) -> Path:
    """Segment and describe the map, store all segments; resumable, the folder appears only when complete."""
    map_dir, out_dir = Path(map_dir).resolve(), Path(out_dir)
    conf = extract.CONFIG.resolve(preset, overrides)
    with index_work(out_dir) as work:
        names = readable(extract.main(conf, map_dir, work / MAP_FEATURES, work / STATE_FILE,
                                      names=list_images(map_dir), device=device), map_dir, work)
        total, dim = write_store(work / MAP_FEATURES, names, work)
        manifest = {"method": "segvlad", "conf": conf, "model_key": extract.model_key(conf), "dim": dim,
                    "num_segments": total, "map_dir": str(map_dir), "names": names,
                    "positions": utm_or_none(names), "versions": faiss_index.versions()}
        extra = {f: work / f for f in (MAP_FEATURES, STATE_FILE, SEGMENTS_FILE, OWNER_FILE)}
        faiss_index.save(out_dir, None, manifest, extra)
    logger.info("indexed %d segments of %d map images into %s", total, len(names), out_dir)
    return out_dir


def load_manifest(index_dir: Path) -> dict:
    """The manifest of a SegVLAD index, refusing a global-descriptor index."""
    manifest = faiss_index.read_manifest(index_dir)
    if manifest.get("method") != "segvlad":
        raise ValueError(f"{index_dir} is a global-descriptor index; use `vprkit query` for it, or build a "
                         "SegVLAD index with `vprkit segvlad index`")
    return manifest


def localize(index_dir: str | Path, query_dir: str | Path, out_dir: str | Path | None = None, *, top_k: int = 20,
             gt: str | None = None, threshold: float | None = None, device: str = "cpu", report_top: int = 5,
             query_batch: int = 64, preset: str | None = None, verify: bool = False, **overrides) -> Path:
    """Describe query segments with the map's model, vote map images, write predictions (+ metrics with `gt`).

    The config is the index's: `preset` only refuses an index of another descriptor space; `overrides` (as
    `vprkit segvlad query --set`) change the query's own settings (`top_k_segments`; `scoring`: `votes` scores
    each query on its own (serving), `reference` normalises by the least / greatest similarity retrieved over
    all these queries, the original's rule) and runtime ones (`batch_size`), never the descriptors.
    Warns when map images changed since indexing (a sample of them checked, every one with `verify`).
    """
    meter = Meter()
    index_dir, query_dir = Path(index_dir), Path(query_dir).resolve()
    check_top_k(top_k)
    manifest = load_manifest(index_dir)
    conf = index_conf(extract.CONFIG, extract.model_key, index_dir, manifest["conf"], preset, overrides)
    freshness.warn_if_segments_changed(manifest, index_dir, verify)
    m_names = manifest["names"]
    seg_index = SegmentIndex.load(index_dir, len(m_names))
    out_dir = results_folder(out_dir, index_dir, query_dir)
    q_all = list_images(query_dir)
    truth = load_ground_truth(gt, q_all, m_names, threshold, MapPositions.of(manifest)) if gt else None  # no work lost
    with locked(out_dir), tempfile.TemporaryDirectory() as tmp:
        q_feats = query_feature_path(out_dir, Path(tmp), QUERY_SEGMENTS, manifest["model_key"])
        q_names = readable(extract.main(conf, query_dir, q_feats, index_dir / STATE_FILE, names=q_all,
                                        device=device), query_dir)
        hits = []
        for s in range(0, len(q_names), query_batch):
            hits += seg_index.retrieve(read_segments(q_feats, q_names[s:s + query_batch]),
                                     conf["top_k_segments"])
    ids, scores = rank_hits(hits, len(m_names), top_k, conf["scoring"])
    empty = [q for q, row in zip(q_names, ids) if row[0] < 0]
    if empty:
        logger.warning("%d queries got no votes (no segments, or none retrieved): %s", len(empty), empty[:5])
    truth = restrict(truth, q_all, q_names) if truth is not None else None
    write_results(out_dir, index_dir, query_dir, manifest, q_all, q_names, ids, scores, top_k, truth, report_top,
                  {"queries_without_votes": empty, "scoring": conf["scoring"],
                   "top_k_segments": conf["top_k_segments"]}, meter=meter)
    return out_dir


def read_segments(features: str | Path | h5py.File, names: list[str]) -> list[np.ndarray]:
    """The (S, D) float32 segment descriptors of each name, from a feature file (or an already open one, for
    callers that read a few names at a time many times)."""
    if not isinstance(features, h5py.File):
        with h5py.File(features, "r") as f:
            return read_segments(f, names)
    return [features[f"{n}/segments"][()].astype(np.float32) for n in names]
