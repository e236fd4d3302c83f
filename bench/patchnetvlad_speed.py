"""Re-ranking time per query (top-N) of the batched matcher vs a naive per-pair loop, same run, same scores.

`python bench/patchnetvlad_speed.py`. The naive loop follows the original's local_matcher: for every
candidate it reads that candidate's features from disk, runs the nearest neighbour search in torch,
finds mutual matches with numpy, scores the pair (numpy rapid spatial scoring, or OpenCV RANSAC on one
pair), then z-normalises and fuses with numpy. Ours reads all candidates of a query at once and matches them
in batched calls. Features are random unit vectors with the presets' shapes (a fifth of the candidates
are noisy copies of the query, so RANSAC has real inliers); timing does not depend on content.

`bfloat16` is the same batched matcher with `match_dtype=bfloat16` (8-bit mantissa similarities); its
column says whether its candidate order equals float32's.
The last columns time the similarity matmuls alone (float32, same shapes, features already in memory):
every exact matcher must do them, so naive / matmul is the most any exact implementation could gain.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import torch
from common import machine

from vprkit.features import h5io, patches
from vprkit.rerank.patchnetvlad import Matcher, PatchNetVLAD


def make_features(path: Path, conf: dict, grids, n: int, rng) -> tuple[list[np.ndarray], list[str]]:
    """Query features per size and `n` candidate feature groups written to an HDF5 file (fp16)."""
    d = conf["num_pcs"]
    q = [patches.l2n(torch.from_numpy(rng.standard_normal((len(g), d)).astype(np.float32))).numpy()
         for g, _ in grids]
    names = [f"map{i:03d}" for i in range(n)]
    for i, name in enumerate(names):
        item = {"global": np.zeros(d, np.float16)}
        for s, size in enumerate(conf["patch_sizes"]):
            x = rng.standard_normal(q[s].shape).astype(np.float32)
            if i % 5 == 0:
                x = q[s] + 0.05 * x  # a true match: noisy copy of the query
            item[f"p{size}"] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
        h5io.write_batch(path, {name: item})
    return [x.astype(np.float16) for x in q], names


def naive_scores(conf: dict, matcher: Matcher, path: Path, q: list[np.ndarray], names: list[str],
                 global_scores: np.ndarray) -> np.ndarray:
    """Per-pair loop in the original's style; returns the fused score per candidate."""
    raw = np.zeros((len(names), len(q)))
    for k, name in enumerate(names):
        for s, size in enumerate(conf["patch_sizes"]):
            with h5py.File(path, "r") as f:  # the original loads each candidate's .npy per pair
                db = torch.from_numpy(f[f"{name}/p{size}"][()].astype(np.float32))
            qt = torch.from_numpy(q[s].astype(np.float32))
            # the original takes argmin of sqrt(2 - 2 d.q) in float32, which merges near-ties; argmax of d.q
            # is the same neighbour without that rounding
            sim = torch.matmul(qt, db.T)  # (Nq, Nd)
            fw = torch.argmax(sim, 0).numpy()  # per candidate patch: its nearest query patch
            bw = torch.argmax(sim, 1).numpy()
            mutuals = np.atleast_1d(np.argwhere(bw[fw] == np.arange(len(fw))).squeeze())
            if conf["matcher"] == "spatial":
                if len(mutuals):
                    g = matcher.grid[s].numpy()
                    dd = (g[mutuals] - g[fw[mutuals]]).T
                    r = np.abs(dd - dd.mean(1, keepdims=True))
                    xmax, ymax = g[:, 0].max(), g[:, 1].max()
                    raw[k, s] = ((xmax - r[0]) ** 2 + (ymax - r[1]) ** 2).sum() / len(bw)
            elif len(mutuals) > 3:  # the original: findHomography(candidate -> query) on mutuals in candidate order
                c = matcher.centres[s]
                _, mask = cv2.findHomography(c[mutuals], c[fw[mutuals]], cv2.FM_RANSAC,
                                             ransacReprojThreshold=matcher.thresholds[s])
                raw[k, s] = mask.sum() / len(bw)
    fused = 0
    with np.errstate(invalid="ignore", divide="ignore"):  # the original: a constant size gives 0 / 0
        for s, w in enumerate(conf["patch_weights"]):
            col = raw[:, s]
            fused = fused + w * (np.where(col.std() > 0, (col - col.mean()) / col.std(), 0 * col)
                                 if conf["skip_constant"] else (col - col.mean()) / col.std())
    g = global_scores.astype(np.float64)
    return fused + conf["global_weight"] * (g - g.mean()) / g.std()


def matmul_floor(q: list[np.ndarray], path: Path, names: list[str], sizes: list[int], batch: int) -> float:
    """Seconds for the float32 query x candidate similarity matmuls alone (features read beforehand)."""
    with h5py.File(path, "r") as f:
        db = [torch.from_numpy(np.stack([f[f"{n}/p{s}"][()] for n in names])).float() for s in sizes]
    qt = [torch.from_numpy(x).float() for x in q]
    t0 = time.perf_counter()
    for d, x in zip(db, qt, strict=True):
        for i in range(0, len(names), batch):
            torch.matmul(d[i:i + batch], x.T)
    return time.perf_counter() - t0


def batched(conf: dict, matcher: Matcher, path: Path, q: list[np.ndarray], names: list[str],
            global_scores: np.ndarray) -> tuple[float, np.ndarray]:
    """(seconds, fused scores) of the batched matcher for one query."""
    t0 = time.perf_counter()
    with h5py.File(path, "r") as f:
        scores = matcher.rank_scores([x[None] for x in q], f, names, global_scores)
    return time.perf_counter() - t0, scores


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--num-rerank", type=int, default=100)
    p.add_argument("--queries", type=int, default=2)
    p.add_argument("--presets", default="storage,speed,performance")
    p.add_argument("--resize", default="640x480", help="image size the patch shapes come from (W x H)")
    p.add_argument("--performance-resize", default="320x240", help="smaller for performance: 4096-d at 640x480 "
                   "costs about 2 TFLOP per query on either side")
    args = p.parse_args()
    print(f"machine: {machine()}\n")
    print("| preset | image | patches | dims | matcher | naive loop ms/query | batched ms/query | speed-up "
          "| matmuls alone ms/query | naive / matmuls | bfloat16 ms/query | speed-up | same order |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for preset in args.presets.split(","):
        size = args.performance_resize if preset == "performance" else args.resize
        conf = PatchNetVLAD.get_conf(preset, resize=[int(v) for v in size.split("x")])
        grids = [patches.patch_grid(conf["resize"][1] // 16, conf["resize"][0] // 16, s, st, 16)
                 for s, st in zip(conf["patch_sizes"], conf["strides"], strict=True)]
        matcher, fast = Matcher(conf, grids=grids), Matcher({**conf, "match_dtype": "bfloat16"}, grids=grids)
        t = {"naive": 0.0, "ours": 0.0, "matmul": 0.0, "bf16": 0.0}
        same = True
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.queries):
                path = Path(tmp) / f"f{rng.integers(1 << 30)}.h5"
                q, names = make_features(path, conf, grids, args.num_rerank, rng)
                glob = np.sort(rng.random(args.num_rerank))[::-1]
                t0 = time.perf_counter()
                ref = naive_scores(conf, matcher, path, q, names, glob)
                t["naive"] += time.perf_counter() - t0
                dt, ours = batched(conf, matcher, path, q, names, glob)
                t["ours"] += dt
                np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)  # same scores
                assert (np.argsort(-ours, kind="stable") == np.argsort(-ref, kind="stable")).all()
                t["matmul"] += matmul_floor(q, path, names, conf["patch_sizes"], conf["match_batch"])
                dt, approx = batched(conf, fast, path, q, names, glob)
                t["bf16"] += dt
                same &= bool((np.argsort(-approx, kind="stable") == np.argsort(-ref, kind="stable")).all())
        ms = {k: 1000 * v / args.queries for k, v in t.items()}
        print(f"| {preset} | {size} | {sum(len(g) for g, _ in grids)} | {conf['num_pcs']} | {conf['matcher']} | "
              f"{ms['naive']:.0f} | {ms['ours']:.0f} | {t['naive'] / t['ours']:.1f}x | {ms['matmul']:.0f} | "
              f"{t['naive'] / t['matmul']:.1f}x | {ms['bf16']:.0f} | {t['naive'] / t['bf16']:.1f}x | "
              f"{'yes' if same else 'no'} |", flush=True)

if __name__ == "__main__":
    main()
