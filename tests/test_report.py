"""The HTML report: rows failures first, filter counts by hand, thumbnails reused, plots beside the page,
and (when Debian's chromium is installed) what a headless browser shows."""

import os

import pytest
from report_helpers import read_report_data, synthetic_report

from vprkit.evaluation import browser


def test_rows_failures_first_and_counts(tmp_path):
    page, _ = synthetic_report(tmp_path)
    data = read_report_data(page)
    # 119 queries have a positive; every third (0, 3, .., 117) is wrong: 40 wrong, 79 right, query 119 has none.
    # Baseline wrong on multiples of 4: fixed = multiples of 4 not of 3 (30 - 10), broken = of 3 not of 4 (40 - 10).
    assert data["counts"] == {"wrong": 40, "nopos": 1, "nogt": 0, "right": 79, "fixed": 20, "broken": 30, "all": 120}
    status = [q[2] for q in data["queries"]]
    assert status == ["wrong"] * 40 + ["nopos"] + ["right"] * 79
    # wrong ones most confident first: scores fall with the query index, so query order
    assert [q[0][-9:-4] for q in data["queries"][:3]] == ["00000", "00003", "00006"]
    first = data["queries"][0]
    assert data["maps"][first[3][0]][0].endswith("m00005.jpg") and first[5] == [0, 0, 0]
    assert data["maps"][first[6]][0].endswith("m00000.jpg")  # the positive shown beside a failure
    q4 = next(q for q in data["queries"] if q[0].endswith("q00004.jpg"))
    assert q4[7] == 1 and data["maps"][q4[8]][0].endswith("m00009.jpg")  # fixed; baseline's top-1 was 4 + 5


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
    assert [q[2] for q in data["queries"]] == ["nogt"] * 6 and data["counts"]["all"] == 6
    assert [q[0][-9:-4] for q in data["queries"]] == [f"{i:05d}" for i in range(6)]
    assert [p["src"] for p in data["plots"]] == ["map.svg"]  # positions are known, correctness is not
