"""A growing index: journal records, masked removals, compaction and crash leftovers, against numpy."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vprkit.features import h5io
from vprkit.index import faiss_index, journal
from vprkit.index.growing import LockedError, MapWriter, check_name
from vprkit.results import read_results


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_index(root: Path, n: int = 6, dim: int = 8, seed: int = 0) -> tuple[Path, dict]:
    """A saved Flat index of n random unit descriptors named m0..m{n-1}.jpg, with positions (i, 0)."""
    desc = _unit(np.random.default_rng(seed).normal(size=(n, dim)))
    names = [f"m{i}.jpg" for i in range(n)]
    feats = root / "work.h5"
    h5io.write_batch(feats, {nm: {"global": d} for nm, d in zip(names, desc)}, {"model_key": "k"})
    manifest = {"conf": {"fp16": False}, "factory": "Flat", "map_dir": str(root / "map"), "names": names,
                "positions": [[float(i), 0.0] for i in range(n)], "dim": dim}
    out = faiss_index.save(root / "idx", faiss_index.build(desc), manifest, {"map_features.h5": feats})
    return out, dict(zip(names, desc))


def brute(live: dict, q: np.ndarray, k: int) -> list[str]:
    names = list(live)
    sims = np.stack([live[n] for n in names]) @ q
    return [names[i] for i in np.argsort(-sims, kind="stable")[:k]]


def test_journal_stops_at_a_torn_tail_and_the_writer_cuts_it(tmp_path):
    recs = [{"op": "add", "name": "a.jpg", "desc": journal.desc_to_text(np.arange(3.0))}, {"op": "remove", "name": "a"}]
    good = b"".join(journal.encode(r) for r in recs)
    (tmp_path / journal.JOURNAL_FILE).write_bytes(good + journal.encode({"op": "remove", "name": "b"})[:-7])
    got, length = journal.read(tmp_path)
    assert got == recs and length == len(good)
    assert journal.desc_from_text(got[0]["desc"]).tolist() == [0.0, 1.0, 2.0]
    flipped = bytearray(good)
    flipped[-3] ^= 1  # a corrupted byte inside the second record: its checksum fails
    (tmp_path / journal.JOURNAL_FILE).write_bytes(bytes(flipped))
    assert journal.read(tmp_path)[0] == recs[:1]
    j = journal.Journal(tmp_path)  # a writer reopening the log drops the bad tail before appending
    j.append({"op": "remove", "name": "c"})
    j.close()
    assert [r["name"] for r in journal.read(tmp_path)[0]] == ["a.jpg", "c"]


def test_additions_and_removals_search_like_brute_force_before_and_after_compaction(tmp_path):
    idx, live = make_index(tmp_path)
    rng = np.random.default_rng(1)
    w = MapWriter(idx, compact_every=0)
    new = _unit(rng.normal(size=(4, 8)))
    for i, d in enumerate(new[:3]):
        w.add(f"new/{i}.jpg", d, f"bytes{i}".encode(), [10.0 + i, 5.0] if i != 1 else None)
        live[f"new/{i}.jpg"] = d
    assert w.remove("m2.jpg") and not w.remove("m2.jpg")
    del live["m2.jpg"]
    w.add("m4.jpg", new[3], b"replacement")  # re-adding a live name replaces it
    live["m4.jpg"] = new[3]
    queries = _unit(rng.normal(size=(5, 8)))

    def check(mi):
        assert sorted(mi.live_names()) == sorted(live)
        _, ids = mi.search(queries, 4)
        for q, row in zip(queries, ids):
            got = [mi.names[i] for i in row]
            assert set(got) == set(brute(live, q, 4))

    check(w.map)
    check(faiss_index.load(idx))  # another process (a `vprkit query`) sees the same map via the journal
    mi = faiss_index.load(idx)
    assert mi.position(mi.ids["new/0.jpg"]) == [10.0, 5.0] and mi.position(mi.ids["new/1.jpg"]) is None
    assert mi.image_path("new/2.jpg").read_bytes() == b"bytes2"
    assert mi.image_path("m0.jpg") == tmp_path / "map" / "m0.jpg"
    w.compact()
    assert journal.read(idx)[0] == [] and not w.map.deleted  # folded in: nothing left to replay or mask
    check(w.map)
    check(faiss_index.load(idx))
    assert sorted(h5io.finished_names(idx / "map_features.h5")) == sorted(live)
    assert sorted(p.read_bytes() for p in (idx / "images").iterdir()) == [b"bytes0", b"bytes1", b"bytes2",
                                                                           b"replacement"]
    w.close()


def test_replaced_and_removed_images_leave_their_bytes_out_of_the_compacted_folder(tmp_path):
    idx, _ = make_index(tmp_path)
    w = MapWriter(idx, compact_every=0)
    d = _unit(np.ones((1, 8)))[0]
    w.add("x.jpg", d, b"first")
    w.add("x.jpg", d, b"second")
    w.add("y.jpg", d, b"gone")
    w.remove("y.jpg")
    w.compact()
    assert sorted(p.read_bytes() for p in (idx / "images").iterdir()) == [b"second"]
    w.close()


def test_one_writer_at_a_time_and_crash_leftovers_are_ignored(tmp_path, capsys):
    from vprkit import cli

    idx, live = make_index(tmp_path)
    w = MapWriter(idx)
    with pytest.raises(LockedError, match="another process"):
        MapWriter(idx)
    assert cli.main(["serve", str(idx)]) == 1 and "being written by another process" in capsys.readouterr().err
    w.close()
    leftover = idx / "generations" / ".000001.new"  # a compaction killed before its commit
    leftover.mkdir(parents=True)
    (leftover / "manifest.json").write_text("{half")
    (idx / "generations" / "000001").mkdir()  # ... or after it renamed its generation, before the switch
    w = MapWriter(idx)
    assert not any((idx / "generations").iterdir()) and sorted(w.map.live_names()) == sorted(live)
    w.close()


@pytest.mark.parametrize("name", ["../x.jpg", "/etc/passwd", "a/../b.jpg", "a//b", "", "x" * 201, "a/./b", "a\tb.jpg",
                                  "a\nb.jpg", "a\x00b.jpg", "a\u2028b.jpg"])
def test_client_names_that_could_escape_or_confuse_paths_are_refused(name):
    with pytest.raises(ValueError, match="invalid image name"):
        check_name(name)


def test_names_index_accepts_pass_spaces_and_any_script_included():
    """A name is a key (the bytes are stored under their hash), so every name `vprkit index` lists is accepted."""
    for name in ["a.jpg", "street/0001@5.2@-3@.png", "x_y-z+1,2=3.webp", "a b.jpg", "café/東京 1.jpg", ".hidden.jpg",
                 "a\\b.jpg"]:
        assert check_name(name) == name


def test_append_takes_names_with_spaces_and_unicode(tmp_path, tiny_backbone):
    """`index --append` used to refuse a whole folder for one such name (issue 25): they are indexed and found."""
    from PIL import Image

    from vprkit import api

    src, more = tmp_path / "map", tmp_path / "more"
    for folder, names in ((src, ["a.png", "b.png"]), (more, ["a.png", "b.png", "c d.png", "é/東京.png"])):
        for i, name in enumerate(names):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 24), (40 * i, 255 - 50 * i, 90)).save(folder / name)
    idx = api.index_map(src, tmp_path / "idx", "dinov2-gem")
    added = api.append_map(more, idx)
    assert sorted(added) == ["c d.png", "é/東京.png"]
    hits = api.search(idx, api.describe([Image.open(more / "é/東京.png").convert("RGB")], api.model(idx)), top_k=1)
    assert hits.names[0][0] == "é/東京.png"


def test_kill_during_writes_keeps_every_acknowledged_addition(tmp_path):
    """A child process adds images (compacting every 3) and prints each name once `add` returned; it is
    killed with SIGKILL mid-way. Every printed name must be in the index, which must load."""
    idx, live = make_index(tmp_path, n=4)
    code = f"""
import sys, numpy as np
from vprkit.index.growing import MapWriter
w = MapWriter({str(idx)!r}, compact_every=3)
rng = np.random.default_rng(7)
for i in range(10000):
    d = rng.normal(size=8).astype(np.float32)
    w.add(f"k/{{i}}.jpg", d / np.linalg.norm(d), b"img%d" % i)
    print(i, flush=True)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    acked = []
    for line in proc.stdout:
        acked.append(int(line))
        if len(acked) == 40:
            os.kill(proc.pid, 9)
            break
    proc.wait()
    acked += [int(x) for x in proc.stdout.read().split()]
    mi = faiss_index.load(idx)
    assert {f"k/{i}.jpg" for i in acked} <= set(mi.live_names())
    rng = np.random.default_rng(7)
    for i in range(max(acked) + 1):  # each acknowledged descriptor is found as its own best match
        d = rng.normal(size=8).astype(np.float32)
        _, ids = mi.search((d / np.linalg.norm(d))[None], 1)
        assert mi.names[ids[0, 0]] == f"k/{i}.jpg"
    MapWriter(idx).close()  # and a writer can open it again


def test_cli_append_adds_only_new_images_which_then_find_themselves(tiny_backbone, image_folder, tmp_path):
    import shutil

    from vprkit import api, cli

    first = tmp_path / "first"
    (first / "sub").mkdir(parents=True)
    names = sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.png"))
    for n in names[:8]:
        shutil.copy(image_folder / n, first / n)
    idx = api.index_map(first, tmp_path / "idx", preset="mobilenetv2-gem", batch_size=4)
    assert cli.main(["index", str(image_folder), "-o", str(idx), "--append"]) == 0
    mi = faiss_index.load(idx)
    assert sorted(mi.live_names()) == names and journal.read(idx)[0] == []  # compacted at the end
    res = read_results(api.localize(idx, image_folder, tmp_path / "res", top_k=1))
    top1 = [line.split() for line in (tmp_path / "res" / "predictions.txt").read_text().splitlines()[1:]]
    assert res["num_map"] == 12 and all(q == m for q, _, m, _ in top1)
    assert mi.image_path(names[-1]).read_bytes() == (image_folder / names[-1]).read_bytes()
    assert cli.main(["index", str(image_folder), "-o", str(idx), "--append"]) == 0  # nothing new: no change
    assert faiss_index.load(idx).live_names() == mi.live_names()
