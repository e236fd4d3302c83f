"""What every training loop shares: seeding, exact resume, a CSV log and early stopping.

Checkpoints hold only tensors and plain Python values so they load with `weights_only=True`
(safe for files from others). They are written to a temporary name and renamed, so an
interrupted save never leaves a half-written checkpoint.

A training loop is `progress = resume(...)`, then `for epoch in progress.epochs(n)`: train, validate,
`progress.end_epoch(...)`. Epochs count from 0; `last` holds everything an exact resume needs,
`best` the weights and `meta` of the best validated epoch.
"""

from __future__ import annotations

import csv
import json
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.safeio import check_output
from ..evaluation.outputs import atomic_savez, replacing
from ..models.checkpoint import read_vprkit_checkpoint

logger = logging.getLogger("vprkit")
RUN_MARKERS = ("*.pt", "log.csv", "stage*.csv", "centroids.npz", "test-*.json", "cache", "features", "tensorboard")


def run_folder(out_dir: str | Path) -> Path:
    """A training run's `-o` folder: created, or an earlier run's (continued); never a folder of other files."""
    out_dir = Path(out_dir)
    check_output(out_dir, RUN_MARKERS, "training run folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def seed_everything(seed: int) -> None:
    """Seed Python, numpy's legacy global RNG and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    """All global RNG states as weights_only-safe values (tensors, lists, strings)."""
    state = {"torch": torch.get_rng_state(), "python": json.dumps(random.getstate()),
             "numpy": json.dumps(np.random.get_state()[1].tolist()), "numpy_pos": int(np.random.get_state()[2])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(("MT19937", np.array(json.loads(state["numpy"]), dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, **meta: Any) -> None:
    """Save model/optimizer/scheduler state, RNG states and `meta` (epoch, step, best metric, conf...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {"model": model.state_dict(), "rng": _rng_state(), "meta": meta}
    if optimizer is not None:
        ckpt["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        ckpt["scheduler"] = scheduler.state_dict()
    with replacing(path) as tmp:
        torch.save(ckpt, tmp)


def load_checkpoint(path: str | Path, model: torch.nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                    restore_rng: bool = True) -> dict[str, Any]:
    """Restore what was saved into the given objects; returns `meta`. Refuses files that are not checkpoints."""
    ckpt = read_vprkit_checkpoint(path)
    if model is not None:
        model.load_state_dict(ckpt["model"])
    if optimizer is not None and "optimizer" in ckpt:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and "scheduler" in ckpt:
        scheduler.load_state_dict(ckpt["scheduler"])
    if restore_rng:
        _set_rng_state(ckpt["rng"])
    return ckpt["meta"]


def save_centroids(path: Path, centroids: np.ndarray, arch: dict) -> None:
    """A NetVLAD run's k-means centroids (centroids.npz) with the architecture they were clustered for."""
    atomic_savez(path, {"centroids": centroids, "arch": json.dumps(arch, sort_keys=True)})


def load_centroids(path: Path, arch: dict) -> np.ndarray:
    """The centroids `save_centroids` wrote, refused when clustered for another architecture than `arch`."""
    with np.load(path, allow_pickle=False) as data:
        if str(data["arch"]) != json.dumps(arch, sort_keys=True):
            raise ValueError(f"{path} was clustered for another architecture ({data['arch']}); delete it or use "
                             "another output folder")
        return data["centroids"]


def _dotted(conf: dict, prefix: str = "") -> dict[str, Any]:
    """Nested settings as one level of dotted keys ({"train": {"lr": 1}} -> {"train.lr": 1})."""
    flat: dict[str, Any] = {}
    for key, value in conf.items():
        if isinstance(value, dict):
            flat.update(_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_same_run(saved: dict, conf: dict, path: str | Path, may_change: tuple[str, ...] = ()) -> None:
    """Refuse to resume a run under other settings (it would silently mix two experiments), naming the
    settings that differ; `may_change` (dotted keys: more epochs, another device) are allowed to."""
    old, new = _dotted(saved), _dotted(conf)
    changed = sorted(k for k in old.keys() | new.keys() if k not in may_change and old.get(k) != new.get(k))
    if changed:
        diffs = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise ValueError(f"{path} is a run with other settings ({diffs}); use another output folder, "
                         "or start over (--restart, resume=False)")


class CSVLog:
    """Append-only CSV of per-step or per-epoch values; on resume, rows past `keep_until` are dropped so a
    resumed run's log equals an uninterrupted one."""

    def __init__(self, path: str | Path, keep_until: int | None = None, key: str = "step") -> None:
        self.path, self.key = Path(path), key
        if keep_until is not None and self.path.exists():
            with self.path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r[key]) <= keep_until]
            self._rewrite(rows)
        elif keep_until is None and self.path.exists():
            self.path.unlink()

    def _rewrite(self, rows: list[dict]) -> None:
        self.path.unlink()
        for row in rows:
            self.write(row)

    def write(self, row: dict[str, Any]) -> None:
        """Append one row (the header comes from the first row written)."""
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)


class EarlyStopping:
    """Stop after `patience` evaluations without improvement of a higher-is-better metric."""

    def __init__(self, patience: int, best: float = float("-inf"), bad: int = 0) -> None:
        self.patience, self.best, self.bad = patience, best, bad

    def step(self, value: float) -> bool:
        """Record `value`; True when it is a new best."""
        if value > self.best:
            self.best, self.bad = value, 0
            return True
        self.bad += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad >= self.patience

    def state(self) -> dict[str, float | int]:
        return {"best": self.best, "bad": self.bad}


@dataclass
class Progress:
    """A training run's bookkeeping between epochs: where it starts, early stopping, its log and checkpoints."""

    last: Path  # every epoch: model, optimizer, scheduler, RNG and loop state (exact resume)
    best: Path  # the best validated epoch: model and meta
    stopper: EarlyStopping
    log: CSVLog
    start: int = 0  # the first epoch to run
    meta: dict[str, Any] = field(default_factory=dict)  # meta of the checkpoint resumed from ({}: a fresh run)

    def epochs(self, total: int) -> Iterator[int]:
        """Epochs `start` .. total - 1, ending once early stopping says so (at once for a run that had stopped)."""
        for epoch in range(self.start, total):
            if self.stopper.should_stop:
                logger.info("early stop: no better validation score for %d epochs", self.stopper.patience)
                return
            yield epoch

    def end_epoch(self, epoch: int, score: float, row: dict[str, Any], model: torch.nn.Module,
                  optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                  meta: dict[str, Any] | None = None, state: dict[str, Any] | None = None) -> bool:
        """Step early stopping with `score` (higher is better), log `row`, save `last` (with `meta` and the
        loop's own resume `state`) and, when `score` improved, `best` (model and `meta`). True if it improved."""
        improved = self.stopper.step(score)
        self.log.write({"epoch": epoch, **row})
        meta = {**(meta or {}), "epoch": epoch}
        save_checkpoint(self.last, model, optimizer, scheduler, **meta, **(state or {}), early=self.stopper.state())
        if improved:
            save_checkpoint(self.best, model, **meta)
        return improved


def resume(last: str | Path, best: str | Path, log: str | Path, patience: int, load: Callable[[Path], dict],
           enabled: bool = True, conf: dict | None = None, may_change: tuple[str, ...] = ()) -> Progress:
    """Progress of a run writing `last`, `best` and the CSV `log`: continued after the epoch saved in `last`
    when `enabled` and it exists (`load(last)` restores model, optimizer, RNG... and returns the meta; the log
    is cut back to that epoch), else a fresh start (the log starts over). With `conf`, a run saved with other
    settings than `conf` (meta["conf"]; `may_change` excepted) is refused (`check_same_run`)."""
    last, best = Path(last), Path(best)
    meta = load(last) if enabled and last.exists() else {}
    if meta and conf is not None:
        check_same_run(meta["conf"], conf, last, may_change)
    start = meta["epoch"] + 1 if meta else 0
    early = meta.get("early", meta.get("stopper", {}))  # GCSA checkpoints before 2026-11-23 said 'stopper'
    return Progress(last, best, EarlyStopping(patience, **early),
                    CSVLog(log, keep_until=start - 1 if meta else None, key="epoch"), start, meta)
