"""Sharded extraction: in one process and on a local Ray cluster (a worker killed mid-run), same features."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from vprkit.features import distributed, extract, h5io

CORRIDOR = Path(__file__).resolve().parents[1] / "vprkit" / "demo_data" / "corridor" / "ref"


@pytest.fixture(scope="module")
def setup():
    names = sorted(p.name for p in CORRIDOR.iterdir() if p.suffix in (".jpg", ".png"))[:16]
    conf = extract.CONFIG.resolve("mobilenetv2-gem", batch_size=4, preprocessing={"resize_max": 64})
    return names, conf


def _plain(tmp_path, names, conf):
    """The reference: the ordinary single-process extraction of the same images."""
    plain = tmp_path / "plain.h5"
    extract.main(conf, CORRIDOR, plain, None, names=names)
    return h5io.read_global(plain, names)


def test_shards_in_process_equal_plain_extraction_and_resume(tmp_path, setup):
    names, conf = setup
    ref = _plain(tmp_path, names, conf)
    out = tmp_path / "map.h5"
    ok = distributed.main(conf, CORRIDOR, out, tmp_path / "state.npz", names=names, address=None, shard_size=5)
    assert ok == names
    np.testing.assert_allclose(h5io.read_global(out, names), ref, atol=1e-5)
    shard_dir = tmp_path / "map_shards"
    assert sorted(p.name for p in shard_dir.glob("*.done")) == [f"shard-{i:05d}.done" for i in range(4)]
    record = json.loads((shard_dir / "shard-00001.done").read_text())
    assert record["names"] == names[5:10] and record["pid"] == os.getpid() and record["seconds"] >= 0
    # a half-written shard (unreadable file, no .done) is redone; finished shards are not touched
    (shard_dir / "shard-00002.done").unlink()
    (shard_dir / "shard-00002.h5").write_bytes(b"not hdf5")
    before = (shard_dir / "shard-00001.h5").stat().st_mtime_ns
    assert distributed.main(conf, CORRIDOR, out, tmp_path / "state.npz", names=names, address=None,
                            shard_size=5) == names
    assert (shard_dir / "shard-00001.h5").stat().st_mtime_ns == before
    np.testing.assert_allclose(h5io.read_global(out, names), ref, atol=1e-5)


def test_worker_sets_its_torch_threads(tmp_path, setup):
    import torch

    _, conf = setup
    before = torch.get_num_threads()
    try:
        distributed.ShardWorker(conf, str(CORRIDOR), str(tmp_path), str(tmp_path / "s.npz"), threads=1)
        assert torch.get_num_threads() == 1  # whatever OMP_NUM_THREADS the process inherited
    finally:
        torch.set_num_threads(before)


def test_changed_image_list_redoes_the_shard(tmp_path, setup):
    names, conf = setup
    shard_dir = tmp_path / "s"
    shard_dir.mkdir()
    (shard_dir / "shard-00000.done").write_text(json.dumps({"names": names[:3], "failed": []}))
    assert distributed.shard_done(shard_dir, 0, names[:3])
    assert not distributed.shard_done(shard_dir, 0, names[:4])
    assert distributed.shard_lists(list("abcde"), 2) == [["a", "b"], ["c", "d"], ["e"]]
    with pytest.raises(ValueError):
        distributed.shard_lists(names, 0)


@pytest.mark.slow  # starts a Ray cluster; still run by the plain `pytest -q` of the README (no marker filter)
def test_ray_two_workers_one_killed_equals_single_process(tmp_path, setup):
    ray = pytest.importorskip("ray")
    names, conf = setup
    ref = _plain(tmp_path, names, conf)
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    shard_dir = tmp_path / "map_shards"
    killed: list[int] = []

    def kill_one_worker_after_first_shard() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not list(shard_dir.glob("*.done")):
            time.sleep(0.05)
        pids = sorted(int(p.stem) for p in pid_dir.glob("*.pid"))
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    threading.Thread(target=kill_one_worker_after_first_shard, daemon=True).start()
    try:
        ok = distributed.main(conf, CORRIDOR, tmp_path / "map.h5", tmp_path / "state.npz", names=names,
                              address="local", num_workers=2, shard_size=2, pid_dir=str(pid_dir))
    finally:
        ray.shutdown()
    assert killed, "no worker was killed: the test did not exercise a failure"
    assert ok == names
    np.testing.assert_allclose(h5io.read_global(tmp_path / "map.h5", names), ref, atol=1e-5)
