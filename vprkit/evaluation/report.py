"""HTML report that scales to 100k queries: each query beside its top predictions, failures first.

`report.html` is a small page; beside it `report_files/` holds JPEG thumbnails (written once, reused by later
reports of the same images), the plots (matplotlib SVG) and `data.js`, the per-query table the page renders
page by page. The data is a script, not fetched JSON, so the page works from file:// in Chromium.

A patch-based re-ranking adds a match figure per query (`MatchFigure`: the query and its top-1 side by side
with the verified correspondences, drawn by the re-ranker into `report_files/matches/`); the page shows it
in the query's row and says when only the first queries (in display order, failures first) have one.
"""

from __future__ import annotations

import hashlib
import html
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..data.images import ImageError, load_image
from ..data.safeio import atomic_write, replacing
from . import metrics as M
from . import plots

THUMB = 160
ASSETS = Path(__file__).parent / "report_assets"
STATUS_ORDER = {"wrong": 0, "nopos": 1, "nogt": 2, "right": 3}  # failures first


@dataclass
class Ranking:
    """One method's ranked predictions (map indices best first, -1 padded) and its metrics."""

    label: str
    ids: np.ndarray
    scores: np.ndarray
    metrics: dict | None = None  # as results.json holds them: the page shows these, never recomputed ones
    confidence: np.ndarray | None = None  # (Q,) what precision-recall thresholds (SeqSLAM's margin); default top-1

    def top1_confidence(self) -> np.ndarray:
        return self.scores[:, 0] if self.confidence is None else np.asarray(self.confidence, dtype=np.float64)


@dataclass
class MatchFigure:
    """A query's verified patch correspondences with its top-1: the drawn figure (`src`, relative to the files
    folder) and, per patch size, the (query, map) pixel centres of each correspondence."""

    src: str
    lines: dict[str, list[tuple[tuple[float, float], tuple[float, float]]]]

    def inliers(self) -> dict[str, int]:
        return {size: len(pairs) for size, pairs in self.lines.items()}


@dataclass
class ReportData:
    """Everything a report shows. `baseline` (a global retrieval before re-ranking, or method A of a
    comparison) adds the queries it got wrong and `ranking` right (fixed) and the reverse (broken)."""

    title: str
    q_root: Path
    q_names: list[str]
    m_root: Path
    m_names: list[str]
    ranking: Ranking
    positives: list[np.ndarray] | None = None
    baseline: Ranking | None = None
    q_positions: np.ndarray | None = None  # (Q, 2) metres, with m_positions draws the map
    m_positions: np.ndarray | None = None
    top: int = 5
    change_labels: tuple[str, str] = ("fixed", "broken")  # names of the two baseline-vs-ranking filters
    match_figures: dict[int, MatchFigure] | None = None  # by query index; None: the method has none
    match_limit: int | None = None  # figures were drawn for the first this many queries in display order
    route: np.ndarray | None = None  # map ids along the route: a sequence run (queries in stream order)
    table: dict | None = None  # a comparison's table: {"columns", "rows" (formatted cells), "note"}, shown first


def files_dir(path: Path) -> Path:
    """The folder beside `path` (report.html -> report_files) that holds what the page loads."""
    return path.with_name(f"{path.stem}_files")


def thumbnail(src: Path, folder: Path) -> str:
    """File name of a small JPEG of `src` in `folder`, made unless an up-to-date one exists ('' if unreadable)."""
    name = hashlib.sha1(str(src.resolve()).encode()).hexdigest()[:20] + ".jpg"
    dst = folder / name
    try:
        if dst.exists() and dst.stat().st_mtime >= src.stat().st_mtime:
            return name
        img = load_image(src)
    except (ImageError, OSError):
        return ""
    img.thumbnail((THUMB, THUMB))
    with replacing(dst) as tmp:
        img.save(tmp, format="JPEG", quality=80)
    return name


def _status(correct: np.ndarray | None, has_pos: np.ndarray | None, n: int) -> list[str]:
    """Per query: right / wrong / nopos (no positive in the map) / nogt (no ground truth given)."""
    if correct is None:
        return ["nogt"] * n
    return ["right" if c else ("wrong" if h else "nopos") for c, h in zip(correct, has_pos)]


def display_order(ids: np.ndarray, scores: np.ndarray, positives: list[np.ndarray] | None) -> np.ndarray:
    """Query indices in the order the page lists them (failures first); what a figure budget follows."""
    correct, has_pos = M.top1_correct(ids, M.GroundTruth(positives)) if positives is not None else (None, None)
    return _order(_status(correct, has_pos, len(ids)), scores[:, 0])


def _order(status: list[str], top1: np.ndarray) -> np.ndarray:
    """Display order: wrong (most confident first), then queries with no positive, then right ones."""
    key_conf = np.where(np.array([s == "wrong" for s in status]), -np.nan_to_num(top1, nan=-np.inf), 0.0)
    return np.lexsort((np.arange(len(status)), key_conf, [STATUS_ORDER[s] for s in status]))


def _recall_curve(ids: np.ndarray, positives: list[np.ndarray]) -> np.ndarray:
    """Recall@N for N = 1..k over queries with a positive."""
    gt = M.GroundTruth(positives)
    return np.array(list(M.recall_at_n(ids, gt, range(1, ids.shape[1] + 1)).values()))


def _pr(r: Ranking, gt: M.GroundTruth) -> tuple[np.ndarray, np.ndarray, float, float]:
    """The P-R curve by the ranking's confidence (the one results.json was scored with), its AUC and R@100P."""
    correct, has_pos = M.top1_correct(r.ids, gt)
    precision, recall, _ = M.precision_recall(r.top1_confidence(), correct, int(has_pos.sum()))
    return precision, recall, M.auc_pr(precision, recall), M.recall_at_precision(precision, recall)


def _plots(d: ReportData, out: Path) -> tuple[list[dict], dict[str, dict]]:
    """Figures (file name relative to the page, caption) and the P-R summary numbers of each ranking."""
    rankings = [r for r in (d.baseline, d.ranking) if r is not None]
    figs, pr_numbers = [], {}
    if d.positives is not None and len(d.q_names):
        gt = M.GroundTruth(d.positives)
        plots.recall_curves(out / "recall_at_n.svg", {r.label: _recall_curve(r.ids, d.positives) for r in rankings})
        pr = {r.label: _pr(r, gt) for r in rankings}
        plots.pr_curves(out / "precision_recall.svg", pr, "top-1 score as confidence" if d.ranking.confidence is None
                        else "each method's confidence")
        pr_numbers = {k: {"AUC-PR": v[2], "Rec@100P": v[3]} for k, v in pr.items()}
        correct, has_pos = M.top1_correct(d.ranking.ids, gt)
        top1 = d.ranking.top1_confidence()
        keep = has_pos & np.isfinite(top1)
        what = "top-1 score" if d.ranking.confidence is None else "confidence"
        plots.score_histogram(out / "top1_scores.svg", top1[keep], correct[keep], what)
        figs += [{"src": "recall_at_n.svg", "caption": "Recall@N"},
                 {"src": "precision_recall.svg", "caption": f"Precision-recall over queries by {what}"},
                 {"src": "top1_scores.svg", "caption": f"{what.capitalize()}, right vs wrong ({d.ranking.label})"}]
        if d.route is not None:
            plots.route_matches(out / "frames_places.svg", *_frames_places(d, correct, has_pos))
            figs.append({"src": "frames_places.svg", "caption": "Query frame vs matched place along the route: "
                                                               "a diagonal is a route followed; wrong frames red"})
    if d.q_positions is not None and d.m_positions is not None and len(d.q_names):
        first = d.ranking.ids[:, 0]
        found = first >= 0
        correct = M.top1_correct(d.ranking.ids, M.GroundTruth(d.positives))[0] if d.positives is not None else None
        stretch = plots.position_map(out / "map.svg", np.asarray(d.m_positions), np.asarray(d.q_positions)[found],
                                     np.asarray(d.m_positions)[first[found]],
                                     None if correct is None else correct[found], track=d.route is not None)
        note = f"; north axis stretched x{stretch:.3g} so a straight route stays readable" if stretch > 1 else ""
        what = "query track (blue line)" if d.route is not None else "queries (blue)"
        figs.append({"src": "map.svg", "caption": f"Map (grey), {what}, top-1 (x), error lines{note}"})
    return figs, pr_numbers


def _frames_places(d: ReportData, correct: np.ndarray, has_pos: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For the frame-vs-place plot: each frame's matched place and nearest positive place along the route (-1:
    none), whether the match is right, and which frames have a positive."""
    place = np.full(len(d.m_names) + 1, -1, dtype=np.int64)  # the extra slot maps -1 (no match) to -1
    place[d.route] = np.arange(len(d.route))
    matched = place[d.ranking.ids[:, 0]]
    positive = np.array([_nearest(place[p], m) for p, m in zip(d.positives, matched)], dtype=np.int64)
    return matched, positive, correct, has_pos


def _nearest(places: np.ndarray, matched: int) -> int:
    """The positive place nearest the matched one (-1 when the frame has none on the route)."""
    places = places[places >= 0]
    return int(places[np.argmin(np.abs(places - matched))]) if len(places) else -1


class MapThumb(NamedTuple):
    """A map image the page shows: its name and thumbnail file (rows refer to it by its number in `maps`)."""

    name: str
    thumb: str


class FigureRef(NamedTuple):
    """A row's match figure: its file under matches/ and the inliers per patch size."""

    src: str
    inliers: dict[str, int]


class QueryRow(NamedTuple):
    """One query as the page shows it. Written to data.js as a JSON array (a NamedTuple serialises as one, which
    keeps data.js small for 100k queries); report.js reads the fields in this order."""

    name: str
    thumb: str
    status: str  # right / wrong / nopos / nogt
    top: list[int]  # map refs (numbers in `maps`) of the top predictions
    scores: list[float]
    correct: list[int]  # 0/1 per top prediction
    positive: int  # a positive's map ref for a wrong query, else -1
    change: int  # against the baseline: 1 fixed, -1 broken, 0
    baseline_top1: int  # the baseline's top-1 map ref when changed, else -1
    figure: FigureRef | int  # 0 when the query has none


class MapRefs:
    """The map images the rows refer to, numbered in first-use order, each with its thumbnail made once."""

    def __init__(self, d: ReportData, folder: Path) -> None:
        self.d, self.folder = d, folder
        self.number: dict[int, int] = {}
        self.thumbs: list[MapThumb] = []

    def __call__(self, j: int) -> int:
        if j not in self.number:
            self.number[j] = len(self.thumbs)
            name = self.d.m_names[j]
            self.thumbs.append(MapThumb(name, thumbnail(self.d.m_root / name, self.folder)))
        return self.number[j]


def _changes(d: ReportData, gt: M.GroundTruth | None, correct: np.ndarray | None) -> np.ndarray:
    """Per query, against the baseline's top-1: 1 fixed, -1 broken, 0 (also without a baseline or ground truth)."""
    if gt is None or d.baseline is None:
        return np.zeros(len(d.q_names), dtype=int)
    return correct.astype(int) - M.top1_correct(d.baseline.ids, gt)[0].astype(int)


def _rows(d: ReportData, out: Path) -> tuple[list[QueryRow], list[MapThumb], dict]:
    """Per-query rows in display order, the map images they refer to, and the number of queries per filter."""
    qdir, mdir = out / "thumbs" / "q", out / "thumbs" / "m"
    qdir.mkdir(parents=True, exist_ok=True)
    mdir.mkdir(parents=True, exist_ok=True)
    ids, scores = d.ranking.ids[:, : d.top], d.ranking.scores[:, : d.top]
    gt = M.GroundTruth(d.positives) if d.positives is not None else None
    correct, has_pos = M.top1_correct(d.ranking.ids, gt) if gt else (None, None)
    status = _status(correct, has_pos, len(d.q_names))
    change = _changes(d, gt, correct)
    ref = MapRefs(d, mdir)
    figures = d.match_figures or {}
    rows = []
    for qi in _order(status, d.ranking.top1_confidence()):
        valid = ids[qi] >= 0
        pos = set(d.positives[qi].tolist()) if d.positives is not None else set()
        positive = ref(int(d.positives[qi][0])) if status[qi] == "wrong" else -1
        was = ref(int(d.baseline.ids[qi, 0])) if change[qi] and d.baseline.ids[qi, 0] >= 0 else -1
        top = [int(j) for j in ids[qi][valid]]
        rows.append(QueryRow(
            name=d.q_names[qi], thumb=thumbnail(d.q_root / d.q_names[qi], qdir), status=status[qi],
            top=[ref(j) for j in top], scores=[round(float(s), 4) for s in scores[qi][valid]],
            correct=[int(j in pos) for j in top], positive=positive, change=int(change[qi]), baseline_top1=was,
            figure=FigureRef(figures[qi].src, figures[qi].inliers()) if qi in figures else 0))
    counts = {s: status.count(s) for s in STATUS_ORDER}
    counts.update(fixed=int((change > 0).sum()), broken=int((change < 0).sum()), all=len(status))
    return rows, ref.thumbs, counts


def _metrics_table(d: ReportData, pr_numbers: dict[str, dict]) -> dict[str, dict]:
    """Per ranking, its metrics as results.json holds them; the curve's numbers only fill what they lack."""
    rankings = [r for r in (d.baseline, d.ranking) if r is not None]
    return {r.label: {**pr_numbers.get(r.label, {}), **(r.metrics or {})} for r in rankings}


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<link rel="stylesheet" href="{files}/report.css"></head>
<body><h1>{title}</h1>
<div id="table"></div><div id="metrics"></div><div id="plots"></div>
<div id="controls"></div><table id="queries"></table><div id="pager"></div>
<script src="{files}/data.js"></script><script src="{files}/report.js"></script>
</body></html>
"""


def write_report(path: str | Path, d: ReportData) -> Path:
    """Write `path` (the page) and its files folder; the page is replaced last, so it never points at
    half-written data."""
    path = Path(path)
    out = files_dir(path)
    out.mkdir(parents=True, exist_ok=True)
    figs, pr_numbers = _plots(d, out)
    rows, maps, counts = _rows(d, out)
    data = {"title": d.title, "top": d.top, "metrics": _metrics_table(d, pr_numbers), "plots": figs,
            "labels": {"ranking": d.ranking.label, "baseline": d.baseline.label if d.baseline else None,
                       "fixed": d.change_labels[0], "broken": d.change_labels[1]},
            "table": d.table, "has_gt": d.positives is not None, "counts": counts, "maps": maps, "queries": rows,
            "matches": None if d.match_figures is None else {"drawn": len(d.match_figures), "limit": d.match_limit,
                                                             "queries": len(d.q_names)}}
    atomic_write(out / "data.js", "window.VPRKIT_REPORT = " + json.dumps(data, separators=(",", ":")) + ";\n")
    for asset in ("report.js", "report.css"):
        with replacing(out / asset) as tmp:
            shutil.copyfile(ASSETS / asset, tmp)
    atomic_write(path, PAGE.format(title=html.escape(d.title), files=out.name))
    return path
