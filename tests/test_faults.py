"""Fault injection: kill -9 of a real `vprkit index`, a full disk at the N-th write of each writer, damaged caches
and two writers at once. Each test checks that nothing the user had is lost and that the rerun's result equals a
clean run's.

The kill tests run the real CLI in a subprocess (tests/fault_driver.py: `vprkit.cli.main`, dying by SIGKILL at a
chosen point) on three Corridor images with MobileNetV2-GeM at 32 px; the disk-full tests inject ENOSPC in-process
with the tiny test backbone.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import faiss
import h5py
import numpy as np
import pytest

from vprkit import api
from vprkit.cli import main
from vprkit.data import safeio
from vprkit.evaluation.outputs import read_predictions
from vprkit.features import h5io

DEMO = Path(__file__).resolve().parents[1] / "vprkit" / "demo_data" / "corridor"
DRIVER = Path(__file__).with_name("fault_driver.py")
REPO = Path(__file__).resolve().parents[1]


def _dump(path) -> dict:
    with h5py.File(path, "r") as f:
        out = {}
        f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
        return out


def _same_features(a, b) -> None:
    """Same images, same descriptors (to float tolerance: runs may use other thread counts)."""
    da, db = _dump(a), _dump(b)
    assert sorted(da) == sorted(db) and da
    for k in da:
        np.testing.assert_allclose(da[k], db[k], rtol=1e-5, atol=1e-6)


def _siblings(path: Path) -> list[str]:
    """What sits beside `path` besides itself and its lock file, which stays (work folders, half-built folders)."""
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.")
                  and p.name != f".{path.name}.lock")


# ---- kill -9 of a real `vprkit index` --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corridor(tmp_path_factory):
    """Three Corridor map images and a clean index of them (MobileNetV2-GeM, 32 px, one image per batch)."""
    root = tmp_path_factory.mktemp("kill")
    (root / "map").mkdir()
    for name in sorted(os.listdir(DEMO / "ref"))[:3]:
        shutil.copy(DEMO / "ref" / name, root / "map" / name)
    assert main(_index_args(root / "map", root / "clean")) == 0
    return root


def _index_args(map_dir: Path, out: Path) -> list[str]:
    return ["index", str(map_dir), "-o", str(out), "--preset", "mobilenetv2-gem", "--resize-max", "32",
            "--batch-size", "1"]


def _driver(target: str, n: int, args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(DRIVER), target, str(n), *args], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _user_index(corridor: Path, name: str) -> Path:
    """An existing index the user owns, with a results folder holding their file."""
    out = corridor / name
    shutil.copytree(corridor / "clean", out)
    (out / "results" / "q").mkdir(parents=True)
    (out / "results" / "q" / "mine.txt").write_text("the user's notes\n")
    return out


@pytest.mark.parametrize("target,n", [("create_dataset", 2), ("write_index", 1), ("swap", 1)],
                         ids=["mid-hdf5-write", "mid-index-write", "mid-folder-swap"])
def test_kill_9_then_rerun_equals_clean_run_and_keeps_results(corridor, target, n):
    out = _user_index(corridor, f"idx-{target}")
    proc = _driver(target, n, _index_args(corridor / "map", out))
    assert proc.wait(timeout=300) == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    if target != "swap":  # killed before the swap: the old index is untouched
        _same_features(out / "map_features.h5", corridor / "clean" / "map_features.h5")
    assert main(_index_args(corridor / "map", out)) == 0
    _same_features(out / "map_features.h5", corridor / "clean" / "map_features.h5")
    assert faiss.read_index(str(out / "index.faiss")).ntotal == 3
    assert (out / "results" / "q" / "mine.txt").read_text() == "the user's notes\n"
    assert _siblings(out) == []  # no work folder, half-built folder or old folder left


def test_kill_9_from_outside_and_a_concurrent_index_is_refused(corridor, capsys):
    out = corridor / "idx-concurrent"
    proc = _driver("pause", 1, _index_args(corridor / "map", out))  # writes one batch, then waits
    try:
        deadline = time.monotonic() + 300
        while not (corridor / ".paused").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
            time.sleep(0.2)
        assert main(_index_args(corridor / "map", out)) == 2  # a second writer into the same OUT
        assert "another vprkit process is writing it" in capsys.readouterr().err
        assert len(h5io.finished_names(corridor / f".{out.name}.work" / "map_features.h5")) == 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert not out.exists()
    assert main(_index_args(corridor / "map", out)) == 0
    _same_features(out / "map_features.h5", corridor / "clean" / "map_features.h5")
    assert _siblings(out) == []


# ---- ENOSPC at the N-th write of each writer ----------------------------------------------------------------

def _enospc(*_, **__):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fail_at(n: int, real):
    """`real`, except that its n-th call fails with ENOSPC."""
    calls = {"n": 0}

    def wrapper(*args, **kw):
        calls["n"] += 1
        return _enospc() if calls["n"] == n else real(*args, **kw)

    return wrapper


def _tiny_index(folder, out, **kw):
    return api.index_map(folder, out, preset="mobilenetv2-gem", batch_size=4, **kw)


@pytest.mark.parametrize("n", [1, 6])
def test_disk_full_in_hdf5_features_names_the_file_and_rerun_keeps_finished_images(
        tiny_backbone, image_folder, tmp_path, monkeypatch, capsys, n):
    _tiny_index(image_folder, tmp_path / "clean")
    real = h5py.Group.create_dataset
    monkeypatch.setattr(h5py.Group, "create_dataset", _fail_at(n, real))
    args = ["index", str(image_folder), "-o", str(tmp_path / "idx"), "--preset", "mobilenetv2-gem",
            "--batch-size", "4"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and ".idx.work/map_features.h5: cannot write: disk full (ENOSPC)" in err
    work = tmp_path / ".idx.work" / "map_features.h5"
    assert len(h5io.finished_names(work)) == n - 1  # every image written whole before the failure is kept
    monkeypatch.setattr(h5py.Group, "create_dataset", real)
    assert main(args) == 0
    _same_features(tmp_path / "idx" / "map_features.h5", tmp_path / "clean" / "map_features.h5")


def test_disk_full_in_npz_state_leaves_no_partial_file(tiny_backbone, image_folder, tmp_path, monkeypatch):
    conf = {"preset": "dinov2-vlad", "batch_size": 4, "aggregator": {"name": "vlad", "num_clusters": 4}}
    api.index_map(image_folder, tmp_path / "clean", **conf)
    real = np.savez

    def half_then_full(f, **arrays):
        f.write(b"PK\x03\x04 partial")
        _enospc()

    monkeypatch.setattr(np, "savez", half_then_full)
    with pytest.raises(safeio.WriteError, match=r"aggregator.npz: cannot write: disk full"):
        api.index_map(image_folder, tmp_path / "idx", **conf)
    assert os.listdir(tmp_path / ".idx.work") == []  # neither a half-written state nor its temporary file
    monkeypatch.setattr(np, "savez", real)
    api.index_map(image_folder, tmp_path / "idx", **conf)
    _same_features(tmp_path / "idx" / "map_features.h5", tmp_path / "clean" / "map_features.h5")
    with np.load(tmp_path / "idx" / "aggregator.npz") as a, np.load(tmp_path / "clean" / "aggregator.npz") as b:
        np.testing.assert_allclose(a["centroids"], b["centroids"], rtol=1e-5, atol=1e-6)


def test_disk_full_in_faiss_write_keeps_the_old_index_and_its_results(tiny_backbone, image_folder, tmp_path,
                                                                       monkeypatch, capsys):
    out = _tiny_index(image_folder, tmp_path / "idx")
    (out / "results").mkdir()
    (out / "results" / "mine.txt").write_text("keep me")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def full(index, path):
        raise RuntimeError(f"Error in FileIOWriter: write error in {path}: 12 != 4096 (No space left on device)")

    real = faiss.write_index
    monkeypatch.setattr(faiss, "write_index", full)
    assert main(["index", str(image_folder), "-o", str(out), "--preset", "mobilenetv2-gem"]) == 1
    assert "idx/index.faiss: cannot write: disk full (ENOSPC)" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert (out / "results" / "mine.txt").read_text() == "keep me"
    assert _siblings(out) == [".idx.work"]  # the finished features, for the rerun
    monkeypatch.setattr(faiss, "write_index", real)
    assert main(["index", str(image_folder), "-o", str(out), "--preset", "mobilenetv2-gem"]) == 0
    assert (out / "results" / "mine.txt").read_text() == "keep me" and _siblings(out) == []
    _same_features(out / "map_features.h5", tmp_path / "idx" / "map_features.h5")


@pytest.mark.parametrize("victim", ["report.html", "predictions.txt"])
def test_disk_full_in_report_or_predictions_keeps_the_previous_file(tiny_backbone, image_folder, tmp_path,
                                                                     monkeypatch, victim):
    idx = _tiny_index(image_folder, tmp_path / "idx")
    res = tmp_path / "res"
    api.localize(idx, image_folder, top_k=3, out_dir=res)
    before = (res / victim).read_bytes()
    real = Path.write_text

    def write_text(self, *args, **kw):
        if self.name.startswith(victim):
            real(self, "<half", **kw)
            _enospc()
        return real(self, *args, **kw)

    monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(safeio.WriteError, match=f"{victim}: cannot write: disk full"):
        api.localize(idx, image_folder, top_k=3, out_dir=res)
    assert (res / victim).read_bytes() == before and not list(res.glob("*.tmp"))
    monkeypatch.setattr(Path, "write_text", real)
    api.localize(idx, image_folder, top_k=3, out_dir=res)
    assert (res / victim).read_bytes() == before


def test_a_real_full_disk_stops_cleanly_and_the_rerun_finishes(tiny_backbone, image_folder, tmp_path, capsys):
    """A 1 MiB tmpfs (root only; skipped where mounting is not allowed): the extraction stops before HDF5 meets
    a failing write, with the file named; after the disk grows, the rerun keeps what was done and finishes."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)]
    if os.geteuid() != 0 or not shutil.which("mount") or subprocess.run(mount, capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root and permission to mount)")
    try:
        (disk / "ballast").write_bytes(b"\0" * 200_000)
        args = ["index", str(image_folder), "-o", str(disk / "idx"), "--preset", "mobilenetv2-gem"]
        assert main(args) == 1
        assert "map_features.h5: cannot write: disk full (ENOSPC)" in capsys.readouterr().err
        subprocess.run(["mount", "-o", "remount,size=20m", str(disk)], check=True)
        assert main(args) == 0
        _same_features(disk / "idx" / "map_features.h5", _tiny_index(image_folder, tmp_path / "clean")
                       / "map_features.h5")
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# ---- damaged caches ------------------------------------------------------------------------------------------

def _garble(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.9])
def test_damaged_work_file_is_salvaged_and_the_rerun_equals_a_clean_run(tiny_backbone, image_folder, tmp_path,
                                                                          monkeypatch, keep):
    clean = _tiny_index(image_folder, tmp_path / "clean")
    work = tmp_path / ".idx.work"
    work.mkdir()
    shutil.copy(clean / "map_features.h5", work / "map_features.h5")
    _garble(work / "map_features.h5", keep)
    out = _tiny_index(image_folder, tmp_path / "idx")
    _same_features(out / "map_features.h5", clean / "map_features.h5")


def test_damaged_query_features_are_discarded_and_recomputed(tiny_backbone, image_folder, tmp_path, caplog):
    idx = _tiny_index(image_folder, tmp_path / "idx")
    res = tmp_path / "res"
    api.localize(idx, image_folder, top_k=3, out_dir=res)
    _, _, ids, scores = read_predictions(res / "predictions.txt")
    (res / "query_features.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(3000))
    api.localize(idx, image_folder, top_k=3, out_dir=res)
    _, _, ids2, scores2 = read_predictions(res / "predictions.txt")
    np.testing.assert_array_equal(ids2[:, 0], ids[:, 0])  # each image finds itself first
    np.testing.assert_allclose(scores2, scores, atol=1e-5)
    assert "query_features.h5 could not be opened" in caplog.text
    assert json.loads((res / "results.json").read_text())["num_queries"] == 12
