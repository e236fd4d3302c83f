"""`vprkit compare A B [C ...]`: retrievals of the same queries on the same map, in one table.

All are scored against the same ground truth (the one A's results.json records, or `gt`). OUT gets one row per
method in table.md / table.csv / table.tex (recalls, mAP, AUC-PR, and the cost each results.json records), the
pairwise win / loss matrix on R@1 (how many queries the row's method gets right and the column's wrong), each
query's R@1 correctness per method (per_query.csv), and McNemar's exact test of each method against A on R@1
correctness. report.html shows the same table, and A against B query by query (B wins / A wins filters).
AUC-PR thresholds each method's own confidence (`Retrieval.query_confidence`: a sequence run's, else the top-1
score), so a row shows what that run's results.json and report show.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import gammaln, logsumexp

from .data.groundtruth import GroundTruth, MapPositions, ground_truth_for_kept
from .data.images import list_images
from .data.safeio import atomic_write, check_output
from .evaluation import metrics, outputs, report
from .results import REPORT_FILE, RESULTS_FILE, Retrieval, load_retrieval, read_results

COMPARE_FILE, PER_QUERY_FILE = "compare.json", "per_query.csv"
TABLE_STEM = "table"  # table.md, table.csv, table.tex
TEST = "McNemar exact test (two-sided binomial on the discordant queries) of R@1 correctness against A"
COLUMNS = ("method", "R@1", "R@5", "R@10", "mAP", "AUC-PR", "ms/query", "peak MB", "KB/image", "wins vs A",
           "losses vs A", "p vs A")
COST_NOTE = ("ms/query: wall time of the whole pipeline per query (the retrieval plus its re-ranking or sequence "
             "step, model loading included); peak MB: the largest peak RSS of its steps; KB/image: bytes stored per "
             "map image (index + the re-ranker's map features); n/a: results written before vprkit recorded costs")


@dataclass
class Method:
    """One compared results folder, its ranking in A's query order, and how it did."""

    label: str
    folder: Path
    ids: np.ndarray
    scores: np.ndarray
    confidence: np.ndarray  # (Q,) what its precision-recall thresholds (`Retrieval.query_confidence`)
    metrics: dict
    correct: np.ndarray  # R@1 correctness per query
    cost: dict


def _tag(i: int) -> str:
    return chr(ord("A") + i) if i < 26 else f"M{i + 1}"


def _label(r: Retrieval, tag: str, name: str | None = None) -> str:
    """'A: FOLDER (method)', or 'A: NAME' when the caller names the method."""
    if name is not None:
        return f"{tag}: {name}"
    info = read_results(r.results_dir)
    method = info.get("conf", {}).get("method") or info.get("preset", "")
    return f"{tag}: {r.results_dir.name} ({method})"


def _aligned(a: Retrieval, b: Retrieval) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """B's ids, scores and confidence in A's query order; refuses retrievals of different queries or maps."""
    if a.m_names != b.m_names:
        raise ValueError(f"{a.results_dir} and {b.results_dir} rank different maps: nothing to compare")
    if set(a.q_names) != set(b.q_names):
        raise ValueError(f"{a.results_dir} and {b.results_dir} hold different queries "
                         f"({len(set(a.q_names) ^ set(b.q_names))} differ)")
    row = {q: i for i, q in enumerate(b.q_names)}
    order = [row[q] for q in a.q_names]
    return b.ids[order], b.scores[order], b.query_confidence()[order]


def _gt_spec(results_dir: Path, gt: str | None, threshold: float | None) -> tuple[str, float | None]:
    info = read_results(results_dir)
    if gt is None and "gt" not in info:
        raise ValueError(f"{results_dir / RESULTS_FILE} records no ground truth: pass --gt")
    return (gt, threshold) if gt is not None else (info["gt"], threshold if threshold is not None
                                                   else info.get("threshold"))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided p-value of McNemar's exact test: under "no difference" each of the b + c discordant queries
    (right for one method only) is equally likely to go either way, so min(b, c) is Binomial(b + c, 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    k = np.arange(min(b, c) + 1)
    log_terms = gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1) - n * math.log(2)  # log C(n, k) / 2^n
    return float(min(1.0, 2 * math.exp(logsumexp(log_terms))))


def win_matrix(correct: list[np.ndarray]) -> np.ndarray:
    """(M, M): entry (i, j) counts the queries method i gets right at R@1 and method j wrong."""
    c = np.stack(correct).astype(np.int64)
    return c @ (1 - c).T


def _method(label: str, r: Retrieval, ids: np.ndarray, scores: np.ndarray, confidence: np.ndarray,
            truth: GroundTruth) -> Method:
    """A method scored as its own step scored it: precision-recall by `confidence`, a sequence run's own."""
    return Method(label, r.results_dir, ids, scores, confidence,
                  metrics.evaluate(ids, truth, scores=confidence[:, None]), metrics.top1_correct(ids, truth)[0],
                  read_results(r.results_dir).get("cost", {}))


def _cells(m: Method, first: Method) -> list[str]:
    """A method's row of the table, formatted once: table.md, table.csv, table.tex and the report show these."""
    def num(value, fmt: str) -> str:
        return "n/a" if value is None else format(value, fmt)

    won, lost = int((m.correct & ~first.correct).sum()), int((first.correct & ~m.correct).sum())
    stored = m.cost.get("bytes_per_image")
    vs_a = ["", "", ""] if m is first else [str(won), str(lost), f"{mcnemar_exact(won, lost):.3g}"]
    return [m.label, *(f"{m.metrics.get(k, float('nan')):.3f}" for k in COLUMNS[1:6]),
            num(m.cost.get("pipeline_ms_per_query"), ".1f"), num(m.cost.get("pipeline_peak_rss_mb"), ".0f"),
            num(None if stored is None else stored / 1024, ".1f"), *vs_a]


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def _latex(header: list[str], rows: list[list[str]]) -> str:
    def esc(text: str) -> str:
        return "".join("\\" + ch if ch in "&%$#_{}" else ch for ch in text)

    lines = ["\\begin{tabular}{l" + "r" * (len(header) - 1) + "}", "\\hline",
             " & ".join(map(esc, header)) + " \\\\", "\\hline"]
    return "\n".join(lines + [" & ".join(map(esc, r)) + " \\\\" for r in rows] + ["\\hline", "\\end{tabular}"]) + "\n"


def _csv(header: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *rows])
    return buf.getvalue()


def write_tables(out_dir: Path, methods: list[Method], q_names: list[str]) -> dict:
    """table.md / .csv / .tex (the methods, then in .md and .tex the win / loss matrix and what the columns
    mean) and per_query.csv; returns the table as the report shows it."""
    rows = [_cells(m, methods[0]) for m in methods]
    wins = win_matrix([m.correct for m in methods])
    tags = [m.label.split(":")[0] for m in methods]
    w_header = ["right \\ wrong", *tags]
    w_rows = [[m.label, *(str(v) if i != j else "" for j, v in enumerate(row))]
              for i, (m, row) in enumerate(zip(methods, wins))]
    notes = f"p vs A: {TEST}. {COST_NOTE}."
    atomic_write(out_dir / f"{TABLE_STEM}.csv", _csv(list(COLUMNS), rows))
    atomic_write(out_dir / f"{TABLE_STEM}.md", _markdown(list(COLUMNS), rows) + f"\n{notes}\n\n"
                 "Queries the row's method gets right at R@1 and the column's wrong:\n\n" + _markdown(w_header, w_rows))
    atomic_write(out_dir / f"{TABLE_STEM}.tex", _latex(list(COLUMNS), rows) + f"% {notes}\n% R@1 wins (row right, "
                 "column wrong):\n" + _latex(w_header, w_rows))
    atomic_write(out_dir / PER_QUERY_FILE, _csv(["query", *tags], [
        [q, *(str(int(m.correct[i])) for m in methods)] for i, q in enumerate(q_names)]))
    return {"columns": list(COLUMNS), "rows": rows, "note": notes, "wins": wins.tolist()}


def main(results: list[str | Path], out_dir: str | Path = "compare", *, gt: str | None = None,
         threshold: float | None = None, top: int = 5, labels: list[str] | None = None) -> Path:
    """Score every results folder (A first: the reference of the test), write OUT/table.{md,csv,tex},
    per_query.csv, report.html (A vs B) and compare.json; returns OUT. `labels` name the methods (default: each
    folder's name and method). OUT must be empty or an earlier comparison (refused before any work otherwise)."""
    if len(results) < 2:
        raise ValueError("compare needs at least two results folders")
    if labels is not None and len(labels) != len(results):
        raise ValueError(f"{len(labels)} labels for {len(results)} results folders")
    out_dir = Path(out_dir)
    check_output(out_dir, [COMPARE_FILE], "comparison folder")
    first, *rest = [load_retrieval(r) for r in results]
    spec, thr = _gt_spec(first.results_dir, gt, threshold)
    truth = ground_truth_for_kept(spec, list_images(first.query_dir), first.q_names, first.m_names, thr,
                                  MapPositions.of(first.manifest))
    names = labels or [None] * len(results)
    methods = [_method(_label(first, "A", names[0]), first, first.ids, first.scores, first.query_confidence(),
                       truth)]
    methods += [_method(_label(r, _tag(i), names[i]), r, *_aligned(first, r), truth)
                for i, r in enumerate(rest, start=1)]
    out_dir.mkdir(parents=True, exist_ok=True)
    table = write_tables(out_dir, methods, first.q_names)
    a, b = methods[:2]
    page = report.write_report(out_dir / REPORT_FILE, report.ReportData(
        f"vprkit compare: {a.label} vs {b.label}", first.query_dir, first.q_names, first.map_dir, first.m_names,
        report.Ranking(b.label, b.ids, b.scores, b.metrics, b.confidence), truth.positives,
        report.Ranking(a.label, a.ids, a.scores, a.metrics, a.confidence), top=top, change_labels=("B wins", "A wins"),
        table=table))
    result = {"folders": [str(m.folder) for m in methods], "A": str(a.folder), "B": str(b.folder), "gt": spec,
              "threshold": thr, "metrics": {m.label: m.metrics for m in methods}, "test": TEST, "table": table,
              "b_wins": int((b.correct & ~a.correct).sum()), "a_wins": int((a.correct & ~b.correct).sum()),
              "both_right": int((a.correct & b.correct).sum()), "both_wrong": int((~a.correct & ~b.correct).sum()),
              "report": str(page)}
    outputs.write_json(out_dir / COMPARE_FILE, result)
    return out_dir
