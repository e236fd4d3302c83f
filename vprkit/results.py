"""The results folder contract: what `vprkit query` writes and every later step (re-rankers, SegVLAD, sequences,
compare, export, training) reads, through this module only.

A results folder holds predictions.txt (each query's ranked map names and scores), pairs-topK.txt,
results.json (index path and fingerprint, query folder, preset, counts, skipped queries, metrics and the ground
truth they were scored with), report.html, and the queries' descriptors (`index.layout.QUERY_FEATURES`); a
sequence run adds sequence.txt, whose confidences (not the top-1 scores) are what its precision-recall thresholds.
Reading one checks that its index was not rebuilt since (`read_results`), and a step writes only into a folder
that is empty or already a results folder (`guarded_folder`).
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .data.groundtruth import GroundTruth, utm_or_none
from .data.safeio import InputError, check_output
from .evaluation import metrics, outputs, report
from .features import h5io
from .index import faiss_index
from .index.layout import IMAGES_DIR, MANIFEST_FILE, QUERY_FEATURES, QUERY_SEGMENTS

RESULTS_FILE, PREDICTIONS_FILE, REPORT_FILE = "results.json", "predictions.txt", "report.html"
SEQUENCE_FILE = "sequence.txt"  # a sequence run's frames (`vprkit.sequence.pipeline.write_sequence`)
RESULTS_MARKERS = (RESULTS_FILE, QUERY_FEATURES, QUERY_SEGMENTS, "cache")
PEAK_SINCE_STEP = "VmHWM since the step started (Linux /proc; reset through /proc/self/clear_refs)"
PEAK_OF_PROCESS = "ru_maxrss of the process (the peak since the process started)"


@dataclass
class Retrieval:
    """A global retrieval to re-rank, as `vprkit query` wrote it (candidates best first, -1 padded)."""

    index_dir: Path
    query_dir: Path
    map_dir: Path
    q_names: list[str]
    m_names: list[str]
    ids: np.ndarray  # (Q, N) map indices
    scores: np.ndarray  # (Q, N) global similarities
    manifest: dict
    results_dir: Path | None = None  # the query results folder (holds the queries' global features)
    fingerprint: str = ""  # of the index's manifest: keys caches fitted on the map (vocabularies, PCA)
    confidence: np.ndarray | None = None  # (Q,) the step's own confidence (a sequence run's); None: top-1 score

    def top(self, n: int) -> Retrieval:
        """The same retrieval cut to its first `n` candidates per query."""
        return Retrieval(self.index_dir, self.query_dir, self.map_dir, self.q_names, self.m_names,
                         self.ids[:, :n], self.scores[:, :n], self.manifest, self.results_dir, self.fingerprint,
                         self.confidence)

    def query_confidence(self) -> np.ndarray:
        """(Q,) what precision-recall thresholds, as the step that wrote the folder scored it: a sequence run's
        confidence (SeqSLAM's margin, the HMM's posterior), else each query's top-1 score."""
        return (self.scores[:, 0] if self.confidence is None else self.confidence).astype(np.float64)


class Meter:
    """Wall time and peak resident memory (RSS) of one step, from its start to `write_results`: every results.json
    records what its step cost. The peak is exact for the step on Linux (the kernel's high-water mark is reset when
    the meter starts); elsewhere it is the process's peak, earlier work in the same process included."""

    def __init__(self) -> None:
        self.source = PEAK_SINCE_STEP if _reset_peak() else PEAK_OF_PROCESS
        self.rss_at_start = _status_mb("VmRSS:")  # what earlier work in this process left resident
        self.start = time.perf_counter()
        self.stopped: dict | None = None

    def read(self) -> dict:
        """Seconds since the start (or until `stop`), the peak RSS in MB and how the peak was measured."""
        if self.stopped is not None:
            return self.stopped
        return {"wall_s": round(time.perf_counter() - self.start, 3), "peak_rss_mb": round(_peak_mb(self.source), 1),
                "peak_rss_source": self.source, "rss_at_start_mb": self.rss_at_start}

    def stop(self) -> None:
        """End the measured part here (what follows, such as drawing the report's figures, is not the method's)."""
        self.stopped = self.read()


def _reset_peak() -> bool:
    """Reset this process's RSS high-water mark (Linux >= 4.0); False where that cannot be done."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (`VmHWM:`, `VmRSS:`) in MB; None where there is no /proc."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    return next((round(int(line.split()[1]) / 1024, 1) for line in lines if line.startswith(field)), None)


def _peak_mb(source: str) -> float:
    """The peak RSS in MB: VmHWM when it was reset at the step's start, else ru_maxrss (KB on Linux)."""
    peak = _status_mb("VmHWM:") if source == PEAK_SINCE_STEP else None
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def index_bytes(index_dir: str | Path) -> int:
    """Bytes an index folder stores (FAISS index, map features, fitted state, ...), without the results folders
    written inside it and without the images a growing map keeps (those are the map itself)."""
    def size(folder: Path) -> int:
        if (folder / RESULTS_FILE).exists():
            return 0
        return sum(p.stat().st_size if p.is_file() else size(p) for p in folder.iterdir()
                   if not p.is_symlink() and p.name not in ("results", IMAGES_DIR))
    return size(Path(index_dir))


def cost_record(meter: Meter, num_queries: int, index_dir: Path, num_map: int, extra_bytes: float = 0.0,
                upstream: Path | None = None) -> dict:
    """What a step cost, for results.json's `cost`: wall time, ms per query, peak RSS, bytes stored per map image
    (the index, plus `extra_bytes` per image a re-ranker keeps); `upstream` (the retrieval a re-ranker or a
    sequence started from) adds its cost to the pipeline's figures."""
    step = meter.read()
    ms = 1000 * step["wall_s"] / max(num_queries, 1)
    before = read_results(upstream).get("cost", {}) if upstream is not None else {}
    stored = index_bytes(index_dir) / max(num_map, 1) + extra_bytes + before.get("extra_bytes_per_image", 0.0)
    return {**step, "ms_per_query": round(ms, 3),
            "pipeline_ms_per_query": round(ms + before.get("pipeline_ms_per_query", 0.0), 3),
            "pipeline_peak_rss_mb": max(step["peak_rss_mb"], before.get("pipeline_peak_rss_mb", 0.0)),
            "bytes_per_image": round(stored, 1),
            "extra_bytes_per_image": round(extra_bytes + before.get("extra_bytes_per_image", 0.0), 1),
            "upstream": None if upstream is None else str(Path(upstream).resolve())}


def read_results(results_dir: str | Path) -> dict:
    """A folder's results.json, refused (one clear line) when missing, corrupt, or when its index was rebuilt or
    replaced since: rankings hold map numbers, which mean other images in another index."""
    info_path = Path(results_dir) / RESULTS_FILE
    if not info_path.is_file():
        raise FileNotFoundError(f"{info_path} not found: run `vprkit query` first to get a global retrieval")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        index_dir = Path(info["index"])
        Path(info["queries"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise InputError(f"{info_path}: corrupt results file ({exc!r}); run `vprkit query` again") from None
    if not (index_dir / MANIFEST_FILE).is_file():
        raise FileNotFoundError(f"{info_path}: its index {index_dir} no longer exists")
    expected = info.get("index_fingerprint")
    if expected is not None and expected != faiss_index.fingerprint(index_dir):
        raise InputError(f"{info_path}: the index {index_dir} was rebuilt or replaced since these results were "
                         "computed (its manifest changed); run `vprkit query` again")
    return info


def load_retrieval(results_dir: str | Path) -> Retrieval:
    """Read a query results folder (results.json + predictions.txt) and its index's manifest."""
    results_dir = Path(results_dir)
    info = read_results(results_dir)
    index_dir = Path(info["index"])
    manifest = faiss_index.read_manifest(index_dir)
    q_names, m_names, ids, scores = outputs.read_predictions(results_dir / PREDICTIONS_FILE, manifest["names"])
    return Retrieval(index_dir, Path(info["queries"]), Path(manifest["map_dir"]), q_names, m_names, ids, scores,
                     manifest, results_dir, faiss_index.fingerprint(index_dir), sequence_confidence(results_dir,
                                                                                                   q_names))


class SequenceRow(NamedTuple):
    """A frame of sequence.txt; `correct` and `error` are None in files written without ground truth."""

    query: str
    estimate: str
    confidence: float
    correct: bool | None = None
    error: float | None = None


def read_sequence(path: str | Path) -> list[SequenceRow]:
    """The frames of a sequence.txt; files without the ground truth columns, and files written before it was
    tab-separated (space-separated, names without spaces), still read."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            q, m, c, *truth = line.split("\t") if "\t" in line else line.split(" ")
            rows.append(SequenceRow(q, m, float(c), *((bool(int(truth[0])), float(truth[1])) if truth else ())))
    return rows


def sequence_confidence(results_dir: Path, q_names: list[str]) -> np.ndarray | None:
    """(Q,) the confidence a sequence run recorded per query (sequence.txt), in `q_names` order; None for a
    folder of another step."""
    path = results_dir / SEQUENCE_FILE
    if not path.is_file():
        return None
    by_query = {row.query: row.confidence for row in read_sequence(path)}
    missing = [q for q in q_names if q not in by_query]
    if missing:
        raise InputError(f"{path}: no confidence for {len(missing)} queries of {PREDICTIONS_FILE} (first: "
                         f"{missing[0]}); run `vprkit sequence` again")
    return np.array([by_query[q] for q in q_names], dtype=np.float64)


def stored_query_descriptors(r: Retrieval) -> np.ndarray | None:
    """The queries' global descriptors `vprkit query` kept (in the results folder or, for a re-ranked one, the folder
    above it) when they are of the index's model and hold every query; None otherwise."""
    folders = (r.results_dir, r.results_dir.parent) if r.results_dir is not None else ()
    for path in (folder / QUERY_FEATURES for folder in folders):
        if path.is_file() and h5io.read_attrs(path).get("model_key") == r.manifest["model_key"]:
            try:
                return h5io.read_global(path, r.q_names)
            except KeyError:  # written for other queries
                continue
    return None


def guarded_folder(out_dir: str | Path) -> Path:
    """`out_dir`, created, when it is empty or already a results folder; refused when it holds something else."""
    out_dir = Path(out_dir)
    check_output(out_dir, RESULTS_MARKERS, "results folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def results_folder(out_dir: str | Path | None, index_dir: Path, query_dir: Path) -> Path:
    """The results folder (default INDEX/results/QUERY_NAME), refused when it holds something else."""
    return guarded_folder(out_dir if out_dir is not None else index_dir / "results" / query_dir.name)


def check_top_k(top_k: int) -> int:
    """A ranking needs at least one entry per query (0 used to end in an AssertionError inside FAISS)."""
    if top_k < 1:
        raise InputError(f"--top-k must be at least 1, got {top_k}")
    return top_k


def gt_record(gt: str | None, threshold: float | None) -> dict:
    """The ground truth a results.json was scored with, so `vprkit compare` can score it again."""
    if gt is None:
        return {}
    return {"gt": str(Path(gt).resolve()) if Path(gt).is_file() else gt, "threshold": threshold}


def report_positions(manifest: dict, q_names: list[str], truth: GroundTruth | None
                     ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Query and map positions in metres for the report's map: those the ground truth was made from (positions
    CSVs, the index's positions, `@east@north@` names), else the index's positions with `@east@north@` query names;
    (None, None) when neither covers every image."""
    if truth is not None and truth.q_positions is not None and truth.q_positions.shape[1] == 2:
        return truth.q_positions, truth.m_positions
    q_pos = utm_or_none(q_names) if manifest.get("positions") else None
    if q_pos is None or any(p is None for p in manifest["positions"]):
        return None, None
    return np.array(q_pos), np.array(manifest["positions"])


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
                  match_figures: dict[int, report.MatchFigure] | None = None, match_limit: int | None = None,
                  label: str | None = None, route: np.ndarray | None = None, meter: Meter | None = None,
                  extra_bytes: float = 0.0, upstream: Path | None = None) -> dict:
    """predictions.txt, pairs, results.json (+ metrics against `truth`) and report.html of a ranking.

    Precision-recall metrics threshold `confidence` (one per query, a sequence run's: it writes sequence.txt, which
    `load_retrieval` reads it from) when given, else each query's top score (and a sequence.txt left in the
    folder by an earlier run is removed);
    `baseline` (the ranking before re-ranking) adds the fixed / broken queries to the report, `match_figures`
    (drawn for the first `match_limit` queries of the report) its match figures. `label` names the ranking in the
    report; `route` (map ids along a route: a sequence run) adds the query-frame vs matched-place plot. `meter`
    (started with the step) records its cost (`cost_record`: with `extra_bytes` per map image it stores, and its
    `upstream` retrieval)."""
    m_names, conf = manifest["names"], manifest["conf"]
    if confidence is None:  # a sequence run's frames left in this folder belong to another ranking
        (out_dir / SEQUENCE_FILE).unlink(missing_ok=True)
    outputs.write_predictions(out_dir / PREDICTIONS_FILE, q_names, m_names, ids, scores)
    outputs.write_pairs(out_dir / f"pairs-top{top_k}.txt", q_names, m_names, ids)
    result: dict = {"index": str(Path(index_dir).resolve()), "index_fingerprint": faiss_index.fingerprint(index_dir),
                    "queries": str(query_dir), "preset": conf["preset"],
                    "num_queries": len(q_names), "num_map": len(m_names), "top_k": top_k,
                    "skipped_queries": sorted(set(q_all) - set(q_names)), **(extra or {})}
    if truth is not None:
        result["metrics"] = metrics.evaluate(ids, truth, scores=scores if confidence is None else confidence[:, None])
    if meter is not None:
        result["cost"] = cost_record(meter, len(q_names), index_dir, len(m_names), extra_bytes, upstream)
    outputs.write_json(out_dir / RESULTS_FILE, result)
    title = title or f"vprkit: {query_dir.name} on {index_dir.name} ({conf['preset']})"
    q_pos, m_pos = report_positions(manifest, q_names, truth)
    report.write_report(out_dir / REPORT_FILE, report.ReportData(
        title, query_dir, q_names, Path(manifest["map_dir"]), m_names,
        report.Ranking(label or (conf["preset"] if baseline is None else "re-ranked"), ids, scores,
                       result.get("metrics"), confidence),
        truth.positives if truth else None, baseline, q_pos, m_pos, top=report_top, match_figures=match_figures,
        match_limit=match_limit, route=route))
    result["out_dir"] = str(out_dir)
    return result
