"""Large-map index: choice from a memory budget, chunked in-RAM and on-disk builds, exact re-scoring."""

import numpy as np
import pytest
from conftest import assert_top_k

from vprkit.index import large


def _data(n=1500, d=32, nq=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    truth = rng.choice(n, nq, replace=False)
    q = x[truth] + 0.05 * rng.normal(size=(nq, d)).astype(np.float32)  # near-copies: unambiguous top-1
    return x, q, truth


def test_parse_bytes():
    assert large.parse_bytes("2GB") == 2 * 2**30
    assert large.parse_bytes("512M") == 512 * 2**20
    assert large.parse_bytes("1.5g") == int(1.5 * 2**30)
    assert large.parse_bytes("1000") == 1000
    with pytest.raises(ValueError, match="memory budget"):
        large.parse_bytes("lots")


def test_choose_follows_the_budget():
    # 1000 x 256 float32 = 1 MB: exact within 4 MB
    assert large.choose(1000, 256, 4 * 2**20).factory == "Flat"
    assert "too few" in large.choose(5000, 4096, 1000).reason  # compressed needs thousands to train
    # 10M x 256: 9.5 GiB float32; SQ8 codes + ids = 264 bytes each = 2.5 GiB: on disk under 2 GB, in RAM under 8 GB
    disk = large.choose(10_000_000, 256, 2 * 2**30)
    assert disk.factory.startswith("IVF") and "HNSW32" in disk.factory and disk.factory.endswith("SQ8")
    assert disk.on_disk and disk.rescore
    assert not large.choose(10_000_000, 256, 8 * 2**30).on_disk
    small = large.choose(200_000, 96, 10 * 2**20)  # 200k: flat quantizer, ~sqrt(n) lists
    assert small.factory == "IVF512,SQ8" and small.nprobe == 64


def test_rescore_orders_the_shortlist_by_exact_inner_product():
    full = np.array([[1, 0], [0, 1], [0.6, 0.8]], dtype=np.float16)
    q = np.array([[0.8, 0.6]], dtype=np.float32)
    scores, ids = large.rescore(q, np.array([[1, 0, -1, 2]]), full, 3)
    assert ids.tolist() == [[2, 0, 1]]  # 0.96, 0.8, 0.6
    np.testing.assert_allclose(scores[0], [0.96, 0.8, 0.6], atol=1e-3)


@pytest.mark.parametrize("on_disk", [False, True])
def test_chunked_build_with_rescoring_finds_the_exact_top1(tmp_path, on_disk):
    x, q, truth = _data()
    choice = large.IndexChoice("IVF16,PQ8x4", on_disk, 16, True, "test")
    chunks = (x[s:s + 400] for s in range(0, len(x), 400))
    index = large.build_chunked(chunks, len(x), x.shape[1], choice, tmp_path, x[:1000])
    if on_disk:
        assert index is None and (tmp_path / large.IVFDATA_FILE).is_file()
        moved = tmp_path.parent / (tmp_path.name + "-moved")
        tmp_path.rename(moved)  # the lists are found beside the index wherever the folder goes
        index = large.read(moved / "index.faiss", on_disk=True)
        tmp_path = moved
    full = large.descriptors(tmp_path)
    np.testing.assert_array_equal(full, x.astype(np.float16))
    large.set_nprobe(index, 16)
    _, short = index.search(q, 50)
    _, ids = large.rescore(q, short, full, 1)
    assert (ids[:, 0] == truth).all()
    assert large.expected_recall(index, full, nprobe=16, samples=200) > 0.9


def test_index_with_memory_budget_on_disk_queries_like_exact(tiny_backbone, image_folder, tmp_path, monkeypatch):
    from vprkit import api
    from vprkit.index import faiss_index

    exact = api.index_map(image_folder, tmp_path / "exact", preset="mobilenetv2-gem", batch_size=4)
    # 12 images are too few for a real compressed index: force a tiny one, inverted lists on disk
    monkeypatch.setattr(large, "choose", lambda n, d, b: large.IndexChoice("IVF1,PQ4x2", True, 1, True, "test"))
    monkeypatch.setattr(large, "train_size", lambda choice, n: n)
    built = api.index_map(image_folder, tmp_path / "small", preset="mobilenetv2-gem", batch_size=4,
                          memory_budget="1KB")
    moved = built.rename(tmp_path / "moved")  # on-disk lists are found beside the index
    mi, ref = faiss_index.load(moved), faiss_index.load(exact)
    assert mi.manifest["index"]["factory"] == "IVF1,PQ4x2" and mi.manifest["index"]["on_disk"]
    assert 0 <= mi.manifest["index"]["expected_recall_at_1"] <= 1
    q = large.descriptors(moved)[:5].astype(np.float32) + 0.01
    # the shortlist covers the whole tiny map, so re-scored results are the exact ones (fp16 descriptors)
    s_small, i_small = mi.search(q, 3)
    s_ref, _ = ref.search(q, 3)
    np.testing.assert_allclose(s_small, s_ref, atol=2e-3)
    full = np.stack([ref.index.reconstruct(i) for i in range(ref.index.ntotal)])
    assert_top_k(i_small, q @ full.T, atol=2e-3)  # fp16 storage: near-ties within its rounding may swap


def _lists(index) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids, codes) of every inverted list of an IVF index, in stored order."""
    import faiss

    lists = faiss.extract_index_ivf(index).invlists
    out = []
    for j in range(lists.nlist):
        n = lists.list_size(j)
        ids = faiss.rev_swig_ptr(lists.get_ids(j), n).copy() if n else np.empty(0, np.int64)
        codes = faiss.rev_swig_ptr(lists.get_codes(j), n * lists.code_size).copy() if n else np.empty(0, np.uint8)
        out.append((ids, codes))
    return out


def _plain_copy(index_path, x: np.ndarray):
    """The same trained index with all of `x` added at once into ordinary in-RAM lists (the reference)."""
    import faiss

    ref = large.read(index_path, on_disk=True)
    ivf = faiss.extract_index_ivf(ref)
    lists = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.replace_invlists(lists, True)
    lists.this.disown()  # the index owns it now
    ivf.ntotal = ref.ntotal = 0
    ref.add(x)
    return ref


@pytest.mark.parametrize("factory", ["IVF512,SQ8", "IVF8,PQ8x4"])  # 512 lists: list metadata past a few KiB
def test_streamed_on_disk_build_equals_a_plain_faiss_index(tmp_path, factory):
    x, q, _ = _data(n=23000)
    choice = large.IndexChoice(factory, True, 4, True, "test")
    chunks = (x[s:s + 6000] for s in range(0, len(x), 6000))  # uneven last chunk
    assert large.build_chunked(chunks, len(x), x.shape[1], choice, tmp_path, x[:20000]) is None
    disk = large.read(tmp_path / "index.faiss", on_disk=True)
    ref = _plain_copy(tmp_path / "index.faiss", x)
    code_size = faiss_code_size(disk)
    assert (tmp_path / large.IVFDATA_FILE).stat().st_size == len(x) * (code_size + 8)
    assert disk.ntotal == len(x) and not list(tmp_path.glob("tmp*"))  # block files removed
    for (ids_d, codes_d), (ids_r, codes_r) in zip(_lists(disk), _lists(ref)):
        np.testing.assert_array_equal(ids_d, ids_r)  # same lists, same order
        np.testing.assert_array_equal(codes_d, codes_r)  # same bytes
    large.set_nprobe(disk, 4)
    large.set_nprobe(ref, 4)
    s_d, i_d = disk.search(q, 10)
    s_r, i_r = ref.search(q, 10)
    np.testing.assert_array_equal(i_d, i_r)
    np.testing.assert_allclose(s_d, s_r, rtol=1e-6)


def faiss_code_size(index) -> int:
    import faiss

    return faiss.extract_index_ivf(index).invlists.code_size


def test_appending_to_a_streamed_on_disk_index_keeps_its_lists(tmp_path):
    x, _, _ = _data(n=1200)
    choice = large.IndexChoice("IVF8,SQ8", True, 8, True, "test")
    large.build_chunked([x[:700], x[700:1000]], 1000, x.shape[1], choice, tmp_path, x[:1000])
    ref = _plain_copy(tmp_path / "index.faiss", x)
    disk = large.read(tmp_path / "index.faiss", on_disk=True)
    disk.add(x[1000:])  # the growing map: the lists must move, not be overwritten
    for (ids_d, codes_d), (ids_r, codes_r) in zip(_lists(disk), _lists(ref)):
        np.testing.assert_array_equal(ids_d, ids_r)
        np.testing.assert_array_equal(codes_d, codes_r)


def test_bounded_writer_writes_every_byte(tmp_path):
    data = np.arange(1000, dtype=np.float16)
    with large.BoundedWriter(tmp_path / "f.bin", window=100) as out:  # syncs every 100 bytes
        out.write(b"head")
        out.write(data)
        out.write(memoryview(data.view(np.uint8))[10:30])
    raw = (tmp_path / "f.bin").read_bytes()
    assert raw == b"head" + data.tobytes() + data.tobytes()[10:30]
