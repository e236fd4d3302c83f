"""Bad settings and bad files end in one line naming the file (or the option) and the problem, exit code 2, no
traceback (issue 25, sections 3 to 5). Each test feeds the bad input through the real CLI (or the reader every
command uses) and checks the message and that nothing was half-done."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from vprkit.cli import main
from vprkit.data.groundtruth import GroundTruthError, load_ground_truth, utm_from_names
from vprkit.models.base import load_state_dict


def _fails(args, capsys, *fragments):
    """`vprkit ARGS` exits 2 with one `vprkit: error:` line holding every fragment, and no traceback."""
    code = main(args)
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("vprkit: error: ") and "Traceback" not in err, err
    assert all(f in last for f in fragments), last
    return last


def _refused_by_parser(args, capsys, *fragments):
    """argparse refuses `vprkit ARGS` (exit 2) naming the option."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and all(f in err for f in fragments), err


@pytest.fixture
def index(tiny_backbone, image_folder, tmp_path):
    assert main(["index", str(image_folder), "-o", str(tmp_path / "idx"), "--preset", "mobilenetv2-gem"]) == 0
    return tmp_path / "idx"


@pytest.mark.parametrize("command", [
    ["index", "MAP", "-o", "OUT"],
    ["index", "MAP", "-o", "OUT", "--preset", "auto"],
    ["rerank", "RES", "--method", "patchnetvlad"],
    ["rerank", "RES", "--method", "chamfer", "--preset", "dinov2"],
    ["sequence", "RES"],
    ["sequence", "RES", "--method", "hmm", "--preset", "hmm-viterbi"],
    ["segvlad", "index", "MAP", "-o", "OUT"],
    ["segvlad", "query", "IDX", "Q", "-o", "OUT"],
    ["serve", "IDX"],
    ["match-two", "A", "B"],
    ["train", "netvlad", "train", "MAP", "Q", "-o", "RUN"],
    ["train", "ames", "RES", "--gt", "GT", "-o", "RUN"],
    ["train", "gcsa", "RES", "--gt", "GT", "-o", "RUN"],
])
def test_an_unknown_setting_is_refused_on_every_command_with_the_valid_keys(command, capsys, tmp_path):
    """Before any file is read: the settings are checked first, so OUT is never created."""
    _fails([*command, "--set", "nope=1"], capsys, "unknown setting 'nope'", "valid keys: ")
    assert not (tmp_path / "OUT").exists()


def test_query_refuses_unknown_settings_and_settings_that_change_the_descriptors(index, image_folder, capsys):
    _fails(["query", str(index), str(image_folder), "--set", "nope=1"], capsys, "unknown setting 'nope'",
           "batch_size")
    _fails(["query", str(index), str(image_folder), "--set", "aggregator.p=1.0"], capsys,
           "would change the index's descriptors")
    assert main(["query", str(index), str(image_folder), "--set", "batch_size=5"]) == 0  # a runtime setting


def test_serve_settings_resolve_as_a_step_config(capsys):
    """`vprkit serve --preset / --set`: the preset's settings, then the user's (`public_docs=true` was refused as
    not a string like its old default "auto"); a bad preset, a stream localizer that cannot run online and a bad
    `public_docs` are one line, before the index is read."""
    from vprkit import cli

    def conf(*argv: str) -> dict:
        args = cli.parser().parse_args(["serve", "IDX", *argv])
        return args.conf(args)

    assert conf()["stream_preset"] == "seqslam-candidates" and conf()["public_docs"] is None
    got = conf("--preset", "hmm", "--set", "public_docs=true", "max_batch=4", "stream_min_confidence=0.3")
    assert (got["stream_preset"], got["public_docs"], got["max_batch"], got["stream_min_confidence"]) == \
        ("hmm", True, 4, 0.3)
    _fails(["serve", "IDX", "--preset", "fast"], capsys, "unknown serve preset 'fast'", "'hmm', 'seqslam-candidates'")
    _fails(["serve", "IDX", "--set", "stream_preset=hmm-viterbi"], capsys,
           "stream_preset 'hmm-viterbi' is not an online sequence preset", "'hmm', 'seqslam', 'seqslam-candidates'")
    _fails(["serve", "IDX", "--set", "public_docs=maybe"], capsys, "'public_docs' must be null")
    _fails(["serve", "IDX", "--set", "top_k=0"], capsys, "'top_k' must be a positive integer")


@pytest.mark.parametrize(("setting", "fragment"), [
    ("batch_size=two", "'batch_size' must be an integer"),
    ("fp16=1", "'fp16' must be true or false"),
    ("preprocessing.resize_max=-5", "'preprocessing.resize_max' must be a positive integer"),
    ("batch_size=NaN", "'batch_size' must be a finite number"),
    ("model=3", "'model' must be a section"),
])
def test_settings_of_the_wrong_type_or_range_are_refused(setting, fragment, capsys):
    _fails(["index", "MAP", "-o", "OUT", "--set", setting], capsys, fragment)


@pytest.mark.parametrize(("command", "setting"), [
    (["sequence", "RES"], "ds=0"),
    (["sequence", "RES", "--method", "hmm", "--preset", "hmm"], "top_k=-3"),
    (["rerank", "RES", "--method", "chamfer"], "num_rerank=0"),
    (["index", "MAP", "-o", "OUT"], "batch_size=0"),
])
def test_counts_below_one_in_settings_are_refused(command, setting, capsys):
    _fails([*command, "--set", setting], capsys, f"setting '{setting.split('=')[0]}' must be a positive integer")


def test_dotted_settings_reach_nested_sections(capsys):
    """`--set data.pos_thr=2` sets conf['data']['pos_thr'] (an int accepted for a float and stored as one)."""
    from vprkit.cli import parser
    from vprkit.cli.train import netvlad_conf

    args = parser().parse_args(["train", "netvlad", "train", "M", "Q", "-o", "R", "--set", "data.pos_thr=2",
                                "train.epochs=3"])
    conf = netvlad_conf(args)
    assert conf["data"]["pos_thr"] == 2.0 and isinstance(conf["data"]["pos_thr"], float)
    assert conf["train"]["epochs"] == 3 and conf["data"]["neg_thr"] == 25.0  # the rest of the section kept


@pytest.mark.parametrize(("args", "fragment"), [
    (["query", "I", "Q", "--threshold", "-5"], "--threshold: must be a finite number >= 0, got -5"),
    (["query", "I", "Q", "--threshold", "nan"], "--threshold: must be a finite number >= 0, got nan"),
    (["evaluate", "P", "--gt", "utm", "--threshold", "inf"], "--threshold"),
    (["index", "M", "-o", "O", "--resize-max", "-5"], "--resize-max: must be at least 1"),
    (["query", "I", "Q", "--nprobe", "0"], "--nprobe: must be at least 1"),
    (["serve", "I", "--port", "70000"], "--port: a port is in 0..65535, got 70000"),
])
def test_bad_numeric_options_are_refused(args, fragment, capsys):
    _refused_by_parser(args, capsys, fragment)


def test_the_global_device_reaches_rerank(capsys):
    """`vprkit --device cuda rerank ...`: the method's config takes it (it used to stay 'cpu'); `--set device=`
    still wins."""
    from vprkit.cli import parser
    from vprkit.cli.methods import rerank_conf

    args = parser().parse_args(["--device", "cuda", "rerank", "R", "--method", "patchnetvlad"])
    assert rerank_conf(args)["device"] == "cuda"
    args = parser().parse_args(["--device", "cuda", "rerank", "R", "--method", "ames", "--set", "device=cpu"])
    assert rerank_conf(args)["device"] == "cpu"


def test_presets_lists_every_step(capsys):
    assert main(["presets"]) == 0
    steps = {line.split("  ")[0].strip() for line in capsys.readouterr().out.splitlines()}
    assert {"index", "segvlad index", "sequence", "train netvlad", "train ames", "train gcsa", "train head",
            "rerank patchnetvlad", "rerank ames", "rerank chamfer", "rerank gcsa", "rerank segvlad", "serve"} <= steps


def test_ground_truth_with_nan_or_impossible_positions_is_named(tmp_path):
    q, m = ["q0.jpg"], ["m0.jpg"]
    (tmp_path / "nan.csv").write_text("name,easting,northing\nq0.jpg,nan,1\nm0.jpg,0,0\n")
    with pytest.raises(GroundTruthError, match=r"nan.csv:2: 'q0.jpg' has no finite position"):
        load_ground_truth(str(tmp_path / "nan.csv"), q, m)
    (tmp_path / "lat.csv").write_text("name,lat,lon\nq0.jpg,900,1\nm0.jpg,45,7\n")
    with pytest.raises(GroundTruthError, match=r"lat.csv:2: latitude 900, longitude 1 outside"):
        load_ground_truth(str(tmp_path / "lat.csv"), q, m)
    np.savez(tmp_path / "nan.npz", utmQ=np.array([[np.nan, 0.0]]), utmDb=np.zeros((1, 2)))
    with pytest.raises(GroundTruthError, match=r"nan.npz: utmQ has 1 non-finite positions"):
        load_ground_truth(str(tmp_path / "nan.npz"), q, m)
    np.savez(tmp_path / "dim.npz", utmQ=np.zeros((1, 3)), utmDb=np.zeros((1, 2)))
    with pytest.raises(GroundTruthError, match=r"dim.npz: utmQ and utmDb must be \(N, D\) .* \(1, 3\) and \(1, 2\)"):
        load_ground_truth(str(tmp_path / "dim.npz"), q, m)
    with pytest.raises(GroundTruthError, match=r"threshold must be a finite number >= 0, got -5"):
        load_ground_truth("index", q, m, -5.0)


def test_a_name_with_a_malformed_position_is_named():
    with pytest.raises(GroundTruthError, match=r"x@1.2.3@4@.jpg: '@1.2.3@4@' is not a position"):
        utm_from_names(["x@1.2.3@4@.jpg"])


def test_latitude_out_of_range_in_side_information_is_refused(tmp_path):
    from vprkit.data.sideinfo import read_metadata_csv

    (tmp_path / "meta.csv").write_text("name,lat,lon\na.jpg,45,900\n")
    with pytest.raises(GroundTruthError, match=r"meta.csv:2: latitude 45, longitude 900 outside"):
        read_metadata_csv(tmp_path / "meta.csv", ["a.jpg"])


def test_ground_truth_errors_end_the_query_in_one_line(index, image_folder, tmp_path, capsys):
    (tmp_path / "gt.npz").write_bytes(b"")
    np.savez(tmp_path / "gt.npz", utmQ=np.full((12, 2), np.nan), utmDb=np.zeros((12, 2)))
    _fails(["query", str(index), str(image_folder), "--gt", str(tmp_path / "gt.npz")], capsys,
           "gt.npz: utmQ has 12 non-finite positions")


def test_memory_budget_on_a_small_map_builds_the_exact_index(tiny_backbone, image_folder, tmp_path):
    """It failed with "need at least one array to stack" (an exact index has no training sample)."""
    assert main(["index", str(image_folder), "-o", str(tmp_path / "idx"), "--preset", "mobilenetv2-gem",
                 "--memory-budget", "1KB"]) == 0
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["factory"] == "Flat" and manifest["index"]["rescore"] is False


@pytest.mark.parametrize(("factory", "fragment"), [
    ("IVF4096,PQ8", "Number of training points (12) should be at least as large as number of clusters (4096)"),
    ("nonsense", "could not parse index string nonsense"),
])
def test_a_factory_faiss_cannot_build_is_one_line_and_keeps_the_features(tiny_backbone, image_folder, tmp_path,
                                                                         capsys, factory, fragment):
    out = tmp_path / "idx"
    _fails(["index", str(image_folder), "-o", str(out), "--preset", "mobilenetv2-gem", "--factory", factory],
           capsys, f"--factory '{factory}'", fragment)
    assert not out.exists() and (tmp_path / ".idx.work" / "map_features.h5").is_file()  # kept for the rerun
    assert main(["index", str(image_folder), "-o", str(out), "--preset", "mobilenetv2-gem"]) == 0
    assert "/12" not in capsys.readouterr().err  # the rerun read the kept features: no image extracted again


def test_sequence_on_query_features_of_another_dimension_is_named(tiny_backbone, image_folder, index, capsys):
    """The results were computed on 8-D GeM; the index is then rebuilt with 2 VLAD clusters (16-D)."""
    assert main(["query", str(index), str(image_folder), "--top-k", "3"]) == 0
    res = index / "results" / image_folder.name
    assert main(["index", str(image_folder), "-o", str(index), "--preset", "dinov2-vlad",
                 "--set", "aggregator.num_clusters=2"]) == 0
    capsys.readouterr()
    _fails(["sequence", str(res), "--set", "ds=2"], capsys, str(res))


def test_a_checkpoint_that_would_run_code_is_refused_in_one_line(tmp_path, capsys):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"state_dict": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"evil.pt: not a readable checkpoint \(.*GLOBAL .*system"):
        load_state_dict(tmp_path / "evil.pt")
    _fails(["match-two", "a.png", "b.png", "--set", f"checkpoint={tmp_path / 'evil.pt'}"], capsys,
           "evil.pt: not a readable checkpoint", "weights_only=True")
    assert not marker.exists()


def test_append_refuses_another_preset_instead_of_ignoring_it(index, image_folder, capsys):
    _fails(["index", str(image_folder), "-o", str(index), "--append", "--preset", "dinov2-gem"], capsys,
           "was built with preset 'mobilenetv2-gem'")
    _fails(["index", str(image_folder), "-o", str(index), "--append", "--resize-max", "64"], capsys,
           "would change the index's descriptors")
    assert main(["index", str(image_folder), "-o", str(index), "--append", "--preset", "mobilenetv2-gem",
                 "--batch-size", "3"]) == 0
