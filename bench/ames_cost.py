"""What does AMES cost per map image (bytes of local data) and per query (re-ranking the top 100)?

Stores written the way `vprkit rerank --method ames` writes them (fp16 [N, K, 5 + 384] local features
and packed 128-bit codes + a count per image), read back by the same functions; the authors' AMES
architecture (5 layers, 2 heads, model dim 128, feed-forward 1024) with random weights (speed does
not depend on the weights). Also: how many code bits flip when every map descriptor is scaled by 3
(the authors' binarizer normalises first and has no bias: none should).

    .venv/bin/python bench/ames_cost.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from common import machine

from vprkit.features import local
from vprkit.models.ames import AMES
from vprkit.rerank.ames import score_candidates

DIM = 384  # DINOv2 ViT-S/14


def _store(path: Path, n: int, k: int, rng: np.random.Generator) -> Path:
    """A local-feature file of n images with k descriptors each (every image full)."""
    rows = np.zeros((n, k, local.META + DIM), dtype=np.float16)  # mask 0: every row a real descriptor
    rows[..., local.META:] = rng.normal(size=(n, k, DIM))
    with h5py.File(path, "w") as f:
        f.create_dataset(local.DATASET, data=rows)
        f.create_dataset("names", data=np.array([f"{i}" for i in range(n)], dtype=object),
                         dtype=h5py.string_dtype())
    return path


def _bytes_per_image(path: Path, keys: tuple[str, ...], n: int) -> float:
    with h5py.File(path, "r") as f:
        return sum(f[k].id.get_storage_size() for k in keys) / n


def _bit_flips(binarizer, path: Path, scale: float = 3.0) -> float:
    """Share of code bits that change when the stored descriptors are multiplied by `scale`."""
    desc, _ = local.split(local.read_rows(path))
    with torch.no_grad():
        return float((binarizer(desc) != binarizer(scale * desc)).float().mean())


def _ms_per_query(model: AMES, q: np.ndarray, read_map, n_cand: int, queries: int) -> float:
    qd, qv = local.split(q)
    cand = np.arange(n_cand)
    score_candidates(model, qd[0], qv[0], read_map, cand[:2])  # warm-up
    t = time.perf_counter()
    for i in range(queries):
        score_candidates(model, qd[i], qv[i], read_map, cand)
    return 1000 * (time.perf_counter() - t) / queries


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queries", type=int, default=3, help="queries timed per setting")
    p.add_argument("--budgets", default="600/100,600/50,64/32", help="query/map descriptors per image")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    fp_model, bin_model = AMES(input_dim=DIM).eval(), AMES(input_dim=DIM, bits=128).eval()
    print(f"machine: {machine()}")
    print("| query / map descriptors | fp16 bytes per map image | binary bytes per map image | fp16 / binary "
          "| fp ms per query (top 100) | binary ms per query (top 100) |\n|---|---|---|---|---|---|")
    flips = []
    with tempfile.TemporaryDirectory() as tmp:
        for budget in args.budgets.split(","):
            kq, km = map(int, budget.split("/"))
            m_path = _store(Path(tmp) / f"map{km}.h5", 100, km, rng)
            codes = local.write_codes(m_path, Path(tmp) / f"codes{km}.h5", bin_model.binarizer)
            fp_b = _bytes_per_image(m_path, (local.DATASET,), 100)
            bin_b = _bytes_per_image(codes, ("codes", "count"), 100)
            q = local.read_rows(_store(Path(tmp) / f"q{kq}.h5", args.queries, kq, rng))
            fp_ms = _ms_per_query(fp_model, q, lambda r, m=m_path: local.split(local.read_rows(m, r)), 100,
                                  args.queries)
            bin_ms = _ms_per_query(bin_model, q, lambda r, c=codes: local.read_codes(c, r), 100, args.queries)
            print(f"| {kq} / {km} | {fp_b:,.0f} | {bin_b:,.0f} | {fp_b / bin_b:.1f}x | {fp_ms:,.0f} | {bin_ms:,.0f} |")
            flips.append(_bit_flips(bin_model.binarizer, m_path))
    print(f"code bits flipped by scaling every map descriptor by 3: {max(flips):.4%}")


if __name__ == "__main__":
    main()
