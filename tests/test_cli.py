"""CLI: the steps chain end to end and errors are one clear line with a non-zero exit code."""

import json

import numpy as np

from vprkit.cli import main
from vprkit.evaluation import outputs


def test_index_query_evaluate_roundtrip(tiny_backbone, image_folder, tmp_path, capsys):
    assert main(["index", str(image_folder), "-o", str(tmp_path / "idx"), "--preset", "mobilenetv2-gem"]) == 0
    gt = tmp_path / "pos.txt"
    names = sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.png"))
    gt.write_text("".join(f"{n} {n}\n" for n in names))
    assert main(["query", str(tmp_path / "idx"), str(image_folder), "--top-k", "5", "--gt", str(gt),
                 "-o", str(tmp_path / "res")]) == 0
    assert "| mobilenetv2-gem | 1.000" in capsys.readouterr().out
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "res" / "predictions.txt"), "--gt", str(gt),
                 "--map-dir", str(image_folder)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["R@1"] == 1.0 and res["mAP"] == 1.0


def test_predictions_roundtrip(tmp_path):
    ids = np.array([[2, 0], [1, 2]])
    outputs.write_predictions(tmp_path / "p.txt", ["qa", "qb"], ["m0", "m1", "m2"], ids, np.ones((2, 2)))
    q, m, preds, _ = outputs.read_predictions(tmp_path / "p.txt", ["m0", "m1", "m2"])
    assert q == ["qa", "qb"] and preds.tolist() == ids.tolist()


def test_errors_are_clear(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["index", str(tmp_path / "empty"), "-o", str(tmp_path / "idx"), "--preset", "dinov2-gem"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vprkit: error:") and "no images" in err and "empty" in err
    assert not (tmp_path / "idx").exists() and not (tmp_path / ".idx.work").exists()
    assert main(["query", str(tmp_path), str(tmp_path)]) == 2
    assert "not a vprkit index" in capsys.readouterr().err


def test_old_training_forms_run_the_new_one_and_say_so(capsys):
    from vprkit import cli

    assert cli.modern_argv(["--device", "cpu", "train-ames", "R", "--gt", "g", "-o", "o"]) == \
        ["--device", "cpu", "train", "ames", "R", "--gt", "g", "-o", "o"]
    assert "use: vprkit --device cpu train ames R --gt g -o o" in capsys.readouterr().err
    assert cli.modern_argv(["train", "cluster", "M", "Q", "-o", "r"]) == ["train", "netvlad", "cluster", "M", "Q",
                                                                         "-o", "r"]
    assert "use: vprkit train netvlad cluster M Q -o r" in capsys.readouterr().err
    new = ["train", "netvlad", "test", "M", "Q", "-o", "r"]
    assert cli.modern_argv(new) == new and capsys.readouterr().err == ""
