"""Extraction, index and query end to end with a tiny backbone: resumability, refusal, bad files."""

import h5py
import numpy as np
import pytest
from conftest import assert_top_k
from report_helpers import read_report_data

from vprkit import api, results
from vprkit.data.groundtruth import load_ground_truth
from vprkit.features import extract, h5io
from vprkit.index import faiss_index
from vprkit.results import read_results


def _conf(**kw):
    return extract.CONFIG.resolve("mobilenetv2-gem", batch_size=4, **kw)


def _dump(path):
    with h5py.File(path, "r") as f:
        out = {}
        f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
        return out


def test_interrupted_extraction_resumes_to_identical_file(tiny_backbone, image_folder, tmp_path, monkeypatch):
    full = tmp_path / "full.h5"
    extract.main(_conf(), image_folder, full)
    part = tmp_path / "part.h5"
    real_write, calls = h5io.write_batch, []

    def crash_after_two(*args, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        real_write(*args, **kw)

    monkeypatch.setattr(h5io, "write_batch", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        extract.main(_conf(), image_folder, part)
    assert len(h5io.finished_names(part)) == 8  # two batches of 4 survived
    monkeypatch.setattr(h5io, "write_batch", real_write)
    extract.main(_conf(), image_folder, part)
    a, b = _dump(full), _dump(part)
    assert a.keys() == b.keys() and len(a) == 12
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_bad_files_are_skipped_and_counted(tiny_backbone, image_folder, tmp_path, caplog):
    (image_folder / "zero.jpg").write_bytes(b"")
    (image_folder / "junk.png").write_bytes(b"hello")
    names = extract.main(_conf(), image_folder, tmp_path / "f.h5")
    assert len(names) == 12 and "zero.jpg" not in names
    assert "2 of 14 images could not be read" in caplog.text and "junk.png" in caplog.text


def test_index_query_and_model_refusal(tiny_backbone, image_folder, tmp_path):
    out = api.index_map(image_folder, tmp_path / "idx", preset="mobilenetv2-gem", batch_size=4)
    mi = faiss_index.load(out)
    assert mi.manifest["names"] == sorted(mi.names) and mi.index.ntotal == 12
    assert not (tmp_path / ".idx.work").exists()
    # Querying the map with itself: each image is its own nearest neighbour.
    gt = tmp_path / "pos.txt"
    gt.write_text("".join(f"{n} {n}\n" for n in mi.names))
    res = read_results(api.localize(out, image_folder, tmp_path / "res", top_k=3, gt=str(gt)))
    assert res["metrics"]["R@1"] == 1.0
    data = read_report_data(tmp_path / "res" / "report.html")
    assert len(data["queries"]) == 12 and data["counts"]["right"] == 12
    pairs = (tmp_path / "res" / "pairs-top3.txt").read_text().splitlines()
    assert len(pairs) == 36 and pairs[0].split()[0] == pairs[0].split()[1]
    with pytest.raises(ValueError, match="built with preset 'mobilenetv2-gem'"):
        api.localize(out, image_folder, preset="dinov2-vlad")


def test_chunked_search_equals_exact_numpy():
    rng = np.random.default_rng(0)
    db = rng.normal(size=(500, 16)).astype(np.float32)
    q = rng.normal(size=(37, 16)).astype(np.float32)
    mi = faiss_index.MapIndex(faiss_index.build(db), {"names": []})
    scores, ids = mi.search(q, 5, chunk=8)
    assert_top_k(ids, q @ db.T)
    np.testing.assert_allclose(scores, np.take_along_axis(q @ db.T, ids, 1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="expects dimension 16"):
        mi.search(q[:, :4], 5)


def test_not_an_index(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a vprkit index"):
        faiss_index.load(tmp_path)


def test_ivf_with_all_lists_probed_equals_exact():
    rng = np.random.default_rng(1)
    db = rng.normal(size=(400, 8)).astype(np.float32)
    q = rng.normal(size=(20, 8)).astype(np.float32)
    ivf = faiss_index.MapIndex(faiss_index.build(db, "IVF4,Flat"), {"names": []})
    _, ids = ivf.search(q, 3, nprobe=4)
    assert_top_k(ids, q @ db.T)


def test_report_map_from_positions_csv_or_names(tiny_backbone, image_folder, tmp_path):
    out = api.index_map(image_folder, tmp_path / "idx", preset="mobilenetv2-gem", batch_size=4)
    names = faiss_index.load(out).names
    csv = tmp_path / "pos.csv"
    csv.write_text("name,easting,northing\n" + "".join(f"{n},{100 * i},{-7 * i}\n" for i, n in enumerate(names)))
    truth = load_ground_truth(str(csv), names[:3], names)
    q_pos, m_pos = results.report_positions({"names": names, "positions": None}, names[:3], truth)
    np.testing.assert_array_equal(q_pos, [[0, 0], [100, -7], [200, -14]])
    assert m_pos.shape == (12, 2) and m_pos[11].tolist() == [1100, -77]
    utm = ["@5.5@-2@a.jpg", "@7@8@b.jpg"]
    q_pos, m_pos = results.report_positions({"names": utm, "positions": [[5.5, -2.0], [7.0, 8.0]]}, utm[::-1], None)
    assert q_pos.tolist() == [[7, 8], [5.5, -2]] and m_pos.tolist() == [[5.5, -2], [7, 8]]
    sequence = load_ground_truth("sequence", names, names)  # frame numbers: no map to draw
    assert results.report_positions({"names": names, "positions": None}, names, sequence) == (None, None)
    api.localize(out, image_folder, top_k=3, gt=str(csv), out_dir=tmp_path / "res")
    data = read_report_data(tmp_path / "res" / "report.html")
    assert "map.svg" in [p["src"] for p in data["plots"]] and (tmp_path / "res" / "report_files" / "map.svg").is_file()
