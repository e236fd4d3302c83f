"""GCSA: affinities against hand computations, side-information reading, the network's symmetry and
masking, two-stage training, and the re-ranking step end to end on the shipped Corridor data."""

import json
import logging
import math

import numpy as np
import pytest
import torch
from conftest import DEMO

from vprkit.cli import main as cli
from vprkit.data.groundtruth import GroundTruth
from vprkit.data.sideinfo import clean, load_sideinfo, read_metadata_csv, read_msls, simulate_prior, unknown
from vprkit.evaluation.metrics import average_precision
from vprkit.evaluation.msls import write_msls_csv
from vprkit.models.gcsa import GCSA, AffinityProjection
from vprkit.rerank import affinity
from vprkit.rerank.gcsa import Contexts, order, refined_scores, side_affinity, side_batches
from vprkit.train import gcsa as train_gcsa
from vprkit.train.checkpoint import load_checkpoint

# ---------------------------------------------------------------- affinities


def test_visual_is_cosine():
    a, b = np.array([[3.0, 4.0], [0.0, 0.0]]), np.array([[4.0, 3.0], [0.0, 2.0]])
    np.testing.assert_allclose(affinity.visual(a, b), [[24 / 25, 4 / 5], [0, 0]], atol=1e-12)


def test_positional_gaussian_and_unknown():
    pa = np.array([[0.0, 0.0], [np.nan, np.nan]])
    pb = np.array([[3.0, 4.0], [0.0, 0.0]])
    out = affinity.positional(pa, pb, scale=5.0)
    assert out[0, 0] == pytest.approx(math.exp(-25 / 50))  # d = 5 = one scale
    assert out[0, 1] == 1.0
    assert np.isnan(out[1]).all()  # unknown stays unknown, not "far away"


def test_fov_overlap_of_known_triangles():
    r = 10.0
    a = r / math.sqrt(2)  # triangle half-width = height for a 90 degree view
    pa = np.zeros((1, 2))
    # same place, headings 0 and 45: intersection = r^2 (1/sqrt2 - 1/2), triangle area a^2 = r^2/2
    assert affinity.fov_overlap(pa, np.array([0.0]), pa, np.array([45.0]), 90, r)[0, 0] == pytest.approx(
        math.sqrt(2) - 1)
    # same heading, second camera 3 m further north: the overlap is a similar triangle of height a - 3
    out = affinity.fov_overlap(pa, np.array([0.0]), np.array([[0.0, 3.0]]), np.array([0.0]), 90, r)
    assert out[0, 0] == pytest.approx((a - 3) ** 2 / a**2)
    pb = np.array([[0.0, 0.0], [0.0, 0.0], [100.0, 0.0], [0.0, 0.0]])
    hb = np.array([0.0, 180.0, 0.0, np.nan])
    out = affinity.fov_overlap(pa, np.array([0.0]), pb, hb, 90, r)[0]
    assert out[0] == pytest.approx(1.0) and out[1] == pytest.approx(0.0) and out[2] == 0.0
    assert np.isnan(out[3])  # unknown heading: unknown overlap


def test_fov_numpy_clipping_matches_shapely():
    rng = np.random.default_rng(0)
    pa, pb = rng.uniform(0, 60, (30, 2)), rng.uniform(0, 60, (25, 2))
    ha, hb = rng.uniform(0, 360, 30), rng.uniform(0, 360, 25)
    pa[:5], ha[:5] = pb[:5], hb[:5]  # identical triangles (every vertex on the other's edges)
    ha[5] = hb[5] + 90.0  # shared apex, touching along one edge
    pb[6] = pa[6] + 5.0 * np.array([math.sin(math.radians(ha[6])), math.cos(math.radians(ha[6]))])
    hb[6] = ha[6]  # one inside the other's view, same heading
    num = affinity.fov_overlap(pa, ha, pb, hb, 70.0, 30.0, backend="numpy")
    ref = affinity.fov_overlap(pa, ha, pb, hb, 70.0, 30.0, backend="shapely")
    np.testing.assert_allclose(num, ref, atol=1e-9)
    assert (ref > 0).mean() > 0.2 and np.allclose(np.diag(num)[:5], 1.0)


def test_view_triangle_uses_compass_headings():
    tri = affinity.view_triangles(np.array([[1.0, 2.0]]), np.array([90.0]), 90.0, 10.0)[0]
    s = 10 / math.sqrt(2)
    np.testing.assert_allclose(tri, [[1, 2], [1 + s, 2 + s], [1 + s, 2 - s]], atol=1e-9)  # 90 = facing east


def test_radio_over_shared_transmitters():
    ra = [{"x": -50.0, "y": -70.0}, {"x": -50.0}, None, {}]
    rb = [{"y": -60.0, "z": -40.0}, {"x": -50.0, "y": -70.0}]
    out = affinity.radio(ra, rb, scale_db=10.0)
    assert out[0, 0] == pytest.approx(math.exp(-1) / 3)  # one shared (|-70+60| = 10 dB) of 3 heard
    assert out[0, 1] == pytest.approx(1.0)
    assert out[1, 0] == 0.0  # no transmitter in common: known to be apart, not NaN
    assert out[1, 1] == pytest.approx(0.5)
    assert np.isnan(out[2]).all()  # no radio data: unknown
    assert out[3, 0] == 0.0 and out[3, 1] == 0.0  # heard nothing vs heard something


# ---------------------------------------------------------------- side information


def test_metadata_csv_bad_values(tmp_path, caplog):
    path = tmp_path / "meta.csv"
    path.write_text("name,lat,lon,heading,radio\n"
                    "a.jpg,55.0,13.0,370,ap1:-40;ap2:-70\n"
                    "b.jpg,nan,13.0,-90,\n"
                    "e.jpg,inf,inf,,\n"
                    "c.jpg,55.001,13.0,,-\n")
    with caplog.at_level(logging.WARNING, logger="vprkit"):
        info = read_metadata_csv(path, ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"])
    assert info.heading[0] == pytest.approx(10.0) and info.heading[1] == pytest.approx(270.0)
    assert np.isnan(info.heading[2:]).all()
    assert info.has("position").tolist() == [True, False, True, False, False]  # NaN, inf, no row: unknown
    np.testing.assert_allclose(info.position[2] - info.position[0], [0.0, 6_371_000 * math.radians(0.001)],
                               atol=1e-6)
    assert info.radio == [{"ap1": -40.0, "ap2": -70.0}, None, {}, None, None]
    assert "2 positions with NaN/inf" in caplog.text and "'e.jpg'" in caplog.text
    text = caplog.text
    assert "wrapped modulo 360" in text and "treated as unknown" in text and "no row" in text and "d.jpg" in text


def test_clean_is_the_one_check_of_given_but_unusable_positions():
    info = unknown(["a", "b", "c", "d"])
    info.position = np.array([[1.0, 2.0], [np.inf, np.inf], [np.nan, np.nan], [np.nan, 3.0]])
    out = clean(info)
    assert out.has("position").tolist() == [True, False, False, False] and np.isnan(out.position[1:]).all()
    assert len(out.notes) == 1 and out.notes[0].startswith("2 positions") and "['b', 'd']" in out.notes[0]


def test_msls_layout(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "postprocessed.csv").write_text(
        ",key,easting,northing,unique_cluster,control_panel,night,view_direction\n"
        "0,k1,100.0,200.0,0,0,False,Forward\n1,k2,110.0,205.0,0,0,False,Forward\n")
    (tmp_path / "raw.csv").write_text(",key,lon,lat,ca,captured_at,pano\n0,k2,13.0,55.0,359.5,0,False\n"
                                      "1,k1,13.0,55.0,45.0,0,False\n")
    info = read_msls(tmp_path / "images", ["images/k1.jpg", "images/k2.jpg", "images/k3.jpg"])
    np.testing.assert_allclose(info.position[:2], [[100, 200], [110, 205]])
    assert np.isnan(info.position[2]).all()
    np.testing.assert_allclose(info.heading[:2], [45.0, 359.5])


def test_simulated_prior_noise():
    info = load_sideinfo("index", [f"{i}.png" for i in range(20000)])
    noisy = simulate_prior(info, sigma=3.0, seed=1)
    err = noisy.position - info.position
    assert abs(err.std() - 3.0) < 0.1 and abs(err.mean()) < 0.1
    assert "Gaussian noise, sigma = 3" in noisy.notes[-1]


def test_msls_csv(tmp_path):
    write_msls_csv(tmp_path / "sub.csv", ["q/images/qa.jpg", "q/images/qb.jpg"], ["m/a.jpg", "m/b.jpg", "m/c.jpg"],
                   np.array([[2, 0, -1], [1, 2, 0]]))
    assert (tmp_path / "sub.csv").read_text() == "qa c a\nqb b c a\n"


# ---------------------------------------------------------------- network


def _inputs(b=2, k=6, n_anchors=4, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    desc = torch.randn(b, 1 + k, d, generator=g)
    anchors = torch.cat([desc[:, :1], torch.randn(b, n_anchors, d, generator=g)], dim=1)
    side = torch.rand(b, 1 + k, 1 + n_anchors, generator=g)
    side[0, 2] = float("nan")  # a candidate without position
    side[:, :, 3] = float("nan")  # an anchor without position
    return desc, anchors, {"position": side}


def test_model_is_permutation_equivariant_over_candidates(one_thread):
    torch.manual_seed(0)
    model = GCSA(8, 4, ["position"], proj_dim=6, width=16, num_layers=2, num_heads=2).eval()
    desc, anchors, side = _inputs()
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    full = torch.cat([torch.zeros(1, dtype=torch.long), perm + 1])
    with torch.no_grad():
        s = model(desc, anchors, side)
        s_perm = model(desc[:, full], anchors, {"position": side["position"][:, full]})
    torch.testing.assert_close(s_perm, s[:, perm])
    assert torch.isfinite(s).all()


def test_unknown_affinities_are_masked_not_zero_filled():
    torch.manual_seed(0)
    proj = AffinityProjection(3, 5)
    row_unknown = torch.full((1, 1, 3), float("nan"))
    assert torch.equal(proj(row_unknown), torch.zeros(1, 1, 5))  # token lacking the modality: no contribution
    zeros = torch.zeros(1, 1, 3)  # "known and unrelated" is something else
    assert not torch.allclose(proj(zeros), torch.zeros(1, 1, 5))
    # an unknown anchor column feeds the mask input: differs from a known 0 in that column
    partly = torch.tensor([[[0.5, float("nan"), 0.2]]])
    w = proj.linear.weight.detach()
    expected = w @ torch.tensor([0.5, 0.0, 0.2, 0.0, 1.0, 0.0]) + proj.linear.bias.detach()
    torch.testing.assert_close(proj(partly)[0, 0], expected)


def test_query_without_position_is_masked_in_contexts():
    m_side = load_sideinfo("index", [f"{i}.png" for i in range(10)])
    q_side = unknown(["q0.png", "q1.png"], dim=1)
    q_side.position[0] = 4.2
    ctx = Contexts.build(np.ones((2, 3), np.float32), np.ones((10, 3), np.float32),
                         np.array([[4, 5, 9], [1, 2, -1]]), 2, m_side, ["position"], {"position_scale": 1.0})
    side = ctx.side(np.array([0, 1]), q_side)["position"].numpy()
    assert side[0, 0, 0] == 1.0 and side[0, 1, 0] == side[0, 0, 1] == pytest.approx(math.exp(-0.2**2 / 2))
    assert np.isnan(side[1, 0]).all() and np.isnan(side[1, :, 0]).all()  # the query row and column
    assert side[1, 1, 1] == 1.0 and np.isnan(side[1, 3]).all()  # map rows known; padded candidate unknown
    assert ctx.tensors(np.array([1]))[2].tolist() == [[False, False, False, True]]


def test_side_affinity_refuses_mixed_dimensions():
    with pytest.raises(ValueError, match="1-D but map positions 2-D"):
        side_affinity("position", unknown(["a"], 1), unknown(["b"], 2), {})


# ---------------------------------------------------------------- training


def test_ap_loss_equals_exact_ap_on_bin_centres():
    scores = torch.tensor([[1.0, 0.75, 0.5, 0.25, 0.0], [0.0, 0.25, 0.5, 0.75, 1.0]])
    labels = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    loss = train_gcsa.ap_loss(scores, labels, num_bins=9)  # bin width 0.25: each score on its own centre
    assert loss.item() == pytest.approx(1 - average_precision(np.array([1, 0, 1, 0, 0], bool), 2))


def _synthetic(n=60, dim=16, k=10, seed=0):
    """Places on a line; query descriptors = map descriptor + noise, every 5th query made confusing."""
    rng = np.random.default_rng(seed)
    m_desc = rng.normal(size=(n, dim)).astype(np.float32)
    q_desc = (m_desc + rng.normal(scale=0.8, size=m_desc.shape)).astype(np.float32)
    ids = np.argsort(-(q_desc @ m_desc.T), axis=1)[:, :k]
    names = [f"{i:03d}.png" for i in range(n)]
    m_side = load_sideinfo("index", names)
    truth = GroundTruth([np.array([i]) for i in range(n)])
    return q_desc, m_desc, ids, m_side, truth


def test_two_stage_training_starts_stage2_from_stage1(tmp_path, one_thread):
    q_desc, m_desc, ids, m_side, truth = _synthetic()
    conf = train_gcsa.CONFIG.resolve("position", model={"proj_dim": 8, "width": 16, "num_layers": 1, "num_heads": 2},
                               num_anchors=5, num_candidates=10, stage1={"epochs": 2}, stage2={"epochs": 2},
                               query_prior_sigma=1.0, batch_size=16)
    ctx = Contexts.build(q_desc, m_desc, ids, 5, m_side, ["position"], conf["side"])
    final = train_gcsa.train(conf, ctx, truth, m_side, tmp_path)
    s1 = torch.load(tmp_path / "stage1.pt", weights_only=True)["model"]
    s2 = torch.load(final, weights_only=True)["model"]
    fresh = GCSA(16, 5, ["position"], **conf["model"])
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    params = train_gcsa.init_stage2(fresh, tmp_path / "stage1.pt", freeze_proj=True)
    torch.testing.assert_close(fresh.input_proj.weight, s1["input_proj.weight"])
    assert not torch.equal(before["input_proj.weight"], s1["input_proj.weight"])  # stage 1 did train it
    assert all(p is not fresh.input_proj.weight for p in params)  # frozen in stage 2 ...
    torch.testing.assert_close(s2["input_proj.weight"], s1["input_proj.weight"])  # ... and unchanged by it
    assert not torch.equal(s2["affinity_proj.position.linear.weight"], s1["affinity_proj.position.linear.weight"])
    rows = [line.split(",") for line in (tmp_path / "stage2.csv").read_text().splitlines()]
    assert rows[0] == ["epoch", "loss", "val_mAP@10", "val_R@1"] and len(rows) == 3
    meta = load_checkpoint(tmp_path / "stage2-last.pt", GCSA(16, 5, ["position"], **conf["model"]))
    assert meta["epoch"] == 1 and meta["early"]["best"] == max(float(r[2]) for r in rows[1:])
    assert train_gcsa.train(conf, ctx, truth, m_side, tmp_path) == final  # finished stages are not retrained
    other = {**conf, "batch_size": 8}
    with pytest.raises(ValueError, match=r"stage1-last.pt is a run with other settings \(batch_size: 16 -> 8\)"):
        train_gcsa.train(other, ctx, truth, m_side, tmp_path)
    train_gcsa.train(other, ctx, truth, m_side, tmp_path, resume=False)  # starts over under the new settings
    assert load_checkpoint(tmp_path / "stage2-last.pt", GCSA(16, 5, ["position"], **conf["model"]))["conf"] == other


def test_validation_side_affinities_are_computed_once(tmp_path, monkeypatch, one_thread):
    q_desc, m_desc, ids, m_side, truth = _synthetic()
    conf = train_gcsa.CONFIG.resolve("position", model={"proj_dim": 8, "width": 16, "num_layers": 1, "num_heads": 2},
                               num_anchors=5, query_prior_sigma=1.0)
    ctx = Contexts.build(q_desc, m_desc, ids, 5, m_side, ["position"], conf["side"])
    trainer = train_gcsa.Trainer(conf, ctx, truth, m_side, tmp_path)
    model = GCSA(16, 5, ["position"], **conf["model"])
    calls = []
    side = Contexts.side
    monkeypatch.setattr(Contexts, "side", lambda self, rows, q: calls.append(len(rows)) or side(self, rows, q))
    first = trainer.validate(model, 2)
    assert sum(calls) == len(trainer.val) == 9
    torch.nn.init.normal_(model.affinity_proj["position"].linear.weight)  # "another epoch's" model
    again = trainer.validate(model, 2)
    assert sum(calls) == 9 and again != first  # same affinities reused, new model scored
    # the same as side affinities drawn afresh (validation's fixed prior: seed + 10000)
    val_ctx, prior = ctx.subset(trainer.val), simulate_prior(m_side, 1.0, conf["seed"] + 10_000).subset(trainer.val)
    fresh, _ = order(val_ctx.ids, refined_scores(model, val_ctx, side_batches(val_ctx, prior)))
    assert again == train_gcsa.metrics.evaluate(fresh, GroundTruth([truth.positives[i] for i in trainer.val]))


# ---------------------------------------------------------------- the re-ranking step


@pytest.fixture
def corridor_results(tiny_backbone, tmp_path):
    """Global retrieval of the first 40 shipped Corridor queries vs map (tiny backbone), index ground truth."""
    for part in ("ref", "query"):
        (tmp_path / part).mkdir()
        for p in sorted((DEMO / part).glob("*.jpg"))[:40]:
            (tmp_path / part / p.name).symlink_to(p)
    assert cli(["index", str(tmp_path / "ref"), "-o", str(tmp_path / "idx"), "--preset", "mobilenetv2-gem",
                "--resize-max", "64"]) == 0
    assert cli(["query", str(tmp_path / "idx"), str(tmp_path / "query"), "--top-k", "20", "-o",
                str(tmp_path / "res"), "--gt", "index"]) == 0
    return tmp_path / "res"


def test_train_and_rerank_cli_on_corridor(corridor_results, tmp_path, caplog, one_thread):
    assert cli(["train", "gcsa", str(corridor_results), "--gt", "index", "-o", str(tmp_path / "train"),
                "--map-sideinfo", "index", "--query-sideinfo", "index", "--preset", "position", "--set",
                'model={"proj_dim": 8, "width": 16, "num_layers": 1, "num_heads": 2}', "num_anchors=10",
                "num_candidates=20", 'stage1={"epochs": 2}', 'stage2={"epochs": 3}', "query_prior_sigma=2"]) == 0
    ckpt = tmp_path / "train" / "gcsa.pt"
    meta = load_checkpoint(ckpt, restore_rng=False)
    assert meta["model_config"]["width"] == 16 and meta["conf"]["stage2"] == {"epochs": 3, "lr": 1e-3,
                                                                              "freeze_proj": True}
    # query positions from a metadata CSV in which the first 5 queries have none
    meta = tmp_path / "queries.csv"
    meta.write_text("name,x\n" + "".join(f"{i:07d}.jpg,{i if i >= 5 else ''}\n" for i in range(40)))
    with caplog.at_level(logging.WARNING, logger="vprkit"):
        assert cli(["rerank", str(corridor_results), "--method", "gcsa", "--preset", "route", "--gt", "index",
                    "--set", f"checkpoint={ckpt}", f"query_sideinfo={meta}", "query_prior_sigma=2",
                    "-o", str(tmp_path / "rr")]) == 0
    assert "5 of 40 queries have no position: that channel is masked" in caplog.text
    res = json.loads((tmp_path / "rr" / "results.json").read_text())
    assert res["conf"]["query_prior_sigma"] == 2
    assert 0 <= res["metrics"]["mAP@10"] <= 1 and res["metrics"]["R@20"] == res["metrics_global"]["R@20"]
    assert "Gaussian noise, sigma = 2" in (tmp_path / "rr" / "noise_model.txt").read_text()
    lines = (tmp_path / "rr" / "msls_predictions.csv").read_text().splitlines()
    assert len(lines) == 40 and len(lines[0].split()) == 21
    preds = (tmp_path / "rr" / "predictions.txt").read_text().splitlines()[1:]
    assert lines[0].split()[1] == preds[0].split()[2].rsplit(".", 1)[0]  # same ranking in both files


def test_rerank_without_checkpoint_is_a_clear_error(corridor_results, capsys):
    assert cli(["rerank", str(corridor_results), "--method", "gcsa"]) == 2
    assert "GCSA needs a trained model" in capsys.readouterr().err
