"""`pixels` preset and `vprkit sequence` end to end on the shipped Corridor frames."""

import json

import numpy as np
import pytest
from conftest import DEMO
from PIL import Image

from vprkit.cli import main
from vprkit.models.pixels import Pixels, patch_normalise
from vprkit.results import read_sequence
from vprkit.sequence.localizer import SequenceLocalizer


def test_patch_normalise_hand_case():
    grey = np.array([[0, 2, 5, 5], [4, 6, 5, 5]], dtype=np.float32)
    out = patch_normalise(grey, 2)
    std = np.std([0, 2, 4, 6], ddof=1)  # left 2x2 block: mean 3
    assert out[:, :2] == pytest.approx((np.array([[0, 2], [4, 6]]) - 3) / std)
    assert out[:, 2:] == pytest.approx(np.zeros((2, 2)))  # flat block


def test_pixels_backbone_is_a_grey_thumbnail():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 100, 3), dtype=np.uint8))
    x = Pixels(width=16, height=8, patch=4).preprocess(img)
    assert x.shape == (1, 8, 16)
    assert x[0, :4, :4].mean().item() == pytest.approx(0.0, abs=1e-5)


def test_sequence_cli_and_stream(tmp_path, capsys):
    idx, res = tmp_path / "idx", tmp_path / "res"
    assert main(["index", str(DEMO / "ref"), "-o", str(idx), "--preset", "pixels"]) == 0
    assert main(["sequence", str(idx), str(DEMO / "query"), "--method", "seqslam", "--set", "ds=5", "enhance=0",
                 "--gt", "index", "-o", str(res)]) == 0
    out = json.loads((res / "results.json").read_text())
    for key in ("R@1", "AUC-PR", "Rec@100P", "Rec@99P"):
        assert 0 <= out["metrics"][key] <= 1 and 0 <= out["metrics_single"][key] <= 1
    assert (res / "report.html").is_file() and (res / "predictions.txt").is_file()
    seq = read_sequence(res / "sequence.txt")
    assert len(seq) == out["num_queries"] == 111
    # the stream API gives the batch's online estimates, frame by frame, from the images themselves
    loc = SequenceLocalizer(idx, {**out["conf"]})
    names = loc.names
    for q, est, *_ in seq[:8]:
        assert names[loc.add(Image.open(DEMO / "query" / q))[0]] == est
    # on top of a `vprkit query` results folder
    assert main(["query", str(idx), str(DEMO / "query"), "--gt", "index", "-o", str(tmp_path / "q")]) == 0
    assert main(["sequence", str(tmp_path / "q"), "--method", "hmm", "--gt", "index"]) == 0
    assert (tmp_path / "q" / "sequence-hmm" / "results.json").is_file()
    assert main(["sequence", str(idx), str(DEMO / "query"), "--set", "ds=0"]) == 2
    assert "setting 'ds' must be a positive integer, got 0" in capsys.readouterr().err
    assert main(["sequence", str(tmp_path)]) == 2
    assert "results.json not found" in capsys.readouterr().err
