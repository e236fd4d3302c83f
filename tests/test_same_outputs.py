"""Same outputs as before the redesign: each step on a Corridor subset against the old code's golden files.

The golden files come from `tests/data/golden/make_golden.py` run with the code at commit 5d4b6bb (see
tests/data/golden/SOURCE.md); here the same CLI commands run with the current code. Names must match up to
near-ties (two candidates whose old scores are within ATOL may swap), scores within ATOL.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "data" / "golden"
ATOL = 1e-4


def _golden_module():
    spec = importlib.util.spec_from_file_location("make_golden", GOLDEN / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_golden = _golden_module()


@pytest.fixture(scope="module")
def corridor(tmp_path_factory) -> tuple[Path, dict]:
    """The subset indexed (dinov2-vlad) and queried with the current code, and the query's outputs; the re-rankers
    and sequence matching start from this retrieval."""
    root = tmp_path_factory.mktemp("golden")
    make_golden.make_subset(root)
    make_golden.run_step("index", root)
    return root, make_golden.run_step("query", root)


def assert_same_ranking(got: dict, old: dict) -> None:
    """Same queries, same length, scores rank-wise within ATOL; a differing name must be a near-tie of the old one."""
    assert sorted(got) == sorted(old)
    for query, ranked in old.items():
        new = got[query]
        assert len(new) == len(ranked), query
        old_score = dict((name, score) for name, score in ranked)
        for (name, score), (old_name, want) in zip(new, ranked):
            assert score == pytest.approx(want, abs=ATOL), (query, name, score, old_name, want)
            if name != old_name:
                assert abs(old_score.get(name, float("-inf")) - want) <= ATOL, (query, name, old_name)


def assert_same_outputs(step: str, got: dict) -> None:
    """A step's outputs equal to its golden file: rankings, and for sequence matching the per-frame estimates."""
    old = json.loads((GOLDEN / f"{step}.json").read_text())
    assert_same_ranking(got["ranking"], old["ranking"])
    if "estimates" in old:
        assert sorted(got["estimates"]) == sorted(old["estimates"])
        for query, (estimate, confidence) in old["estimates"].items():
            assert got["estimates"][query][0] == estimate, query
            assert got["estimates"][query][1] == pytest.approx(confidence, abs=ATOL), query


def test_global_retrieval_same_as_before(corridor):
    assert_same_outputs("query", corridor[1])


@pytest.mark.parametrize("step", ["chamfer", "patchnetvlad", "ames", "gcsa", "seqslam", "hmm"])
def test_step_same_as_before(corridor, step):
    assert_same_outputs(step, make_golden.run_step(step, corridor[0]))


@pytest.mark.slow
def test_segvlad_rerank_same_as_before(corridor):
    assert_same_outputs("segvlad", make_golden.run_step("segvlad", corridor[0]))
