"""Python API: the same steps as the CLI (`vprkit index`, `vprkit query`)."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .data.groundtruth import GroundTruth, GroundTruthError, csv_positions, ground_truth_for_kept, utm_from_names
from .data.images import list_images
from .data.safeio import InputError, check_output, locked
from .evaluation import metrics, outputs, report
from .features import extract, h5io
from .index import faiss_index, large

logger = logging.getLogger("vprkit")
STATE_FILE, MAP_FEATURES = "aggregator.npz", "map_features.h5"
RESULTS_MARKERS = ("results.json", "query_features.h5", "query_segments.h5", "cache")


def index_map(map_dir: str | Path, out_dir: str | Path, preset: str = extract.DEFAULT_PRESET,
              factory: str = faiss_index.DEFAULT_FACTORY, device: str = "cpu", ray: str | None = None,
              workers: int = 2, memory_budget: str | None = None, keep_added: bool = False, **overrides) -> Path:
    """Extract map descriptors and save a searchable index in `out_dir`.

    Features are extracted into a work folder beside `out_dir` (resumable: rerun after a crash and
    finished images are skipped); the index folder appears only when complete. `ray` (an address, 'auto' or
    'local') extracts in shards on a Ray cluster; `memory_budget` ('2GB') picks the index from the map size
    instead of `factory` (compressed, on disk when needed, re-scored exactly; see `index.large`). Rebuilding an
    index that holds images added through the service or `--append` is refused, unless `keep_added` carries
    them over (same model only: their stored descriptors are reused).
    """
    map_dir, out_dir = Path(map_dir).resolve(), Path(out_dir)
    names = list_images(map_dir)
    if preset == extract.AUTO:
        preset, why = extract.auto_preset(map_dir, names)
        logger.warning("--preset auto: %s (%s)", preset, why)
    conf = extract.get_conf(preset, **overrides)
    with index_work(out_dir, keep_added) as work:
        added = _carried(out_dir, conf) if keep_added else []
        names = readable(_extract_map(conf, map_dir, work, names, device, ray, workers), map_dir, work)
        manifest = {"conf": conf, "model_key": extract.model_key(conf), "map_dir": str(map_dir), "names": names,
                    "positions": _utm_or_none(names), "versions": faiss_index.versions()}
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


def _carried(out_dir: Path, conf: dict) -> list[dict]:
    """The images added to the index at `out_dir` after its build, as records for the rebuilt one (same model)."""
    from .index.growing import added_records

    if not faiss_index.is_index(out_dir) or not faiss_index.added_names(out_dir):
        return []
    old = faiss_index.read_manifest(out_dir)["model_key"]
    if old != extract.model_key(conf):
        raise InputError(f"{out_dir}: --keep-added needs the model the index was built with ({old}): the added "
                         "images' descriptors are reused")
    return added_records(out_dir)


@contextmanager
def index_work(out_dir: Path, keep_added: bool = False) -> Iterator[Path]:
    """Lock OUT for the whole build, refuse it before any work when it is not an index (or holds added images that
    the rebuild would drop), and give the resumable work folder beside it (`.OUT.work`, removed once the index is
    saved; kept after a crash for the rerun)."""
    check_output(out_dir, [faiss_index.MARKER_FILE], "index", faiss_index.is_index)  # refused: no lock file left
    with locked(out_dir):
        check_output(out_dir, [faiss_index.MARKER_FILE], "index", faiss_index.is_index)
        if not keep_added:
            faiss_index.check_rebuild(out_dir)
        work = out_dir.with_name(f".{out_dir.name}.work")
        work.mkdir(parents=True, exist_ok=True)
        yield work
        shutil.rmtree(work, ignore_errors=True)


def readable(names: list[str], folder: Path, work: Path | None = None) -> list[str]:
    """`names` when some images could be read; else a clear error (and the useless work folder removed)."""
    if names:
        return names
    if work is not None:
        shutil.rmtree(work, ignore_errors=True)
    raise InputError(f"{folder}: none of its images could be read (each is named in the warnings above)")


def results_folder(out_dir: str | Path | None, index_dir: Path, query_dir: Path) -> Path:
    """The results folder (default INDEX/results/QUERY_NAME), refused when it holds something else."""
    out_dir = Path(out_dir) if out_dir is not None else index_dir / "results" / query_dir.name
    check_output(out_dir, RESULTS_MARKERS, "results folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def check_top_k(top_k: int) -> int:
    """A ranking needs at least one entry per query (0 used to end in an AssertionError inside FAISS)."""
    if top_k < 1:
        raise InputError(f"--top-k must be at least 1, got {top_k}")
    return top_k


def append_map(map_dir: str | Path, index_dir: str | Path, device: str = "cpu", **overrides) -> list[str]:
    """Add the images of `map_dir` that the index lacks (by name), with the index's own model; returns them.

    Each addition is journaled durably (`index.growing`), so a crash keeps what was added and a rerun
    adds the rest; the journal is compacted into the base files at the end.
    """
    from .index.growing import MapWriter, check_name

    map_dir, index_dir = Path(map_dir).resolve(), Path(index_dir)
    writer = MapWriter(index_dir, compact_every=0)
    try:
        conf = {**writer.map.manifest["conf"], **{k: v for k, v in overrides.items() if v is not None}}
        names = [check_name(n) for n in list_images(map_dir) if n not in writer.map.ids]
        if names:
            work = index_dir.with_name(f".{index_dir.name}.append")
            work.mkdir(exist_ok=True)
            state = index_dir / STATE_FILE
            names = extract.main(conf, map_dir, work / MAP_FEATURES, state if state.exists() else None, names=names,
                                 device=device)
            positions = _utm_or_none(names) or [None] * len(names)
            for name, desc, pos in zip(names, h5io.read_global(work / MAP_FEATURES, names), positions):
                writer.add(name, desc, (map_dir / name).read_bytes(), pos)
            writer.compact()
            shutil.rmtree(work, ignore_errors=True)
    finally:
        writer.close()
    logger.info("appended %d map images to %s", len(names), index_dir)
    return names


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
    check_top_k(top_k)
    mi = faiss_index.load(index_dir)
    conf = _check_same_model(index_dir, mi.manifest, preset)
    out_dir = results_folder(out_dir, index_dir, query_dir)
    state = index_dir / STATE_FILE
    q_all = list_images(query_dir)
    with locked(out_dir), tempfile.TemporaryDirectory() as tmp:
        q_feats = query_feature_path(out_dir, Path(tmp), "query_features.h5", mi.manifest["model_key"])
        q_names = readable(extract.main(conf, query_dir, q_feats, state if state.exists() else None, names=q_all,
                                        device=device), query_dir)
        q_desc = h5io.read_global(q_feats, q_names)
    scores, ids = mi.search(q_desc, top_k, nprobe=nprobe)
    truth = ground_truth_for_kept(gt, q_all, q_names, mi.names, threshold) if gt is not None else None
    return write_results(out_dir, index_dir, query_dir, mi.manifest, q_all, q_names, ids, scores, top_k, truth,
                         report_top, gt_record(gt, threshold))


def gt_record(gt: str | None, threshold: float | None) -> dict:
    """The ground truth a results.json was scored with, so `vprkit compare` can score it again."""
    if gt is None:
        return {}
    return {"gt": str(Path(gt).resolve()) if Path(gt).is_file() else gt, "threshold": threshold}


def report_positions(manifest: dict, q_names: list[str], gt: str | None
                     ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Query and map positions in metres for the report's map: from a positions-CSV ground truth, else from
    `@east@north@` file names; (None, None) when neither covers every image."""
    if gt is not None and gt.endswith(".csv"):
        try:
            return csv_positions(gt, q_names, manifest["names"])
        except GroundTruthError:
            pass
    q_pos = _utm_or_none(q_names) if manifest.get("positions") else None
    return (None, None) if q_pos is None else (np.array(q_pos), np.array(manifest["positions"]))


def query_feature_path(out_dir: Path, tmp_dir: Path, filename: str, key: str) -> Path:
    """Where to keep query features: in the results folder (reused by reruns and re-rankers), unless a file
    there holds another model's features, which is kept and a temporary file is used instead. A damaged file
    there is salvaged first (see `h5io.salvage`)."""
    path = out_dir / filename
    h5io.salvage(path)
    if path.exists() and h5io.read_attrs(path).get("model_key") != key:
        return tmp_dir / filename
    return path


def write_results(out_dir: Path, index_dir: Path, query_dir: Path, manifest: dict, q_all: list[str],
                  q_names: list[str], ids, scores, top_k: int, truth: GroundTruth | None,
                  report_top: int = 5, extra: dict | None = None, title: str | None = None,
                  confidence=None, baseline: report.Ranking | None = None,
                  match_figures: dict[int, report.MatchFigure] | None = None, match_limit: int | None = None) -> dict:
    """predictions.txt, pairs, results.json (+ metrics against `truth`) and report.html of a ranking.

    Precision-recall metrics threshold `confidence` (one per query) when given, else each query's top score;
    `baseline` (the ranking before re-ranking) adds the fixed / broken queries to the report, `match_figures`
    (drawn for the first `match_limit` queries of the report) its match figures."""
    m_names, conf = manifest["names"], manifest["conf"]
    outputs.write_predictions(out_dir / "predictions.txt", q_names, m_names, ids, scores)
    outputs.write_pairs(out_dir / f"pairs-top{top_k}.txt", q_names, m_names, ids)
    result: dict = {"index": str(Path(index_dir).resolve()), "index_fingerprint": faiss_index.fingerprint(index_dir),
                    "queries": str(query_dir), "preset": conf["preset"],
                    "num_queries": len(q_names), "num_map": len(m_names), "top_k": top_k,
                    "skipped_queries": sorted(set(q_all) - set(q_names)), **(extra or {})}
    if truth is not None:
        result["metrics"] = metrics.evaluate(ids, truth, scores=scores if confidence is None else confidence[:, None])
    outputs.write_json(out_dir / "results.json", result)
    title = title or f"vprkit: {query_dir.name} on {index_dir.name} ({conf['preset']})"
    q_pos, m_pos = report_positions(manifest, q_names, result.get("gt"))
    report.write_report(out_dir / "report.html", report.ReportData(
        title, query_dir, q_names, Path(manifest["map_dir"]), m_names,
        report.Ranking(conf["preset"] if baseline is None else "re-ranked", ids, scores, result.get("metrics")),
        truth.positives if truth else None, baseline, q_pos, m_pos, top=report_top, match_figures=match_figures,
        match_limit=match_limit))
    result["out_dir"] = str(out_dir)
    return result
