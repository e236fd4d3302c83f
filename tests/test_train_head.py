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
from vprkit.config import ConfigError
from vprkit.features import extract, head_presets
from vprkit.models import head_checkpoint as trained_head
from vprkit.train import head, head_conf, token_cache

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
    return head.CONFIG.resolve(preset, {**base, **over})


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
    assert "unknown train head preset 'nope'" in capsys.readouterr().err
    assert cli_main(["train", "head", str(route / "map"), "-o", str(tmp_path / "x"), "--set", "data.source=map"]) == 2
    assert "train head needs a preset (--preset)" in capsys.readouterr().err
    assert cli_main(["train", "head", str(route / "map"), "-o", str(tmp_path / "x"), "--preset", "tiny-gem-fc"]) == 2
    assert "query folder is needed" in capsys.readouterr().err


def test_recipes_schedules_by_hand():
    mix = head.CONFIG.resolve("dinov2s-mixvpr", {"recipe": "mixvpr-gsv"})["train"]
    assert (mix["places"], mix["per_place"], mix["optimizer"], mix["lr"]) == (120, 4, "sgd", 0.05)
    assert head.lr_factor(mix, 0, 0, 100) == pytest.approx(1 / 650)  # warm-up in steps: the epoch length is moot
    assert head.lr_factor(mix, 649, 0, 100) == pytest.approx(1.0)
    assert head.lr_factor(mix, 5000, 5, 100) == pytest.approx(0.3)
    assert head.lr_factor(mix, 9000, 26, 100) == pytest.approx(0.3 ** 4)
    salad = head.CONFIG.resolve("dinov2s-salad", {"recipe": "salad-gsv"})["train"]
    assert head.lr_factor(salad, 2000, 1, 100) == pytest.approx(0.6)
    assert head.lr_factor(salad, 9000, 3, 100) == pytest.approx(0.2)
    assert salad["finetune"] == 4 and salad["mining"] == "places"  # SALAD trains DINOv2's last 4 blocks
    # a MobileNetV2 preset keeps its own depth over the recipe's (defaults < recipe < preset < --set)
    assert head.CONFIG.resolve("mobilenetv2-mixvpr", {"recipe": "salad-gsv"})["train"]["finetune"] == 7
    assert head.lr_factor(head.CONFIG.resolve("dinov2s-salad")["train"], 123, 4, 100) == 1.0
    # the preset's and the user's settings win over the recipe's
    assert head.CONFIG.resolve("dinov2s-salad", {"recipe": "salad-gsv", "train.epochs": 2})["train"]["epochs"] == 2
    with pytest.raises(ConfigError, match="unknown recipe 'nope' for train head"):
        head.CONFIG.resolve("dinov2s-salad", {"recipe": "nope"})
    with pytest.raises(ConfigError, match="unknown setting .train.nope"):
        head.CONFIG.resolve("dinov2s-salad", {"train.nope": 1})
    with pytest.raises(ConfigError, match="unknown loss 'arcface'"):
        head.CONFIG.resolve("dinov2s-salad", {"loss.name": "arcface"})
    with pytest.raises(ConfigError, match="train head needs a preset"):
        head.CONFIG.resolve(None)


def test_boq_recipe_is_bag_of_queries_train_py():
    """boq-gsv against amaralibey/Bag-of-Queries at 1a4965e (docs/training.md cites the lines): 128 places x 4,
    MS loss (1, 50, 0) + miner 0.1, AdamW lr 1e-4 and weight decay 1e-4, 40 epochs, linear warm-up over the first
    10 epochs' steps, x0.1 at epochs 10 and 20."""
    conf = head.CONFIG.resolve("dinov2s-boq", {"recipe": "boq-gsv"})
    t = conf["train"]
    assert conf["recipe"] == "boq-gsv"
    assert conf["loss"] == {**head_conf.DEFAULT_CONF["loss"], "name": "ms", "alpha": 1.0, "beta": 50.0, "base": 0.0,
                            "epsilon": 0.1}
    assert (t["places"], t["per_place"], t["optimizer"], t["lr"], t["weight_decay"], t["epochs"]) == \
        (128, 4, "adamw", 1e-4, 1e-4, 40)
    assert t["finetune"] == 2  # train.py lines 24-25: the last 2 DINOv2 blocks train
    assert (t["warmup"], t["warmup_epochs"], t["milestones"], t["lr_gamma"], t["lr_end_steps"]) == \
        (0, 10, [10, 20], 0.1, 0)
    # by hand, 100 steps an epoch: the warm-up spans 1000 steps
    assert head.lr_factor(t, 0, 0, 100) == pytest.approx(1 / 1000)
    assert head.lr_factor(t, 499, 4, 100) == pytest.approx(0.5)
    assert head.lr_factor(t, 999, 9, 100) == pytest.approx(1.0)
    assert head.lr_factor(t, 1000, 10, 100) == pytest.approx(0.1)
    assert head.lr_factor(t, 2000, 20, 100) == pytest.approx(0.01)
    assert head.lr_factor(t, 3999, 39, 100) == pytest.approx(0.01)
    # every step against BoQ's mechanism run on torch's own scheduler: MultiStepLR([10, 20], 0.1) stepped per epoch,
    # and during the first 10 epochs each step's lr set to min(1, (step + 1) / (10 x steps an epoch)) x initial lr
    per_epoch, step = 3, 0
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-4, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[10, 20], gamma=0.1)
    group = opt.param_groups[0]
    for epoch in range(40):
        for _ in range(per_epoch):
            if epoch < 10:
                group["lr"] = min(1.0, (step + 1) / (10 * per_epoch)) * group["initial_lr"]
            assert t["lr"] * head.lr_factor(t, step, epoch, per_epoch) == pytest.approx(group["lr"], rel=1e-9)
            opt.step()
            step += 1
        sched.step()


def test_epoch_steps_counts_places_with_a_positive():
    positives = [np.array([0]), np.array([], int), np.array([1, 2]), np.array([3]), np.array([4]), np.array([5])]
    assert head.epoch_steps(positives, 2) == 3  # 5 places, 2 a batch: ceil(5 / 2)
    assert head.epoch_steps(positives, 5) == 1


def test_presets_lists_the_head_presets_and_recipes(capsys):
    assert cli_main(["presets", "train head"]) == 0
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        step, rest = line[:20].strip(), line[21:]
        name, conf = rest.split(" ", 1)
        rows[name] = json.loads(conf.strip())
        assert step == "train head"
    assert {n for n in rows if not n.startswith("recipe=")} == set(head_presets.CONFS)
    assert rows["dinov2s-boq"] == {**head_conf.DEFAULT_CONF, "preset": "dinov2s-boq"}
    assert {n: c for n, c in rows.items() if n.startswith("recipe=")} == \
        {f"recipe={r}": block for r, block in head_conf.RECIPES.items()}
    assert rows["recipe=boq-gsv"]["train"]["warmup_epochs"] == 10


@pytest.mark.parametrize("conf,trainable", [({"name": "mobilenetv2", "layer": 13}, 3),
                                            ({"name": "dinov2_vits14", "layer": 2, "facet": "value",
                                              "weights": False}, 2),
                                            ({"name": "dinov2_vits14", "layer": 1, "weights": False}, 1)])
def test_backbone_split_runs_the_same_model_with_its_own_names(conf, trainable):
    torch.manual_seed(0)
    backbone = head.get_backbone(**conf).eval()
    for p in backbone.parameters():  # DINOv2 without weights: nonzero CLS and positions too
        p.data.add_(0.02 * torch.randn_like(p))
    stem, tail = backbone.split(trainable)
    x = torch.randn(2, 3, 56, 84)
    with torch.no_grad():
        ref, got = backbone(x), tail(stem(x))
    torch.testing.assert_close(got.local, ref.local, rtol=0, atol=0)
    names = dict(backbone.state_dict())
    assert all(torch.equal(v, names[k]) for k, v in tail.state_dict().items())  # the backbone's own names
    assert not set(stem.state_dict()) & set(tail.state_dict())
    with pytest.raises(ValueError, match="give 1"):
        backbone.split(99)


def test_finetuned_blocks_train_and_come_back_through_index(route, tmp_path, monkeypatch):
    """train.finetune=3 on MobileNetV2 block 13: the checkpoint holds blocks 11-13 (changed) and the head; `vprkit
    index --checkpoint` gives what a backbone with those blocks copied in by hand and the head give."""
    preset = head_presets._preset({"name": "mobilenetv2", "layer": 13}, 96, "gem-fc", 64)
    for table in (extract.CONFS, head_presets.CONFS):
        monkeypatch.setitem(table, "mb-gem", preset)
    conf = _conf("mb-gem", **{"train.finetune": 3, "train.epochs": 2, "train.lr": 1e-3, "train.queries": 4,
                              "train.negatives": 3})
    best = head.main(conf, route / "map", route / "query", tmp_path / "run")
    state = trained_head.read(best)["model"]
    fresh = head.get_backbone(name="mobilenetv2", layer=13).state_dict()
    tuned = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    assert {k.split(".")[1] for k in tuned} == {"11", "12", "13"}
    assert any(not torch.equal(v, fresh[k]) for k, v in tuned.items() if v.is_floating_point())
    out = api.index_map(route / "map", tmp_path / "idx", "mb-gem", model={**preset["model"], "checkpoint": str(best)})
    backbone = head.get_backbone(name="mobilenetv2", layer=13).eval()
    with torch.no_grad():
        for k, v in tuned.items():
            backbone.state_dict()[k].copy_(v)
    agg = head.get_aggregator(**preset["aggregator"]).eval()
    agg.load_state_dict({k.removeprefix("aggregator."): v for k, v in state.items() if k.startswith("aggregator.")})
    x = extract.prepare(Image.open(route / "map" / "005.png"), extract.CONFIG.resolve("mb-gem"), backbone)
    with torch.no_grad():
        ref = agg(backbone(x[None]).local)[0].numpy()
    with h5py.File(out / "map_features.h5") as f:
        np.testing.assert_allclose(f["005.png"]["global"][()], ref, atol=1e-5)


def test_finetune_and_mining_settings_that_cannot_work_are_refused():
    with pytest.raises(ConfigError, match="pca .* cannot be combined with train.finetune"):
        head.CONFIG.resolve("mobilenetv2-mixvpr", {"pca": 32})
    with pytest.raises(ConfigError, match="loss.name=ms needs train.mining=places"):
        head.CONFIG.resolve("dinov2s-mixvpr", {"loss.name": "ms"})
    assert head.CONFIG.resolve("dinov2s-salad", {"recipe": "salad-gsv"})["train"]["mining"] == "places"
    assert head.CONFIG.resolve("mobilenetv2-mixvpr")["train"]["finetune"] == 7
    assert head.CONFIG.resolve("dinov2s-mixvpr")["train"]["finetune"] == 0
    salad = head.CONFIG.resolve("dinov2s-salad")  # the preset's own default recipe, which --set recipe= replaces
    assert (salad["recipe"], salad["loss"]["name"], salad["train"]["mining"], salad["train"]["lr"]) == \
        ("vprkit-ms", "ms", "places", 1e-3)
    assert head.CONFIG.resolve("dinov2s-salad", {"recipe": "salad-gsv"})["train"]["lr"] == 6e-5
    with pytest.raises(ValueError, match="not supported for TinyBackbone"):
        TinyBackbone().split(1)


def test_global_mining_tuple_loss_is_the_triplet_loss_of_each_mined_tuple(route, tiny, tmp_path):
    """tuple_loss on hand-made tuples (3 and 1 negatives: the short one padded, its padding masked) equals the mean of
    max(0, d(q,p) + 0.1 - d(q,n)) over the real (query, negative) pairs, computed one descriptor at a time."""
    from vprkit.train.head_model import describe
    from vprkit.train.mining import Triplet, layout

    tuples = [Triplet(0, 1, np.array([5, 7, 9])), Triplet(2, 3, np.array([8]))]
    queries, images, mask = layout(tuples)
    assert (queries, images) == ([0, 2], [1, 3, 5, 7, 9, 8, 8, 8])
    assert mask.tolist() == [[True, True, True], [True, False, False]]
    s = head.Session(_conf("tiny-mixvpr"), route / "map", route / "query", tmp_path / "s", splits=("train", "val"))
    q_tokens, m_tokens = s.banks["train"]

    def one(tokens, i):
        return describe(s.model, tokens, [i])[0].numpy()

    terms = [max(0.0, np.linalg.norm(one(q_tokens, t.query) - one(m_tokens, t.positive)) + 0.1
                 - np.linalg.norm(one(q_tokens, t.query) - one(m_tokens, int(n)))) for t in tuples for n in t.negatives]
    with torch.no_grad():
        got = head.tuple_loss(s, tuples).item()
    assert got == pytest.approx(np.mean(terms), abs=1e-5)
    assert head.tuple_loss(s, []) is None
