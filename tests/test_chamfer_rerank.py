"""Chamfer re-ranking: broadcast similarity, whitening fit and the end-to-end ranking, against numpy."""

import json

import numpy as np
import pytest
import torch

from vprkit.features import local
from vprkit.models.ames import chamfer_similarity
from vprkit.rerank.chamfer import score_candidates, whitening


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_one_query_against_many_candidates_equals_a_numpy_chamfer_per_pair():
    rng = np.random.default_rng(0)
    q = _unit(rng.normal(size=(5, 8)))
    m = _unit(rng.normal(size=(3, 4, 8)))
    q_valid = np.array([True, True, True, False, False])  # two padded query rows
    m_valid = np.array([[True] * 4, [True, True, False, False], [False] * 4])  # the last candidate has none
    got = chamfer_similarity(torch.from_numpy(q)[None].float(), torch.from_numpy(q_valid)[None],
                             torch.from_numpy(m).float(), torch.from_numpy(m_valid))
    expected = [(q[q_valid] @ m[i][m_valid[i]].T).max(1).mean() for i in range(2)] + [0.0]
    assert got.numpy() == pytest.approx(expected, abs=1e-6)
    none = chamfer_similarity(torch.from_numpy(q)[None].float(), torch.zeros(1, 5, dtype=torch.bool),
                              torch.from_numpy(m).float(), torch.from_numpy(m_valid))
    assert none.tolist() == [0.0, 0.0, 0.0]  # a query without descriptors: defined, 0


def test_whitening_decorrelates_the_normalised_map_sample_and_scores_match_numpy():
    rng = np.random.default_rng(1)
    common = rng.normal(size=16) * 5  # the shared component that makes raw cosines all high
    desc = torch.from_numpy(common + rng.normal(size=(20, 6, 16))).float()
    valid = torch.ones(20, 6, dtype=torch.bool)
    valid[3, 4:] = False
    sim = whitening(desc, valid, dim=8)
    x = _unit(desc[valid].numpy().astype(np.float64))
    w, b = sim.proj.weight.detach().double().numpy(), sim.proj.bias.detach().double().numpy()
    y = x @ w.T + b
    assert y.mean(0) == pytest.approx(np.zeros(8), abs=1e-5)
    assert np.cov(y.T) == pytest.approx(np.eye(8), abs=1e-3)  # whitened: unit variance, no correlation
    # a query against three candidates, through the fitted whitening, re-derived in numpy
    got = score_candidates(sim, desc[0], valid[0], desc[1:4], valid[1:4]).numpy()
    emb = lambda d: _unit(_unit(d.numpy().astype(np.float64)) @ w.T + b)  # noqa: E731
    q = emb(desc[0])
    expected = [(q @ emb(desc[i][valid[i]]).T).max(1).mean() for i in (1, 2, 3)]
    assert got == pytest.approx(expected, abs=1e-5)
    assert isinstance(whitening(desc[:1, :1], valid[:1, :1], 8).proj, torch.nn.Identity)  # too few to fit


def test_rerank_follows_the_fusion_formula_and_ranks_each_image_first(retrieval, tmp_path, capsys):
    from vprkit.cli import main
    from vprkit.results import load_retrieval

    res, gt = retrieval
    out = tmp_path / "rr"
    assert main(["rerank", str(res), "--method", "chamfer", "-o", str(out), "--gt", str(gt), "--set",
                 "num_query_desc=8", "num_map_desc=8", "resize_max=32", "lamb=0.0", "temp=1.0"]) == 0
    glob, got = load_retrieval(res), load_retrieval(out)
    # the same budget on both sides: an image's own descriptors match exactly, the best Chamfer score is its own
    assert [got.m_names[i] for i in got.ids[:, 0]] == got.q_names
    assert json.loads((out / "results.json").read_text())["metrics"]["R@1"] == 1.0
    q_feats = local.read_rows(next((out / "cache").glob("query_local_*.h5")))
    assert got.scores[:, 0] == pytest.approx(np.full(len(q_feats), 1 / (1 + np.exp(-1.0))), abs=1e-5)
    assert sorted(got.ids[0].tolist()) == sorted(glob.ids[0].tolist())  # re-ordered, same candidates
    assert main(["rerank", str(res), "--method", "chamfer", "--preset", "nope"]) == 2
    assert "unknown rerank chamfer preset 'nope'" in capsys.readouterr().err
