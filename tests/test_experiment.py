"""`vprkit experiment`: the documented Corridor config runs (a tiny backbone stands in for every network), finished
cells are skipped on a rerun, and its table is `vprkit compare` of the cells; bad configs are refused up front."""

import csv
import json
import tomllib
from pathlib import Path

import pytest

from vprkit.cli import main
from vprkit.experiment import parse, read_config

ROOT = Path(__file__).resolve().parents[1]
DOC_CONFIG = ROOT / "docs" / "experiments" / "corridor.toml"


def _cheap(tmp_path: Path) -> Path:
    """The documented config with small settings (the test's budget): the same datasets and pipeline kinds."""
    conf = tomllib.loads(DOC_CONFIG.read_text())
    for d in conf["datasets"].values():
        for key in ("map", "queries", "gt"):
            d[key] = str((DOC_CONFIG.parent / d[key]).resolve())
    small = {"chamfer": {"num_query_desc": 16, "num_map_desc": 16, "resize_max": 64, "whiten_images": 20},
             "patchnetvlad": {"resize": [64, 48], "num_pcs": 16, "num_clusters": 4, "fit_max_images": 10,
                              "fit_max_patches": 500, "num_rerank": 3}}
    for p in conf["pipelines"]:
        p["index"] = {"preset": "dinov2-vlad", "set": {"preprocessing.resize_max": 64, "aggregator.num_clusters": 4}}
        if "rerank" in p:
            p["rerank"]["set"].update(small[p["rerank"]["method"]])
    lines = []
    for name, d in conf["datasets"].items():
        lines += [f"[datasets.{name}]", *(f"{k} = {json.dumps(v)}" for k, v in d.items())]
    for p in conf["pipelines"]:
        lines += ["[[pipelines]]", *(f"{k} = {_toml(v)}" for k, v in p.items())]
    path = tmp_path / "corridor.toml"
    path.write_text("\n".join(lines) + "\n")
    assert tomllib.loads(path.read_text())["pipelines"][1]["rerank"]["method"] == "chamfer"
    return path


def _toml(value) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f'"{k}" = {_toml(v)}' for k, v in value.items()) + " }"
    return json.dumps(value)


def test_the_documented_config_parses():
    exp = parse(read_config(DOC_CONFIG), DOC_CONFIG.parent)
    assert [d.name for d in exp.datasets] == ["corridor"] and exp.datasets[0].map_dir.is_dir()
    assert [bool(p.rerank) or bool(p.sequence) for p in exp.pipelines] == [False, True, True, True]


def test_corridor_experiment_runs_resumes_and_tabulates(tiny_backbone, tmp_path, capsys, caplog):
    config, out = _cheap(tmp_path), tmp_path / "exp"
    assert main(["experiment", str(config), "-o", str(out)]) == 0
    folders = sorted(p.name for p in (out / "corridor").iterdir() if not p.name.startswith("."))  # not lock files
    key = next(f for f in folders if f.startswith("index-")).removeprefix("index-")
    assert folders == sorted([f"index-{key}", f"retrieval-{key}", "dinov2-vlad-chamfer",
                              "dinov2-vlad-patchnetvlad-speed-global", "dinov2-vlad-seqslam", "compare"])
    cells = [out / "corridor" / f for f in (f"retrieval-{key}", "dinov2-vlad-chamfer",
                                             "dinov2-vlad-patchnetvlad-speed-global", "dinov2-vlad-seqslam")]
    stamps = [(c / "results.json").stat().st_mtime_ns for c in cells]
    # the table is `vprkit compare` of the four cells
    assert main(["compare", *map(str, cells), "-o", str(tmp_path / "by-hand")]) == 0
    with open(out / "corridor" / "compare" / "table.csv") as f, open(tmp_path / "by-hand" / "table.csv") as g:
        exp_rows, hand_rows = list(csv.reader(f)), list(csv.reader(g))
    assert [r[1:] for r in exp_rows] == [r[1:] for r in hand_rows]
    assert [r[0] for r in exp_rows[1:]] == ["A: dinov2-vlad", "B: dinov2-vlad + chamfer",
                                            "C: dinov2-vlad + patchnetvlad speed+global", "D: dinov2-vlad + seqslam"]
    for cell, row in zip(cells, exp_rows[1:]):
        assert row[1] == f"{json.loads((cell / 'results.json').read_text())['metrics']['R@1']:.3f}"
    capsys.readouterr()
    assert main(["experiment", str(config), "-o", str(out)]) == 0  # rerun: every cell finished, nothing recomputed
    assert [(c / "results.json").stat().st_mtime_ns for c in cells] == stamps
    assert "finished earlier" in caplog.text
    config.write_text(config.read_text().replace('"num_map_desc" = 16', '"num_map_desc" = 12'))
    assert main(["experiment", str(config), "-o", str(out)]) == 0  # chamfer's settings changed: only it runs again
    now = [(c / "results.json").stat().st_mtime_ns for c in cells]
    assert [a == b for a, b in zip(now, stamps)] == [True, False, True, True]
    assert json.loads((cells[1] / "results.json").read_text())["conf"]["num_map_desc"] == 12


@pytest.mark.parametrize("text,message", [
    ("[datasets.x]\nmap = 'nope'\nqueries = 'nope'\ngt = 'utm'\n[[pipelines]]\nname = 'a'\n", "is not a folder"),
    ("[datasets.x]\nmap = '.'\nqueries = '.'\ngt = 'utm'\n[[pipelines]]\nname = 'a'\nindex = 'nope'\n",
     "unknown index preset 'nope'"),
    ("[datasets.x]\nmap = '.'\nqueries = '.'\ngt = 'utm'\n[[pipelines]]\nname = 'a'\nrerank = 'ames'\n",
     "ames needs a trained model"),
    ("[datasets.x]\nmap = '.'\nqueries = '.'\ngt = 'utm'\n[[pipelines]]\nname = 'a'\nrerank = { method = "
     "'chamfer', set = { nope = 1 } }\n", "nope"),
    ("[datasets.x]\nmap = '.'\nqueries = '.'\ngt = 'utm'\nextra = 1\n[[pipelines]]\nname = 'a'\n", "unknown keys"),
    ("[datasets.x\n", "not a readable config"),
    ("[datasets.x]\nmap = '.'\nqueries = '.'\ngt = 'utm'\n[[pipelines]]\nname = 'compare'\n", "would be the folders"),
])
def test_bad_configs_are_refused_before_any_work(tmp_path, capsys, text, message):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    assert main(["experiment", str(config), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and str(config) in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_yaml_configs_read_as_toml_ones(tmp_path):
    (tmp_path / "c.yaml").write_text("datasets:\n  x: {map: ., queries: ., gt: utm, threshold: 25}\n"
                                     "pipelines:\n  - {name: a, sequence: seqslam}\n")
    (tmp_path / "c.toml").write_text("[datasets.x]\nmap = '.'\nqueries = '.'\ngt = 'utm'\nthreshold = 25\n"
                                     "[[pipelines]]\nname = 'a'\nsequence = 'seqslam'\n")
    assert parse(read_config(tmp_path / "c.yaml"), tmp_path) == parse(read_config(tmp_path / "c.toml"), tmp_path)
