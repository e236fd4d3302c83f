"""`vprkit compare RESULTS_A RESULTS_B`: two retrievals of the same queries on the same map, side by side.

Both are scored against the same ground truth (the one their results.json records, or `gt`); the report
shows both methods' metrics and curves, and filters the queries B gets right and A wrong (B wins) and the
reverse (A wins).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data.groundtruth import MapPositions, ground_truth_for_kept
from .data.images import list_images
from .data.safeio import check_output
from .evaluation import metrics, outputs, report
from .results import REPORT_FILE, RESULTS_FILE, Retrieval, load_retrieval, read_results

COMPARE_FILE = "compare.json"


def _label(r: Retrieval, tag: str) -> str:
    info = read_results(r.results_dir)
    method = info.get("conf", {}).get("method") or info.get("preset", "")
    return f"{tag}: {r.results_dir.name} ({method})"


def _aligned(a: Retrieval, b: Retrieval) -> tuple[np.ndarray, np.ndarray]:
    """B's ids and scores in A's query order; refuses retrievals of different queries or maps."""
    if a.m_names != b.m_names:
        raise ValueError(f"{a.results_dir} and {b.results_dir} rank different maps: nothing to compare")
    if set(a.q_names) != set(b.q_names):
        raise ValueError(f"{a.results_dir} and {b.results_dir} hold different queries "
                         f"({len(set(a.q_names) ^ set(b.q_names))} differ)")
    row = {q: i for i, q in enumerate(b.q_names)}
    order = [row[q] for q in a.q_names]
    return b.ids[order], b.scores[order]


def _gt_spec(results_dir: Path, gt: str | None, threshold: float | None) -> tuple[str, float | None]:
    info = read_results(results_dir)
    if gt is None and "gt" not in info:
        raise ValueError(f"{results_dir / RESULTS_FILE} records no ground truth: pass --gt")
    return (gt, threshold) if gt is not None else (info["gt"], threshold if threshold is not None
                                                   else info.get("threshold"))


def main(results_a: str | Path, results_b: str | Path, out_dir: str | Path = "compare", *, gt: str | None = None,
         threshold: float | None = None, top: int = 5) -> Path:
    """Score A and B, write OUT/report.html and OUT/compare.json (the comparison); returns OUT. OUT must be empty or
    an earlier comparison (refused before any work otherwise)."""
    out_dir = Path(out_dir)
    check_output(out_dir, [COMPARE_FILE], "comparison folder")
    a, b = load_retrieval(results_a), load_retrieval(results_b)
    b_ids, b_scores = _aligned(a, b)
    spec, thr = _gt_spec(a.results_dir, gt, threshold)
    truth = ground_truth_for_kept(spec, list_images(a.query_dir), a.q_names, a.m_names, thr,
                                  MapPositions.of(a.manifest))
    la, lb = _label(a, "A"), _label(b, "B")
    ma, mb = metrics.evaluate(a.ids, truth), metrics.evaluate(b_ids, truth)
    ca, cb = metrics.top1_correct(a.ids, truth)[0], metrics.top1_correct(b_ids, truth)[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    page = report.write_report(out_dir / REPORT_FILE, report.ReportData(
        f"vprkit compare: {la} vs {lb}", a.query_dir, a.q_names, a.map_dir, a.m_names,
        report.Ranking(lb, b_ids, b_scores, mb), truth.positives, report.Ranking(la, a.ids, a.scores, ma),
        top=top, change_labels=("B wins", "A wins")))
    result = {"A": str(a.results_dir), "B": str(b.results_dir), "gt": spec, "threshold": thr,
              "metrics": {la: ma, lb: mb}, "b_wins": int((cb & ~ca).sum()), "a_wins": int((ca & ~cb).sum()),
              "both_right": int((ca & cb).sum()), "both_wrong": int((~ca & ~cb).sum()), "report": str(page)}
    outputs.write_json(out_dir / COMPARE_FILE, result)
    return out_dir
