"""Every ground-truth format, checked against hand-made positions."""

import numpy as np
import pytest

from vprkit.data.groundtruth import (
    GroundTruthError,
    MapPositions,
    latlon_to_metres,
    load_ground_truth,
    positions_spec,
)


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


def test_map_and_query_sets_let_runs_share_frame_names(tmp_path):
    # Nordland-style: both runs name their frames alike. Map f1..f3 at 0, 10, 20 m; query f1 at 19 m, f2 at 1 m.
    sets = tmp_path / "sets.csv"
    sets.write_text("set,name,easting,northing\nmap,f1,0,0\nmap,f2,10,0\nmap,f3,20,0\nquery,f1,19,1\nquery,f2,1,0\n")
    truth = load_ground_truth(str(sets), ["f1", "f2"], ["f1", "f2", "f3"], 5.0)
    assert _pos(truth) == [[2], [0]] and truth.q_positions.tolist() == [[19, 1], [1, 0]]
    plain = tmp_path / "plain.csv"
    plain.write_text("name,easting,northing\nf1,0,0\nf1,19,1\n")
    with pytest.raises(GroundTruthError, match=r"plain.csv:3: 'f1' appears twice; .*a `set` column"):
        load_ground_truth(str(plain), ["f1"], ["f1"])
    sets.write_text("set,name,easting,northing\nmap,f1,0,0\nroute,f2,1,1\n")
    with pytest.raises(GroundTruthError, match=r"sets.csv:3: set 'route' is neither 'map' nor 'query'"):
        load_ground_truth(str(sets), ["f1"], ["f1"])


def test_query_positions_on_the_index_positions(tmp_path):
    # the map's positions come from the index (vprkit index --positions) unless --gt-map gives a file
    q = tmp_path / "q.csv"
    q.write_text("name,easting,northing\na,9,0\nb,31,0\n")
    known = MapPositions([[0.0, 0.0], [10.0, 0.0], [30.0, 0.0]])
    truth = load_ground_truth(positions_spec(q), ["a", "b"], ["m0", "m1", "m2"], 2.0, known)
    assert _pos(truth) == [[1], [2]]
    m = tmp_path / "m.csv"
    m.write_text("name,easting,northing\nm0,31,0\nm1,100,0\nm2,9,0\n")
    assert _pos(load_ground_truth(positions_spec(q, m), ["a", "b"], ["m0", "m1", "m2"], 2.0, known)) == [[2], [0]]
    with pytest.raises(GroundTruthError, match="no map positions"):
        load_ground_truth(positions_spec(q), ["a", "b"], ["m0", "m1", "m2"], 2.0, MapPositions(None))
    with pytest.raises(GroundTruthError, match="give the queries' positions too"):
        load_ground_truth(positions_spec(None, m), ["a"], ["m0"], 2.0)
