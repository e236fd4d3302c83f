"""`vprkit train head` end to end on tiny generated images with a tiny backbone, and its token cache."""

import json

import h5py
import numpy as np
import pytest
import test_train_netvlad
import torch
from conftest import TinyBackbone
from PIL import Image

from vprkit import api
from vprkit.cli import main as cli_main
from vprkit.features import extract, head_presets
from vprkit.models import head_checkpoint as trained_head
from vprkit.train import head, token_cache

pytestmark = pytest.mark.usefixtures("one_thread")
route = test_train_netvlad.route  # the fixture: 24 places, map and query images of one pattern with noise


@pytest.fixture
def tiny(monkeypatch):
    """Head presets on the tiny backbone (8 channels, stride 4)."""
    presets = {f"tiny-{h}": head_presets._preset({"name": "mobilenetv2"}, TinyBackbone.dim, h, 16)
               for h in ("gem-fc", "mixvpr")}
    for table in (extract.CONFS, head_presets.CONFS):
        for k, v in presets.items():
            monkeypatch.setitem(table, k, v)
    monkeypatch.setattr(head, "get_backbone", lambda name, **kw: TinyBackbone())
    monkeypatch.setattr("vprkit.features.extract.get_backbone", lambda name, **kw: TinyBackbone())


def _conf(preset="tiny-gem-fc", **over):
    base = {"data.positions": "index", "data.pos_thr": 1.0, "data.neg_thr": 2.0, "data.split": [0.5, 0.25, 0.25],
            "data.gap": 2.0, "train.places": 4, "train.per_place": 2, "train.epochs": 4, "train.lr": 1e-2}
    return head.get_conf(preset, {**base, **over})


def _tokens(path):
    img = Image.open(path).convert("RGB")
    x = TinyBackbone().preprocess(img)[None]
    with torch.no_grad():
        return TinyBackbone()(x).local


@pytest.mark.parametrize("preset,over", [("tiny-gem-fc", {"pca": 4}), ("tiny-mixvpr", {"loss.name": "triplet"})])
def test_train_then_index_with_checkpoint_gives_the_trained_descriptors(route, tiny, tmp_path, preset, over):
    conf = _conf(preset, **over)
    s = head.Session(conf, route / "map", route / "query", tmp_path / "untrained")
    untrained = head.test(s, split="val")
    best = head.main(conf, route / "map", route / "query", tmp_path / "run")
    log = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert len(log) == 1 + 4
    trained = json.loads((tmp_path / "run" / "test.json").read_text())
    assert trained["checkpoint"] == str(best)
    val = head.test(head.Session(conf, route / "map", route / "query", tmp_path / "run"), best, split="val")
    assert val["R@1"] >= untrained["R@1"]
    # `vprkit index --preset NAME --checkpoint best.pt`: the checkpoint brings the head (its PCA size included)
    out = api.index_map(route / "map", tmp_path / "idx", preset,
                        model={**extract.CONFS[preset]["model"], "checkpoint": str(best)})
    ckpt = trained_head.read(best)
    model = head.get_aggregator(**ckpt["meta"]["arch"]["aggregator"])
    trained_head.load_weights(ckpt, model.eval())
    with torch.no_grad():
        ref = model(_tokens(route / "map" / "005.png"))[0].numpy()
    with h5py.File(out / "map_features.h5") as f:
        got = f["005.png"]["global"][()]
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert json.loads((out / "manifest.json").read_text())["conf"]["aggregator"]["proj_dim"] == over.get("pca")
    if preset == "tiny-gem-fc":  # another preset's head is refused, naming both
        with pytest.raises(ValueError, match="head: checkpoint cosplace, here mixvpr"):
            api.index_map(route / "map", tmp_path / "idx2", "tiny-mixvpr",
                          model={**extract.CONFS["tiny-mixvpr"]["model"], "checkpoint": str(best)})


def test_token_cache_is_keyed_and_resumable(route, tmp_path):
    calls = []

    class Counting(TinyBackbone):
        def forward(self, x):
            calls.append(len(x))
            return super().forward(x)

    conf = {"model": {"name": "tiny"}, "preprocessing": {"resize_max": 16}, "batch_size": 4, "max_pixels": 10**8}
    names = sorted(p.name for p in (route / "map").iterdir())
    key = token_cache.cache_key(conf["model"], conf["preprocessing"], None, None)
    path = token_cache.cache_path(tmp_path / "c", route / "map", key)
    assert token_cache.fill(Counting(), conf, route / "map", names[:10], path, key) == []
    assert sum(calls) == 10
    token_cache.fill(Counting(), conf, route / "map", names, path, key)  # resumes: only the 14 others
    assert sum(calls) == 24
    tokens = token_cache.load(path, names)
    np.testing.assert_allclose(tokens.local[3].float().numpy(), _tokens(route / "map" / names[3])[0].numpy(),
                               atol=2e-2, rtol=1e-3)  # float16
    assert tokens.local[3].dtype == torch.float16 and tokens.cls is None
    # a changed image file is computed again, and only it
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(route / "map" / names[3])
    token_cache.fill(Counting(), conf, route / "map", names, path, key)
    assert sum(calls) == 25
    np.testing.assert_allclose(token_cache.load(path, names[3:4]).local[0].float().numpy(),
                               _tokens(route / "map" / names[3])[0].numpy(), atol=2e-2, rtol=1e-3)  # the new image
    # another backbone setting or augmentation is another file; a file of another key is refused, not mixed
    other = token_cache.cache_key(conf["model"], {"resize_max": 32}, None, None)
    assert token_cache.cache_path(tmp_path / "c", route / "map", other) != path
    with pytest.raises(ValueError, match="another model"):
        token_cache.fill(Counting(), conf, route / "map", names, path, other)
    aug = token_cache.cache_key(conf["model"], conf["preprocessing"], {"crop": 0.9}, 1)
    assert token_cache.cache_path(tmp_path / "c", route / "map", aug) != path


def test_label_free_cli_run_and_errors(route, tiny, tmp_path, capsys):
    args = ["train", "head", str(route / "map"), "-o", str(tmp_path / "lf"), "--preset", "tiny-gem-fc", "--set",
            "data.source=map", "data.positions=index", "data.pos_thr=1", "data.neg_thr=3", "data.copies=2",
            "train.places=4", "train.per_place=2", "train.epochs=2"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "R@1" in out and "--checkpoint" in out
    assert (tmp_path / "lf" / "best.pt").is_file()
    # separate places (no neighbour is the same place): validation has no positives, the lowest loss is kept
    sep = [a if not a.startswith("data.pos_thr") else "data.pos_thr=0" for a in args]
    sep[sep.index(str(tmp_path / "lf"))] = str(tmp_path / "sep")
    assert cli_main(sep) == 0
    rows = (tmp_path / "sep" / "log.csv").read_text().splitlines()
    assert len(rows) == 3 and "nan" in rows[1] and (tmp_path / "sep" / "best.pt").is_file()
    assert cli_main(["train", "head", str(route / "map"), "-o", str(tmp_path / "x"), "--preset", "nope"]) == 2
    assert "unknown head preset" in capsys.readouterr().err
    assert cli_main(["train", "head", str(route / "map"), "-o", str(tmp_path / "x"), "--preset", "tiny-gem-fc"]) == 2
    assert "query folder is needed" in capsys.readouterr().err


def test_recipes_schedules_by_hand():
    mix = head.get_conf("dinov2s-mixvpr", {"recipe": "mixvpr-gsv"})["train"]
    assert (mix["places"], mix["per_place"], mix["optimizer"], mix["lr"]) == (120, 4, "sgd", 0.05)
    assert head.lr_factor(mix, 0, 0) == pytest.approx(1 / 650)
    assert head.lr_factor(mix, 649, 0) == pytest.approx(1.0)
    assert head.lr_factor(mix, 5000, 5) == pytest.approx(0.3)
    assert head.lr_factor(mix, 9000, 26) == pytest.approx(0.3 ** 4)
    salad = head.get_conf("dinov2s-salad", {"recipe": "salad-gsv"})["train"]
    assert head.lr_factor(salad, 2000, 1) == pytest.approx(0.6)
    assert head.lr_factor(salad, 9000, 3) == pytest.approx(0.2)
    assert head.lr_factor(head.get_conf("dinov2s-salad")["train"], 123, 4) == 1.0
    with pytest.raises(KeyError, match="unknown recipe"):
        head.get_conf("dinov2s-salad", {"recipe": "nope"})
    with pytest.raises(ValueError, match="unknown setting .train.nope"):
        head.get_conf("dinov2s-salad", {"train.nope": 1})
