"""The HTML report: rows failures first, filter counts by hand, thumbnails reused, plots beside the page,
and (when Debian's chromium is installed) what a headless browser shows."""

import os

import numpy as np
import pytest
from report_helpers import read_report_data, synthetic_report, with_match_figures

from vprkit.evaluation import browser


def test_rows_failures_first_and_counts(tmp_path):
    page, _ = synthetic_report(tmp_path)
    data = read_report_data(page)
    # 119 queries have a positive; every third (0, 3, .., 117) is wrong: 40 wrong, 79 right, query 119 has none.
    # Baseline wrong on multiples of 4: fixed = multiples of 4 not of 3 (30 - 10), broken = of 3 not of 4 (40 - 10).
    assert data["counts"] == {"wrong": 40, "nopos": 1, "nogt": 0, "right": 79, "fixed": 20, "broken": 30, "all": 120}
    status = [q.status for q in data["queries"]]
    assert status == ["wrong"] * 40 + ["nopos"] + ["right"] * 79
    # wrong ones most confident first: scores fall with the query index, so query order
    assert [q.name[-9:-4] for q in data["queries"][:3]] == ["00000", "00003", "00006"]
    first = data["queries"][0]
    assert data["maps"][first.top[0]].name.endswith("m00005.jpg") and first.correct == [0, 0, 0]
    assert data["maps"][first.positive].name.endswith("m00000.jpg")  # the positive shown beside a failure
    q4 = next(q for q in data["queries"] if q.name.endswith("q00004.jpg"))
    # fixed; the baseline's top-1 was 4 + 5
    assert q4.change == 1 and data["maps"][q4.baseline_top1].name.endswith("m00009.jpg")


def test_files_beside_the_page_and_thumbnails_reused(tmp_path):
    page, data = synthetic_report(tmp_path)
    files = page.with_name("report_files")
    assert {"recall_at_n.svg", "precision_recall.svg", "top1_scores.svg", "map.svg", "data.js", "report.js",
            "report.css"} <= {p.name for p in files.iterdir()}
    thumbs = sorted((files / "thumbs").rglob("*.jpg"))
    assert len(thumbs) == 240  # every query and every map image is referenced once at least
    stamps = [t.stat().st_mtime_ns for t in thumbs]
    from vprkit.evaluation.report import write_report

    write_report(page, data)
    assert [t.stat().st_mtime_ns for t in thumbs] == stamps
    assert "data:image" not in page.read_text() and not list(tmp_path.rglob("*.tmp"))
    assert os.path.getsize(page) < 2000


def test_recall_curve_and_pr_in_the_metrics_table(tmp_path):
    page, _ = synthetic_report(tmp_path)
    m = read_report_data(page)["metrics"]["B"]
    # The most confident query (0) is wrong, so precision never reaches 1: recall at 100 % precision is 0.
    assert m["Rec@100P"] == 0.0 and 0 < m["AUC-PR"] < 1


@pytest.mark.skipif(browser.chromium_path() is None,
                    reason="Debian's chromium is not installed (apt-get install -y chromium): browser test skipped")
def test_report_in_headless_chromium(tmp_path):
    pytest.importorskip("playwright", reason="playwright (dev extra) not installed")
    page, _ = synthetic_report(tmp_path)
    seen = browser.inspect(page, click="right")
    assert seen["console_errors"] == []
    assert seen["first_contentful_paint_ms"] is not None
    assert len(seen["plots"]) == 4 and all(p["width"] > 0 and p["visible"] for p in seen["plots"])
    assert seen["first_row_visible"] and seen["rows"][0]["status"] == "wrong"
    assert len(seen["rows"]) == 50 and seen["page_info"].strip().startswith("page 1 of 3")
    assert "wrong (40)" in seen["filters"] and "broken (30)" in seen["filters"]
    assert {r["status"] for r in seen["filtered_rows"]} == {"right"} and len(seen["filtered_rows"]) == 50
    assert seen["filtered_page_info"].strip().startswith("page 1 of 2 (79 queries)")
    assert len(seen["next_page_rows"]) == 29 and seen["next_page_info"].strip().startswith("page 2 of 2")


def test_without_ground_truth_rows_keep_query_order_and_no_curves(tmp_path):
    from dataclasses import replace

    from vprkit.evaluation.report import write_report

    _, d = synthetic_report(tmp_path / "a", num_queries=6)
    page = write_report(tmp_path / "b" / "report.html", replace(d, positives=None, baseline=None))
    data = read_report_data(page)
    assert [q.status for q in data["queries"]] == ["nogt"] * 6 and data["counts"]["all"] == 6
    assert [q.name[-9:-4] for q in data["queries"]] == [f"{i:05d}" for i in range(6)]
    assert [p["src"] for p in data["plots"]] == ["map.svg"]  # positions are known, correctness is not


def test_match_figures_for_the_first_queries_in_display_order(tmp_path):
    page, d = with_match_figures(*synthetic_report(tmp_path), limit=45)
    data = read_report_data(page)
    assert data["matches"] == {"drawn": 45, "limit": 45, "queries": 120}
    rows = data["queries"]
    # the 40 wrong queries (0, 3, .., 117), the one without a positive (119), the first right ones (1, 2, 4, 5)
    assert [q.name[-9:-4] for q in rows if q.figure] == [f"{i:05d}" for i in [*range(0, 120, 3), 119, 1, 2, 4, 5]]
    assert all(q.figure == 0 for q in rows[45:])
    first, second = rows[0].figure, rows[1].figure  # queries 0 (6 correspondences) and 3 (none)
    assert first == ["q0.jpg", {"2": 3, "5": 3}] and second == ["q3.jpg", {"2": 0, "5": 0}]
    from PIL import Image

    with Image.open(page.with_name("report_files") / "matches" / "q0.jpg") as fig:
        assert fig.size == (2 * 4 * 48, 4 * 32)  # query | top-1, each scaled 4x


def _drawn_pixels(png: bytes) -> int:
    """Pixels of a rendered match figure far from both (flat) image colours and from the page's white (the
    element's box may take a sub-pixel row of it): the drawn lines."""
    import io

    import numpy as np
    from PIL import Image

    arr = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    quarter = arr.shape[1] // 4
    plain = [np.median(arr[:, :quarter].reshape(-1, 3), 0), np.median(arr[:, -quarter:].reshape(-1, 3), 0),
             np.array([255, 255, 255])]
    return int((np.min([np.abs(arr - c).sum(-1) for c in plain], axis=0) > 80).sum())


@pytest.mark.skipif(browser.chromium_path() is None,
                    reason="Debian's chromium is not installed (apt-get install -y chromium): browser test skipped")
def test_match_figure_of_the_first_failure_in_headless_chromium(tmp_path):
    pytest.importorskip("playwright", reason="playwright (dev extra) not installed")
    page, _ = with_match_figures(*synthetic_report(tmp_path), limit=10)
    seen = browser.inspect(page)
    assert seen["console_errors"] == []
    figs = seen["match_figures"]
    assert figs[0]["visible"] and figs[0]["width"] == 384 and figs[0]["text"] == "6 inliers (p2: 3, p5: 3)"
    assert figs[1]["text"] == "0 inliers (p2: 0, p5: 0)" and figs[10]["text"] == "no figure"
    # as the browser shows it: the first failure's figure has its lines, the second (no correspondences) none
    assert _drawn_pixels(figs[0]["png"]) > 150 and _drawn_pixels(figs[1]["png"]) < 10
    assert "first 10 of 120 queries" in seen["match_note"]


def test_a_long_straight_route_is_stretched_to_stay_readable(tmp_path):
    from vprkit.evaluation import plots

    m = np.stack([np.arange(0.0, 201.0, 2.0), np.zeros(101)], axis=1)  # 200 m east, 0 m north
    q = m + [0.5, 2.0]  # 2 m north of it: equal aspect would draw both as one line
    # north span 2 m, east span 200.5 m: stretched so east / (stretch * north) = READABLE_RATIO = 4
    assert plots.readable_stretch(np.r_[m, q]) == pytest.approx(200.5 / (4 * 2.0))
    assert plots.readable_stretch(np.array([[0, 0], [10, 10]])) == 1.0  # square: true shapes
    assert plots.readable_stretch(np.array([[0, 0], [1e5, 1.0]])) == plots.MAX_STRETCH
    stretch = plots.position_map(tmp_path / "map.svg", m, q, m, None, track=True)
    assert stretch == pytest.approx(25.0625) and "stretched x25.1" in (tmp_path / "map.svg").read_text()
