"""AMES: the transformer's attention masks, binary codes, the score formula, local features, training, re-ranking."""

import numpy as np
import pytest
import torch

from vprkit.features import local
from vprkit.models.ames import AMES, EMPTY_LOGIT, Attention, rerank_score
from vprkit.models.binarize import Binarizer, hamming_similarity, itq, pack, unpack


def tiny_ames(**kw) -> AMES:
    torch.manual_seed(0)
    return AMES(**{"input_dim": 16, "model_dim": 8, "num_heads": 2, "num_layers": 2, "ff_dim": 16, **kw}).eval()


def pair(n_src=5, n_tgt=4, pad_src=3, pad_tgt=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randn(1, n_src + pad_src, 16, generator=g)
    tgt = torch.randn(1, n_tgt + pad_tgt, 16, generator=g)
    sv = torch.arange(n_src + pad_src)[None] < n_src
    tv = torch.arange(n_tgt + pad_tgt)[None] < n_tgt
    return src, sv, tgt, tv


def test_attention_ignores_invalid_memory_like_a_hand_softmax():
    torch.manual_seed(0)
    att = Attention(4, heads=1).eval()
    x, mem = torch.randn(1, 2, 4), torch.randn(1, 3, 4)
    valid = torch.tensor([[True, False, True]])
    with torch.no_grad():
        q, (k, v) = att.q(x), att.kv(mem).chunk(2, -1)
        logits = (q @ k.transpose(1, 2)) / 2.0  # sqrt(head dim 4)
        logits[..., 1] = -np.inf
        ref = att.out(torch.softmax(logits, -1) @ v)
        assert torch.allclose(att(x, mem, valid), ref, atol=1e-6)


def test_padding_of_either_image_does_not_change_the_score():
    model = tiny_ames()
    src, sv, tgt, tv = pair()
    with torch.no_grad():
        base = model(src, sv, tgt, tv)
        src2 = src.clone()
        src2[~sv] = float("nan")  # garbage (even NaN) in padded slots
        tgt2 = torch.cat([tgt, 100 * torch.randn(1, 7, 16)], 1)  # more padding, other values
        tv2 = torch.cat([tv, torch.zeros(1, 7, dtype=torch.bool)], 1)
        assert torch.allclose(model(src2, sv, tgt2, tv2), base, atol=1e-5)
        assert torch.allclose(model(src[:, :5], sv[:, :5], tgt[:, :4], tv[:, :4]), base, atol=1e-5)
        tgt3 = tgt.clone()
        tgt3[0, 0] += 1.0  # a real descriptor does matter
        assert not torch.allclose(model(src, sv, tgt3, tv), base, atol=1e-5)


def test_self_attention_stays_inside_each_image_cross_attention_between():
    model = tiny_ames()
    src, sv, tgt, tv = pair()
    other = torch.randn_like(tgt)
    with torch.no_grad():
        assert not torch.allclose(model(src, sv, tgt, tv), model(src, sv, other, tv))
        for layer in model.layers:  # cut cross-attention: the target image must no longer matter at all
            layer.cross_attn.out.weight.zero_()
            layer.cross_attn.out.bias.zero_()
        assert torch.allclose(model(src, sv, tgt, tv), model(src, sv, other, tv), atol=1e-6)


def test_zero_descriptors_give_a_defined_score():
    model = tiny_ames()
    src, sv, tgt, tv = pair()
    with torch.no_grad():
        raw = model(src, sv, tgt, torch.zeros_like(tv))
    assert raw.item() == EMPTY_LOGIT
    final = rerank_score(torch.tensor([0.7]), raw, lamb=0.4, temp=0.2)
    assert final.item() == pytest.approx(0.4 * 0.7)


def test_rerank_score_formula():
    g, raw = torch.tensor([0.8, -0.1]), torch.tensor([2.0, -5.0])
    expected = [0.3 * 0.8 + 0.7 / (1 + np.exp(-0.5 * 2.0)), 0.3 * -0.1 + 0.7 / (1 + np.exp(2.5))]
    assert rerank_score(g, raw, lamb=0.3, temp=0.5).numpy() == pytest.approx(expected, abs=1e-6)


def test_fuse_orders_by_the_score_formula_and_keeps_missing_candidates_last():
    from vprkit.rerank.ames import fuse

    ids, glob = np.array([[3, 1, -1]]), np.array([[0.9, 0.5, np.nan]])
    raw = np.array([[0.0, 10.0, np.nan]])
    # temp 0.2: 3 -> 0.45 + 0.5 * sigmoid(0) = 0.7; 1 -> 0.25 + 0.5 * sigmoid(2) = 0.69040
    got_ids, got_scores = fuse(ids, glob, raw, 0.5, 0.2)
    assert got_ids.tolist() == [[3, 1, -1]]
    assert got_scores[0, :2] == pytest.approx([0.7, 0.25 + 0.5 / (1 + np.exp(-2))], abs=1e-6)
    assert np.isnan(got_scores[0, 2])
    # temp 1: 1 -> 0.25 + 0.5 * sigmoid(10) = 0.74998 > 0.7
    assert fuse(ids, glob, raw, 0.5, 1.0)[0].tolist() == [[1, 3, -1]]


def test_tune_fusion_picks_the_largest_lambda_that_helps_and_1_for_a_useless_model():
    from vprkit.data.groundtruth import GroundTruth
    from vprkit.rerank.ames import tune_fusion

    ids = np.array([[0, 1, 2], [3, 4, 5]])
    glob = np.array([[0.9, 0.8, 0.7], [0.9, 0.8, 0.7]])
    truth = GroundTruth([np.array([2]), np.array([5])])  # the global ranking puts each positive last: AP 1/3
    raw = np.array([[-5.0, -5.0, 5.0], [-5.0, -5.0, 5.0]])  # the model puts it first
    # the positive beats the top negative when (1 - lambda) * (sigmoid(5 t) - sigmoid(-5 t)) > lambda * 0.2, i.e.
    # (1 - lambda) * tanh(2.5 t) > 0.2 lambda: impossible for lambda 0.9 (0.1 < 0.18); for lambda 0.8 it needs
    # tanh(2.5 t) > 0.8, i.e. t > 0.44: the first grid temp above is 0.5
    best = tune_fusion(ids, glob, raw, truth)
    assert (best["lamb"], best["temp"]) == (0.8, 0.5)
    assert best["mAP"] == pytest.approx(1.0) and best["R@1"] == 1.0
    assert best["global_mAP"] == pytest.approx(1 / 3)
    useless = tune_fusion(ids, glob, np.zeros_like(raw), truth)  # constant raw: no lambda changes the order
    assert useless["lamb"] == 1.0 and useless["mAP"] == pytest.approx(1 / 3)


def test_chamfer_teacher_matches_a_numpy_chamfer_and_ignores_padding():
    from vprkit.models.ames import ChamferTeacher

    proj = torch.nn.Linear(4, 4)
    with torch.no_grad():
        proj.weight.copy_(torch.eye(4))
        proj.bias.zero_()
    teacher = ChamferTeacher(proj, shift=0.5, scale=3.0)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 4)), rng.normal(size=(3, 4))
    cos = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T
    expected = cos.max(1).mean()  # each descriptor of the first image: its best match in the second
    pad = np.full((1, 4), 1e3)  # padding content must not count
    src = torch.from_numpy(np.concatenate([a, pad]))[None].float()
    tgt = torch.from_numpy(np.concatenate([b, pad]))[None].float()
    sv, tv = torch.tensor([[True, True, False]]), torch.tensor([[True, True, True, False]])
    assert teacher.chamfer(src, sv, tgt, tv).item() == pytest.approx(expected, abs=1e-5)
    assert teacher(src, sv, tgt, tv).item() == pytest.approx(3.0 * (expected - 0.5), abs=1e-4)
    assert teacher.chamfer(src, torch.zeros_like(sv), tgt, tv).item() == 0.0  # no descriptors: defined, 0
    teacher.standardize(torch.tensor([0.1, 0.3, 0.5]))  # mean 0.3, std 0.2 -> logits -2, 0, 2
    assert (teacher.shift, teacher.scale) == pytest.approx((0.3, 10.0))


def test_chamfer_teacher_logits_are_standardized_on_query_candidate_pairs():
    from vprkit.train.ames import _chamfer_teacher

    rng = np.random.default_rng(0)
    feats = np.zeros((6, 4, local.META + 16), dtype=np.float32)
    feats[:, :, local.MASK] = 1.0
    feats[:, :, local.META:] = rng.normal(size=(6, 4, 16))
    feats = torch.from_numpy(feats)
    cand = np.array([[1, 2, -1], [0, 3, 4], [5, 0, 1]])  # -1: no candidate, left out
    model = tiny_ames()
    model.init_whitening(local.split(feats)[0].reshape(-1, 16))
    teacher = _chamfer_teacher(model, feats, feats, cand, {"top_k": 3, "seed": 0, "device": "cpu"})
    qi, ki = np.nonzero(cand >= 0)
    qd, qv = local.split(feats[qi])
    md, mv = local.split(feats[cand[qi, ki]])
    with torch.no_grad():
        logits = teacher(qd, qv, md, mv)
    assert logits.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert logits.std().item() == pytest.approx(2.0, abs=1e-4)
    assert not any(p.requires_grad for p in teacher.parameters())  # a fixed target, never trained


def test_pack_unpack_roundtrip_and_hamming_equals_sign_dot():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 128)).astype(np.float32)
    y = rng.normal(size=(4, 128)).astype(np.float32)
    px, py = pack(x), pack(y)
    assert px.shape == (6, 16) and px.dtype == np.uint8
    sx, sy = np.where(x >= 0, 1.0, -1.0), np.where(y >= 0, 1.0, -1.0)
    assert (unpack(px).numpy() == sx).all()
    assert (hamming_similarity(px, py) == sx @ sy.T).all()


def test_itq_rotation_is_orthonormal_and_beats_plain_pca():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 32)) @ rng.normal(size=(32, 32))
    mean, w = itq(x, bits=16)
    assert np.allclose(w.T @ w, np.eye(16), atol=1e-4)
    v = (x - mean) @ w
    pca = np.linalg.svd(x - x.mean(0), full_matrices=False)[2][:16].T
    vp = (x - x.mean(0)) @ pca
    loss = lambda z: ((np.sign(z) - z) ** 2).sum()  # noqa: E731 - ITQ quantization loss
    assert loss(v) < loss(vp)
    b = Binarizer(32, 16)
    b.init_itq(x)
    with torch.no_grad():
        assert (b(torch.from_numpy(x).float()).numpy() == np.where(v >= 0, 1, -1)).mean() > 0.99


def test_select_top_keeps_the_largest_norms_with_positions():
    feats = torch.zeros(1, 2, 2, 3)  # (B, C, h, w)
    feats[0, 0, 1, 2] = 5.0  # row 1, col 2: strongest
    feats[0, 1, 0, 0] = 2.0  # row 0, col 0: second
    feats[0, :, 0, 1] = 0.5  # weak
    out = local.select_top(feats, 8)  # budget larger than the 6 patches: padded
    assert out.shape == (1, 8, 5 + 2)
    assert out[0, 0, :5] == pytest.approx([2.5 / 3, 0.75, 1 / 3, 1.0, 1.0])
    assert out[0, 1, :5] == pytest.approx([0.5 / 3, 0.25, 1 / 3, 1.0, 0.4])
    assert list(out[0, 0, 5:]) == [5.0, 0.0] and list(out[0, 1, 5:]) == [0.0, 2.0]
    assert (out[0, :6, local.MASK] == 1).all() and (out[0, 6:] == 0).all()


@pytest.fixture
def local_conf(monkeypatch, tiny_backbone):
    monkeypatch.setattr("vprkit.features.local.get_backbone", lambda name, **kw: tiny_backbone())
    return local.get_conf("dinov2", batch_size=4, preprocessing={"resize_max": 32})


def test_local_features_dense_file_and_resume(local_conf, image_folder, tmp_path, monkeypatch):
    names = sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.png"))
    ref = local.main(local_conf, image_folder, tmp_path / "ref.h5", 60, names=names)
    feats = local.read_rows(ref)
    assert feats.shape == (12, 60, 5 + 8) and feats.dtype == np.float16
    assert (feats[:, :48, local.MASK] == 1).all() and (feats[:, 48:] == 0).all()  # 32x24 / stride 4 = 48 patches
    assert (np.diff(feats[:, :48, local.WEIGHT].astype(np.float32), axis=1) <= 1e-3).all()  # best first
    norms = np.linalg.norm(feats[0, :48, 5:].astype(np.float32), axis=1)
    assert feats[0, :48, local.WEIGHT] == pytest.approx(norms / norms[0], abs=2e-3)

    calls = {"n": 0}
    real = local.LocalExtractor.local

    def crash_on_second_batch(self, images):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, images)

    monkeypatch.setattr(local.LocalExtractor, "local", crash_on_second_batch)
    out = tmp_path / "resumed.h5"
    with pytest.raises(KeyboardInterrupt):
        local.main(local_conf, image_folder, out, 60, names=names)
    assert not out.exists() and (tmp_path / "resumed.h5.partial").exists()
    calls["n"] = 10  # resume: only the 8 unfinished images are described again
    local.main(local_conf, image_folder, out, 60, names=names)
    assert calls["n"] == 12
    assert (local.read_rows(out) == feats).all()
    assert (local.read_rows(out, [3, 1, 3]) == feats[[3, 1, 3]]).all()
    with pytest.raises(ValueError, match="other images or settings"):
        local.main(local_conf, image_folder, out, 30, names=names)


def test_binary_store_packs_valid_codes(tmp_path):
    rng = np.random.default_rng(0)
    rows = np.zeros((3, 4, 5 + 16), dtype=np.float16)
    counts = [4, 2, 0]  # the last image has no descriptors at all
    for i, c in enumerate(counts):
        rows[i, :c, local.MASK] = 1
        rows[i, :c, 5:] = rng.normal(size=(c, 16))
    import h5py

    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["local"], f["names"] = rows, np.array(["a", "b", "c"], dtype=object)
    torch.manual_seed(0)
    binarizer = Binarizer(16, 8)
    codes = local.write_codes(tmp_path / "f.h5", tmp_path / "codes.h5", binarizer)
    with h5py.File(codes) as f:
        assert f["codes"].shape == (3, 4, 1) and f["codes"].dtype == np.uint8 and list(f["count"][()]) == counts
    got, valid = local.read_codes(codes, [1, 0, 2])
    assert valid.sum(1).tolist() == [2, 4, 0]
    with torch.no_grad():
        expected = binarizer(torch.from_numpy(rows[0, :, 5:].astype(np.float32)))
    assert (got[1] == expected).all()


def test_revisited_map_on_a_hand_made_case():
    from vprkit.evaluation import revisited

    gnd = [{"easy": [0, 3], "hard": [5], "junk": [2]}, {"easy": [1], "hard": [], "junk": []}]
    ranks = np.array([[2, 0, 5, 1, 3, 4], [0, 1, 2, 3, 4, 5]])
    out = revisited.evaluate(ranks, gnd, ks=(1, 5))
    # query 1, easy: junk {2, 5} removed -> [0, 1, 3, 4]: positives at ranks 0, 2
    #   AP = (1 + 1) / 4 + (1/2 + 2/3) / 4;  medium: [0, 5, 1, 3, 4] -> ranks 0, 1, 3;  hard: [5, 1, 4] -> rank 0
    # query 2: its positive at rank 1 -> AP = (0 + 1/2) / 2; no hard positive: left out of the hard mean
    ap1_easy = 0.5 + (0.5 + 2 / 3) / 4
    ap1_medium = 2 / 6 + 2 / 6 + (2 / 3 + 3 / 4) / 6
    assert out["mAP_easy"] == pytest.approx((ap1_easy + 0.25) / 2)
    assert out["mAP_medium"] == pytest.approx((ap1_medium + 0.25) / 2)
    assert out["mAP_hard"] == pytest.approx(1.0)
    # mP@5 medium: query 1 positives at 1, 2, 4 -> k = min(4, 5) -> 3/4; query 2 at 2 -> k = 2 -> 1/2
    assert out["mP@5_medium"] == pytest.approx((0.75 + 0.5) / 2)
    assert out["mP@1_easy"] == pytest.approx((1.0 + 0.0) / 2)


def test_revisited_ground_truth_files(tmp_path, capsys):
    import collections
    import pickle

    from vprkit.evaluation import revisited

    data = {"imlist": ["a", "b", "c"], "qimlist": ["q"], "gnd": [{"easy": np.array([2]), "hard": [], "junk": [0]}]}
    (tmp_path / "gnd.pkl").write_bytes(pickle.dumps(data))
    loaded = revisited.load_gnd(tmp_path / "gnd.pkl")
    ids, gnd = revisited.align(loaded, ["jpg/q.jpg"], ["x/c.jpg", "x/a.jpg", "x/b.jpg"], np.array([[0, 1, -1]]))
    assert ids.tolist() == [[2, 0, -1]] and revisited.evaluate(ids, gnd)["mAP_easy"] == 1.0
    # the CLI: predictions.txt over our names + a JSON ground truth
    from vprkit.cli import main
    from vprkit.evaluation.outputs import write_predictions

    write_predictions(tmp_path / "p.txt", ["jpg/q.jpg"], ["x/a.jpg", "x/b.jpg", "x/c.jpg"], np.array([[1, 2, 0]]),
                      np.array([[0.9, 0.8, 0.7]]))
    (tmp_path / "gnd.json").write_text(__import__("json").dumps({**data, "gnd": [{"easy": [2], "junk": [0]}]}))
    assert main(["evaluate", str(tmp_path / "p.txt"), "--gt", str(tmp_path / "gnd.json"), "--revisited"]) == 0
    assert '"mAP_easy": 0.25' in capsys.readouterr().out  # junk a dropped: c at rank 1 -> AP = (0 + 1/2) / 2
    (tmp_path / "bad.pkl").write_bytes(pickle.dumps(collections.OrderedDict(data)))
    with pytest.raises(ValueError, match="not a revisited ground-truth file"):
        revisited.load_gnd(tmp_path / "bad.pkl")


TINY_MODEL = {"model_dim": 8, "num_heads": 2, "num_layers": 1, "ff_dim": 16, "dropout": 0.0}
TRAIN = ["num_query_desc=10", "num_map_desc=6", "top_k=5", "batch_size=8", "val_fraction=0.25", "resize_max=32",
         f"model={__import__('json').dumps(TINY_MODEL)}"]


@pytest.mark.slow
def test_training_resumes_exactly(retrieval, tmp_path):
    from vprkit.cli import main

    res, gt = retrieval
    run = ["train", "ames", str(res), "--gt", str(gt), "--set", *TRAIN]
    assert main([*run[:5], "-o", str(tmp_path / "a"), *run[5:], "epochs=2"]) == 0
    assert main([*run[:5], "-o", str(tmp_path / "b"), *run[5:], "epochs=1"]) == 0
    assert main([*run[:5], "-o", str(tmp_path / "b"), *run[5:], "epochs=2"]) == 0  # resumes after epoch 0
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert (tmp_path / "a" / "log.csv").read_text() == (tmp_path / "b" / "log.csv").read_text()


@pytest.mark.slow
def test_rerank_fp_and_binary_follow_the_score_formula(retrieval, tmp_path):
    import json

    from vprkit.cli import main
    from vprkit.models.ames import load_ames
    from vprkit.rerank.base import load_retrieval

    res, gt = retrieval
    fp_dir, bin_dir = tmp_path / "fp", tmp_path / "bin"
    assert main(["train", "ames", str(res), "--gt", str(gt), "-o", str(fp_dir), "--set", *TRAIN, "epochs=1"]) == 0
    assert main(["train", "ames", str(res), "--gt", str(gt), "-o", str(bin_dir), "--preset", "binary", "--set",
                 f"teacher={fp_dir / 'best.pt'}", "bits=8", "epochs=1", "top_k=5", "batch_size=8"]) == 0
    glob = load_retrieval(res)
    for ckpt, preset in ((fp_dir / "best.pt", "fp"), (bin_dir / "best.pt", "binary")):
        out = tmp_path / f"rr_{preset}"
        assert main(["rerank", str(res), "--method", "ames", "--preset", preset, "-o", str(out), "--gt", str(gt),
                     "--set", f"checkpoint={ckpt}", "num_query_desc=10", "num_map_desc=6"]) == 0
        assert "metrics" in json.loads((out / "results.json").read_text())
        got = load_retrieval(out)
        model, _ = load_ames(ckpt)
        q_feats = local.read_rows(next((out / "cache").glob("query_local_*.h5")))
        m_feats = local.read_rows(next(p for p in (out / "cache").glob("map_local_*.h5") if "_codes_" not in p.name))
        lamb, temp = (0.5, 0.2) if preset == "fp" else (0.35, 0.1)
        for qi in range(len(glob.ids)):  # independent re-computation of every final score
            cand = glob.ids[qi]
            qd, qv = local.split(q_feats[[qi] * len(cand)])
            md, mv = local.split(m_feats[cand])
            with torch.no_grad():
                raw = model(qd, qv, md, mv).numpy()
            final = lamb * glob.scores[qi] + (1 - lamb) / (1 + np.exp(-temp * raw))
            order = [cand.tolist().index(j) for j in got.ids[qi]]  # best first, up to near-ties (CPU rounding)
            assert sorted(order) == list(range(len(cand))) and (np.diff(final[order]) <= 1e-5).all()
            assert got.scores[qi] == pytest.approx(final[order], abs=1e-5)
    codes = next((tmp_path / "rr_binary" / "cache").glob("*_codes_*.h5"))
    import h5py

    with h5py.File(codes) as f:
        assert f["codes"].shape == (12, 6, 1)  # 8-bit codes: one byte per descriptor


def test_whitening_init_decorrelates_training_descriptors():
    rng = np.random.default_rng(0)
    common = rng.normal(size=16) * 3  # a shared component, as backbone descriptors have
    desc = torch.from_numpy(common + rng.normal(size=(500, 16)) * np.linspace(0.2, 2, 16)).float()
    model = tiny_ames()
    model.init_whitening(desc)
    with torch.no_grad():
        y = model.embed[0](torch.nn.functional.normalize(desc, dim=-1)).double()
    assert y.mean(0).abs().max() < 1e-4
    assert torch.allclose(torch.cov(y.T), torch.eye(8, dtype=torch.float64), atol=1e-3)
