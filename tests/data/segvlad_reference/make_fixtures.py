"""Regenerate segvlad_reference.npz by running the original SegVLAD functions on hand-made inputs.

    python tests/data/segvlad_reference/make_fixtures.py PATH/TO/Revisit-Anything

Needs numpy, scipy, torch, faiss. The original's functions are read from its func_vpr.py by name and run
unchanged except for the device ('cuda' -> 'cpu'); nothing of them is stored here, only their outputs.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the name the original's code uses
from scipy.spatial import Delaunay

OUT = Path(__file__).with_name("segvlad_reference.npz")
FUNCS = ("getNbrsDelaunay", "nbrMasksAGGFastSingle", "seg_vlad_gpu_single", "vlad_single",
         "vlad_matmuls_per_cluster", "get_matches", "weighted_borda_count", "first_k_unique_indices")


def load_original(repo: Path) -> dict:
    source = (repo / "func_vpr.py").read_text()
    tree = ast.parse(source)
    namespace = {"np": np, "torch": torch, "F": F, "Delaunay": Delaunay, "time": __import__("time")}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in FUNCS:
            code = ast.get_source_segment(source, node).replace("'cuda'", "'cpu'").replace('"cuda"', '"cpu"')
            exec(compile(code, node.name, "exec"), namespace)  # noqa: S102 - the original's code, run locally
    return namespace


def grid_masks() -> np.ndarray:
    """3x3 grid of masks on 12x12 pixels; the middle column is cut at rows 5 and 9 instead of 4 and 8,
    so no four centroids lie on one circle and the triangulation is unique."""
    masks = np.zeros((9, 12, 12), dtype=bool)
    for r in range(3):
        for c in range(3):
            cuts = (0, 5, 9, 12) if c == 1 else (0, 4, 8, 12)
            masks[3 * r + c, cuts[r]:cuts[r + 1], 4 * c:4 * c + 4] = True
    return masks


def overlap_masks() -> np.ndarray:
    """Five masks on a 56x70 image (4x5 patches of 14 px): a big one wholly covered by two smaller ones,
    one touching a patch with a single pixel, overlaps everywhere."""
    m = np.zeros((5, 56, 70), dtype=bool)
    m[0, 0:28, 0:42] = True  # big: covered by masks 1 and 2 together
    m[1, 0:28, 0:21] = True
    m[2, 0:28, 21:42] = True
    m[3, 30:56, 10:60] = True
    m[4, 40:56, 55:70] = True
    m[4, 27, 69] = True  # a single pixel in patch (1, 4)
    return m


def main(repo: Path) -> None:
    orig = load_original(repo)
    out: dict[str, np.ndarray] = {}
    grid = grid_masks()
    out["grid_masks"] = grid
    for order in (1, 2, 3):
        out[f"grid_adj_order{order}"] = orig["nbrMasksAGGFastSingle"](list(grid), order).numpy()
    for n in (1, 2, 3):  # fewer than four masks: no triangulation
        out[f"few_adj_{n}"] = orig["nbrMasksAGGFastSingle"](list(grid[:n]), 3).numpy()

    rng = np.random.default_rng(0)
    masks = overlap_masks()
    c, dh, dw, k = 8, 4, 5, 32  # vlad_single assumes 32 clusters
    tokens = rng.normal(size=(1, c, dh, dw)).astype(np.float32)
    centers = (rng.normal(size=(k, c)) * rng.uniform(0.2, 2.0, size=(k, 1))).astype(np.float32)  # non-unit
    cfg = {"desired_height": 56, "desired_width": 70}
    idx = np.empty((56, 70, 2), dtype=np.int32)  # pixel -> patch (row, col), clipped, as place_rec_main builds it
    for i in range(56):
        for j in range(70):
            idx[i, j] = (min(i // 14, dh - 1), min(j // 14, dw - 1))
    ind = torch.tensor(np.ravel_multi_index(idx.reshape(-1, 2).T, (dh, dw)))
    out.update(overlap_masks=masks, tokens=tokens, centers=centers)
    for order in (0, 1, 2, 3):
        adj = orig["nbrMasksAGGFastSingle"](list(masks), order) if order else None
        desc = orig["seg_vlad_gpu_single"](ind, idx, {"img": {"ift_dino": tokens}}, "img", list(masks),
                                           torch.from_numpy(centers), cfg, desc_dim=c, adj_mat=adj)
        out[f"segvlad_order{order}"] = desc.numpy()

    # votes: 2 queries (2 and 1 segments), 6 map segments of 3 images, top-3 retrieval by squared L2
    db = rng.normal(size=(6, 4)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q = rng.normal(size=(3, 4)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    index = faiss.IndexFlatL2(4)
    index.add(db)
    dist, matches = index.search(q, 3)
    im_inds = np.array([0, 0, 1, 1, 2, 2])
    seg_range = [np.array([0, 1]), np.array([2])]
    preds = orig["get_matches"](matches, [None, None], 2 - dist, seg_range, im_inds, n=3,
                                method="max_seg_topk_wt_borda_Im")
    padded = np.array([list(p) + [-1] * (3 - len(p)) for p in preds])
    out.update(vote_db=db, vote_q=q, vote_owner=im_inds, vote_preds=padded)
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT}: {sorted(out)}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
