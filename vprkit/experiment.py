"""`vprkit experiment CONFIG`: datasets x pipelines, resumable, then one comparison table per dataset.

The config (TOML, or YAML) names datasets (map and query folders, ground truth) and pipelines (an index preset,
then optionally a re-ranker or a sequence matcher, each with its preset and settings); paths are relative to the
config file. Every pipeline of a dataset shares the index and the global retrieval of its index settings:

    OUT/DATASET/index-KEY/        the index (KEY: the preset, plus a hash of its settings when any are set)
    OUT/DATASET/retrieval-KEY/    `vprkit query` on it (the cell of a pipeline without a second step)
    OUT/DATASET/PIPELINE/         the re-ranked or sequence-matched results of one pipeline
    OUT/DATASET/compare/          table.md / .csv / .tex and the report (`vprkit compare` of every cell)

A step whose output is already there is skipped (an index folder, a results.json that still reads back), so
rerunning after an interruption, or after adding a pipeline, runs only what is missing. Every config value is
checked before anything runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import api, compare
from .data.safeio import InputError
from .features.extract import DEFAULT_PRESET
from .index import faiss_index
from .rerank import base as rerank_step
from .rerank import get_reranker_class
from .results import RESULTS_FILE, read_results
from .sequence import pipeline as sequence_step

logger = logging.getLogger("vprkit")
DATASET_KEYS, PIPELINE_KEYS, STEP_KEYS = {"map", "queries", "gt", "threshold"}, {"name", "index", "rerank",
                                                                                 "sequence"}, {"preset", "set"}


@dataclass
class Dataset:
    name: str
    map_dir: Path
    query_dir: Path
    gt: str
    threshold: float | None = None


@dataclass
class Pipeline:
    """An index preset (+ settings), then at most one of a re-ranker and a sequence matcher (their configs)."""

    name: str
    index_preset: str
    index_set: dict = field(default_factory=dict)
    rerank: dict | None = None  # as the config gives it: method, preset, set
    sequence: dict | None = None  # preset, set

    def index_key(self) -> str:
        """The index's folder key: its preset, plus a hash of its settings when any are given."""
        if not self.index_set:
            return self.index_preset
        digest = hashlib.sha1(json.dumps(self.index_set, sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.index_preset}-{digest}"


@dataclass
class Experiment:
    datasets: list[Dataset]
    pipelines: list[Pipeline]
    top_k: int = 20


def read_config(path: str | Path) -> dict:
    """The config file as a dict: TOML (.toml, Python's tomllib) or YAML (.yaml / .yml, PyYAML's safe loader)."""
    path = Path(path)
    if path.suffix == ".toml":
        loads, errors = tomllib.loads, (tomllib.TOMLDecodeError,)
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        loads, errors = yaml.safe_load, (yaml.YAMLError,)
    else:
        raise InputError(f"{path}: a config is a .toml, .yaml or .yml file")
    try:
        data = loads(path.read_text(encoding="utf-8"))
    except (*errors, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable config ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a table of settings")
    return data


def _unknown(what: str, given: dict, valid: set[str]) -> None:
    extra = set(given) - valid
    if extra:
        raise InputError(f"{what}: unknown keys {sorted(extra)}; valid ones: {sorted(valid)}")


def _step(what: str, value, default_key: str) -> dict:
    """A step given as a preset name (or, for `rerank`, a method name) or as a table with `set`."""
    value = {default_key: value} if isinstance(value, str) else value
    if not isinstance(value, dict):
        raise InputError(f"{what}: a name or a table, got {value!r}")
    _unknown(what, value, STEP_KEYS | {default_key})
    return value


def _pipeline(where: str, p: dict) -> Pipeline:
    """One pipeline, its configs resolved (unknown presets and settings refused now, not mid-run)."""
    if not isinstance(p, dict) or not isinstance(p.get("name"), str) or not p["name"].strip():
        raise InputError(f"{where}: each pipeline needs a `name`")
    what = f"{where} '{p['name']}'"
    _unknown(what, p, PIPELINE_KEYS)
    if p.get("rerank") and p.get("sequence"):
        raise InputError(f"{what}: a pipeline has a re-ranker or a sequence step, not both")
    index = _step(f"{what} index", p.get("index", DEFAULT_PRESET), "preset")
    api.conf("index", index.get("preset"), **index.get("set", {}))
    pipe = Pipeline(p["name"], index.get("preset") or DEFAULT_PRESET, index.get("set", {}))
    if p.get("rerank"):
        pipe.rerank = _step(f"{what} rerank", p["rerank"], "method")
        get_reranker_class(pipe.rerank["method"])(rerank_conf(pipe.rerank, "cpu")).check(None)  # AMES: a model?
    if p.get("sequence"):
        pipe.sequence = _step(f"{what} sequence", p["sequence"], "preset")
        sequence_conf(pipe.sequence)
    return pipe


def _checked(where: str, p) -> Pipeline:
    """`_pipeline`, its refusals (an unknown preset, setting or method) naming the config and the pipeline."""
    try:
        return _pipeline(where, p)
    except (ValueError, KeyError) as exc:
        message = str(exc.args[0] if exc.args else exc)
        if message.startswith(where):  # already says where
            raise
        raise InputError(f"{where} '{p.get('name')}': {message}") from None


def rerank_conf(step: dict, device: str) -> dict:
    """A re-ranker's config; `device` fills its device setting unless the config's `set` names one."""
    conf = get_reranker_class(step["method"]).CONFIG.resolve(step.get("preset"), step.get("set", {}))
    if "device" in conf and "device" not in step.get("set", {}):
        conf["device"] = device
    return conf


def sequence_conf(step: dict) -> dict:
    return sequence_step.CONFIG.resolve(step.get("preset"), step.get("set", {}))


def parse(config: dict, root: Path, where: str = "config") -> Experiment:
    """Check a config (read with `read_config`; paths relative to `root`) and return what it describes."""
    _unknown(where, config, {"datasets", "pipelines", "top_k"})
    datasets = config.get("datasets")
    if not isinstance(datasets, dict) or not datasets:
        raise InputError(f"{where}: no [datasets.NAME] table")
    found = []
    for name, d in datasets.items():
        if not isinstance(d, dict) or not {"map", "queries", "gt"} <= set(d):
            raise InputError(f"{where}: dataset '{name}' needs `map`, `queries` and `gt`")
        _unknown(f"{where}: dataset '{name}'", d, DATASET_KEYS)
        gt = str(root / d["gt"]) if (root / d["gt"]).exists() else d["gt"]  # a file, or 'utm' / 'sequence'
        threshold = d.get("threshold")
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int | float)):
            raise InputError(f"{where}: dataset '{name}': threshold must be a number, got {threshold!r}")
        found.append(Dataset(name, root / d["map"], root / d["queries"], gt, threshold))
        for folder in (found[-1].map_dir, found[-1].query_dir):
            if not folder.is_dir():
                raise InputError(f"{where}: dataset '{name}': {folder} is not a folder")
    pipes = [_checked(f"{where}: pipeline {i + 1}", p) for i, p in enumerate(config.get("pipelines") or [])]
    if not pipes:
        raise InputError(f"{where}: no [[pipelines]]")
    names = [p.name for p in pipes]
    if len(set(map(slug, names))) != len(names):
        raise InputError(f"{where}: pipeline names must differ (as folder names): {names}")
    taken = [n for n in names if re.match(r"(compare|index-|retrieval-)", slug(n))]
    if taken:
        raise InputError(f"{where}: pipeline names {taken} would be the folders of the indexes, retrievals or tables")
    return Experiment(found, pipes, int(config.get("top_k", 20)))


def slug(name: str) -> str:
    """A pipeline's folder name: its name with anything but letters, digits, '.', '-' and '_' as '-'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "pipeline"


def _done(results_dir: Path, conf: dict | None = None) -> bool:
    """A cell is finished when its results.json reads back (its index unchanged since) and, for a second step,
    records the settings `conf` the config now gives (changed settings run again, into the same folder)."""
    if not (results_dir / RESULTS_FILE).is_file():
        return False
    try:
        info = read_results(results_dir)
    except (OSError, ValueError):
        return False
    return conf is None or info.get("conf") == conf


def run_cell(d: Dataset, p: Pipeline, out: Path, top_k: int, device: str) -> Path:
    """One dataset x pipeline: its index, retrieval and second step, each skipped when already there."""
    key = p.index_key()
    index_dir, retrieval = out / f"index-{key}", out / f"retrieval-{key}"
    if not faiss_index.is_index(index_dir):
        api.index_map(d.map_dir, index_dir, p.index_preset, device=device, **p.index_set)
    if not _done(retrieval):
        api.localize(index_dir, d.query_dir, retrieval, top_k=top_k, gt=d.gt, threshold=d.threshold, device=device)
    if not (p.rerank or p.sequence):
        return retrieval
    cell = out / slug(p.name)
    conf = rerank_conf(p.rerank, device) if p.rerank else sequence_conf(p.sequence)
    if _done(cell, conf):
        logger.warning("%s / %s: finished earlier (%s), skipped", d.name, p.name, cell / RESULTS_FILE)
    elif p.rerank:
        rerank_step.main(conf, retrieval, cell, gt=d.gt, threshold=d.threshold)
    else:
        sequence_step.main(conf, retrieval, None, cell, gt=d.gt, threshold=d.threshold, device=device)
    return cell


def main(config_path: str | Path, out_dir: str | Path, *, device: str = "cpu") -> list[Path]:
    """Run every dataset x pipeline of the config into `out_dir` (resuming), then write each dataset's
    comparison (OUT/DATASET/compare); returns those comparison folders."""
    config_path = Path(config_path)
    exp = parse(read_config(config_path), config_path.resolve().parent, str(config_path))
    out_dir = Path(out_dir)
    tables = []
    for d in exp.datasets:
        cells = [run_cell(d, p, out_dir / d.name, exp.top_k, device) for p in exp.pipelines]
        if len(cells) < 2:
            continue
        tables.append(compare.main(cells, out_dir / d.name / "compare", gt=d.gt, threshold=d.threshold,
                                   labels=[p.name for p in exp.pipelines]))
    return tables
