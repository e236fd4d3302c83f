"""Label-free NetVLAD training on the map alone: route-neighbour positives, augmentation, a training step."""

import numpy as np
import pytest
import torch
from conftest import TinyBackbone, use_backbone
from PIL import Image

from vprkit import cli
from vprkit.data.groundtruth import GroundTruthError
from vprkit.train import netvlad, netvlad_loop, netvlad_model, route
from vprkit.train.losses import get_loss
from vprkit.train.mining import Miner

pytestmark = pytest.mark.usefixtures("one_thread")
AUG = {"crop": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "grey": 0.1}


def _lists(arrays):
    return [a.tolist() for a in arrays]


def test_file_order_neighbours_are_positives_far_frames_negatives():
    names = [f"{i}.png" for i in range(6)]
    pos = route.map_positions("index", names)
    ps = route.route_places(names, pos, pos_thr=1.0, neg_thr=2.0, copies=2, self_positive=False)
    assert ps.q_names == names + names and ps.m_names == names
    near = [[1], [0, 2], [1, 3], [2, 4], [3, 5], [4]]  # +-1 frame, the image itself excluded
    within2 = [[0, 1, 2], [0, 1, 2, 3], [0, 1, 2, 3, 4], [1, 2, 3, 4, 5], [2, 3, 4, 5], [3, 4, 5]]
    assert _lists(ps.positives) == near + near
    assert _lists(ps.non_negatives) == within2 + within2  # negatives: more than 2 frames away
    with_self = route.route_places(names, pos, 1.0, 2.0)  # the default: the augmented copy's own image counts
    assert _lists(with_self.positives) == [sorted(p + [i]) for i, p in enumerate(near)]


def test_positions_in_metres_from_a_csv(tmp_path):
    xy = {"a.png": (0, 0), "b.png": (3, 0), "c.png": (3, 4), "d.png": (20, 0), "e.png": (50, 50)}
    (tmp_path / "map").mkdir()
    for n in xy:
        Image.new("RGB", (8, 8)).save(tmp_path / "map" / n)
    csv = tmp_path / "pos.csv"
    csv.write_text("name,easting,northing\n" + "".join(f"{n},{x},{y}\n" for n, (x, y) in xy.items()))
    data = {"positions": str(csv), "pos_thr": 5.5, "neg_thr": 25.0, "copies": 1, "self_positive": False}
    splits = route.route_splits(data, tmp_path / "map")
    # distances from a: b 3, c 5, d 20, e 70.7; b-c 4, b-d 17, c-d 17.5, d-e 58.3
    assert _lists(splits["train"].positives) == [[1, 2], [0, 2], [0, 1], [], []]
    assert _lists(splits["train"].non_negatives) == [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3], [4]]
    # held out: every second image (b, d) against the others (a, c, e), so only a neighbour counts
    assert (splits["val"].q_names, splits["val"].m_names) == (["b.png", "d.png"], ["a.png", "c.png", "e.png"])
    assert _lists(splits["val"].positives) == [[0, 1], []] and _lists(splits["val"].non_negatives) == [[0, 1], [0, 1]]
    with pytest.raises(GroundTruthError, match="the map's own positions"):
        route.map_positions("positives.txt", list(xy))


def test_augmentation_keeps_size_is_seeded_and_identity_without_strength():
    img = Image.fromarray((np.random.default_rng(0).random((12, 20, 3)) * 255).astype(np.uint8))
    a, b = route.augmenter(AUG, 7), route.augmenter(AUG, 7)
    first, again = a(img), b(img)
    assert first.size == img.size and np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(a(img)), np.asarray(first))  # each call draws new parameters
    none = route.augmenter({"crop": 1.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "grey": 0.0}, 0)
    assert np.array_equal(np.asarray(none(img)), np.asarray(img))
    grey = np.asarray(route.augmenter({**AUG, "grey": 1.0}, 0)(img)).astype(int)
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])
    # brightness alone scales pixels by one factor in [0.6, 1.4] (PIL's Brightness blends with black)
    bright = route.augmenter({"crop": 1.0, "brightness": 0.4, "contrast": 0.0, "saturation": 0.0, "grey": 0.0}, 3)
    src, out = np.asarray(img).astype(float), np.asarray(bright(img)).astype(float)
    factor = float(np.median(out[src > 50] / src[src > 50]))
    assert 0.6 <= factor <= 1.4 and abs(factor - 1) > 0.01
    np.testing.assert_allclose(out, np.clip(src * factor, 0, 255), atol=1.5)


@pytest.fixture
def smooth_route(tmp_path, monkeypatch):
    """A map of 20 places along a route whose appearance drifts slowly (neighbours look alike); no queries."""
    use_backbone(monkeypatch, TinyBackbone)
    rng = np.random.default_rng(0)
    keys = rng.random((5, 16, 16, 3)) * 255
    (tmp_path / "map").mkdir()
    for i in range(20):
        t = i / 19 * 4
        k, f = min(int(t), 3), t - min(int(t), 3)
        arr = (1 - f) * keys[k] + f * keys[k + 1] + rng.normal(0, 10, keys[0].shape)
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(tmp_path / "map" / f"{i:03d}.png")
    return tmp_path


def _conf(**over):
    base = {"resize_max": 16, "data.source": "map", "data.positions": "index", "data.pos_thr": 1.0,
            "data.neg_thr": 4.0, "data.copies": 2, "train.batch_size": 4, "train.num_negs": 3,
            "train.neg_samples": 8, "train.cache_refresh": 5, "train.lr": 1e-2, "train.lr_step": 1,
            "train.mining": "nearest", "guidance.source": None}
    return netvlad.CONFIG.resolve("mobilenetv2-netvlad", {**base, **over})


def test_a_few_steps_lower_the_loss_of_fixed_route_tuples(smooth_route, tmp_path):
    conf = _conf(**{"data.self_positive": False})  # route neighbours only
    s = netvlad.Session(conf, smooth_route / "map", None, tmp_path / "run", splits=("train",))
    s.init_centroids()
    places = s.places["train"]
    assert len(s.banks["train"][0]) == 40 and len(s.banks["train"][1]) == 20  # 2 augmented copies of 20 images
    miner = Miner(places.positives, places.non_negatives, len(places.m_names), num_negs=3, neg_samples=8)
    q_bank, m_bank = s.banks["train"]
    miner.refresh(netvlad_model.describe(s.model, q_bank), netvlad_model.describe(s.model, m_bank))
    tuples = miner.mine(list(range(0, 40, 3)), np.random.default_rng(0))
    for t in tuples:  # mined from the route: the positive is a neighbour, negatives more than 4 frames away
        src = t.query % 20
        assert abs(t.positive - src) == 1 and np.all(np.abs(t.negatives - src) > 4)
    loss_fn = get_loss("triplet", margin=0.1)
    s.model.train()
    before = netvlad_loop.tuples_loss(s, tuples, loss_fn)
    opt = torch.optim.Adam([p for p in s.model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        netvlad_loop.tuples_loss(s, tuples, loss_fn).backward()
        opt.step()
    after = netvlad_loop.tuples_loss(s, tuples, loss_fn)
    assert before.item() > 0 and after.item() < 0.8 * before.item()


def test_cli_trains_without_queries_and_init_continues_a_model(smooth_route, tmp_path, capsys):
    run = tmp_path / "run"
    sets = ["resize_max=16", "data.source=map", "data.positions=index", "data.pos_thr=1", "data.neg_thr=4",
            "data.copies=1", "train.epochs=1", "train.num_negs=3", "train.neg_samples=8", "guidance.source=null"]
    assert cli.main(["train", "netvlad", "train", str(smooth_route / "map"), "-o", str(run), "--set", *sets]) == 0
    assert (run / "best.pt").is_file()
    # a model trained elsewhere is the starting point of another run (fine-tuning, adapting to a new map)
    ft = tmp_path / "ft"
    sets_ft = [*sets, f"train.init={run / 'best.pt'}", "train.lr=0"]
    assert cli.main(["train", "netvlad", "train", str(smooth_route / "map"), "-o", str(ft), "--set", *sets_ft]) == 0
    a = torch.load(run / "best.pt", weights_only=True)["model"]
    b = torch.load(ft / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # lr 0: the loaded weights, not k-means, are what it saved
    capsys.readouterr()
    assert cli.main(["train", "netvlad", "train", str(smooth_route / "map"), "-o", str(tmp_path / "x"),
                     "--set", "data.positions=index", "guidance.source=null"]) == 2
    assert "a query folder is needed unless data.source=map" in capsys.readouterr().err
