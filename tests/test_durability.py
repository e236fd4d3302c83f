"""The growing map never loses an acknowledged image (issue 25, section 1): torn journal writes, additions racing a
compaction, readers during a compaction, rebuilds of grown or user-owned folders, the index marker, the lock.

Each test injects the fault or the interleaving at a fixed point, so it is deterministic."""

import errno
import fcntl
import logging
import os
import threading

import numpy as np
import pytest
from test_growing_index import _unit, brute, make_index

from vprkit.data import safeio
from vprkit.index import faiss_index, growing, journal, large
from vprkit.index.growing import MapWriter


def _reopened(idx):
    """What a restarted server sees: a fresh writer's map."""
    w = MapWriter(idx, compact_every=0)
    mi = w.map
    w.close()
    return mi


def _short_writes(monkeypatch, fd_of, count: int = 1):
    """The next `count` writes to the journal's descriptor put half their bytes on disk and report it (a full
    disk); both write calls are patched, so the test holds for any way of writing."""
    real_write, real_pwrite, left = os.write, os.pwrite, [count]

    def write(fd, data):
        if fd == fd_of() and left[0]:
            left[0] -= 1
            return real_write(fd, data[:len(data) // 2])
        return real_write(fd, data)

    def pwrite(fd, data, offset):
        if fd == fd_of() and left[0]:
            left[0] -= 1
            return real_pwrite(fd, data[:len(data) // 2], offset)
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "pwrite", pwrite)


# ---- 1. torn journal ------------------------------------------------------------------------------------------

def test_a_short_journal_write_is_refused_and_every_later_acknowledged_addition_survives_a_restart(
        tmp_path, monkeypatch):
    idx, live = make_index(tmp_path)
    w = MapWriter(idx, compact_every=0)
    d = _unit(np.random.default_rng(3).normal(size=(4, 8)))
    w.add("a.jpg", d[0], b"a")
    _short_writes(monkeypatch, lambda: w._journal._fd)
    with pytest.raises(journal.JournalUnavailable, match="journal.log: cannot write"):
        w.add("torn.jpg", d[1], b"t")
    assert "torn.jpg" not in w.map.ids  # not acknowledged, not searchable
    w.add("b.jpg", d[2], b"b")  # space is back: acknowledged
    w.add("c.jpg", d[3], b"c")
    os.close(w._lock_fd)  # a kill -9: nothing is closed or compacted
    mi = _reopened(idx)
    assert {"a.jpg", "b.jpg", "c.jpg"} <= set(mi.live_names()) and "torn.jpg" not in mi.ids
    for name, q in (("b.jpg", d[2]), ("c.jpg", d[3])):
        assert mi.names[mi.search(q[None], 1)[1][0, 0]] == name
    assert journal.scan(idx).skipped == []  # the torn bytes were cut before the next append


def test_while_the_torn_tail_cannot_be_cut_every_change_is_refused(tmp_path, monkeypatch):
    idx, _ = make_index(tmp_path)
    w = MapWriter(idx, compact_every=0)
    d = _unit(np.ones((1, 8)))[0]
    _short_writes(monkeypatch, lambda: w._journal._fd)
    real_truncate = os.ftruncate

    def no_truncate(fd, n):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "ftruncate", no_truncate)
    for name in ("x.jpg", "y.jpg"):
        with pytest.raises(journal.JournalUnavailable):
            w.add(name, d, b"x")
    with pytest.raises(journal.JournalUnavailable):
        w.remove("m0.jpg")
    assert "m0.jpg" in w.map.ids
    monkeypatch.setattr(os, "ftruncate", real_truncate)
    w.add("z.jpg", d, b"z")
    os.close(w._lock_fd)
    assert journal.scan(idx).skipped == [] and [r["name"] for r in journal.read(idx)[0]] == ["z.jpg"]


def test_a_full_disk_while_storing_the_image_is_refused_as_journal_unavailable(tmp_path, monkeypatch):
    idx, _ = make_index(tmp_path)
    w = MapWriter(idx, compact_every=0)
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(journal.JournalUnavailable, match="cannot store the image"):
        w.add("x.jpg", _unit(np.ones((1, 8)))[0], b"x")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert "x.jpg" not in w.map.ids and not [p for p in (idx / "images").iterdir()]
    w.close()


def test_records_after_a_torn_line_left_by_an_older_writer_are_read_and_the_skip_is_reported(tmp_path, caplog):
    """An older vprkit appended after a short write: acknowledged records follow a torn line (glued to it)."""
    idx, _ = make_index(tmp_path)
    d = _unit(np.random.default_rng(4).normal(size=(2, 8)))
    rec = [{"op": "add", "name": f"r{i}.jpg", "desc": journal.desc_to_text(d[i]), "position": None, "file": None}
           for i in range(2)]
    torn = journal.encode({"op": "add", "name": "t.jpg", "desc": journal.desc_to_text(d[0])})[:30]
    (idx / journal.JOURNAL_FILE).write_bytes(journal.encode(rec[0]) + torn + journal.encode(rec[1]))
    assert {"r0.jpg", "r1.jpg"} <= set(faiss_index.load(idx).ids)  # a reader (`vprkit query`) sees both
    scan = journal.scan(idx)
    assert [r["name"] for r in scan.records] == ["r0.jpg", "r1.jpg"]
    assert scan.skipped == [(len(journal.encode(rec[0])), 30)]
    with caplog.at_level(logging.WARNING, "vprkit"):
        w = MapWriter(idx, compact_every=0)
    assert "skipped 30 damaged bytes at offset" in caplog.text and "never acknowledged" in caplog.text
    assert {"r0.jpg", "r1.jpg"} <= set(w.map.ids)
    w.add("r2.jpg", d[1], b"r2")
    w.close()
    assert [r["name"] for r in journal.read(idx)[0]] == ["r0.jpg", "r1.jpg", "r2.jpg"]
    assert journal.scan(idx).skipped == []  # rewritten without the damage


# ---- 2. additions racing a compaction -------------------------------------------------------------------------

def test_a_compaction_between_storing_the_image_and_journaling_it_keeps_the_image(tmp_path, monkeypatch, caplog):
    """The interleaving of the report: the image is written, a compaction runs, then the record is appended."""
    idx, _ = make_index(tmp_path)
    w = MapWriter(idx, compact_every=0)
    w.add("first.jpg", _unit(np.ones((1, 8)))[0], b"first")
    real_fsync_dir, armed = journal.fsync_dir, [True]

    def compact_right_after_the_image_is_stored(path):
        real_fsync_dir(path)
        if armed[0] and path.name == "images":
            armed[0] = False
            w.compact()

    monkeypatch.setattr(journal, "fsync_dir", compact_right_after_the_image_is_stored)
    d = _unit(np.random.default_rng(5).normal(size=(1, 8)))[0]
    with caplog.at_level(logging.WARNING, "vprkit"):
        w.add("racing.jpg", d, b"racing bytes")
        assert not armed[0]
        assert w.map.image_path("racing.jpg").read_bytes() == b"racing bytes"
        w.compact()  # every later compaction still works
        w.compact()
    assert "skipped" not in caplog.text
    w.close()
    mi = _reopened(idx)
    assert mi.image_path("racing.jpg").read_bytes() == b"racing bytes"
    assert mi.names[mi.search(d[None], 1)[1][0, 0]] == "racing.jpg"


def test_a_compaction_while_the_image_is_being_written_keeps_its_temporary_file(tmp_path, monkeypatch):
    """The interleaving CI hit: the addition has written its temporary image file, a compaction runs before the
    rename (it used to delete `images/.*.tmp`, so the rename failed and the addition got a 503)."""
    idx, _ = make_index(tmp_path)
    w = MapWriter(idx, compact_every=0)
    w.add("first.jpg", _unit(np.ones((1, 8)))[0], b"first")
    real_replace, armed = os.replace, [True]

    def compact_before_the_rename(src, dst):
        if armed[0] and str(src).endswith(".tmp") and os.path.basename(os.path.dirname(dst)) == "images":
            armed[0] = False
            w.compact()
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", compact_before_the_rename)
    d = _unit(np.random.default_rng(6).normal(size=(1, 8)))[0]
    w.add("in flight.jpg", d, b"in-flight bytes")
    assert not armed[0] and w.map.image_path("in flight.jpg").read_bytes() == b"in-flight bytes"
    w.close()


def test_concurrent_additions_removals_and_compactions_lose_nothing(tmp_path, caplog):
    """6 threads add and remove their own images while a compaction runs every 5 changes."""
    idx, live = make_index(tmp_path)
    w = MapWriter(idx, compact_every=5)
    expected, guard = dict(live), threading.Lock()

    def worker(t):
        rng = np.random.default_rng(100 + t)
        mine = []
        for i in range(25):
            if mine and rng.random() < 0.3:
                name = mine.pop(int(rng.integers(len(mine))))
                assert w.remove(name)
                with guard:
                    del expected[name]
            else:
                name, d = f"t{t}/{i}.jpg", _unit(rng.normal(size=(1, 8)))[0]
                w.add(name, d, name.encode())
                mine.append(name)
                with guard:
                    expected[name] = d

    with caplog.at_level(logging.WARNING, "vprkit"):
        threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    w.close()
    assert "skipped" not in caplog.text
    mi = _reopened(idx)
    assert sorted(mi.live_names()) == sorted(expected)
    added = [n for n in expected if n.startswith("t")]
    assert all(mi.image_path(n).read_bytes() == n.encode() for n in added)
    stored = {p.name for p in (idx / "images").iterdir()}
    assert len(stored) == len(added)  # removed images' files were collected, live ones kept
    q = np.stack([expected[n] for n in added])
    assert [mi.names[i] for i in mi.search(q, 1)[1][:, 0]] == added


# ---- 3. readers during a compaction ---------------------------------------------------------------------------

@pytest.mark.parametrize("step", ["index", "journal"])
def test_a_reader_interrupted_by_compactions_sees_one_whole_generation(tmp_path, monkeypatch, step):
    """A compaction (first from the plain layout, then between generations) runs right after the reader read the
    manifest (step index) or the index (step journal); the reader must return the map, never a mix or an error."""
    idx, live = make_index(tmp_path)
    w = MapWriter(idx, compact_every=0)
    rng = np.random.default_rng(6)
    for i in range(3):
        live[f"n{i}.jpg"] = _unit(rng.normal(size=(1, 8)))[0]
        w.add(f"n{i}.jpg", live[f"n{i}.jpg"], b"n%d" % i)
    w.remove("m1.jpg")
    del live["m1.jpg"]
    target = (large, "read") if step == "index" else (journal, "read")
    real, left, busy = getattr(*target), [2], [False]

    def compact_first(*args, **kwargs):
        if left[0] and not busy[0]:  # the reader's call, not the writer's own reads inside the compaction
            left[0], busy[0] = left[0] - 1, True
            w.compact()
            busy[0] = False
        return real(*args, **kwargs)

    monkeypatch.setattr(*target, compact_first)
    queries = _unit(rng.normal(size=(4, 8)))
    for _ in range(2):
        mi = faiss_index.load(idx)
        assert sorted(mi.live_names()) == sorted(live)
        for q, row in zip(queries, mi.search(queries, 3)[1]):
            assert [mi.names[i] for i in row] == brute(live, q, 3)
    assert left[0] == 0 and faiss_index.base_dir(idx).name == "000002"
    w.close()


def test_compaction_keeps_a_symlinked_index_and_files_written_into_it(tmp_path):
    idx, live = make_index(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(idx)
    (idx / "results" / "q").mkdir(parents=True)
    (idx / "results" / "q" / "mine.txt").write_text("notes")
    w = MapWriter(link, compact_every=0)
    w.add("a.jpg", _unit(np.ones((1, 8)))[0], b"a")
    w.compact()
    w.close()
    assert link.is_symlink() and (link / "results" / "q" / "mine.txt").read_text() == "notes"
    assert sorted(faiss_index.load(link).live_names()) == sorted([*live, "a.jpg"])


# ---- 4-6. rebuilds ----------------------------------------------------------------------------------------------

def _index(map_dir, out, *extra):
    from vprkit import cli

    return cli.main(["index", str(map_dir), "-o", str(out), "--preset", "mobilenetv2-gem", "--batch-size", "4",
                     *extra])


def test_rebuilding_a_grown_index_is_refused_or_carries_the_added_images(tiny_backbone, image_folder, tmp_path,
                                                                        capsys):
    idx = tmp_path / "idx"
    assert _index(image_folder, idx) == 0
    w = MapWriter(idx, compact_every=0)
    d = _unit(np.random.default_rng(7).normal(size=(2, 8)))
    w.add("api/one.jpg", d[0], b"one", [1.0, 2.0])
    w.add("api/two.jpg", d[1], b"two")
    w.compact()  # one folded into the base files, one still in the journal
    w.add("api/three.jpg", d[0] * -1, b"three")
    w.remove("api/two.jpg")
    w.close()
    capsys.readouterr()
    assert _index(image_folder, idx) == 2
    err = capsys.readouterr().err
    assert "holds 2 images added after it was built" in err and "--keep-added" in err
    assert {"api/one.jpg", "api/three.jpg"} <= set(faiss_index.load(idx).live_names())  # untouched
    assert _index(image_folder, idx, "--keep-added") == 0
    mi = faiss_index.load(idx)
    assert sum(n.startswith("api/") for n in mi.live_names()) == 2 and len(mi.live_names()) == 14
    assert mi.image_path("api/one.jpg").read_bytes() == b"one" and mi.position(mi.ids["api/one.jpg"]) == [1.0, 2.0]
    assert mi.names[mi.search(d[:1], 1)[1][0, 0]] == "api/one.jpg"


def test_rebuild_keeps_files_vprkit_did_not_write_and_a_symlinked_out(tiny_backbone, image_folder, tmp_path):
    real = tmp_path / "real"
    link = tmp_path / "link"
    assert _index(image_folder, real) == 0
    link.symlink_to(real)
    (real / "notes.txt").write_text("mine")
    (real / "mine" / "deep").mkdir(parents=True)
    (real / "mine" / "deep" / "x.txt").write_text("deep")
    (real / "results" / "q").mkdir(parents=True)
    (real / "results" / "q" / "a.txt").write_text("r")
    assert _index(image_folder, link) == 0
    assert link.is_symlink() and faiss_index.is_index(real)
    assert (real / "notes.txt").read_text() == "mine" and (real / "mine" / "deep" / "x.txt").read_text() == "deep"
    assert (real / "results" / "q" / "a.txt").read_text() == "r"


def test_a_folder_with_someone_elses_manifest_is_not_an_index(tiny_backbone, image_folder, tmp_path, capsys):
    p = tmp_path / "p"
    p.mkdir()
    (p / "manifest.json").write_text("{}")
    (p / "main.py").write_text("x")
    assert _index(image_folder, p) == 2
    assert "is not a vprkit index" in capsys.readouterr().err
    assert sorted(os.listdir(p)) == ["main.py", "manifest.json"]


def test_an_index_without_the_marker_still_works_and_a_newer_format_is_refused(tiny_backbone, image_folder,
                                                                              tmp_path, capsys):
    idx = tmp_path / "idx"
    assert _index(image_folder, idx) == 0
    marker = idx / faiss_index.MARKER_FILE
    assert faiss_index._marker(idx)["version"] == faiss_index.FORMAT_VERSION
    marker.unlink()  # as written before the marker existed
    assert faiss_index.is_index(idx) and len(faiss_index.load(idx).live_names()) == 12
    assert _index(image_folder, idx) == 0 and marker.exists()  # rebuilt, now with the marker
    marker.write_text('{"format": "vprkit-index", "version": 99}')
    with pytest.raises(safeio.InputError, match="format version 99, written by a newer vprkit"):
        faiss_index.load(idx)


# ---- 7. the lock ----------------------------------------------------------------------------------------------

def test_a_writer_that_opened_the_lock_file_before_the_holder_left_still_excludes_the_next(tmp_path):
    """Writer B opened the lock file while A held it and locks it once A is done; C must then be refused (when the
    file was deleted on exit, C locked a new file and B and C wrote at once)."""
    out = tmp_path / "out"
    with safeio.locked(out):
        b = os.open(tmp_path / ".out.lock", os.O_RDWR)
    fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with pytest.raises(safeio.InputError, match="another vprkit process is writing it"):
            with safeio.locked(out):
                pass
    finally:
        os.close(b)
    with safeio.locked(out):  # released: the next writer gets it
        pass


def test_the_map_writer_and_index_share_one_lock_through_any_path_spelling(tiny_backbone, image_folder, tmp_path,
                                                                            capsys):
    idx = tmp_path / "idx"
    assert _index(image_folder, idx) == 0
    (tmp_path / "alias").symlink_to(idx)
    w = MapWriter(tmp_path / "alias")
    assert _index(image_folder, idx) == 2 and "another vprkit process is writing it" in capsys.readouterr().err
    with pytest.raises(growing.LockedError):
        MapWriter(idx)
    w.close()
    assert (tmp_path / ".idx.lock").exists()


def test_compacting_a_rescored_index_rewrites_its_exact_descriptors(tmp_path):
    """A compressed index re-scored with stored descriptors (`--memory-budget`): after removals renumber the ids,
    the stored descriptors must follow, or the re-scoring would score other images."""
    idx, live = make_index(tmp_path)
    manifest = faiss_index.read_manifest(idx)
    manifest["index"] = {"rescore": True, "shortlist": 4, "on_disk": False}
    (idx / "manifest.json").write_text(__import__("json").dumps(manifest))
    np.save(idx / large.DESCRIPTORS_FILE, np.stack(list(live.values())).astype(np.float16))
    w = MapWriter(idx, compact_every=0)
    for name in ("m0.jpg", "m3.jpg"):
        w.remove(name)
        del live[name]
    live["x.jpg"] = _unit(np.random.default_rng(8).normal(size=(1, 8)))[0]
    w.add("x.jpg", live["x.jpg"], b"x")
    w.compact()
    w.close()
    mi = faiss_index.load(idx)
    names = mi.live_names()
    np.testing.assert_allclose(np.asarray(mi.full, dtype=np.float32), np.stack([live[n] for n in names]), atol=1e-3)
    q = _unit(np.random.default_rng(9).normal(size=(3, 8)))
    assert [[mi.names[i] for i in row] for row in mi.search(q, 2)[1]] == [brute(live, x, 2) for x in q]


class _Killed(BaseException):
    """A kill -9 at a chosen step: nothing after it runs, no handler catches it."""


@pytest.mark.parametrize("step", ["_point_current", "_finish_compaction"], ids=["before-commit", "after-commit"])
def test_a_compaction_killed_before_or_after_its_commit_leaves_a_whole_map(tmp_path, monkeypatch, step):
    idx, live = make_index(tmp_path)
    w = MapWriter(idx, compact_every=0)
    live["x.jpg"] = _unit(np.random.default_rng(10).normal(size=(1, 8)))[0]
    w.add("x.jpg", live["x.jpg"], b"x")
    w.remove("m2.jpg")
    del live["m2.jpg"]

    def killed(*_):
        raise _Killed

    monkeypatch.setattr(growing, step, killed)
    with pytest.raises(_Killed):
        w.compact()
    os.close(w._lock_fd)
    monkeypatch.undo()
    q = _unit(np.random.default_rng(11).normal(size=(3, 8)))
    for mi in (faiss_index.load(idx), _reopened(idx)):  # a reader right after the kill, then a restarted writer
        assert sorted(mi.live_names()) == sorted(live)
        assert [[mi.names[i] for i in row] for row in mi.search(q, 3)[1]] == [brute(live, x, 3) for x in q]
    gens = sorted(p.name for p in (idx / "generations").iterdir())
    assert gens == ([] if step == "_point_current" else ["000001"])  # leftovers removed by the restarted writer
    assert (idx / "manifest.json").is_symlink() == (step != "_point_current")
