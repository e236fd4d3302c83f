"""Indexes for maps that do not fit in RAM: choice from a memory budget, chunked build, on-disk lists, re-scoring.

- `choose`: exact search while the float32 map fits in half the budget; else IVF with 8-bit scalar codes (an HNSW
  coarse quantizer past 1M vectors, so assigning codes stays fast), with codes in RAM when they fit in half the
  budget and inverted lists on disk (memory-mapped at query time) otherwise. 8-bit codes, not product
  quantization: on Nordland queries among 300k distractors the exact top-1 is in the top 1000 of IVF-SQ8 for
  100 % of queries, of PQ32 61 %, PQ64 80 %, OPQ64 93 %, PQ96 98 % (docs/scale.md). As autofaiss does, but
  recorded in the manifest with the reason.
- `build_chunked`: trains on a bounded sample, then adds codes chunk by chunk, so memory is bounded by one chunk
  plus the codes, or, on disk, by one chunk and the training sample: each chunk's codes go to a block file, merged
  list by list into FAISS' on-disk layout with sequential writes; every file is written through a bounded window
  of dirty pages (`BoundedWriter`), so a memory limit that counts page cache (a cgroup) holds too.
- Full descriptors are kept beside the index as a float16 `.npy` (memory-mapped), and `rescore` re-ranks the
  compressed shortlist with exact inner products: compressed search with exact ranking quality.
- `expected_recall`: agreement of the compressed + re-scored top-1 with exact search for a sample of map
  vectors used as queries (their own entry excluded), measured at build time.
"""

from __future__ import annotations

import math
import mmap
import os
import re
import tempfile
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from .layout import DESCRIPTORS_FILE, INDEX_FILE, IVFDATA_FILE

FLAT_LIMIT = 1_000_000  # past this many vectors the coarse quantizer is an HNSW graph
SHORTLIST = 1000  # compressed candidates re-scored exactly per query
CHUNK = 100_000  # vectors added per step while building
WRITE_WINDOW = 64 * 2**20  # bytes written to a file between flushes to disk while building
MIN_COMPRESSED = 10_000  # below this a map is searched exactly (PQ training needs thousands of vectors)
_UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "M": 2**20, "MB": 2**20, "G": 2**30, "GB": 2**30, "T": 2**40,
          "TB": 2**40}


@dataclass
class IndexChoice:
    """What `choose` picked and why (stored in the manifest)."""

    factory: str
    on_disk: bool
    nprobe: int
    rescore: bool
    reason: str


def parse_bytes(text: str) -> int:
    """'2GB', '512M', '1.5G', '1000000' -> bytes (binary units)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?B?)\s*", text.upper())
    if not m:
        raise ValueError(f"memory budget {text!r}: expected a size such as 2GB, 512MB or 1000000")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def train_size(choice: IndexChoice, n: int) -> int:
    """Training sample size: 64 vectors per inverted list (FAISS asks for >= 39), at most n."""
    m = re.match(r"IVF(\d+)", choice.factory)
    return min(n, 64 * int(m.group(1))) if m else 0


def choose(n: int, dim: int, budget: int) -> IndexChoice:
    """The index for `n` vectors of `dim` floats within `budget` bytes of RAM (half of it for the index)."""
    flat = n * dim * 4
    if n < MIN_COMPRESSED:
        return IndexChoice("Flat", False, 1, False, f"exact: {n} vectors are too few to train a compressed index "
                                                    f"(needs {MIN_COMPRESSED}); {flat / 2**20:.0f} MiB float32")
    if flat <= budget // 2:
        return IndexChoice("Flat", False, 1, False, f"exact: {n} x {dim} float32 = {flat / 2**20:.0f} MiB fits in "
                                                    f"half the budget ({budget / 2**20:.0f} MiB)")
    nlist = 2 ** int(round(math.log2(max(math.sqrt(n), 64))))  # ~sqrt(n) lists: training stays minutes at 10M
    nlist = max(1, min(nlist, n // 39))  # FAISS wants >= 39 training vectors per list
    quantizer = f"IVF{nlist}_HNSW32" if n > FLAT_LIMIT else f"IVF{nlist}"
    codes = n * (dim + 8)  # 8-bit scalar code per dimension + 64-bit id per vector
    on_disk = codes > budget // 2
    where = "inverted lists on disk (memory-mapped)" if on_disk else "codes in RAM"
    return IndexChoice(f"{quantizer},SQ8", on_disk, max(16, nlist // 8), True,
                       f"compressed: float32 ({flat / 2**20:.0f} MiB) exceeds half the budget "
                       f"({budget / 2**20:.0f} MiB); SQ8 codes + ids = {codes / 2**20:.0f} MiB, {where}; "
                       "shortlist re-scored with exact descriptors")


def _train(choice: IndexChoice, dim: int, sample: np.ndarray) -> faiss.Index:
    """The empty index of `choice`, trained on `sample` when it needs training (an exact one needs no sample)."""
    index = faiss.index_factory(dim, choice.factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index


def build_chunked(chunks: Iterable[np.ndarray], n: int, dim: int, choice: IndexChoice, out_dir: Path,
                  sample: np.ndarray) -> faiss.Index | None:
    """Train on `sample`, add `chunks` (float32 rows, n in all) and write `descriptors.npy` (float16) into out_dir.

    Returns the index in RAM, or None when it was written on disk (`index.faiss` + `index.ivfdata` in out_dir).
    On disk, memory is bounded by one chunk and the training sample whatever n is: each chunk's codes go to its
    own block file, and the blocks are merged list by list into `index.ivfdata` (`merge_blocks`).
    """
    out_dir = Path(out_dir)
    trained = _train(choice, dim, sample)
    del sample  # freed here when the caller passed it without keeping a reference (api, bench/scale.py)
    start = 0
    with BoundedWriter(out_dir / DESCRIPTORS_FILE) as full, tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        np.lib.format.write_array_header_1_0(full, {"descr": np.dtype(np.float16).str, "fortran_order": False,
                                                    "shape": (n, dim)})
        blocks = []
        for i, chunk in enumerate(chunks):
            x = np.ascontiguousarray(chunk, dtype=np.float32)
            if choice.on_disk:
                blocks.append(write_block(trained, x, start, Path(tmp) / f"block{i}.bin"))
            else:
                trained.add(x)
            full.write(x.astype(np.float16))
            start += len(x)
            del chunk, x  # before the next chunk is made
        _check_count(start, n)
        if not choice.on_disk:
            return trained
        merge_blocks(trained, blocks, out_dir / IVFDATA_FILE)
    faiss.write_index(trained, str(out_dir / INDEX_FILE))
    return None


def _check_count(added: int, n: int) -> None:
    if added != n:
        raise ValueError(f"the descriptor chunks held {added} vectors, expected {n}")


class BoundedWriter:
    """A file written sequentially whose written pages are flushed to disk and dropped from the page cache every
    `window` bytes. A memory limit (a container's cgroup) counts page cache, and dirty pages cannot be reclaimed
    until written back: without this a multi-GB output file could fill the limit with dirty pages."""

    def __init__(self, path: Path, window: int = WRITE_WINDOW) -> None:
        self.file = open(path, "wb", buffering=2**20)  # noqa: SIM115 (closed in close / __exit__)
        self.window, self.pending = window, 0

    def write(self, data) -> None:
        """Append bytes or any C-contiguous buffer (a numpy array, a memoryview)."""
        view = memoryview(data).cast("B")
        self.file.write(view)
        self.pending += view.nbytes
        if self.pending >= self.window:
            self.sync()

    def sync(self) -> None:
        """Write what is pending to disk and let the kernel drop the file's cached pages."""
        self.file.flush()
        os.fdatasync(self.file.fileno())
        if hasattr(os, "posix_fadvise"):  # Linux; elsewhere the page cache is left to the kernel
            os.posix_fadvise(self.file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        self.pending = 0

    def close(self) -> None:
        self.sync()
        self.file.close()

    def __enter__(self) -> BoundedWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class Block:
    """One chunk's inverted lists in a file: all codes in list order, then all ids in list order."""

    path: Path
    sizes: np.ndarray  # entries per inverted list


def write_block(trained: faiss.Index, x: np.ndarray, start: int, path: Path) -> Block:
    """Encode `x` (ids start, start+1, ...) with a copy of the trained index, as FAISS' own add does, and write
    its inverted lists to `path`; the copy is freed on return, so memory holds one chunk's codes at a time."""
    block = faiss.clone_index(trained)
    block.add_with_ids(x, np.arange(start, start + len(x), dtype=np.int64))
    lists = faiss.extract_index_ivf(block).invlists
    sizes = np.array([lists.list_size(j) for j in range(lists.nlist)], dtype=np.int64)
    codes = np.empty((len(x), lists.code_size), dtype=np.uint8)
    ids = np.empty(len(x), dtype=np.int64)
    ends = np.cumsum(sizes)
    for j in np.flatnonzero(sizes):
        a, b = ends[j] - sizes[j], ends[j]
        codes[a:b] = faiss.rev_swig_ptr(lists.get_codes(int(j)), int(sizes[j]) * lists.code_size).reshape(b - a, -1)
        ids[a:b] = faiss.rev_swig_ptr(lists.get_ids(int(j)), int(sizes[j]))
    with BoundedWriter(path) as out:
        out.write(codes)
        out.write(ids)
    return Block(path, sizes)


def merge_blocks(index: faiss.Index, blocks: list[Block], ivfdata: Path) -> None:
    """Merge the blocks into one on-disk inverted-list file that `index` then refers to.

    The file has FAISS' packed on-disk layout (as `merge_ondisk` writes it: per list, its codes then its ids), but it
    is written sequentially, list by list, reading each block through a memory map (clean pages the kernel can
    drop) and writing through a `BoundedWriter`; `merge_ondisk` instead writes through a writable memory map of the
    whole output, whose dirty pages a memory limit cannot reclaim in time.
    """
    ivf = faiss.extract_index_ivf(index)
    code_size, sizes = ivf.invlists.code_size, sum(b.sizes for b in blocks)
    with BoundedWriter(ivfdata) as out, ExitStack() as stack:
        maps = [_map(stack, b.path) for b in blocks]
        ends = [np.cumsum(b.sizes) for b in blocks]
        id_base = [int(b.sizes.sum()) * code_size for b in blocks]
        for j in range(ivf.nlist):
            for m, e, b in zip(maps, ends, blocks):
                out.write(m[(e[j] - b.sizes[j]) * code_size:e[j] * code_size])
            for m, e, b, base in zip(maps, ends, blocks, id_base):
                out.write(m[base + (e[j] - b.sizes[j]) * 8:base + e[j] * 8])
    lists = faiss.OnDiskInvertedLists(ivf.nlist, code_size, str(ivfdata))
    lists.totsize = int(sizes.sum()) * (code_size + 8)
    packed = np.ascontiguousarray(sizes, dtype=np.uint64)  # named: swig_ptr does not keep its array alive
    lists.set_all_lists_sizes(faiss.swig_ptr(packed))
    ivf.replace_invlists(lists, True)
    lists.this.disown()
    ivf.ntotal = index.ntotal = int(sizes.sum())


def _map(stack: ExitStack, path: Path) -> memoryview:
    """A read-only memory map of a whole file as bytes (closed with `stack`)."""
    f = stack.enter_context(open(path, "rb"))
    if os.path.getsize(path) == 0:
        return memoryview(b"")
    m = stack.enter_context(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
    view = memoryview(m)
    stack.callback(view.release)
    return view


def read(index_path: Path, on_disk: bool) -> faiss.Index:
    """Load an index; on-disk lists are memory-mapped from the same folder (the folder may have been moved)."""
    flags = faiss.IO_FLAG_ONDISK_SAME_DIR if on_disk else 0
    return faiss.read_index(str(index_path), flags)


def descriptors(index_dir: Path) -> np.ndarray | None:
    """The stored full descriptors, memory-mapped (None when the index has none)."""
    path = Path(index_dir) / DESCRIPTORS_FILE
    return np.load(path, mmap_mode="r") if path.is_file() else None


def rescore(queries: np.ndarray, ids: np.ndarray, full: np.ndarray, k: int, approx: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner products of each query with its shortlist `ids` (-1 = empty slot), best k first.

    Ids past the stored descriptors (images appended since the build) keep their `approx` score."""
    scores = np.full(ids.shape, -np.inf, dtype=np.float32)
    for i, (q, row) in enumerate(zip(queries, ids)):
        stored = (row >= 0) & (row < len(full))
        order = np.argsort(row[stored])  # sorted reads from the memory map
        exact = np.empty(stored.sum(), dtype=np.float32)
        exact[order] = np.asarray(full[row[stored][order]], dtype=np.float32) @ q
        scores[i, stored] = exact
        if approx is not None:
            newer = row >= len(full)
            scores[i, newer] = approx[i, newer]
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, top, 1), np.take_along_axis(ids, top, 1)


def expected_recall(index: faiss.Index, full: np.ndarray, nprobe: int, samples: int = 500, shortlist: int = 100,
                    seed: int = 0) -> float:
    """Share of sampled map vectors whose nearest *other* map vector is found by compressed search + re-scoring."""
    n = len(full)
    if n < 3:
        return 1.0
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, min(samples, n), replace=False))
    q = np.asarray(full[rows], dtype=np.float32)
    exact = _exact_top2(q, full)
    set_nprobe(index, nprobe)
    _, approx = index.search(q, min(shortlist, n))
    _, approx = rescore(q, approx, full, 2)
    truth = np.where(exact[:, 0] == rows, exact[:, 1], exact[:, 0])
    found = np.where(approx[:, 0] == rows, approx[:, 1], approx[:, 0])
    return float((found == truth).mean())


def _exact_top2(q: np.ndarray, full: np.ndarray, chunk: int = 50_000) -> np.ndarray:
    """Exact top-2 ids of each row of q over all of `full`, read chunk by chunk (bounded memory)."""
    best = np.full((len(q), 2), -np.inf, dtype=np.float32)
    ids = np.zeros((len(q), 2), dtype=np.int64)
    for s in range(0, len(full), chunk):
        sims = q @ np.asarray(full[s:s + chunk], dtype=np.float32).T
        k = min(2, sims.shape[1])
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        both_s = np.concatenate([best, np.take_along_axis(sims, top, 1)], axis=1)
        both_i = np.concatenate([ids, top + s], axis=1)
        order = np.argsort(-both_s, axis=1, kind="stable")[:, :2]
        best, ids = np.take_along_axis(both_s, order, 1), np.take_along_axis(both_i, order, 1)
    return ids


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
    """Inverted lists visited per query (no-op for indexes without lists)."""
    try:
        faiss.extract_index_ivf(index).nprobe = nprobe
    except RuntimeError:
        pass


def manifest_entry(choice: IndexChoice, recall: float, shortlist: int = SHORTLIST) -> dict:
    """The choice, its reason, the re-scored shortlist and the recall measured at build time, for the manifest."""
    return {**asdict(choice), "shortlist": shortlist if choice.rescore else 0,
            "expected_recall_at_1": round(recall, 4)}
