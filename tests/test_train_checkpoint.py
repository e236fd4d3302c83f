"""Checkpoints restore the exact training state (weights, optimizer, RNG), logs and early stopping."""

import random

import numpy as np
import pytest
import torch

from vprkit.train.checkpoint import (
    CSVLog,
    EarlyStopping,
    check_same_run,
    load_checkpoint,
    resume,
    save_checkpoint,
    seed_everything,
)


def _steps(model, opt, n):
    """n SGD steps on random data drawn from all three global RNGs (so RNG restore matters)."""
    losses = []
    for _ in range(n):
        x = torch.randn(4, 3) + float(np.random.rand()) + random.random()
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _fresh():
    model = torch.nn.Linear(3, 2)
    return model, torch.optim.Adam(model.parameters(), lr=0.01)


def test_resume_equals_uninterrupted_run(tmp_path):
    seed_everything(0)
    model, opt = _fresh()
    straight = _steps(model, opt, 6)
    final = [p.detach().clone() for p in model.parameters()]

    seed_everything(0)
    model, opt = _fresh()
    first = _steps(model, opt, 3)
    save_checkpoint(tmp_path / "c.pt", model, opt, step=3)
    _steps(model, opt, 5)  # the run goes on and is then "killed": its extra steps must not leak
    model, opt = _fresh()
    assert load_checkpoint(tmp_path / "c.pt", model, opt) == {"step": 3}
    assert first + _steps(model, opt, 3) == pytest.approx(straight, abs=0)
    for a, b in zip(final, model.parameters()):
        assert torch.equal(a, b)


def test_checkpoint_refuses_other_files(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a vprkit checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")


def test_csv_log_truncates_on_resume(tmp_path):
    log = CSVLog(tmp_path / "log.csv")
    for s in range(1, 5):
        log.write({"step": s, "loss": s / 10})
    CSVLog(tmp_path / "log.csv", keep_until=2).write({"step": 3, "loss": 9})
    lines = (tmp_path / "log.csv").read_text().split()
    assert lines == ["step,loss", "1,0.1", "2,0.2", "3,9"]


def test_early_stopping_counts_evaluations_without_improvement():
    es = EarlyStopping(patience=2)
    assert [es.step(v) for v in (0.5, 0.6, 0.6, 0.55)] == [True, True, False, False]
    assert es.should_stop and es.best == 0.6
    assert not EarlyStopping(patience=0, best=1, bad=10).should_stop  # 0 disables


def _loop(out, epochs, patience=5, kill_after=None):
    """A toy training loop on the shared helpers; `kill_after` epochs, it dies (before saving anything more)."""
    out.mkdir(exist_ok=True)
    seed_everything(0)
    model, opt = _fresh()
    val = torch.ones(8, 3)
    progress = resume(out / "last.pt", out / "best.pt", out / "log.csv", patience,
                      lambda path: load_checkpoint(path, model, opt))
    for epoch in progress.epochs(epochs):
        if epoch == kill_after:
            return progress
        loss = float(np.mean(_steps(model, opt, 2)))
        score = -model(val).pow(2).mean().item() if epoch < 3 else -1e9  # no improvement from epoch 3 on
        progress.end_epoch(epoch, score, {"loss": loss}, model, opt, meta={"conf": "x"})
    return progress


def test_interrupted_then_resumed_loop_equals_uninterrupted(tmp_path):
    straight = _loop(tmp_path / "a", 8, patience=2)
    _loop(tmp_path / "b", 8, patience=2, kill_after=2)
    resumed = _loop(tmp_path / "b", 8, patience=2)
    assert resumed.start == 2 and straight.start == 0
    for name in ("last.pt", "best.pt"):
        a, b = (torch.load(tmp_path / d / name, weights_only=True) for d in "ab")
        assert a["meta"] == b["meta"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert (tmp_path / "a" / "log.csv").read_text() == (tmp_path / "b" / "log.csv").read_text()
    rows = (tmp_path / "a" / "log.csv").read_text().split()
    assert [r.split(",")[0] for r in rows] == ["epoch", "0", "1", "2", "3", "4"]  # patience 2 after epoch 2
    best = torch.load(tmp_path / "a" / "best.pt", weights_only=True)
    assert best["meta"]["epoch"] == 2 and "optimizer" not in best
    again = _loop(tmp_path / "a", 8, patience=2)  # a run that stopped early stays stopped
    assert again.start == 5 and list(again.epochs(8)) == []
    assert (tmp_path / "a" / "log.csv").read_text().split() == rows


def test_resume_reads_old_stopper_key_and_fresh_runs_restart_the_log(tmp_path):
    model = torch.nn.Linear(3, 2)
    save_checkpoint(tmp_path / "last.pt", model, epoch=4, stopper={"best": 0.5, "bad": 1})  # GCSA's old name
    CSVLog(tmp_path / "log.csv", key="epoch").write({"epoch": 0, "loss": 1})
    p = resume(tmp_path / "last.pt", tmp_path / "best.pt", tmp_path / "log.csv", 3,
               lambda path: load_checkpoint(path, model))
    assert p.start == 5 and (p.stopper.best, p.stopper.bad) == (0.5, 1) and list(p.epochs(7)) == [5, 6]
    fresh = resume(tmp_path / "last.pt", tmp_path / "best.pt", tmp_path / "log.csv", 3, None, enabled=False)
    assert fresh.start == 0 and fresh.meta == {} and not (tmp_path / "log.csv").exists()


def test_check_same_run_names_changed_nested_settings_and_allows_listed_ones():
    saved = {"lr": 0.1, "train": {"epochs": 2, "margin": 0.1}, "mods": ["position"]}
    check_same_run(saved, {**saved, "train": {"epochs": 9, "margin": 0.1}}, "r/last.pt", ("train.epochs",))
    with pytest.raises(ValueError) as err:
        check_same_run(saved, {"lr": 0.1, "train": {"epochs": 2, "margin": 0.2}, "mods": ["radio"], "new": 1},
                       "r/last.pt")
    msg = str(err.value)
    assert msg.startswith("r/last.pt is a run with other settings")
    assert "mods: ['position'] -> ['radio']; new: None -> 1; train.margin: 0.1 -> 0.2" in msg
    assert "lr" not in msg and "epochs" not in msg
