"""A robot's route (issue 29, section 2): map positions from a CSV kept in the index, ground truth from the
queries' positions when map and query runs share frame names, checked before any extraction, sequence runs named
by their settings and scored with the ground truth they record, the report reading results.json, and the
confidence threshold for a precision target."""

import json
import shutil

import numpy as np
import pytest
from conftest import DEMO
from report_helpers import read_report_data

from vprkit import api, compare, rerank
from vprkit.cli import main
from vprkit.data.groundtruth import MapPositions, load_ground_truth
from vprkit.features import extract, h5io
from vprkit.index import faiss_index
from vprkit.index.layout import MAP_FEATURES
from vprkit.rerank.base import Reranker
from vprkit.results import SEQUENCE_FILE, read_results, read_sequence
from vprkit.sequence.pipeline import map_route

N = 30  # frames of the Corridor route used: map and query frames share names (0000000.jpg, ...)
EAST0, NORTH0 = 500000.0, 7000000.0


def _positions(i: np.ndarray, query: bool) -> np.ndarray:
    """A straight route east: map frame i at 2 i m; query frame i 0.5 m further and 1 m north of the map line, so
    query i is within 3 m of map i-1 (2.69 m), i (1.12 m) and i+1 (1.80 m) only (i+2: 3.64 m, i-2: 4.61 m)."""
    i = np.asarray(i, dtype=np.float64)
    return np.stack([EAST0 + 2 * i + (0.5 if query else 0.0), NORTH0 + (1.0 if query else 0.0) + 0 * i], axis=1)


def _csv(path, names, pos, sets=None) -> str:
    head = "set,name,easting,northing\n" if sets else "name,easting,northing\n"
    rows = [f"{s + ',' if sets else ''}{n},{e:.3f},{no:.3f}\n" for s, n, (e, no) in
            zip(sets or [None] * len(names), names, pos)]
    path.write_text(head + "".join(rows))
    return str(path)


@pytest.fixture
def route(tmp_path):
    """N Corridor map and query frames (shared names), the map positions CSV and the queries' positions CSV."""
    names = sorted(p.name for p in (DEMO / "ref").iterdir())[:N]
    for kind in ("ref", "query"):
        (tmp_path / kind).mkdir()
        for n in names:
            shutil.copy(DEMO / kind / n, tmp_path / kind / n)
    idx = np.arange(N)
    m_csv = _csv(tmp_path / "map.csv", names, _positions(idx, False))
    q_csv = _csv(tmp_path / "query.csv", names, _positions(idx, True))
    return tmp_path, names, m_csv, q_csv


def _index(tmp, m_csv) -> str:
    assert main(["index", str(tmp / "ref"), "-o", str(tmp / "idx"), "--preset", "pixels", "--positions", m_csv]) == 0
    return str(tmp / "idx")


def test_index_keeps_csv_positions_and_refuses_bad_rows_before_work(route, capsys, monkeypatch):
    tmp, names, m_csv, _ = route
    bad = tmp / "bad.csv"
    bad.write_text("name,easting,northing\n" + "".join(f"{n},{2 * i},0\n" for i, n in enumerate(names[:3]))
                   + f"{names[3]},east,0\n")
    monkeypatch.setattr(extract, "main", lambda *a, **k: pytest.fail("extracted despite a bad positions file"))
    assert main(["index", str(tmp / "ref"), "-o", str(tmp / "x"), "--preset", "pixels", "--positions", str(bad)]) == 2
    assert f"{bad}:5: '{names[3]}': 'east', '0' are not two numbers (easting, northing)" in capsys.readouterr().err
    short = _csv(tmp / "short.csv", names[:-1], _positions(np.arange(N - 1), False))
    assert main(["index", str(tmp / "ref"), "-o", str(tmp / "x"), "--preset", "pixels", "--positions", short]) == 2
    assert f"{short}: no position for 1 map images, e.g. ['{names[-1]}']" in capsys.readouterr().err
    assert not (tmp / "x").exists()
    monkeypatch.undo()
    idx = _index(tmp, m_csv)
    manifest = faiss_index.read_manifest(idx)
    np.testing.assert_allclose(manifest["positions"], _positions(np.arange(N), False))
    assert manifest["utm_zone"] is None and manifest["positions_file"] == m_csv
    route_ids, route_pos = map_route(faiss_index.load(idx), "folder")  # the HMM's `radius` transitions use them
    np.testing.assert_allclose(route_pos, np.asarray(manifest["positions"])[route_ids])
    # the service reads them: the page's map points, each match's position and the estimate's
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from vprkit.service.state import Service

    svc = Service(idx)
    try:
        size, points = svc.live_points()
        assert size == N and {p["name"]: p["position"] for p in points} == dict(zip(names, manifest["positions"]))
        desc = h5io.read_global(tmp / "idx" / MAP_FEATURES, [names[7]])
        found = svc.localize(None, desc, 1, False, None)
        assert found["matches"][0]["name"] == names[7]  # a map image finds itself, at its CSV position
        assert found["matches"][0]["position"] == found["estimate"]["position"] == manifest["positions"][7]
    finally:
        svc.close()


def test_latlon_positions_become_utm_metres_in_one_zone(tmp_path):
    # 0.001 degree of longitude along 48 N on the WGS84 ellipsoid: the parallel's radius N cos(lat), with
    # N = a / sqrt(1 - e^2 sin^2 lat), times UTM's scale there, k = 0.9996 (1 + (dlon cos lat)^2 / 2) (2 degrees
    # from zone 32's central meridian, 9 E)
    (tmp_path / "ll.csv").write_text("name,lat,lon\na,48.0,11.0\nb,48.0,11.001\n")
    got = api.map_positions(tmp_path / "ll.csv", ["a", "b"])
    lat, a, e2 = np.radians(48.0), 6378137.0, 0.00669437999014
    k = 0.9996 * (1 + (np.radians(2.0) * np.cos(lat)) ** 2 / 2)
    hand = np.radians(0.001) * a / np.sqrt(1 - e2 * np.sin(lat) ** 2) * np.cos(lat) * k
    assert got.zone == (32, "U")  # zone = floor((11 + 180) / 6) + 1, band U covers 48-56 N
    assert np.linalg.norm(np.subtract(*got.positions)) == pytest.approx(hand, rel=2e-4)


def test_bad_ground_truth_refused_before_any_extraction(route, capsys, monkeypatch):
    tmp, names, m_csv, q_csv = route
    idx = _index(tmp, m_csv)
    both = np.r_[_positions(np.arange(N), False), _positions(np.arange(N), True)]
    shared = _csv(tmp / "both.csv", names + names, both)
    monkeypatch.setattr(extract, "main", lambda *a, **k: pytest.fail("extracted despite bad ground truth"))
    for cmd in (["query", idx, str(tmp / "query")], ["sequence", idx, str(tmp / "query")]):
        assert main([*cmd, "--gt", shared, "-o", str(tmp / "out")]) == 2
        assert f"{shared}:{N + 2}: '{names[0]}' appears twice" in capsys.readouterr().err
        assert main([*cmd, "--gt-map", m_csv, "-o", str(tmp / "out")]) == 2
        assert "give the queries' positions too (--gt-query FILE.csv)" in capsys.readouterr().err


def test_sets_in_one_csv_and_query_positions_on_the_index_positions_agree(route):
    tmp, names, m_csv, q_csv = route
    idx = _index(tmp, m_csv)
    pos = np.r_[_positions(np.arange(N), False), _positions(np.arange(N), True)]
    both = _csv(tmp / "sets.csv", names + names, pos, ["map"] * N + ["query"] * N)
    expected = [sorted({i - 1, i, i + 1} & set(range(N))) for i in range(N)]  # see _positions
    for args in (["--gt", both], ["--gt-query", q_csv], ["--gt-query", q_csv, "--gt-map", m_csv]):
        out = tmp / f"res{len(args)}{args[0]}"
        assert main(["query", idx, str(tmp / "query"), "-o", str(out), "--threshold", "3", *args]) == 0
        res, manifest = read_results(out), faiss_index.read_manifest(idx)
        truth = load_ground_truth(res["gt"], names, manifest["names"], res["threshold"], MapPositions.of(manifest))
        assert [p.tolist() for p in truth.positives] == expected


class Reverse(Reranker):
    """Reverses each query's candidates (a predictable change of the ranking)."""

    name = "reverse"
    confs = {"all": {"num_rerank": 3}}

    def rerank(self, retrieval, work_dir):
        return retrieval.ids[:, ::-1].copy(), -retrieval.scores[:, ::-1]


def _report_equals_results(folder, rows: dict[str, str]) -> None:
    """The metrics the report shows for each ranking (label -> results.json key) are results.json's: equal when
    results.json scored precision-recall, else its keys equal and the curve's numbers added."""
    res = json.loads((folder / "results.json").read_text())
    shown = read_report_data(folder / "report.html")["metrics"]
    assert set(shown) == set(rows)
    for label, key in rows.items():
        assert shown[label] == res[key] if "AUC-PR" in res[key] else {k: shown[label][k] for k in res[key]} == res[key]


def test_report_shows_results_json_for_query_rerank_and_sequence(route, monkeypatch):
    tmp, names, m_csv, q_csv = route
    idx = _index(tmp, m_csv)
    monkeypatch.setitem(rerank.REGISTRY, "reverse", f"{__name__}:Reverse")
    gt = ["--gt-query", q_csv, "--threshold", "3"]
    assert main(["query", idx, str(tmp / "query"), "-o", str(tmp / "q"), *gt]) == 0
    assert main(["rerank", str(tmp / "q"), "--method", "reverse", "-o", str(tmp / "r"), *gt]) == 0
    assert main(["sequence", idx, str(tmp / "query"), "-o", str(tmp / "s"), "--set", "ds=5", *gt]) == 0
    _report_equals_results(tmp / "q", {"pixels": "metrics"})
    _report_equals_results(tmp / "r", {"global": "metrics_global", "re-ranked": "metrics"})
    _report_equals_results(tmp / "s", {"single image": "metrics_single", "sequence (seqslam)": "metrics"})
    # the sequence's P-R metrics threshold SeqSLAM's confidence (sequence.txt), not the line cost of predictions.txt
    rows = read_sequence(tmp / "s" / SEQUENCE_FILE)
    res = json.loads((tmp / "s" / "results.json").read_text())
    from vprkit.evaluation.metrics import score_metrics

    hand = score_metrics(np.array([r.confidence for r in rows]), np.array([r.correct for r in rows]), N)
    assert res["metrics"]["AUC-PR"] == hand["AUC-PR"]  # exactly: scored with the confidences as the file holds them
    assert res["metrics"]["Rec@100P"] == hand["Rec@100P"]
    # compare scores the sequence run as its results.json and report do (its confidence, not predictions.txt's)
    cmp = json.loads((compare.main([tmp / "q", tmp / "s"], tmp / "cmp", labels=["query", "seq"])
                      / compare.COMPARE_FILE).read_text())
    assert cmp["metrics"]["B: seq"] == res["metrics"]  # = the report's (_report_equals_results)
    assert dict(zip(cmp["table"]["columns"], cmp["table"]["rows"][1]))["AUC-PR"] == f"{res['metrics']['AUC-PR']:.3f}"
    plots = [p["src"] for p in read_report_data(tmp / "s" / "report.html")["plots"]]
    assert {"frames_places.svg", "map.svg"} <= set(plots)


def test_sequence_folders_by_settings_gt_recorded_error_columns_and_compare(route, capsys):
    tmp, names, m_csv, q_csv = route
    idx = _index(tmp, m_csv)
    base = tmp / "idx" / "results" / "query"
    gt = ["--gt-query", q_csv, "--threshold", "3"]
    assert main(["sequence", idx, str(tmp / "query"), *gt]) == 0
    first = (base / "sequence-seqslam" / "results.json").read_bytes()
    assert main(["sequence", idx, str(tmp / "query"), "--set", "ds=20", "enhance=5", *gt]) == 0
    assert (base / "sequence-seqslam" / "results.json").read_bytes() == first  # not overwritten
    res = json.loads((base / "sequence-seqslam-ds20-enhance5" / "results.json").read_text())
    assert res["gt"].startswith("query=") and res["threshold"] == 3.0 and res["conf"]["ds"] == 20
    capsys.readouterr()
    assert main(["sequence", idx, str(tmp / "query"), "-o", str(base / "sequence-seqslam"), "--set", "ds=7"]) == 2
    assert "holds a sequence run with other settings (ds)" in capsys.readouterr().err
    # sequence.txt: correct and error (metres) columns, by hand from the positions
    lines = (base / "sequence-seqslam" / SEQUENCE_FILE).read_text().splitlines()
    assert lines[0] == "# query\testimate\tconfidence\tcorrect\terror_m"
    index = {n: i for i, n in enumerate(names)}
    for row in read_sequence(base / "sequence-seqslam" / SEQUENCE_FILE):
        q, m = index[row.query], index[row.estimate]
        assert row.error == pytest.approx(np.linalg.norm(_positions([q], True) - _positions([m], False)), abs=1e-3)
        assert row.correct == (abs(q - m) <= 1)
    # evaluate scores a sequence folder again with its recorded ground truth and its confidence (sequence.txt)
    scored = json.loads((base / "sequence-seqslam" / "results.json").read_text())["metrics"]
    assert api.evaluate(base / "sequence-seqslam") == pytest.approx(scored, abs=1e-6)
    # compare scores sequence runs with the ground truth they record
    out = compare.main([base / "sequence-seqslam", base / "sequence-seqslam-ds20-enhance5"], tmp / "cmp")
    cmp = json.loads((out / compare.COMPARE_FILE).read_text())
    assert cmp["a_wins"] + cmp["both_right"] == sum(r.correct for r in read_sequence(base / "sequence-seqslam"
                                                                                        / SEQUENCE_FILE))


def test_target_precision_threshold_by_hand(tmp_path, capsys):
    # five queries, confidences 0.9 .. 0.5, right / right / wrong / right / wrong (each has a positive):
    # precision by threshold 1/1, 2/2, 2/3, 3/4, 3/5 -> P >= 0.99 first at 0.8 (recall 2/5), P >= 0.75 at 0.6 (3/5)
    pred = tmp_path / "predictions.txt"
    right = [1, 1, 0, 1, 0]
    pred.write_text("".join(f"q{i}\t1\t{'m' + str(i) if ok else 'x'}\t{0.9 - 0.1 * i:.1f}\n"
                            f"q{i}\t2\t{'x' if ok else 'm' + str(i)}\t0.1\n" for i, ok in enumerate(right)))
    gt = tmp_path / "pos.txt"
    gt.write_text("".join(f"q{i}\tm{i}\n" for i in range(5)))
    point = api.evaluate(pred, str(gt), target_precision=0.99)["operating_point"]
    assert point == pytest.approx({"target_precision": 0.99, "confidence_threshold": 0.8, "precision": 1.0,
                                   "recall": 0.4})
    assert api.evaluate(pred, str(gt), target_precision=0.75)["operating_point"]["recall"] == pytest.approx(0.6)
    assert main(["evaluate", str(pred), "--gt", str(gt), "--target-precision", "0.99"]) == 0
    assert "accept matches with confidence >= 0.8: recall 0.400 (precision 1.000)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(pred), "--gt", str(gt), "--target-precision", "1.5"])
    assert exc.value.code == 2 and "must be a number in (0, 1], got 1.5" in capsys.readouterr().err


def test_append_gives_added_images_their_csv_positions(route):
    tmp, names, m_csv, _ = route
    (tmp / "first").mkdir()
    for n in names[:20]:
        shutil.copy(tmp / "ref" / n, tmp / "first" / n)
    idx = str(tmp / "idx")
    assert main(["index", str(tmp / "first"), "-o", idx, "--preset", "pixels", "--positions", m_csv]) == 0
    assert main(["index", str(tmp / "ref"), "-o", idx, "--append", "--positions", m_csv]) == 0
    manifest = faiss_index.read_manifest(idx)
    got = dict(zip(manifest["names"], manifest["positions"]))
    assert got == dict(zip(names, _positions(np.arange(N), False).tolist()))
