"""Reliability: `-o` never deletes what the user owns, caches never answer for another input, results are tied to
their index, any file name round-trips, and bad input ends in one clear line (exit code 2)."""

import json
import os
import pickle
import shutil

import h5py
import numpy as np
import pytest
import torch

from vprkit import api, rerank
from vprkit.cli import main
from vprkit.data import groundtruth, safeio
from vprkit.evaluation import outputs, revisited
from vprkit.features import local
from vprkit.index import faiss_index
from vprkit.models.base import load_state_dict
from vprkit.rerank import base as rerank_step
from vprkit.results import load_retrieval, read_results
from vprkit.segvlad import api as seg_api
from vprkit.train import checkpoint, netvlad

SEG = {"preprocessing": {"resize_max": 32}, "aggregator": {"name": "vlad", "num_clusters": 4}, "pca_dim": 8,
       "segmenter.n_segments": 6, "top_k_segments": 5}


def _index(folder, out, **kw):
    return api.index_map(folder, out, preset="mobilenetv2-gem", batch_size=4, **kw)


def _tree(path):
    """Every file under `path` with its bytes (what the user has there)."""
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _split(image_folder, tmp_path, names=("a", "b")):
    """Two folders of six images each; both hold the same file names (x0.png ... x5.png), different pictures."""
    files = sorted(image_folder.rglob("*.png"))
    out = []
    for i, name in enumerate(names):
        folder = tmp_path / name / "query"
        folder.mkdir(parents=True)
        for j, src in enumerate(files[6 * i: 6 * i + 6]):
            shutil.copy(src, folder / f"x{j}.png")
        out.append(folder)
    return out


# ---- 1. -o never deletes what the user owns ------------------------------------------------------------------

def test_index_into_the_map_folder_itself_is_refused_and_touches_nothing(tiny_backbone, image_folder, capsys):
    before = _tree(image_folder)
    assert main(["index", str(image_folder), "-o", str(image_folder), "--preset", "mobilenetv2-gem"]) == 2
    err = capsys.readouterr().err
    assert f"{image_folder}: exists and is not a vprkit index (no vprkit-index.json in it)" in err
    assert _tree(image_folder) == before
    assert sorted(p.name for p in image_folder.parent.iterdir()) == ["imgs"]  # no work folder, lock or temp


def test_every_folder_writer_refuses_a_plain_file_or_a_folder_of_user_files(tiny_backbone, image_folder, tmp_path,
                                                                           retrieval):
    res, _ = retrieval
    user = tmp_path / "mine"
    user.mkdir()
    (user / "thesis.tex").write_text("precious")
    (tmp_path / "notes.txt").write_text("also precious")
    chamfer = rerank.get_reranker_class("chamfer").CONFIG.resolve()
    writers = {"index": lambda o: _index(image_folder, o),
               "segvlad index": lambda o: seg_api.index_map(image_folder, o, **SEG),
               "query -o": lambda o: api.localize(tmp_path / "idx", image_folder, out_dir=o),
               "rerank -o": lambda o: rerank_step.main(chamfer, res, o),
               "train -o": lambda o: netvlad.main(netvlad.CONFIG.resolve("mobilenetv2-netvlad", {}), image_folder,
                                                  image_folder, o, mode="cluster")}
    for out in (user, tmp_path / "notes.txt"):
        for name, write in writers.items():
            with pytest.raises(safeio.InputError, match=f"{out}: exists and is not a .*refusing"):
                write(out)
                pytest.fail(f"{name} wrote into {out}")
    assert _tree(user) == {"thesis.tex": b"precious"} and (tmp_path / "notes.txt").read_text() == "also precious"


def test_rebuilding_an_index_keeps_its_results_and_uses_the_umask(tiny_backbone, image_folder, tmp_path):
    old = os.umask(0o027)
    try:
        idx = _index(image_folder, tmp_path / "idx")
        assert (idx.stat().st_mode & 0o777) == 0o750  # the user's umask, not mkdtemp's 0700
        api.localize(idx, image_folder, top_k=3)
        results = _tree(idx / "results")
        _index(image_folder, idx)
        assert _tree(idx / "results") == results and (idx.stat().st_mode & 0o777) == 0o750
    finally:
        os.umask(old)


# ---- 2. caches keyed by input identity and fitted state --------------------------------------------------------

def test_two_query_folders_with_one_name_do_not_share_cached_features(tiny_backbone, image_folder, tmp_path, caplog):
    idx = _index(image_folder, tmp_path / "idx")
    qa, qb = _split(image_folder, tmp_path)
    api.localize(idx, qa, top_k=3)
    res = read_results(api.localize(idx, qb, top_k=3))  # same default folder idx/results/query, same image names
    assert "6 images changed since their features were computed" in caplog.text
    fresh = read_results(api.localize(idx, qb, tmp_path / "fresh", top_k=3))
    shared = outputs.read_predictions(idx / "results" / "query" / "predictions.txt")
    clean = outputs.read_predictions(tmp_path / "fresh" / "predictions.txt")
    np.testing.assert_array_equal(shared[2][:, 0], clean[2][:, 0])
    np.testing.assert_allclose(shared[3], clean[3], atol=1e-5)
    assert res["queries"] == fresh["queries"] == str(qb)


def test_segvlad_query_into_one_folder_uses_each_index_own_vocabulary(tiny_backbone, image_folder, tmp_path,
                                                                       caplog):
    ma, mb = _split(image_folder, tmp_path, ("ma", "mb"))
    ia, ib = seg_api.index_map(ma, tmp_path / "ia", **SEG), seg_api.index_map(mb, tmp_path / "ib", **SEG)
    out = tmp_path / "out"
    seg_api.localize(ia, mb, top_k=3, out_dir=out)
    seg_api.localize(ib, mb, top_k=3, out_dir=out)
    assert "computed with another fitted vocabulary / PCA" in caplog.text
    seg_api.localize(ib, mb, top_k=3, out_dir=tmp_path / "fresh")
    got, clean = (outputs.read_predictions(p / "predictions.txt") for p in (out, tmp_path / "fresh"))
    np.testing.assert_array_equal(got[2][:, 0], clean[2][:, 0])
    np.testing.assert_allclose(got[3], clean[3], atol=1e-5)


def test_local_feature_cache_changes_when_an_image_file_changes(image_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(local, "main", lambda conf, image_dir, path, *a, **kw: path)
    names, conf = ["001.png", "002.png"], local.CONFIG.resolve()
    first = local.cached(conf, image_folder, names, tmp_path, "map", 4)
    assert local.cached(conf, image_folder, names, tmp_path, "map", 4) == first
    shutil.copy(image_folder / "004.png", image_folder / "002.png")  # same name, another picture
    assert local.cached(conf, image_folder, names, tmp_path, "map", 4) != first


# ---- 3. results are tied to their index -----------------------------------------------------------------------

def test_results_name_the_absolute_index_and_refuse_a_rebuilt_one(tiny_backbone, image_folder, tmp_path,
                                                                    monkeypatch):
    qa, qb = _split(image_folder, tmp_path)
    monkeypatch.chdir(tmp_path)
    _index(qa, "idx")
    api.localize("idx", qa, top_k=3, out_dir="res")
    info = json.loads((tmp_path / "res" / "results.json").read_text())
    assert info["index"] == str(tmp_path / "idx") and info["index_fingerprint"] == faiss_index.fingerprint("idx")
    (tmp_path / "elsewhere" / "idx").mkdir(parents=True)  # an unrelated idx where the user now is
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert load_retrieval(tmp_path / "res").index_dir == tmp_path / "idx"
    _index(qb, tmp_path / "idx")  # the index is rebuilt on another map
    with pytest.raises(safeio.InputError, match="was rebuilt or replaced since these results were computed"):
        load_retrieval(tmp_path / "res")


# ---- 5. any file name round-trips ---------------------------------------------------------------------------

def test_names_with_spaces_round_trip_through_predictions_and_positives(tiny_backbone, image_folder, tmp_path):
    for p in list(image_folder.rglob("*.png"))[:4]:
        p.rename(p.with_name(f"my photo {p.name}"))
    names = sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.png"))
    assert sum(" " in n for n in names) == 4
    gt = tmp_path / "pos.txt"
    gt.write_text("".join(f"{n}\t{n}\n" for n in names))
    idx = _index(image_folder, tmp_path / "idx")
    api.localize(idx, image_folder, top_k=3, out_dir=tmp_path / "res")
    q, m, ids, _ = outputs.read_predictions(tmp_path / "res" / "predictions.txt", names)
    assert q == names and [m[i] for i in ids[:, 0]] == names  # each image finds itself, names intact
    assert main(["evaluate", str(tmp_path / "res" / "predictions.txt"), "--gt", str(gt)]) == 0


def test_old_space_separated_files_are_still_read(tmp_path):
    (tmp_path / "p.txt").write_text("# query rank map_image score\nq1 1 m2 0.9\nq1 2 m1 0.5\nq2 1 m1 0.8\n")
    q, m, ids, scores = outputs.read_predictions(tmp_path / "p.txt", ["m1", "m2"])
    assert q == ["q1", "q2"] and ids.tolist() == [[1, 0], [0, -1]] and scores[0].tolist() == pytest.approx([0.9, 0.5])
    (tmp_path / "g.txt").write_text("q1 m1,m2\nq2 m2\n")
    assert [p.tolist() for p in groundtruth.from_positives_file(tmp_path / "g.txt", ["q1", "q2"], ["m1", "m2"])
            .positives] == [[0, 1], [1]]


# ---- 6. one clear line, exit code 2 ---------------------------------------------------------------------------

def _fails_cleanly(args, capsys, *fragments):
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err.startswith("vprkit: error: ") and all(f in err for f in fragments), err


def test_damaged_index_files_are_named(tiny_backbone, image_folder, tmp_path, capsys):
    idx = _index(image_folder, tmp_path / "idx")
    data = (idx / "index.faiss").read_bytes()
    (idx / "index.faiss").write_bytes(data[: len(data) // 2])
    _fails_cleanly(["query", str(idx), str(image_folder)], capsys, "index.faiss: corrupt or truncated FAISS index")
    (idx / "manifest.json").write_text('{"conf": {"preset": "mob')
    _fails_cleanly(["query", str(idx), str(image_folder)], capsys, "manifest.json: corrupt or truncated manifest")


def test_counts_below_one_are_refused(tiny_backbone, image_folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["query", str(tmp_path), str(image_folder), "--top-k", "0"])
    assert exc.value.code == 2 and "--top-k: must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # 0 match figures is allowed (none drawn), a negative count is not
        main(["rerank", str(tmp_path), "--method", "patchnetvlad", "--match-figures", "-1"])
    assert exc.value.code == 2 and "--match-figures: must be at least 0, got -1" in capsys.readouterr().err
    with pytest.raises(safeio.InputError, match="--top-k must be at least 1"):
        api.localize(tmp_path, image_folder, top_k=0)


def test_a_folder_of_broken_images_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "map").mkdir()
    for name in ("a.jpg", "b.png"):
        (tmp_path / "map" / name).write_bytes(b"not an image")
    _fails_cleanly(["index", str(tmp_path / "map"), "-o", str(tmp_path / "idx"), "--preset", "mobilenetv2-gem"],
                   capsys, "map: none of its images could be read")
    assert sorted(os.listdir(tmp_path)) == [".idx.lock", "map"]  # no index, no work folder (the lock file stays)


def test_ground_truth_files(tmp_path):
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(groundtruth.GroundTruthError, match="empty.npz: empty or corrupt .npz ground truth"):
        groundtruth.load_ground_truth(str(tmp_path / "empty.npz"), ["q"], ["m"])
    (tmp_path / "dup.csv").write_text("name,easting,northing\nq,0,0\nm,1,0\nm,90,0\n")
    with pytest.raises(groundtruth.GroundTruthError, match="dup.csv:4: 'm' appears twice"):
        groundtruth.load_ground_truth(str(tmp_path / "dup.csv"), ["q"], ["m"])
    (tmp_path / "bom.csv").write_text("\ufeffname,easting,northing\nq,0,0\nm,1,0\n", encoding="utf-8")
    assert groundtruth.load_ground_truth(str(tmp_path / "bom.csv"), ["q"], ["m"]).positives[0].tolist() == [0]
    (tmp_path / "int.pkl").write_bytes(pickle.dumps(5))
    with pytest.raises(ValueError, match="int.pkl: not a revisited ground-truth file .holds a int"):
        revisited.load_gnd(tmp_path / "int.pkl")


def test_unreadable_or_unexpected_checkpoints_are_named(tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(safeio.InputError, match="junk.pt: not a readable checkpoint"):
        load_state_dict(junk)
    torch.save(7, tmp_path / "seven.pt")
    with pytest.raises(safeio.InputError, match="seven.pt: not a checkpoint of weights .holds a int"):
        load_state_dict(tmp_path / "seven.pt")
    _fails_cleanly(["match-two", str(junk), str(junk), "--set", f"checkpoint={junk}"], capsys,
                   "junk.pt: not a readable checkpoint")
    from vprkit.models.ames import load_ames
    from vprkit.rerank.gcsa import load_model

    checkpoint.save_checkpoint(tmp_path / "odd.pt", torch.nn.Linear(2, 1), model_conf={"no_such_setting": 1},
                               model_config={"no_such_setting": 1})
    for load in (load_ames, load_model):
        with pytest.raises(safeio.InputError, match="odd.pt: unexpected model settings or weights"):
            load(tmp_path / "odd.pt")


def test_damaged_feature_file_that_cannot_be_opened_is_moved_aside(tmp_path, caplog):
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("a.png/global", data=np.ones(3))
    path.write_bytes(path.read_bytes()[:100])
    from vprkit.features import h5io

    h5io.salvage(path)
    assert not path.exists() and (tmp_path / "f.h5.damaged").exists() and "f.h5 could not be opened" in caplog.text
