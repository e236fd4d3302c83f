"""Every ground-truth format, checked against hand-made positions."""

import numpy as np
import pytest

from vprkit.data.groundtruth import GroundTruthError, latlon_to_metres, load_ground_truth


def _pos(gt):
    return [p.tolist() for p in gt.positives]


def test_utm_in_file_names():
    m = ["@100.0@200.0@a.jpg", "@130.0@200.0@b.jpg", "@100.0@224.0@c.jpg"]
    q = ["sub/@101.0@201.0@q.jpg"]
    assert _pos(load_ground_truth("utm", q, m)) == [[0, 2]]  # 30 m away is beyond the 25 m default
    assert _pos(load_ground_truth("utm", q, m, threshold=40)) == [[0, 1, 2]]


def test_sequence_frame_tolerance():
    m = [f"images-{i:05d}.png" for i in range(10)]
    assert _pos(load_ground_truth("sequence", ["images-00000.png", "images-00005.png"], m)) == [[0, 1, 2],
                                                                                                [3, 4, 5, 6, 7]]


def test_index_aligned_steps():
    gt = load_ground_truth("index", ["a", "b", "c"], ["x", "y", "z", "w"], threshold=1)
    assert _pos(gt) == [[0, 1], [0, 1, 2], [1, 2, 3]]


def test_patchnetvlad_npz(tmp_path):
    path = tmp_path / "gt.npz"
    np.savez(path, utmQ=np.array([[0.0, 0.0], [50.0, 0.0]]), utmDb=np.array([[3.0, 4.0], [70.0, 0.0]]),
             posDistThr=np.array(25))
    assert _pos(load_ground_truth(str(path), ["q0", "q1"], ["m0", "m1"])) == [[0], [1]]
    with pytest.raises(GroundTruthError, match="image lists have 3 / 2"):
        load_ground_truth(str(path), ["q0", "q1", "q2"], ["m0", "m1"])


def test_csv_utm_and_latlon(tmp_path):
    utm = tmp_path / "utm.csv"
    utm.write_text("name,easting,northing\nq,0,0\na,10,0\nb,0,30\n")
    assert _pos(load_ground_truth(str(utm), ["q"], ["a", "b"])) == [[0]]
    ll = tmp_path / "ll.csv"
    # 0.0002 deg latitude = 22.2 m, 0.0003 deg = 33.4 m (R = 6371 km)
    ll.write_text("name,lat,lon\nq,48.0,11.0\na,48.0002,11.0\nb,48.0003,11.0\n")
    assert _pos(load_ground_truth(str(ll), ["q"], ["a", "b"])) == [[0]]
    with pytest.raises(GroundTruthError, match="no position"):
        load_ground_truth(str(utm), ["q", "zz"], ["a", "b"])


def test_latlon_distance_matches_haversine():
    east_north = latlon_to_metres(np.array([48.0]), np.array([11.001]), (48.0, 11.0))
    lat = np.radians(48.0)
    hav = 2 * 6371000 * np.arcsin(np.sqrt(np.cos(lat) ** 2 * np.sin(np.radians(0.001) / 2) ** 2))
    assert abs(np.linalg.norm(east_north) - hav) < 0.01


def test_positives_list(tmp_path):
    path = tmp_path / "pos.txt"
    path.write_text("# comment\nq1 m2 m0\nq0, m1\n")
    assert _pos(load_ground_truth(str(path), ["q0", "q1"], ["m0", "m1", "m2"])) == [[1], [0, 2]]
    with pytest.raises(GroundTruthError, match="no line for 1 queries"):
        load_ground_truth(str(path), ["q0", "q1", "q2"], ["m0", "m1", "m2"])
    path.write_text("q0 nope\n")
    with pytest.raises(GroundTruthError, match="unknown map images"):
        load_ground_truth(str(path), ["q0"], ["m0"])


def test_bad_specs(tmp_path):
    with pytest.raises(GroundTruthError, match="neither"):
        load_ground_truth(str(tmp_path / "missing.npz"), ["q"], ["m"])
    with pytest.raises(GroundTruthError, match="no '@utm_east"):
        load_ground_truth("utm", ["plain.jpg"], ["@1@2@.jpg"])
