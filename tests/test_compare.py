"""`vprkit compare A B C`: the table against hand-counted wins and scipy's binomial test; the cost every
results.json records, against the files and memory it describes; re-rankers that check before they write."""

import csv
import json
import logging
import resource
import shutil

import numpy as np
import pytest
from report_helpers import read_report_data
from scipy.stats import binomtest

from vprkit import api
from vprkit.cli import main
from vprkit.compare import COMPARE_FILE, mcnemar_exact, win_matrix
from vprkit.data.safeio import InputError
from vprkit.evaluation import outputs
from vprkit.results import PEAK_SINCE_STEP, SEQUENCE_FILE, Meter, load_retrieval
from vprkit.sequence.pipeline import write_sequence


def test_mcnemar_exact_is_the_two_sided_binomial_test():
    # by hand: 0 vs 4 discordant queries: 2 * (1/2)^4; 1 vs 5: 2 * (1 + 6) / 2^6
    assert mcnemar_exact(0, 4) == pytest.approx(0.125)
    assert mcnemar_exact(5, 1) == pytest.approx(14 / 64)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(3, 3) == 1.0
    for b, c in ((2, 9), (10, 25), (480, 520), (1200, 1390)):
        assert mcnemar_exact(b, c) == pytest.approx(binomtest(min(b, c), b + c, 0.5).pvalue, rel=1e-9)


def test_win_matrix_counts_row_right_column_wrong():
    a, b, c = np.array([1, 1, 0, 1], bool), np.array([0, 1, 1, 0], bool), np.array([1, 0, 0, 0], bool)
    expected = [[sum(x & ~y) for y in (a, b, c)] for x in (a, b, c)]
    assert win_matrix([a, b, c]).tolist() == expected == [[0, 2, 2], [1, 0, 2], [0, 1, 0]]


def _index_bytes(folder):
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_query_records_its_cost(retrieval):
    res, _ = retrieval
    info = json.loads((res / "results.json").read_text())
    cost = info["cost"]
    assert cost["bytes_per_image"] == pytest.approx(_index_bytes(res.parent / "idx") / info["num_map"], abs=0.1)
    assert cost["ms_per_query"] == pytest.approx(1000 * cost["wall_s"] / info["num_queries"], abs=1e-3)
    assert cost["pipeline_ms_per_query"] == cost["ms_per_query"] and cost["upstream"] is None
    # the step's peak cannot exceed this process's peak (the query ran in it)
    assert 0 < cost["peak_rss_mb"] <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 + 1


def test_meter_peak_is_the_steps_own():
    first = Meter()
    if first.source != PEAK_SINCE_STEP:
        pytest.skip("this kernel cannot reset the RSS high-water mark")
    block = np.ones(400 * 2**20 // 8)  # 400 MB touched
    big = first.read()["peak_rss_mb"]
    del block
    later = Meter().read()  # a later step does not inherit the earlier peak
    assert big - later["peak_rss_mb"] > 350 and big - first.rss_at_start > 350
    assert later["rss_at_start_mb"] <= later["peak_rss_mb"]


def _broken(res, folder, rows):
    """A copy of the results folder whose listed queries put their correct image (itself) last."""
    shutil.copytree(res, folder)
    names = json.loads((res.parent / "idx" / "manifest.json").read_text())["names"]
    q, m, ids, scores = outputs.read_predictions(res / "predictions.txt", names)
    worse = ids.copy()
    worse[rows] = worse[rows, ::-1]
    outputs.write_predictions(folder / "predictions.txt", q, m, worse, scores)
    return q


def test_compare_three_folders_table_tests_and_report(retrieval, tmp_path):
    res, gt = retrieval
    q = _broken(res, tmp_path / "b", [0, 1, 2, 3])
    _broken(res, tmp_path / "c", [2, 3, 4])
    info = json.loads((tmp_path / "c" / "results.json").read_text())
    del info["cost"]  # written before vprkit recorded costs: still compared
    (tmp_path / "c" / "results.json").write_text(json.dumps(info))
    out = tmp_path / "cmp"
    assert main(["compare", str(res), str(tmp_path / "b"), str(tmp_path / "c"), "-o", str(out), "--gt", str(gt)]) == 0
    with open(out / "table.csv") as f:
        header, *rows = list(csv.reader(f))
    assert header[:6] == ["method", "R@1", "R@5", "R@10", "mAP", "AUC-PR"]
    col = {h: i for i, h in enumerate(header)}
    assert [r[col["R@1"]] for r in rows] == ["1.000", f"{8 / 12:.3f}", f"{9 / 12:.3f}"]
    assert [r[col["wins vs A"]] for r in rows] == ["", "0", "0"]
    assert [r[col["losses vs A"]] for r in rows] == ["", "4", "3"]
    assert [r[col["p vs A"]] for r in rows] == ["", "0.125", "0.25"]  # 2 / 2^4, 2 / 2^3
    cost = json.loads((res / "results.json").read_text())["cost"]
    assert rows[0][col["KB/image"]] == f"{cost['bytes_per_image'] / 1024:.1f}"
    assert rows[0][col["ms/query"]] == f"{cost['pipeline_ms_per_query']:.1f}"
    assert rows[2][col["ms/query"]] == rows[2][col["peak MB"]] == "n/a"
    # B wrong on 0-3, C wrong on 2-4: B right where C wrong = {4}, C right where B wrong = {0, 1}
    assert json.loads((out / "compare.json").read_text())["table"]["wins"] == [[0, 4, 3], [0, 0, 1], [0, 2, 0]]
    with open(out / "per_query.csv") as f:
        per_query = list(csv.reader(f))
    assert per_query[0] == ["query", "A", "B", "C"]
    assert [r[2] for r in per_query[1:]] == ["0"] * 4 + ["1"] * 8 and per_query[1][0] == q[0]
    md, tex = (out / "table.md").read_text(), (out / "table.tex").read_text()
    assert "McNemar exact test" in md and "McNemar exact test" in tex
    assert "| " + " | ".join(rows[1]) + " |" in md
    assert " & ".join(c.replace("_", "\\_") for c in rows[1]) + " \\\\" in tex
    data = read_report_data(out / "report.html")
    assert data["table"]["columns"] == header and data["table"]["rows"] == rows  # the same numbers as table.csv
    assert data["labels"]["baseline"] == rows[0][0] and data["labels"]["ranking"] == rows[1][0]


def _pr_by_hand(confidence: np.ndarray, correct: np.ndarray) -> tuple[float, float]:
    """(AUC-PR, recall at 100 % precision) straight from the definitions: accept the queries whose confidence
    reaches each distinct value, trapezoids from recall 0 at the first point's precision (every query here has a
    positive)."""
    points = []
    for t in sorted(set(confidence.tolist()), reverse=True):
        accepted = confidence >= t
        points.append(((accepted & correct).sum() / accepted.sum(), (accepted & correct).sum() / len(correct)))
    precision, recall = np.array(points).T
    auc = np.trapezoid(np.r_[precision[0], precision], np.r_[0.0, recall])
    return float(auc), float(recall[precision == 1].max(initial=0.0))


def test_compare_and_evaluate_score_a_sequence_run_by_its_confidence(retrieval, image_folder, tmp_path):
    """A hand-made sequence run whose top-1 scores put its four wrong queries first and whose sequence.txt
    confidences put one after four right ones and three last: compare's AUC-PR and evaluate's operating point are
    the confidences' (what `vprkit sequence` scores its results.json and report with), not the top-1 scores'."""
    res, gt = retrieval
    seq = tmp_path / "seq"
    q = _broken(res, seq, [0, 1, 2, 3])  # queries 0-3 wrong at rank 1
    names = json.loads((res.parent / "idx" / "manifest.json").read_text())["names"]
    _, m, ids, _ = outputs.read_predictions(seq / "predictions.txt", names)
    top1 = np.linspace(0.9, 0.35, 12)  # wrong queries the most confident
    outputs.write_predictions(seq / "predictions.txt", q, m, ids, top1[:, None] - 0.01 * np.arange(ids.shape[1]))
    confidence = np.array([0.72, 0.15, 0.1, 0.05, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55])  # query 0 in between
    order = np.arange(12)[::-1]  # stream order other than predictions.txt's: read by query name
    write_sequence(seq / SEQUENCE_FILE, [q[i] for i in order], [m[ids[i, 0]] for i in order], confidence[order])
    correct = np.arange(12) >= 4
    auc, rec100 = _pr_by_hand(confidence, correct)
    auc_top1, _ = _pr_by_hand(top1, correct)
    assert auc - auc_top1 > 0.3 and rec100 == pytest.approx(4 / 12)  # 0.617 vs 0.299
    out = tmp_path / "cmp"
    assert main(["compare", str(res), str(seq), "-o", str(out), "--gt", str(gt)]) == 0
    with open(out / "table.csv") as f:
        header, *rows = list(csv.reader(f))
    assert rows[1][header.index("AUC-PR")] == f"{auc:.3f}" != f"{auc_top1:.3f}"
    assert rows[1][header.index("R@1")] == f"{8 / 12:.3f}"
    scored = json.loads((out / COMPARE_FILE).read_text())["metrics"][rows[1][0]]
    assert scored["AUC-PR"] == pytest.approx(auc) and scored["Rec@100P"] == pytest.approx(rec100)
    assert read_report_data(out / "report.html")["metrics"][rows[1][0]]["AUC-PR"] == pytest.approx(auc)
    # evaluate reads the same confidence through load_retrieval: its threshold for precision 1 is query 7's (0.75)
    ev = api.evaluate(seq, str(gt), target_precision=1.0)
    assert ev["AUC-PR"] == pytest.approx(auc)
    assert ev["operating_point"] == pytest.approx({"target_precision": 1.0, "confidence_threshold": 0.75,
                                                   "precision": 1.0, "recall": 4 / 12})
    # a sequence.txt that misses a query of predictions.txt is refused, not scored partly
    write_sequence(seq / SEQUENCE_FILE, q[1:], [m[j] for j in ids[1:, 0]], confidence[1:])
    with pytest.raises(InputError, match=f"no confidence for 1 queries .*first: {q[0]}"):
        load_retrieval(seq)
    # a query run written into the folder drops the stale sequence.txt: its ranking is scored by its top-1 scores
    assert main(["query", str(res.parent / "idx"), str(image_folder), "--top-k", "5", "-o", str(seq)]) == 0
    assert not (seq / SEQUENCE_FILE).exists() and load_retrieval(seq).confidence is None


def test_compare_needs_two_folders(retrieval, tmp_path, capsys):
    res, gt = retrieval
    assert main(["compare", str(res), "-o", str(tmp_path / "cmp"), "--gt", str(gt)]) == 2
    assert "at least two results folders" in capsys.readouterr().err
    assert not (tmp_path / "cmp").exists()


def test_rerank_folder_name_cost_and_upstream(retrieval, capsys):
    res, gt = retrieval
    assert main(["rerank", str(res), "--method", "chamfer", "--gt", str(gt), "--set", "num_query_desc=8",
                 "num_map_desc=8", "resize_max=32"]) == 0
    out = res / "rerank-chamfer"  # no preset named: no `-None`
    assert out.is_dir() and not list(res.glob("*None*"))
    info, before = (json.loads((f / "results.json").read_text()) for f in (out, res))
    maps = sum(p.stat().st_size for p in (out / "cache").rglob("map*") if p.is_file())
    cost = info["cost"]
    assert cost["extra_bytes_per_image"] == pytest.approx(maps / info["num_map"], abs=0.1)
    assert cost["bytes_per_image"] == pytest.approx(before["cost"]["bytes_per_image"] + maps / info["num_map"],
                                                    abs=0.2)
    assert cost["pipeline_ms_per_query"] == pytest.approx(
        cost["ms_per_query"] + before["cost"]["pipeline_ms_per_query"], abs=1e-2)
    assert cost["upstream"] == str(res.resolve())


def test_ames_without_a_model_is_refused_before_any_folder(retrieval, capsys):
    res, _ = retrieval
    assert main(["rerank", str(res), "--method", "ames", "--preset", "fp"]) == 2
    assert "ames needs a trained model" in capsys.readouterr().err
    assert not (res / "rerank-ames-fp").exists()


def test_patchnetvlad_warns_of_an_untrained_vocabulary(caplog):
    from vprkit.rerank.patchnetvlad.reranker import PatchNetVLAD

    with caplog.at_level(logging.WARNING, logger="vprkit"):
        PatchNetVLAD(PatchNetVLAD.CONFIG.resolve("speed")).check(None)
    assert "untrained NetVLAD vocabulary" in caplog.text and "0.910 -> 0.640" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vprkit"):
        PatchNetVLAD(PatchNetVLAD.CONFIG.resolve("speed", {"checkpoint": "trained.pth.tar"})).check(None)
    assert not caplog.text


def test_patchnetvlad_estimates_its_run_time_from_the_first_query(monkeypatch, caplog):
    from vprkit.rerank.patchnetvlad import reranker

    clock = iter([100.0, 102.0])  # the first query's 4 pairs took 2 s
    monkeypatch.setattr(reranker.time, "perf_counter", lambda: next(clock))
    estimate = reranker.RunEstimate(40)
    with caplog.at_level(logging.WARNING, logger="vprkit"):
        estimate.tell(4)
        assert not caplog.text  # nothing measured yet
        estimate.tell(4)
        estimate.tell(4)  # said once
    assert caplog.text.count("about 20 s for the 40 pairs") == 1 and "0.500 s per" in caplog.text


def test_patchnetvlad_says_its_estimated_time_before_any_work(retrieval, caplog):
    from vprkit.rerank.patchnetvlad.reranker import SECONDS_PER_MPIXEL, PatchNetVLAD
    from vprkit.results import load_retrieval

    res, _ = retrieval
    cand = load_retrieval(res).top(3)
    conf = PatchNetVLAD.CONFIG.resolve("speed", {"resize": [200, 100], "fit_max_images": 7})
    # 12 queries + the distinct candidates (every image here: each is its own neighbour) + 7 fitting images
    images = 12 + len({int(j) for j in cand.ids.ravel()}) + 7
    seconds = SECONDS_PER_MPIXEL * images * 200 * 100 / 1e6
    with caplog.at_level(logging.WARNING, logger="vprkit"):
        PatchNetVLAD(conf).check(cand)
    assert f"about {seconds:.0f} s to describe" in caplog.text
    assert PatchNetVLAD(conf).estimated_seconds(cand) == pytest.approx(seconds)
