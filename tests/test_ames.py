"""AMES: the authors' architecture (their parameter names, outputs of their code), binary codes, the score formula,
local features in their format, training, re-ranking."""

from pathlib import Path

import numpy as np
import pytest
import torch

from vprkit.features import local
from vprkit.models.ames import AMES, AUTHORS_CONF, EMPTY_LOGIT, load_authors_checkpoint, rerank_score
from vprkit.models.binarize import Binarizer, hamming_similarity, itq, pack, unpack

REFERENCE = Path(__file__).parent / "data" / "ames_reference" / "reference.npz"
TINY = {"input_dim": 16, "model_dim": 8, "num_heads": 2, "num_layers": 2, "ff_dim": 16}


def tiny_ames(**kw) -> AMES:
    torch.manual_seed(0)
    model = AMES(**{**TINY, **kw})
    with torch.no_grad():  # weights large enough that the scores differ between pairs
        for p in model.parameters():
            p.copy_(torch.randn(p.shape))
    return model.eval()


def pair(n_src=5, n_tgt=4, pad_src=3, pad_tgt=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randn(1, n_src + pad_src, 16, generator=g)
    tgt = torch.randn(1, n_tgt + pad_tgt, 16, generator=g)
    sv = torch.arange(n_src + pad_src)[None] < n_src
    tv = torch.arange(n_tgt + pad_tgt)[None] < n_tgt
    return src, sv, tgt, tv


def authors_state_dict(input_dim: int = 768, bits: int | None = None) -> dict[str, torch.Tensor]:
    """Parameter names and shapes of the authors' AMES (src/models/matcher.py, transformer_dec.py) with ames.yaml's
    sizes, written out here independently of vprkit's model."""
    d, ff = AUTHORS_CONF["model_dim"], AUTHORS_CONF["ff_dim"]
    shapes = {"mtc_token": (d,), "classifier.weight": (1, d), "classifier.bias": (1,)}
    if bits:
        shapes |= {"remap_local.0.W": (input_dim, bits), "remap_local.1.weight": (d, bits),
                   "remap_local.1.bias": (d,), "remap_local.2.weight": (d,), "remap_local.2.bias": (d,)}
    else:
        shapes |= {"remap_local.0.weight": (d, input_dim), "remap_local.0.bias": (d,),
                   "remap_local.1.weight": (d,), "remap_local.1.bias": (d,)}
    for i in range(AUTHORS_CONF["num_layers"]):
        pre = f"decoder.layers.{i}."
        for att in ("self_attn", "cross_attn"):
            shapes |= {f"{pre}{att}.in_proj_weight": (3 * d, d), f"{pre}{att}.in_proj_bias": (3 * d,),
                       f"{pre}{att}.out_proj.weight": (d, d), f"{pre}{att}.out_proj.bias": (d,)}
        shapes |= {f"{pre}linear1.weight": (ff, d), f"{pre}linear1.bias": (ff,), f"{pre}linear2.weight": (d, ff),
                   f"{pre}linear2.bias": (d,)}
        shapes |= {f"{pre}norm{j}.{w}": (d,) for j in (1, 2, 3) for w in ("weight", "bias")}
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(v, generator=g) * 0.1 for k, v in shapes.items()}


@pytest.mark.parametrize("bits", [None, 128])
def test_authors_checkpoints_load_strictly_with_weights_only(tmp_path, bits):
    state = authors_state_dict(bits=bits)
    torch.save({"state": state, "epoch": 3}, tmp_path / "ames.pt")  # their layout: {'state': ...}
    model = load_authors_checkpoint(tmp_path / "ames.pt")
    assert model.conf == {"input_dim": 768, **AUTHORS_CONF, "bits": bits} and not model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    torch.save(authors_state_dict(input_dim=1024), tmp_path / "cvnet.pt")  # CVNet: 1024-d, a bare state dict
    assert load_authors_checkpoint(tmp_path / "cvnet.pt").conf["input_dim"] == 1024
    broken = {**state, "decoder.norm.weight": torch.ones(128)}
    del broken["decoder.layers.4.norm3.bias"]
    torch.save({"state": broken}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"missing: decoder\.layers\.4\.norm3\.bias; unexpected: decoder\.norm"):
        load_authors_checkpoint(tmp_path / "bad.pt")


@pytest.mark.parametrize("name, bits", [("fp", None), ("binary", 8)])
def test_outputs_match_the_authors_code_on_fixed_inputs(name, bits):
    """tests/data/ames_reference/make.py ran the authors' model on these weights and inputs (eval: sign codes and
    fp16-rounded map embeddings; train: their erf surrogate)."""
    ref = np.load(REFERENCE)
    model = AMES(**TINY, bits=bits)
    prefix = f"{name}/"
    model.load_state_dict({k[len(prefix):]: torch.from_numpy(ref[k]) for k in ref.files
                           if k.startswith(prefix) and not k.endswith(("/eval", "/train"))}, strict=True)
    args = (torch.from_numpy(ref["src"]), ~torch.from_numpy(ref["src_pad"]), torch.from_numpy(ref["tgt"]),
            ~torch.from_numpy(ref["tgt_pad"]))  # their masks: True = padding
    assert np.ptp(ref[f"{name}/eval"]) > 0.05  # the pairs' scores differ: the match is not trivial
    with torch.no_grad():
        for mode in ("eval", "train"):
            model.train(mode == "train")
            assert model(*args).numpy() == pytest.approx(ref[f"{name}/{mode}"], abs=1e-5)


def test_score_is_symmetric_in_the_two_images():
    model = tiny_ames().train()  # train mode: eval rounds the second image's embeddings to fp16, as theirs
    src, sv, tgt, tv = pair()
    with torch.no_grad():
        assert model(src, sv, tgt, tv).item() == pytest.approx(model(tgt, tv, src, sv).item(), abs=1e-5)
        model.eval()
        assert model(src, sv, tgt, tv).item() == pytest.approx(model(tgt, tv, src, sv).item(), abs=1e-2)


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


def _softmax_rows(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    e = np.where(allowed, np.exp(logits - logits.max(1, keepdims=True)), 0.0)
    return e / e.sum(1, keepdims=True)


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * w + b


def test_one_layer_score_by_hand():
    """One head, one layer, re-derived in numpy from the paper's description: token + both images in one sequence;
    self-attention keeps each image to itself, cross-attention reads the other one, the token reads both."""
    model = AMES(input_dim=4, model_dim=4, num_heads=1, num_layers=1, ff_dim=6).eval()
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape))
    w = {k: v.double().numpy() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 4)), rng.normal(size=(3, 4))

    def embed(x):
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        return _layer_norm(x @ w["remap_local.0.weight"].T + w["remap_local.0.bias"], w["remap_local.1.weight"],
                           w["remap_local.1.bias"])

    y = embed(b).astype(np.float16).astype(np.float64)  # eval: the second image's embeddings rounded to fp16
    x = np.concatenate([w["mtc_token"][None], embed(a), y])
    image = np.array([0, 1, 1, 2, 2, 2])
    token = (image[:, None] == 0) | (image[None] == 0)
    same = image[:, None] == image[None]

    def attention(x, name, allowed):
        q, k, v = np.split(x @ w[f"decoder.layers.0.{name}.in_proj_weight"].T
                           + w[f"decoder.layers.0.{name}.in_proj_bias"], 3, axis=1)
        att = _softmax_rows(q @ k.T / 2.0, allowed)  # sqrt(head dim 4)
        return att @ v @ w[f"decoder.layers.0.{name}.out_proj.weight"].T + w[f"decoder.layers.0.{name}.out_proj.bias"]

    def norm(x, i):
        return _layer_norm(x, w[f"decoder.layers.0.norm{i}.weight"], w[f"decoder.layers.0.norm{i}.bias"])

    x = norm(x + attention(x, "self_attn", same | token), 1)
    x = norm(x + attention(x, "cross_attn", ~same | token), 2)
    hidden = np.maximum(x @ w["decoder.layers.0.linear1.weight"].T + w["decoder.layers.0.linear1.bias"], 0)
    x = norm(x + hidden @ w["decoder.layers.0.linear2.weight"].T + w["decoder.layers.0.linear2.bias"], 3)
    expected = x[0] @ w["classifier.weight"][0] + w["classifier.bias"][0]
    with torch.no_grad():
        got = model(torch.from_numpy(a)[None].float(), torch.ones(1, 2, dtype=torch.bool),
                    torch.from_numpy(b)[None].float(), torch.ones(1, 3, dtype=torch.bool))
    assert got.item() == pytest.approx(expected, abs=1e-4)


def test_one_query_embedded_once_scores_as_a_repeated_batch():
    model = tiny_ames()
    src, sv, _, _ = pair()
    g = torch.Generator().manual_seed(1)
    tgt, tv = torch.randn(3, 6, 16, generator=g), torch.rand(3, 6, generator=g) > 0.3
    with torch.no_grad():
        assert torch.allclose(model(src, sv, tgt, tv), model(src.expand(3, -1, -1), sv.expand(3, -1), tgt, tv),
                              atol=1e-6)


def test_zero_descriptors_give_no_local_evidence_when_re_ranking():
    from vprkit.rerank.ames import score_candidates

    model = tiny_ames()
    src, sv, tgt, tv = pair()
    m = torch.cat([tgt, tgt]), torch.stack([tv[0], torch.zeros_like(tv[0])])  # the second candidate: none
    raw = score_candidates(model, src[0], sv[0], lambda rows: (m[0][rows], m[1][rows]), np.array([0, 1]))
    with torch.no_grad():
        assert raw[0].item() == pytest.approx(model(src, sv, tgt, tv).item(), abs=1e-5)
    assert raw[1].item() == EMPTY_LOGIT
    final = rerank_score(torch.tensor([0.7]), raw[1:], lamb=0.4, temp=0.2)
    assert final.item() == pytest.approx(0.4 * 0.7)


def test_binary_codes_ignore_descriptor_scale_and_pack_under_1kb():
    torch.manual_seed(0)
    binarizer = Binarizer(384, 128).eval()
    desc = torch.randn(50, 384)
    with torch.no_grad():
        codes = binarizer(desc)
        flips = (binarizer(3.0 * desc) != codes).float().mean().item()
        assert flips == 0.0  # L2-normalised, no bias: the code of x and of 3x are the same bits
        w = binarizer.W.double()
        expected = torch.sign((desc.double() / desc.double().norm(dim=1, keepdim=True)) @ w)
        assert (codes.double() == expected).all()
    assert pack(codes).nbytes == 50 * 16 < 1024  # 50 descriptors of one map image: 800 bytes
    binarizer.train()  # the authors' training surrogate erf(x / sqrt(2e-6))
    y = torch.nn.functional.normalize(desc[:2], dim=-1) @ binarizer.W
    assert torch.allclose(binarizer(desc[:2]), torch.erf(y / np.sqrt(2e-6)), atol=1e-6)


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
    feats = np.zeros((6, 4, local.META + 16), dtype=np.float32)  # mask 0: every row a real descriptor
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
    b = Binarizer(32, 16).eval()
    b.init_itq(x)  # fitted on the normalised descriptors; applied without the mean (the authors' layer: no bias)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert np.allclose(b.W.detach().numpy(), itq(xn, bits=16)[1], atol=1e-5)


def test_select_top_keeps_the_largest_scores_in_the_authors_columns():
    feats = torch.zeros(1, 2, 2, 3)  # (B, C, h, w)
    feats[0, 0, 1, 2] = 5.0  # row 1, col 2: strongest
    feats[0, 1, 0, 0] = 2.0  # row 0, col 0: second
    feats[0, :, 0, 1] = 0.5  # weak
    out = local.select_top(feats, feats.norm(dim=1), 8)  # budget larger than the 6 patches: padded
    assert out.shape == (1, 8, 5 + 2)
    # x, y: patch centre / image size; scale: scale index 0; mask 0 = real; weight: the raw detector score
    assert out[0, 0, :5] == pytest.approx([2.5 / 3, 0.75, 0.0, 0.0, 5.0])
    assert out[0, 1, :5] == pytest.approx([0.5 / 3, 0.25, 0.0, 0.0, 2.0])
    assert list(out[0, 0, 5:]) == [5.0, 0.0] and list(out[0, 1, 5:]) == [0.0, 2.0]
    assert (out[0, :6, local.MASK] == 0).all() and (out[0, 6:, local.MASK] == 1).all()  # mask 1 = padding
    assert (np.delete(out[0, 6:], local.MASK, axis=1) == 0).all()
    other = torch.tensor([[[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]])  # a detector preferring the top-right patch
    assert local.select_top(feats, other, 1)[0, 0, :5] == pytest.approx([2.5 / 3, 0.25, 0.0, 0.0, 1.0])


def test_detector_checkpoint_of_the_authors(tmp_path):
    g = torch.Generator().manual_seed(0)
    shapes = {"conv1.weight": (8, 8, 1, 1), "conv1.bias": (8,), "bn.weight": (8,), "bn.bias": (8,),
              "bn.running_mean": (8,), "bn.running_var": (8,), "conv2.weight": (1, 8, 1, 1), "conv2.bias": (1,)}
    state = {k: torch.rand(v, generator=g) + 0.5 for k, v in shapes.items()}
    state["bn.num_batches_tracked"] = torch.tensor(7)
    torch.save({"state": state}, tmp_path / "det.pt")  # their layout (extract_descriptors.py: cpt['state'])
    det = local.load_detector(tmp_path / "det.pt", 8)
    x = torch.randn(1, 8, 2, 3, generator=g)
    with torch.no_grad():
        feats, weights = det(x)
    w = {k: v.double() for k, v in state.items()}
    h = torch.einsum("oc,bchw->bohw", w["conv1.weight"][..., 0, 0], x.double()) + w["conv1.bias"][:, None, None]
    h = (h - w["bn.running_mean"][:, None, None]) / torch.sqrt(w["bn.running_var"][:, None, None] + 1e-5)
    h = h * w["bn.weight"][:, None, None] + w["bn.bias"][:, None, None]
    score = torch.einsum("oc,bchw->bohw", w["conv2.weight"][..., 0, 0], h.clamp_min(0)) + w["conv2.bias"][0]
    assert torch.allclose(feats.double(), h / h.norm(dim=1, keepdim=True), atol=1e-5)
    assert torch.allclose(weights.double(), torch.log1p(torch.exp(score)), atol=1e-5)
    with pytest.raises(ValueError, match="detector for 8-d features, the backbone gives 16"):
        local.load_detector(tmp_path / "det.pt", 16)


def test_files_in_the_authors_format_read_and_write(tmp_path):
    import h5py

    rows = local.padding_rows(2, 3, 6)
    rows[0, :2, local.MASK] = 0  # image 0: two real descriptors, then padding; image 1: none
    rows[0, :2, local.META:] = np.arange(12).reshape(2, 6)
    with h5py.File(tmp_path / "theirs.hdf5", "w") as f:  # as their FeatureStorage writes: float32 'features'
        f.create_dataset("features", data=rows.astype(np.float32))
    desc, valid = local.split(local.read_rows(tmp_path / "theirs.hdf5", [1, 0]))
    assert valid.tolist() == [[False] * 3, [True, True, False]] and desc[1, 1, 0].item() == 6.0
    local.write_rows(tmp_path / "ours.hdf5", rows, ["a.jpg", "b.jpg"])
    with h5py.File(tmp_path / "ours.hdf5") as f:
        assert f["features"].dtype == np.float32 and (f["features"][()] == rows).all()
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ValueError, match="other.h5: not a local-feature file"):
        local.read_rows(tmp_path / "other.h5")


@pytest.fixture
def local_conf(tiny_backbone):
    return local.CONFIG.resolve("dinov2", batch_size=4, preprocessing={"resize_max": 32})


def test_local_features_dense_file_and_resume(local_conf, image_folder, tmp_path, monkeypatch):
    names = sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.png"))
    ref = local.main(local_conf, image_folder, tmp_path / "ref.h5", 60, names=names)
    feats = local.read_rows(ref)
    assert feats.shape == (12, 60, 5 + 8) and feats.dtype == np.float16
    assert (feats[:, :48, local.MASK] == 0).all() and (feats[:, 48:, local.MASK] == 1).all()  # 32x24 / 4 = 48 patches
    assert (np.diff(feats[:, :48, local.WEIGHT].astype(np.float32), axis=1) <= 1e-2).all()  # best first
    norms = np.linalg.norm(feats[0, :48, 5:].astype(np.float32), axis=1)
    assert feats[0, :48, local.WEIGHT] == pytest.approx(norms, rel=2e-3)  # the raw detector score (the norm)

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
    rows = local.padding_rows(3, 4, 16).astype(np.float16)
    counts = [4, 2, 0]  # the last image has no descriptors at all
    for i, c in enumerate(counts):
        rows[i, :c, local.MASK] = 0
        rows[i, :c, 5:] = rng.normal(size=(c, 16))
    import h5py

    local.write_rows(tmp_path / "f.h5", rows, ["a", "b", "c"])
    torch.manual_seed(0)
    binarizer = Binarizer(16, 8).eval()
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


TINY_MODEL = {"model_dim": 8, "num_heads": 2, "num_layers": 1, "ff_dim": 16}
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
    from vprkit.results import load_retrieval

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
        lamb, temp = (0.55, 0.3) if preset == "fp" else (0.35, 0.1)  # the authors' tuning for DINOv2
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
        y = model.projection(torch.nn.functional.normalize(desc, dim=-1)).double()
    assert y.mean(0).abs().max() < 1e-4
    assert torch.allclose(torch.cov(y.T), torch.eye(8, dtype=torch.float64), atol=1e-3)


def test_bf16_scores_stay_close_to_fp32_and_unknown_precisions_are_refused():
    from vprkit.rerank.ames import score_candidates

    model = tiny_ames()
    src, sv, _, _ = pair()
    g = torch.Generator().manual_seed(2)
    m = torch.randn(4, 6, 16, generator=g), torch.ones(4, 6, dtype=torch.bool)
    read = lambda rows: (m[0][rows], m[1][rows])  # noqa: E731
    fp32 = score_candidates(model, src[0], sv[0], read, np.arange(4))
    bf16 = score_candidates(model, src[0], sv[0], read, np.arange(4), precision="bf16")
    assert bf16.dtype == torch.float32 and (bf16 - fp32).abs().max() < 0.1  # bfloat16 keeps ~3 significant digits
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        score_candidates(model, src[0], sv[0], read, np.arange(4), precision="fp8")


@pytest.mark.slow
def test_rerank_with_an_authors_checkpoint(retrieval, tmp_path):
    from vprkit.rerank.ames import AMESReranker
    from vprkit.results import load_retrieval

    res, _ = retrieval
    for dim in (8, 16):  # the tiny backbone gives 8-d descriptors
        torch.manual_seed(0)
        torch.save({"state": AMES(input_dim=dim, model_dim=8, num_layers=1, ff_dim=16).state_dict()},
                   tmp_path / f"ames{dim}.pt")
    conf = AMESReranker.CONFIG.resolve("fp", authors_checkpoint=str(tmp_path / "ames8.pt"), num_query_desc=10,
                                 num_map_desc=6, cache_dir=str(tmp_path / "cache"))
    raw = AMESReranker(conf).raw_scores(load_retrieval(res), tmp_path)
    assert raw.shape == (12, 5) and np.isfinite(raw).all()
    conf["authors_checkpoint"] = str(tmp_path / "ames16.pt")
    with pytest.raises(ValueError, match="8-d local descriptors, the AMES model reads 16-d"):
        AMESReranker(conf).raw_scores(load_retrieval(res), tmp_path)


def test_logged_training_loss_leaves_out_pairs_without_descriptors():
    import torch.nn.functional as F

    from vprkit.data.groundtruth import GroundTruth
    from vprkit.train.ames import _train_epoch, mine_pairs

    rng = np.random.default_rng(0)
    feats = local.padding_rows(4, 3, 16)
    feats[:3, :, local.MASK] = 0  # images 0-2 have three descriptors each; image 3 none
    feats[:3, :, local.META:] = rng.normal(size=(3, 3, 16))
    feats = torch.from_numpy(feats)
    cand, truth = np.array([[1, 3], [3, 0], [2, 3]]), GroundTruth([np.array([1]), np.array([3]), np.array([3])])
    model = tiny_ames()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # no update: the logged loss is that of these weights
    conf = {"top_k": 2, "num_pos": 1, "num_neg": 1, "batch_size": 8, "device": "cpu"}
    np.random.seed(0)
    logged = _train_epoch(model, None, opt, conf, feats, feats, cand, truth, np.arange(3))
    np.random.seed(0)
    pairs = mine_pairs(cand, truth, np.arange(3), 2, 1, 1, np.random)
    keep = pairs[(pairs[:, 0] != 3) & (pairs[:, 1] != 3)]
    assert 0 < len(keep) < len(pairs)  # some pairs involve image 3
    qd, qv = local.split(feats[keep[:, 0]])
    md, mv = local.split(feats[keep[:, 1]])
    with torch.no_grad():
        raw = model.train()(qd, qv, md, mv)
    expected = F.binary_cross_entropy_with_logits(raw, torch.from_numpy(keep[:, 2]).float())
    assert logged == pytest.approx(expected.item(), rel=1e-5) and logged < 50
