"""The results contract (vprkit/results.py) and what every reader of a results folder gets from it: the fingerprint
check and the guarded output folder (`sequence` as `rerank`); sequence.txt tab-separated; vprkit's own output
folders never read back as input; a warning when map images changed after indexing."""

import json
import logging
import shutil

import h5py
import numpy as np
from PIL import Image

from vprkit import api
from vprkit.cli import main
from vprkit.data.images import OUTPUT_MARKERS, list_images
from vprkit.index import faiss_index, freshness
from vprkit.index.layout import MANIFEST_FILE, MAP_FEATURES, QUERY_FEATURES
from vprkit.results import RESULTS_FILE, SEQUENCE_FILE, Retrieval, load_retrieval, read_sequence

PRESET = ["--preset", "mobilenetv2-gem"]


def _names(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))


def _query(tmp_path, image_folder):
    """An index of `image_folder` and the results of its own images as queries."""
    idx, res = tmp_path / "idx", tmp_path / "res"
    assert main(["index", str(image_folder), "-o", str(idx), *PRESET]) == 0
    assert main(["query", str(idx), str(image_folder), "--top-k", "5", "-o", str(res)]) == 0
    return idx, res


def test_a_results_folder_loads_as_a_dataclass(tiny_backbone, image_folder, tmp_path):
    idx, res = _query(tmp_path, image_folder)
    r = load_retrieval(res)
    assert isinstance(r, Retrieval) and r.results_dir == res and r.index_dir == idx.resolve()
    assert r.q_names == _names(image_folder) and r.fingerprint == faiss_index.fingerprint(idx)
    assert [r.m_names[i] for i in r.ids[:, 0]] == r.q_names  # each image finds itself first
    assert r.top(2).ids.shape == (12, 2) and np.array_equal(r.top(2).scores, r.scores[:, :2])


def test_sequence_refuses_results_of_a_rebuilt_index_and_writes_nothing(tiny_backbone, image_folder, tmp_path,
                                                                         capsys):
    idx, res = _query(tmp_path, image_folder)
    half = tmp_path / "half"
    half.mkdir()
    for p in sorted(image_folder.glob("*.png"))[:6]:
        shutil.copy(p, half / p.name)
    assert main(["index", str(half), "-o", str(idx), *PRESET]) == 0  # rebuilt on another map
    assert main(["sequence", str(res), "--method", "hmm"]) == 2
    err = capsys.readouterr().err
    assert f"{res / RESULTS_FILE}: the index {idx.resolve()} was rebuilt or replaced since" in err
    assert "Traceback" not in err and not (res / "sequence-hmm").exists()


def test_results_whose_index_is_gone_are_one_clear_error(tiny_backbone, image_folder, tmp_path, capsys):
    idx, res = _query(tmp_path, image_folder)
    shutil.rmtree(idx)
    for argv in (["sequence", str(res)], ["rerank", str(res), "--method", "patchnetvlad"], ["export", str(res),
                                                                                           "--format", "hloc",
                                                                                           "-o", str(tmp_path / "e")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{res / RESULTS_FILE}: its index {idx.resolve()} no longer exists" in err and "Traceback" not in err


def test_sequence_refuses_query_features_of_another_model(tiny_backbone, image_folder, tmp_path, capsys):
    idx, res = _query(tmp_path, image_folder)
    with h5py.File(res / QUERY_FEATURES, "a") as f:
        f.attrs["model_key"] = "another model"
    assert main(["sequence", str(res), "--method", "hmm"]) == 2
    assert f"{res}: no {QUERY_FEATURES} of the index {idx.resolve()}'s model for every query" in capsys.readouterr().err


def test_sequence_output_folder_is_guarded(tiny_backbone, image_folder, tmp_path, capsys):
    idx, res = _query(tmp_path, image_folder)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["sequence", str(res), "--method", "hmm", "-o", str(mine)]) == 2
    assert f"{mine}: exists and is not a vprkit results folder" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"


def test_sequence_txt_is_tab_separated_and_names_with_spaces_round_trip(tiny_backbone, image_folder, tmp_path):
    for p in sorted(image_folder.glob("*.png"))[:3]:
        p.rename(p.with_name(f"my photo {p.name}"))
    idx, res = _query(tmp_path, image_folder)
    out = tmp_path / "seq"
    assert main(["sequence", str(res), "--method", "hmm", "-o", str(out)]) == 0
    lines = (out / SEQUENCE_FILE).read_text().splitlines()
    assert lines[0] == "# query\testimate\tconfidence"
    rows = read_sequence(out / SEQUENCE_FILE)
    assert [line.split("\t") for line in lines[1:]] == [[q, m, f"{c:.6f}"] for q, m, c, *_ in rows]
    names = _names(image_folder)
    assert sorted(r.query for r in rows) == names and sum(" " in r.query for r in rows) == 3
    assert {r.estimate for r in rows} <= set(names)
    predictions = (out / "predictions.txt").read_text()
    assert all(f"{r.query}\t1\t{r.estimate}\t" in predictions for r in rows)  # each frame's rank 1


def test_old_space_separated_sequence_txt_still_reads(tmp_path):
    (tmp_path / "sequence.txt").write_text("# query estimate confidence\nq1.png m3.png 0.500000\nq2.png m4.png 1\n")
    rows = read_sequence(tmp_path / "sequence.txt")
    assert [row[:3] for row in rows] == [("q1.png", "m3.png", 0.5), ("q2.png", "m4.png", 1.0)]
    assert rows[0].correct is None and rows[0].error is None  # written without ground truth columns


# ---- output inside its own input ------------------------------------------------------------------------------

def test_output_folders_inside_the_input_are_never_read_back(tiny_backbone, image_folder, tmp_path):
    """`vprkit index mi -o mi/idx`, a query of mi into mi/res (report thumbnails), a re-rank and a comparison
    there: every later run still sees the 12 images of mi, not vprkit's outputs."""
    names = _names(image_folder)
    idx, res = image_folder / "idx", image_folder / "res"
    assert main(["index", str(image_folder), "-o", str(idx), *PRESET]) == 0
    assert main(["query", str(idx), str(image_folder), "-o", str(res)]) == 0
    assert main(["compare", str(res), str(res), "--gt", "index", "-o", str(image_folder / "cmp")]) == 0
    assert any(p.suffix in (".jpg", ".png") for p in (res / "report_files").rglob("*"))  # thumbnails are there
    assert main(["index", str(image_folder), "-o", str(idx), *PRESET]) == 0
    assert main(["query", str(idx), str(image_folder), "-o", str(res)]) == 0
    assert faiss_index.read_manifest(idx)["names"] == names
    assert json.loads((res / RESULTS_FILE).read_text())["num_queries"] == 12
    assert list_images(image_folder) == names


def test_a_user_folder_with_a_file_of_the_same_name_is_still_listed(image_folder):
    (image_folder / "sub" / "manifest.json").write_text('{"app": "my photo tool"}')
    (image_folder / "sub" / "results.json").write_text("not json")
    assert len(list_images(image_folder)) == 12


def test_a_large_manifest_is_recognised_from_its_head(image_folder, monkeypatch):
    """The manifest of a huge map is judged from its first bytes (conf, map_dir and names come before the list)."""
    monkeypatch.setattr("vprkit.data.images.MARKER_HEAD", 100)  # the list starts past it
    manifest = {"conf": {"preset": "x"}, "model_key": "k", "map_dir": "/m", "names": [f"{i:09d}.jpg"
                                                                                     for i in range(50)]}
    (image_folder / "sub" / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    assert list_images(image_folder) == [n for n in _names(image_folder) if not n.startswith("sub/")]


def test_output_markers_are_the_names_vprkit_writes():
    """The data layer spells the marker names it cannot import: they must be the index's and results' own."""
    from vprkit import compare

    assert set(OUTPUT_MARKERS) == {MANIFEST_FILE, RESULTS_FILE, compare.COMPARE_FILE}


# ---- map images changed after indexing ------------------------------------------------------------------------

def _repaint(path, seed):
    """Same name, new picture (and size: the change shows however coarse the file system's clock)."""
    arr = (np.random.default_rng(seed).random((28, 32, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(path)


def test_a_query_warns_naming_the_map_images_that_changed(tiny_backbone, image_folder, tmp_path, caplog):
    idx = api.index_map(image_folder, tmp_path / "idx", preset="mobilenetv2-gem")
    with caplog.at_level(logging.WARNING, "vprkit"):
        api.localize(idx, image_folder, top_k=3, out_dir=tmp_path / "r0")
    assert "changed" not in caplog.text
    _repaint(image_folder / "004.png", 1)
    (image_folder / "sub" / "009.png").unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING, "vprkit"):
        api.localize(idx, image_folder, top_k=3, out_dir=tmp_path / "r1")
    assert (f"{idx}: 2 of 12 map images changed or disappeared since the index was built (e.g. 004.png, "
            "sub/009.png)") in caplog.text


def test_large_maps_check_a_sample_and_verify_checks_every_image(tiny_backbone, image_folder, tmp_path, caplog,
                                                                 monkeypatch, capsys):
    idx = api.index_map(image_folder, tmp_path / "idx", preset="mobilenetv2-gem")
    changed = ["001.png", "002.png", "004.png", "sub/000.png"]
    for i, n in enumerate(changed):
        _repaint(image_folder / n, i + 10)
    monkeypatch.setattr(freshness, "SAMPLE", 4)
    mi = faiss_index.load(idx)
    rows = np.sort(np.random.default_rng(3).choice(12, 4, replace=False))  # the rows a seeded sample draws
    feats = idx / MAP_FEATURES
    found, checked = freshness.changed_map_images(feats, mi.names, mi.image_path, rng=np.random.default_rng(3))
    assert checked == 4 and found == [mi.names[i] for i in rows if mi.names[i] in changed]
    assert freshness.changed_map_images(feats, mi.names, mi.image_path, verify=True) == (changed, 12)
    removed = {mi.ids["001.png"]}  # a removed image is no longer judged
    assert freshness.changed_map_images(feats, mi.names, mi.image_path, True, removed) == (changed[1:], 11)
    with caplog.at_level(logging.WARNING, "vprkit"):
        assert main(["query", str(idx), str(image_folder), "-o", str(tmp_path / "r"), "--verify"]) == 0
    assert "4 of 12 map images changed" in caplog.text
    monkeypatch.setattr(freshness, "SAMPLE", 11)  # every image but one: a sample still
    caplog.clear()
    with caplog.at_level(logging.WARNING, "vprkit"):
        assert main(["query", str(idx), str(image_folder), "-o", str(tmp_path / "r")]) == 0
    assert "of 11 sampled map images (about" in caplog.text and "--verify checks every one" in caplog.text


def test_a_segvlad_query_warns_too(tiny_backbone, image_folder, tmp_path, caplog):
    from vprkit.segvlad import api as seg_api

    seg = {"preprocessing": {"resize_max": 32}, "aggregator": {"name": "vlad", "num_clusters": 4}, "pca_dim": 8,
           "segmenter.n_segments": 6, "top_k_segments": 5}
    idx = seg_api.index_map(image_folder, tmp_path / "sidx", **seg)
    _repaint(image_folder / "sub" / "003.png", 7)
    with caplog.at_level(logging.WARNING, "vprkit"):
        seg_api.localize(idx, image_folder, top_k=3, out_dir=tmp_path / "sres")
    assert f"{idx}: 1 of 12 map images changed or disappeared since the index was built (e.g. sub/003.png)" \
        in caplog.text
