"""Atomic writes: a finished write replaces the file whole; a failed one leaves the old file and no temp file."""

import numpy as np
import pytest
import torch

from vprkit.evaluation.outputs import atomic_savez, atomic_write
from vprkit.train.checkpoint import load_checkpoint, save_checkpoint


class Unsavable:
    """Fails when numpy converts it, i.e. in the middle of writing the archive (after earlier arrays)."""

    def __array__(self, *args, **kwargs):
        raise RuntimeError("disk full")


def test_savez_roundtrip_without_pickle(tmp_path):
    path = tmp_path / "state.npz"
    atomic_savez(path, {"centroids": np.arange(6, dtype=np.float32).reshape(2, 3), "arch": "x"})
    with np.load(path, allow_pickle=False) as data:
        np.testing.assert_array_equal(data["centroids"], [[0, 1, 2], [3, 4, 5]])
        assert str(data["arch"]) == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.npz"]


def test_failed_savez_keeps_the_old_file_and_leaves_no_partial_one(tmp_path):
    path = tmp_path / "state.npz"
    atomic_savez(path, {"a": np.ones(3)})
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_savez(path, {"a": np.zeros(1000), "b": Unsavable()})
    with np.load(path, allow_pickle=False) as data:
        np.testing.assert_array_equal(data["a"], np.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.npz"]
    with pytest.raises(RuntimeError):
        atomic_savez(tmp_path / "new.npz", {"b": Unsavable()})
    assert not (tmp_path / "new.npz").exists() and not (tmp_path / "new.npz.tmp").exists()


def test_failed_text_write_and_checkpoint_leave_the_old_file(tmp_path, monkeypatch):
    atomic_write(tmp_path / "p.txt", "old\n")
    with pytest.raises(TypeError):
        atomic_write(tmp_path / "p.txt", None)
    assert (tmp_path / "p.txt").read_text() == "old\n"
    model = torch.nn.Linear(2, 1)
    save_checkpoint(tmp_path / "c.pt", model, epoch=0)

    def half_save(obj, f):  # writes some bytes, then dies
        open(f, "wb").write(b"partial")
        raise OSError("killed")

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(OSError, match="killed"):
        save_checkpoint(tmp_path / "c.pt", model, epoch=1)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "c.pt", restore_rng=False) == {"epoch": 0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "p.txt"]
