"""The re-ranking step: read what `vprkit query` wrote, re-order each query's candidates, evaluate.

A method subclasses `Reranker` (named presets in `confs`, `default_conf`, one `rerank` method);
`main(conf, results_dir)` does the rest for every method: loading the global retrieval, writing
predictions / pairs / results.json / report.html, and metrics before and after re-ranking.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from ..config import Presets, require_counts
from ..data.groundtruth import GroundTruth, MapPositions, ground_truth_for_kept
from ..data.images import list_images
from ..data.safeio import locked
from ..evaluation import metrics, report
from ..results import REPORT_FILE, Meter, Retrieval, gt_record, guarded_folder, load_retrieval, write_results

logger = logging.getLogger("vprkit")
MATCH_FIGURES = 200  # queries with a match figure in the report (patch-based methods): ~3.5 MB, 4 pages of rows


class Reranker(ABC):
    """A re-ranking method: named presets plus `rerank`, which re-orders candidates."""

    name: str = ""
    confs: dict[str, dict] = {}
    default_conf: dict = {}
    open_sections: tuple[str, ...] = ()  # conf sections whose keys are free (a backbone's keyword arguments)
    CONFIG: Presets  # built from `default_conf` and `confs` for each subclass

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.CONFIG = Presets(f"rerank {cls.name}", cls.default_conf, cls.confs, extra={"method": cls.name},
                             open_sections=cls.open_sections, check=lambda conf: require_counts(conf, "num_rerank"))

    def __init__(self, conf: dict) -> None:
        self.conf = {**self.default_conf, **conf}

    @abstractmethod
    def rerank(self, retrieval: Retrieval, work_dir: Path) -> tuple[np.ndarray, np.ndarray]:
        """New (ids, scores), best first, for each query's candidates in `retrieval`.

        `work_dir` is a folder the method may use for resumable caches (features of map images).
        """

    def check(self, retrieval: Retrieval) -> None:
        """Refuse settings this method cannot run with, and warn of slow or weak ones: called before the output
        folder is made, so a refused run leaves nothing behind. Default: nothing to check."""
        return None

    def map_bytes(self, retrieval: Retrieval, work_dir: Path) -> float:
        """Bytes per map image this method stores beside the index (its cached map features: the files named
        `map*` under its cache), for results.json's cost; the methods that describe only candidates override it."""
        return _bytes(self.map_files(work_dir)) / max(len(retrieval.m_names), 1)

    def map_files(self, work_dir: Path) -> list[Path]:
        """The files of map features this method keeps (under `cache_dir` when set, else `work_dir`)."""
        folder = Path(self.conf.get("cache_dir") or work_dir)
        return [p for p in folder.rglob("map*") if p.is_file()] if folder.is_dir() else []

    def match_figures(self, folder: Path, retrieval: Retrieval, ids: np.ndarray, queries: np.ndarray,
                      work_dir: Path) -> dict[int, report.MatchFigure] | None:
        """Figures of the verified correspondences of each of `queries` with its top-1 in `ids`, drawn into
        `folder`, by query index; None for methods without verified correspondences (the default)."""
        return None

    def finish(self, out_dir: Path, retrieval: Retrieval, ids: np.ndarray, scores: np.ndarray,
               result: dict, truth: GroundTruth | None = None) -> None:
        """Write method-specific outputs beside the shared ones (`result` holds the metrics); default none."""
        return None


def _bytes(files: list[Path]) -> int:
    return sum(p.stat().st_size for p in files)


def default_folder(results_dir: str | Path, conf: dict) -> Path:
    """RESULTS_DIR/rerank-METHOD-PRESET, or rerank-METHOD when no preset was named (never `-None`)."""
    preset = conf.get("preset")
    return Path(results_dir) / (f"rerank-{conf['method']}" + (f"-{preset}" if preset else ""))


def main(conf: dict, results_dir: str | Path, out_dir: str | Path | None = None, *, gt: str | None = None,
         threshold: float | None = None, num_rerank: int | None = None, match_figures: int = MATCH_FIGURES) -> Path:
    """Re-rank the top `num_rerank` of a global retrieval with `conf['method']`; write outputs and metrics into
    the returned folder (default RESULTS_DIR/rerank-METHOD-PRESET; read it back with `vprkit.results`). The method
    checks its settings (`Reranker.check`) before the folder is made.

    The report shows match figures for the first `match_figures` queries in its order (failures first)
    when the method has verified correspondences (Patch-NetVLAD)."""
    from . import get_reranker_class

    meter = Meter()
    retrieval = load_retrieval(results_dir)
    n = num_rerank or conf.get("num_rerank") or retrieval.ids.shape[1]
    cand = retrieval.top(n)
    reranker = get_reranker_class(conf["method"])(conf)
    reranker.check(cand)
    q_all = list_images(retrieval.query_dir)
    truth = ground_truth_for_kept(gt, q_all, retrieval.q_names, retrieval.m_names, threshold,
                                  MapPositions.of(retrieval.manifest)) if gt else None  # checked before the work
    out_dir = guarded_folder(out_dir or default_folder(results_dir, conf))
    with locked(out_dir):
        ids, scores = reranker.rerank(cand, out_dir / "cache")
    meter.stop()
    extra: dict = {"conf": conf, "num_rerank": n, **gt_record(gt, threshold)}
    if truth is not None:
        extra["metrics_global"] = metrics.evaluate(cand.ids, truth)
    title = f"vprkit: {retrieval.query_dir.name} re-ranked with {conf['method']} ({conf.get('preset')})"
    baseline = report.Ranking("global", cand.ids, cand.scores, extra.get("metrics_global"))
    order = report.display_order(ids, scores, truth.positives if truth else None)
    figures = reranker.match_figures(report.files_dir(out_dir / REPORT_FILE) / "matches", cand, ids,
                                     order[:match_figures], out_dir / "cache") if match_figures else None
    result = write_results(out_dir, retrieval.index_dir, retrieval.query_dir, retrieval.manifest, q_all,
                           retrieval.q_names, ids, scores, n, truth, extra=extra, title=title, baseline=baseline,
                           match_figures=figures, match_limit=match_figures, meter=meter,
                           extra_bytes=reranker.map_bytes(cand, out_dir / "cache"), upstream=Path(results_dir))
    reranker.finish(out_dir, cand, ids, scores, result, truth)
    return out_dir
