"""`vprkit export` read back with hloc's layout rules and kapture's own reader; `vprkit compare` wins/losses."""

import json
import shutil

import h5py
import numpy as np
import pytest
from report_helpers import read_report_data

from vprkit.cli import main
from vprkit.evaluation import outputs
from vprkit.features import h5io


def _truth(res):
    """Our own ranking and descriptors, read straight from what `vprkit query` / `vprkit index` wrote."""
    info = json.loads((res / "results.json").read_text())
    names = json.loads((res.parent / "idx" / "manifest.json").read_text())["names"]
    q, m, ids, scores = outputs.read_predictions(res / "predictions.txt", names)
    m_desc = h5io.read_global(res.parent / "idx" / "map_features.h5", m)
    q_desc = h5io.read_global(res / "query_features.h5", q)
    return info, q, m, ids, scores, q_desc, m_desc


def test_hloc_export_reads_back_as_hloc_does(retrieval, tmp_path):
    res, _ = retrieval
    assert main(["export", str(res), "--format", "hloc", "-o", str(tmp_path / "hloc")]) == 0
    _, q, m, ids, _, q_desc, m_desc = _truth(res)
    with h5py.File(tmp_path / "hloc" / "global-feats.h5", "r") as f:
        # hloc lists images as the parents of datasets and reads f[name]['global_descriptor']
        names = set()
        f.visititems(lambda _, o: names.add(o.parent.name.strip("/")) if isinstance(o, h5py.Dataset) else None)
        assert names == {f"query/{n}" for n in q} | {f"map/{n}" for n in m}  # query and map folders share a name
        qd = np.stack([f[f"query/{n}"]["global_descriptor"][()] for n in q])
        md = np.stack([f[f"map/{n}"]["global_descriptor"][()] for n in m])
    np.testing.assert_array_equal(qd, q_desc)
    np.testing.assert_array_equal(md, m_desc)
    # hloc's pairs_from_retrieval: inner products, top-k per query, `query db` lines, best first
    top = np.argsort(-(qd @ md.T), axis=1, kind="stable")[:, : ids.shape[1]]
    np.testing.assert_array_equal(top, ids)
    lines = (tmp_path / "hloc" / "pairs-from-retrieval.txt").read_text().splitlines()
    assert lines == [f"query/{q[i]} map/{m[j]}" for i in range(len(q)) for j in ids[i]]


def test_kapture_export_reads_back_with_kapture(retrieval, tmp_path):
    kcsv = pytest.importorskip("kapture.io.csv", reason="kapture (dev extra) not installed")
    from kapture.io.features import get_global_features_fullpath, image_global_features_from_file

    res, _ = retrieval
    out = tmp_path / "kap"
    assert main(["export", str(res), "--format", "kapture", "-o", str(out)]) == 0
    info, q, m, ids, scores, q_desc, m_desc = _truth(res)
    gf = kcsv.global_features_from_dir(info["preset"], str(out), None)
    assert gf.type_name == info["preset"] and gf.dsize == m_desc.shape[1] and gf.dtype == np.float32
    assert set(gf) == {f"query/{n}" for n in q} | {f"map/{n}" for n in m}
    for names, desc, prefix in ((q, q_desc, "query/"), (m, m_desc, "map/")):
        read = [image_global_features_from_file(get_global_features_fullpath(gf.type_name, str(out), prefix + n),
                                                gf.dtype, gf.dsize) for n in names]
        np.testing.assert_array_equal(np.concatenate(read), desc)
    assert kcsv.get_version_from_csv_file(str(out / "pairs.txt")) == "1.1"
    with open(out / "pairs.txt") as f:
        rows = list(kcsv.table_from_file(f))
    assert [r[:2] for r in rows] == [[f"query/{q[i]}", f"map/{m[j]}"] for i in range(len(q)) for j in ids[i]]
    np.testing.assert_allclose([float(r[2]) for r in rows], scores.ravel(), atol=1e-6)


def test_export_refuses_results_without_query_features(retrieval, tmp_path, capsys):
    res, _ = retrieval
    (res / "query_features.h5").unlink()
    assert main(["export", str(res), "--format", "hloc", "-o", str(tmp_path / "h")]) == 2
    assert "no query_features.h5" in capsys.readouterr().err


def test_compare_counts_wins_and_losses(retrieval, tmp_path, capsys):
    res, gt = retrieval
    b = tmp_path / "res_b"
    shutil.copytree(res, b)
    _, q, m, ids, scores, _, _ = _truth(res)
    worse = ids.copy()
    worse[:4] = worse[:4, ::-1]  # B puts the correct image (itself) last for the first four queries
    outputs.write_predictions(b / "predictions.txt", q, m, worse, scores)
    assert main(["compare", str(res), str(b), "-o", str(tmp_path / "cmp")]) == 2  # no ground truth recorded
    assert "records no ground truth" in capsys.readouterr().err
    assert main(["compare", str(res), str(b), "-o", str(tmp_path / "cmp"), "--gt", str(gt)]) == 0
    assert "B right where A wrong: 0, A right where B wrong: 4" in capsys.readouterr().out
    cmp = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    (la, ma), (lb, mb) = cmp["metrics"].items()
    assert la.startswith("A: res") and ma["R@1"] == 1.0 and mb["R@1"] == pytest.approx(8 / 12)
    assert mb["R@5"] == 1.0 and cmp["both_right"] == 8
    data = read_report_data(tmp_path / "cmp" / "report.html")
    assert data["counts"]["broken"] == 4 and data["labels"]["broken"] == "A wins"
    assert [r[2] for r in data["queries"][:5]] == ["wrong"] * 4 + ["right"]
    assert main(["compare", str(res), str(b), "-o", str(tmp_path / "cmp"), "--gt", str(gt)]) == 0  # rerun: replaced
    assert main(["compare", str(res), str(b), "-o", str(res), "--gt", str(gt)]) == 2  # a results folder is not one
    assert f"{res}: exists and is not a vprkit comparison folder" in capsys.readouterr().err
    assert not (res / "compare.json").exists()
