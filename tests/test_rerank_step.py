"""The shared re-ranking step: loads a global retrieval, applies a method, writes and evaluates the new order."""

import json

import numpy as np
import pytest
from report_helpers import read_report_data

from vprkit import rerank
from vprkit.cli import main
from vprkit.config import parse_overrides
from vprkit.rerank.base import Reranker
from vprkit.results import load_retrieval


class Reverse(Reranker):
    """Test method: reverses each query's candidates (so a perfect global ranking gets worse, predictably)."""

    name = "reverse"
    confs = {"all": {"num_rerank": 3}}

    def rerank(self, retrieval, work_dir):
        return retrieval.ids[:, ::-1].copy(), -retrieval.scores[:, ::-1]


@pytest.fixture
def results(tiny_backbone, image_folder, tmp_path, monkeypatch):
    """A global retrieval of the folder against itself (each image's own copy is its positive, at rank 1)."""
    monkeypatch.setitem(rerank.REGISTRY, "reverse", f"{__name__}:Reverse")
    gt = tmp_path / "pos.txt"
    names = sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.png"))
    gt.write_text("".join(f"{n} {n}\n" for n in names))
    assert main(["index", str(image_folder), "-o", str(tmp_path / "idx"), "--preset", "mobilenetv2-gem"]) == 0
    assert main(["query", str(tmp_path / "idx"), str(image_folder), "--top-k", "5", "-o", str(tmp_path / "res")]) == 0
    return tmp_path / "res", gt, names


def test_load_retrieval_matches_predictions(results):
    res_dir, _, names = results
    r = load_retrieval(res_dir)
    assert r.q_names == names and r.m_names == names and r.ids.shape == (12, 5)
    assert (r.ids[:, 0] == np.arange(12)).all()  # each image finds itself first
    assert (np.diff(r.scores, axis=1) <= 1e-6).all()  # scores read back best first


def test_rerank_cli_writes_and_evaluates(results, capsys):
    res_dir, gt, names = results
    assert main(["rerank", str(res_dir), "--method", "reverse", "--preset", "all", "--gt", str(gt)]) == 0
    out = json.loads((res_dir / "rerank-reverse-all" / "results.json").read_text())
    # top-3 re-ranked: the positive moves from rank 1 to rank 3 -> R@1 1 -> 0, AP 1 -> 1/3
    assert out["metrics_global"]["R@1"] == 1.0 and out["metrics"]["R@1"] == 0.0
    assert out["metrics"]["R@5"] == 1.0 and out["metrics"]["mAP"] == pytest.approx(1 / 3)
    lines = (res_dir / "rerank-reverse-all" / "predictions.txt").read_text().splitlines()[1:]
    assert lines[2].split()[:3] == [names[0], "3", names[0]]
    # the report: every query was right before and wrong after, so all 12 are "broken", none "fixed"
    data = read_report_data(res_dir / "rerank-reverse-all" / "report.html")
    assert data["labels"]["baseline"] == "global" and data["counts"]["broken"] == 12 and data["counts"]["fixed"] == 0
    assert set(data["metrics"]) == {"global", "re-ranked"} and data["metrics"]["global"]["R@1"] == 1.0
    first = data["queries"][0]
    assert first[7] == -1 and data["maps"][first[8]][0] == first[0]  # the global top-1 was the query itself
    # a method without verified correspondences: no match figures, no column for them
    assert data["matches"] is None and all(q[9] == 0 for q in data["queries"])
    assert not (res_dir / "rerank-reverse-all" / "report_files" / "matches").exists()


def test_overrides_and_unknown_method(results, capsys):
    assert parse_overrides(["a=3", "b=[1,2]", "c=ransac", "d=0.5"]) == {"a": 3, "b": [1, 2], "c": "ransac", "d": 0.5}
    assert Reverse.CONFIG.resolve("all", num_rerank=2)["num_rerank"] == 2
    assert main(["rerank", str(results[0]), "--method", "nope"]) == 2
    assert "unknown re-ranking method 'nope'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["novalue"])
