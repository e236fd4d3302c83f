"""The NetVLAD training step end to end on tiny generated images with a tiny backbone."""

import csv

import h5py
import numpy as np
import pytest
import torch
from conftest import TinyBackbone, use_backbone
from PIL import Image

from vprkit import api
from vprkit.train import netvlad, netvlad_model
from vprkit.train.checkpoint import load_checkpoint

N = 24  # places

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def route(tmp_path):
    """A route of N places: map and query images of place i share a pattern, with different noise."""
    rng = np.random.default_rng(0)
    for kind in ("map", "query"):
        (tmp_path / kind).mkdir()
    for i in range(N):
        base = rng.random((16, 16, 3)) * 255
        for kind, noise in (("map", 20), ("query", 40)):
            arr = np.clip(base + rng.normal(0, noise, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(tmp_path / kind / f"{i:03d}.png")
    return tmp_path


@pytest.fixture
def tiny(monkeypatch):
    use_backbone(monkeypatch, TinyBackbone)


def _conf(preset="mobilenetv2-netvlad", **over):
    base = {"resize_max": 16, "data.positions": "index", "data.pos_thr": 1.0, "data.neg_thr": 2.0,
            "data.split": [0.5, 0.25, 0.25], "data.gap": 2.0, "train.batch_size": 2, "train.num_negs": 3,
            "train.neg_samples": 6, "train.cache_refresh": 2, "train.max_queries_per_epoch": 6,
            "train.lr": 1e-2, "train.lr_step": 1}
    return netvlad.CONFIG.resolve(preset, {**base, **over})


def _run(route, out, conf, mode="train", **kw):
    return netvlad.main(conf, route / "map", route / "query", out, mode=mode, **kw)


def _log(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_resume_equals_uninterrupted_run(route, tiny, tmp_path):
    conf = _conf("mobilenetv2-crn-stml-vprkit", **{"train.epochs": 3})
    _run(route, tmp_path / "a", conf)
    short = _conf("mobilenetv2-crn-stml-vprkit", **{"train.epochs": 1})
    _run(route, tmp_path / "b", short)
    _run(route, tmp_path / "b", conf, resume=True)
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert _log(tmp_path / "a" / "log.csv") == _log(tmp_path / "b" / "log.csv")
    assert [r["epoch"] for r in _log(tmp_path / "a" / "log.csv")] == ["0", "1", "2"]  # epochs count from 0
    assert float(_log(tmp_path / "a" / "log.csv")[0]["loss"]) > 0
    # training moved the attention and NetVLAD weights (the frozen backbone did not)
    first = netvlad_model.build_model(conf)[0].state_dict()
    assert not torch.equal(first["aggregator.attention.fuse.weight"], a["model"]["aggregator.attention.fuse.weight"])
    assert torch.equal(first["backbone.conv.weight"], a["model"]["backbone.conv.weight"])



def test_rerun_refuses_other_settings_and_restart_starts_over(route, tiny, tmp_path):
    _run(route, tmp_path / "r", _conf(**{"train.epochs": 1}))
    with pytest.raises(ValueError, match=r"last.pt is a run with other settings \(train.lr: 0.01 -> 0.02\)"):
        _run(route, tmp_path / "r", _conf(**{"train.epochs": 2, "train.lr": 2e-2}))
    _run(route, tmp_path / "r", _conf(**{"train.epochs": 2, "train.lr": 2e-2}), resume=False)
    assert [r["epoch"] for r in _log(tmp_path / "r" / "log.csv")] == ["0", "1"]
    assert torch.load(tmp_path / "r" / "last.pt", weights_only=True)["meta"]["conf"]["train"]["lr"] == 2e-2

def test_training_improves_loss_and_checkpoint_plugs_into_index(route, tiny, tmp_path):
    conf = _conf(**{"train.epochs": 4, "train.max_queries_per_epoch": None})
    untrained = _run(route, tmp_path / "t", conf, "test", split="val")
    _run(route, tmp_path / "t", conf)
    log = _log(tmp_path / "t" / "log.csv")
    assert float(log[-1]["loss"]) < float(log[0]["loss"])
    trained = _run(route, tmp_path / "t", conf, "test", checkpoint=tmp_path / "t" / "best.pt", split="val")
    assert trained["R@5"] >= untrained["R@5"]
    # `vprkit index --checkpoint best.pt` describes images exactly as the trained model does
    out = api.index_map(route / "map", tmp_path / "idx", "mobilenetv2-netvlad",
                        preprocessing={"resize_max": 16},
                        model={"name": "mobilenetv2", "layer": 13, "checkpoint": str(tmp_path / "t" / "best.pt")})
    model, fconf = netvlad_model.build_model(conf)
    load_checkpoint(tmp_path / "t" / "best.pt", model, restore_rng=False)
    model.eval()
    img = TinyBackbone().preprocess(Image.open(route / "map" / "005.png").convert("RGB"))
    with torch.no_grad():
        ref = model(model.frozen(img[None]))[0][0].numpy()
    with h5py.File(out / "map_features.h5") as f:
        got = f["005.png"]["global"][()]
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_deattention_with_hand_made_masks(route, tiny, tmp_path):
    # guidance 0 on the left half ("a parked car"), 1 elsewhere
    for kind in ("map", "query"):
        (tmp_path / "masks" / kind).mkdir(parents=True)
        for i in range(N):
            m = np.full((16, 16), 255, np.uint8)
            m[:, :8] = 0
            Image.fromarray(m).save(tmp_path / "masks" / kind / f"{i:03d}.png")
    conf = _conf("mobilenetv2-deattention-stml", **{"guidance.source": "masks", "guidance.weight": 10.0,
                                                    "guidance.mask_dir": str(tmp_path / "masks"),
                                                    "train.epochs": 3, "train.max_queries_per_epoch": None})
    s = netvlad.Session(conf, route / "map", route / "query", tmp_path / "d", splits=("train", "val"))
    q_bank = s.banks["train"][0]
    assert q_bank.guidance[0].shape == (1, 16, 16) and q_bank.guidance[0][0, 0, 0] == 0
    _, w0 = netvlad_model.run(s.model, q_bank.feats[:4])
    netvlad.train(s)
    _, w1 = netvlad_model.run(s.model, q_bank.feats[:4])
    left = lambda ws: float(torch.stack(ws).detach()[..., :2].mean())  # noqa: E731 (4x4 map: columns 0-1)
    right = lambda ws: float(torch.stack(ws).detach()[..., 2:].mean())  # noqa: E731
    assert right(w1) - left(w1) > right(w0) - left(w0) + 0.05  # the mask learned to drop the "distractor"


def test_bad_checkpoints_give_clear_errors(route, tiny, tmp_path):
    conf = _conf(**{"train.epochs": 1})
    _run(route, tmp_path / "r", conf)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt: not a readable checkpoint"):
        _run(route, tmp_path / "r", conf, "test", checkpoint=junk)
    with pytest.raises(ValueError, match="junk.pt: not a readable checkpoint"):
        api.index_map(route / "map", tmp_path / "i1", "mobilenetv2-netvlad",
                      model={"name": "mobilenetv2", "layer": 13, "checkpoint": str(junk)})
    # a checkpoint trained without attention, tested as a CRN model
    with pytest.raises(ValueError, match=r"another architecture: aggregator.attention: checkpoint None, here 'crn'"):
        _run(route, tmp_path / "r2", _conf("mobilenetv2-crn-stml-vprkit"), "test",
             checkpoint=tmp_path / "r" / "last.pt")
    # a MobileNetV2 checkpoint used for a VGG19 preset
    with pytest.raises(ValueError, match=r"model.name: checkpoint 'mobilenetv2', here 'vgg19'"):
        api.index_map(route / "map", tmp_path / "i2", "vgg19-netvlad",
                      model={"name": "vgg19", "checkpoint": str(tmp_path / "r" / "last.pt")})


def test_conf_errors():
    with pytest.raises(ValueError, match="unknown setting 'train.epoch'.*train.epochs"):
        netvlad.CONFIG.resolve("mobilenetv2-netvlad", {"train.epoch": 3})
    with pytest.raises(ValueError, match="unknown train netvlad preset"):
        netvlad.CONFIG.resolve("resnet-netvlad")
    with pytest.raises(ValueError, match="does not use NetVLAD"):
        netvlad_model.feature_conf({**netvlad.CONFIG.resolve(), "features": "dinov2-gem"})


def test_cli_counts_queries_without_positive_and_few_negatives(route, tiny, tmp_path, capsys):
    from vprkit import cli

    # positives list: query i -> map i, except query 3 which has none
    lines = [f"{i:03d}.png" + ("" if i == 3 else f" {i:03d}.png") for i in range(N)]
    (tmp_path / "pos.txt").write_text("\n".join(lines) + "\n")
    sets = ["resize_max=16", f"data.positions={tmp_path / 'pos.txt'}", "data.split=[0.5,0.25,0.25]",
            "train.epochs=2", "train.batch_size=4", "train.num_negs=50", "train.neg_samples=50", "train.mining=nearest"]
    out = tmp_path / "cli"
    dirs = [str(route / "map"), str(route / "query"), "-o", str(out), "--set", *sets]
    assert cli.main(["train", "netvlad", "train", *dirs]) == 0
    log = _log(out / "log.csv")
    # 12 train queries: query 3 is skipped every epoch; the other 11 have only 11 negatives (< 50 asked)
    assert [int(r["skipped_no_positive"]) for r in log] == [1, 1]
    assert [int(r["few_negatives"]) for r in log] == [11, 11]
    assert [int(r["skipped_no_negative"]) for r in log] == [0, 0]
    capsys.readouterr()
    assert cli.main(["train", "netvlad", "test", *dirs, "--checkpoint", str(out / "best.pt")]) == 0
    assert "| R@1 |" in capsys.readouterr().out
    assert cli.main(["train", "netvlad", "test", *dirs, "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt not found" in capsys.readouterr().err


def test_partial_backbone_training_leaves_cached_features_intact():
    from vprkit.aggregators.netvlad import NetVLAD

    class SeqBackbone(TinyBackbone):
        def __init__(self):
            super().__init__()
            self.features = torch.nn.Sequential(self.conv, torch.nn.ReLU(inplace=True))

    model = netvlad_model.TrainModel(SeqBackbone(), NetVLAD(num_clusters=2, dim=8), train_layers=1)
    # the tail is the ReLU alone (no weights): only NetVLAD trains, the conv stays frozen
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "aggregator.conv.weight", "aggregator.conv.bias", "aggregator.centroids"}
    frozen = model.frozen(torch.randn(1, 3, 8, 8))
    assert (frozen < 0).any()  # the conv output before the (trainable, in-place) ReLU
    cached = frozen[0].clone()
    netvlad_model.run(model, [frozen[0], torch.randn(8, 3, 3)])  # mixed shapes: one image at a time
    assert torch.equal(frozen[0], cached)
    with pytest.raises(ValueError, match="train_layers must be in 0..2"):
        netvlad_model.TrainModel(SeqBackbone(), NetVLAD(num_clusters=2, dim=8), train_layers=3)
    with pytest.raises(ValueError, match="needs a backbone with a `features` sequence"):
        netvlad_model.TrainModel(TinyBackbone(), NetVLAD(num_clusters=2, dim=8), train_layers=1)


def test_early_stopping_ends_training_without_val_improvement(route, tiny, tmp_path):
    # lr 0: val R@5 never improves after epoch 0, so patience 1 stops after epoch 1 (the second of 5)
    _run(route, tmp_path / "e", _conf(**{"train.epochs": 5, "train.lr": 0.0, "train.patience": 1}))
    log = _log(tmp_path / "e" / "log.csv")
    assert [r["epoch"] for r in log] == ["0", "1"]
    assert log[0]["val_R@5"] == log[1]["val_R@5"]


def test_bank_batches_like_the_extractor(route, tiny):
    """Frozen features come from the extractor's batching: its batch size and pixel limit, bad files skipped."""
    model, fconf = netvlad_model.build_model(_conf())
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(route / "map" / "big.png")
    (route / "map" / "broken.png").write_bytes(b"not an image")
    names = ["000.png", "broken.png", "001.png", "002.png", "big.png", "003.png"]
    calls = []
    frozen = model.frozen
    model.frozen = lambda x: calls.append(len(x)) or frozen(x)
    bank = netvlad_model.Bank(model, {**fconf, "batch_size": 2, "max_pixels": 32 * 32}, route / "map", names, "map")
    assert bank.failed == [1, 4] and calls == [2, 2]  # big.png is over the pixel limit
    for name, feat in zip(["000.png", "001.png", "002.png", "003.png"], bank.feats):
        img = TinyBackbone().preprocess(Image.open(route / "map" / name).convert("RGB"))
        torch.testing.assert_close(feat, frozen(img[None])[0])
