"""Training data: positives / negatives from positions, place-disjoint splits, .mat specs, positives lists."""

import numpy as np
import pytest
from PIL import Image

from vprkit.train.data import load_splits, read_mat_spec, split_by_groups, split_by_place


def test_split_by_place_is_disjoint_with_gap():
    pos = np.arange(100, dtype=float)[:, None]
    parts = split_by_place(pos, pos.copy(), [0.6, 0.2, 0.2], gap=5.0)
    (q0, m0), (q1, m1), (q2, m2) = parts
    assert q0.tolist() == list(range(0, 60)) and m0.tolist() == list(range(0, 60))
    assert q1.min() >= 60 + 5 and q1.max() < 80 and q2.min() >= 80 + 5
    # every train image is at least `gap` from every val / test image
    for a, b in ((m0, q1), (m0, m2), (q0, m1), (m1, q2)):
        assert np.abs(pos[a][:, None, 0] - pos[b][None, :, 0]).min() >= 5


def test_split_follows_the_principal_axis_in_2d():
    t = np.linspace(0, 1000, 50)
    q = np.stack([t, 0.5 * t + 3], axis=1)  # a straight road
    parts = split_by_place(q, q.copy(), [0.5, 0.5], gap=50.0)
    assert parts[0][0].tolist() == list(range(25)) and parts[1][0].min() >= 25


def test_split_by_groups_keeps_connected_places_together():
    # queries 0,1 share map image 0; query 2 -> map 1; query 3 -> map 2, 3
    positives = [np.array([0]), np.array([0]), np.array([1]), np.array([2, 3])]
    (q0, m0), (q1, m1) = split_by_groups(positives, 5, [0.5, 0.5])
    assert q0.tolist() == [0, 1] and m0.tolist() == [0]
    assert q1.tolist() == [2, 3] and m1.tolist() == [1, 2, 3]


def _images(root, names):
    root.mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.new("RGB", (8, 8)).save(root / n)


def test_load_splits_positives_and_non_negatives(tmp_path):
    names = [f"{i:03d}.png" for i in range(30)]
    _images(tmp_path / "m", names)
    _images(tmp_path / "q", names)
    data = {"positions": "index", "pos_thr": 1.0, "neg_thr": 3.0, "split": [0.5, 0.5], "gap": 4.0}
    splits = load_splits(data, tmp_path / "m", tmp_path / "q")
    train, val = splits["train"], splits["val"]
    assert train.q_names == names[:15] and val.q_names[0] == names[19]
    assert train.positives[5].tolist() == [4, 5, 6]
    assert train.non_negatives[5].tolist() == [2, 3, 4, 5, 6, 7, 8]
    assert train.positives[0].tolist() == [0, 1]
    assert val.positives[0].tolist() == [0, 1]  # local indices within the val map


def test_read_pittsburgh_mat_spec(tmp_path):
    from scipy.io import savemat

    db = np.array([[np.array(["000/a.jpg"])], [np.array(["000/b.jpg"])]], dtype=object)
    q = np.array([[np.array(["q/c.jpg"])]], dtype=object)
    struct = {"whichSet": "train", "dbImage": db, "utmDb": np.array([[1.0, 2.0], [10.0, 20.0]]),
              "qImage": q, "utmQ": np.array([[1.5], [10.5]]), "numImages": 2, "numQueries": 1,
              "posDistThr": 25, "posDistSqThr": 625, "nonTrivPosDistSqThr": 100}
    savemat(tmp_path / "pitts.mat", {"dbStruct": struct})
    spec = read_mat_spec(tmp_path / "pitts.mat")
    assert spec.m_names == ["000/a.jpg", "000/b.jpg"] and spec.q_names == ["q/c.jpg"]
    assert spec.m_pos.tolist() == [[1.0, 10.0], [2.0, 20.0]] and spec.q_pos.tolist() == [[1.5, 10.5]]
    savemat(tmp_path / "other.mat", {"x": 1})
    with pytest.raises(ValueError, match="dbStruct"):
        read_mat_spec(tmp_path / "other.mat")


def test_positives_file_dataset(tmp_path):
    _images(tmp_path / "m", ["a.png", "b.png", "c.png", "d.png"])
    _images(tmp_path / "q", ["1.png", "2.png"])
    (tmp_path / "pos.txt").write_text("1.png a.png b.png\n2.png d.png\n")
    data = {"positions": str(tmp_path / "pos.txt"), "pos_thr": 1, "neg_thr": 2, "split": [0.5, 0.5]}
    splits = load_splits(data, tmp_path / "m", tmp_path / "q")
    assert splits["train"].q_names == ["1.png"] and splits["train"].m_names == ["a.png", "b.png"]
    assert splits["val"].q_names == ["2.png"] and splits["val"].positives[0].tolist() == [0]
