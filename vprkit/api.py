"""Python API: the same steps as the CLI (`vprkit index`, `vprkit query`)."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from .data.groundtruth import GroundTruth, GroundTruthError, ground_truth_for_kept, utm_from_names
from .data.images import list_images
from .evaluation import metrics, outputs, report
from .features import extract, h5io
from .index import faiss_index

logger = logging.getLogger("vprkit")
STATE_FILE, MAP_FEATURES = "aggregator.npz", "map_features.h5"


def index_map(map_dir: str | Path, out_dir: str | Path, preset: str = extract.DEFAULT_PRESET,
              factory: str = faiss_index.DEFAULT_FACTORY, device: str = "cpu", **overrides) -> Path:
    """Extract map descriptors and save a searchable index in `out_dir`.

    Features are extracted into a work folder beside `out_dir` (resumable: rerun after a crash and
    finished images are skipped); the index folder appears only when complete.
    """
    map_dir, out_dir = Path(map_dir).resolve(), Path(out_dir)
    conf = extract.get_conf(preset, **overrides)
    names = list_images(map_dir)
    work = out_dir.with_name(f".{out_dir.name}.work")
    work.mkdir(parents=True, exist_ok=True)
    names = extract.main(conf, map_dir, work / MAP_FEATURES, work / STATE_FILE, names=names, device=device)
    desc = h5io.read_global(work / MAP_FEATURES, names)
    index = faiss_index.build(desc, factory)
    manifest = {"conf": conf, "model_key": extract.model_key(conf), "dim": int(desc.shape[1]),
                "factory": factory, "map_dir": str(map_dir), "names": names, "positions": _utm_or_none(names),
                "versions": faiss_index.versions()}
    extra = {MAP_FEATURES: work / MAP_FEATURES}
    if (work / STATE_FILE).exists():
        extra[STATE_FILE] = work / STATE_FILE
    faiss_index.save(out_dir, index, manifest, extra)
    shutil.rmtree(work, ignore_errors=True)
    logger.info("indexed %d map images into %s", len(names), out_dir)
    return out_dir


def _utm_or_none(names: list[str]) -> list[list[float]] | None:
    """Map positions when the file names carry them (`@east@north@`), for re-rankers and reports."""
    try:
        return utm_from_names(names).tolist()
    except GroundTruthError:
        return None


def _check_same_model(index_dir: Path, manifest: dict, preset: str | None) -> dict:
    """The config to describe queries with: the map's own, refusing a conflicting preset."""
    conf = manifest["conf"]
    # the precision is the index's (queries follow it), so --preset only checks the preset's own settings
    wanted = extract.get_conf(preset, precision=conf.get("precision")) if preset is not None else None
    if wanted is not None and extract.model_key(wanted) != manifest["model_key"]:
        raise ValueError(f"{index_dir} was built with preset '{conf['preset']}' "
                         f"({conf['model']['name']} + {conf['aggregator']['name']}); "
                         f"querying it with '{preset}' would compare different descriptor spaces")
    return conf


def localize(index_dir: str | Path, query_dir: str | Path, top_k: int = 20, out_dir: str | Path | None = None,
             gt: str | None = None, threshold: float | None = None, preset: str | None = None,
             device: str = "cpu", report_top: int = 5, nprobe: int | None = None) -> dict:
    """Describe queries with the map's model, search the index, write predictions (+ metrics with `gt`)."""
    index_dir, query_dir = Path(index_dir), Path(query_dir).resolve()
    mi = faiss_index.load(index_dir)
    conf = _check_same_model(index_dir, mi.manifest, preset)
    out_dir = Path(out_dir) if out_dir is not None else index_dir / "results" / query_dir.name
    out_dir.mkdir(parents=True, exist_ok=True)
    state = index_dir / STATE_FILE
    q_all = list_images(query_dir)
    with tempfile.TemporaryDirectory() as tmp:
        q_feats = query_feature_path(out_dir, Path(tmp), "query_features.h5", mi.manifest["model_key"])
        q_names = extract.main(conf, query_dir, q_feats, state if state.exists() else None, names=q_all,
                               device=device)
        q_desc = h5io.read_global(q_feats, q_names)
    scores, ids = mi.search(q_desc, top_k, nprobe=nprobe)
    truth = ground_truth_for_kept(gt, q_all, q_names, mi.names, threshold) if gt is not None else None
    return write_results(out_dir, index_dir, query_dir, mi.manifest, q_all, q_names, ids, scores, top_k, truth,
                         report_top)


def query_feature_path(out_dir: Path, tmp_dir: Path, filename: str, key: str) -> Path:
    """Where to keep query features: in the results folder (reused by reruns and re-rankers), unless a file
    there holds another model's features, which is kept and a temporary file is used instead."""
    path = out_dir / filename
    if path.exists() and h5io.read_attrs(path).get("model_key") != key:
        return tmp_dir / filename
    return path


def write_results(out_dir: Path, index_dir: Path, query_dir: Path, manifest: dict, q_all: list[str],
                  q_names: list[str], ids, scores, top_k: int, truth: GroundTruth | None,
                  report_top: int = 5, extra: dict | None = None, title: str | None = None) -> dict:
    """predictions.txt, pairs, results.json (+ metrics against `truth`) and report.html of a ranking."""
    m_names, conf = manifest["names"], manifest["conf"]
    outputs.write_predictions(out_dir / "predictions.txt", q_names, m_names, ids, scores)
    outputs.write_pairs(out_dir / f"pairs-top{top_k}.txt", q_names, m_names, ids)
    result: dict = {"index": str(index_dir), "queries": str(query_dir), "preset": conf["preset"],
                    "num_queries": len(q_names), "num_map": len(m_names), "top_k": top_k,
                    "skipped_queries": sorted(set(q_all) - set(q_names)), **(extra or {})}
    if truth is not None:
        result["metrics"] = metrics.evaluate(ids, truth)
    outputs.write_json(out_dir / "results.json", result)
    title = title or f"vprkit: {query_dir.name} on {index_dir.name} ({conf['preset']})"
    report.write_report(out_dir / "report.html", title, result.get("metrics"), query_dir, q_names,
                        Path(manifest["map_dir"]), m_names, ids, scores, truth and truth.positives, top=report_top)
    result["out_dir"] = str(out_dir)
    return result
