"""Checkpoints restore the exact training state (weights, optimizer, RNG), logs and early stopping."""

import random

import numpy as np
import pytest
import torch

from vprkit.train.checkpoint import CSVLog, EarlyStopping, load_checkpoint, save_checkpoint, seed_everything


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
