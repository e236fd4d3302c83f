"""Re-ranking time per query (top-N) of the batched matcher vs a naive per-pair loop, same run, same scores.

`python bench/patchnetvlad_speed.py`. The naive loop follows the original's local_matcher: for every
candidate it reads that candidate's features from disk, runs the nearest neighbour search in torch,
finds mutual matches with numpy, scores the pair (numpy rapid spatial scoring, or OpenCV RANSAC on one
pair), then z-normalises and fuses with numpy. Ours reads all candidates of a query at once and matches them
in batched calls. Features are random unit vectors with the presets' shapes (a fifth of the candidates
are noisy copies of the query, so RANSAC has real inliers); timing does not depend on content.

`bfloat16` / `int8` are the same batched matcher with `match_dtype` set: similarities in that precision,
near-tied neighbours recomputed in float32 (the share of rows is printed), so the matches are float32's.
`N RANSAC threads` runs the candidates' OpenCV RANSAC in a thread pool. Every variant's scores are compared
with the per-pair loop's (Spearman over the candidates, worst query; same top-1 candidate).
"matmuls alone" times the float32 similarity matmuls (same shapes, features already in memory): every exact
matcher must do them.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import torch
from common import machine
from scipy.stats import spearmanr

from vprkit.features import h5io, patches
from vprkit.rerank import spatial
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


def recheck_share(conf: dict, path: Path, q: list[np.ndarray], names: list[str]) -> float:
    """Share of nearest-neighbour rows that `conf['match_dtype']` had to recompute in float32."""
    with h5py.File(path, "r") as f:
        shares = [spatial.nearest(torch.from_numpy(x).float(),
                                  torch.from_numpy(np.stack([f[f"{n}/p{size}"][()] for n in names[:8]])).float(),
                                  conf["match_dtype"])[2] for x, size in zip(q, conf["patch_sizes"], strict=True)]
    return float(np.mean(shares))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--num-rerank", type=int, default=100)
    p.add_argument("--queries", type=int, default=2)
    p.add_argument("--presets", default="storage,speed,performance")
    p.add_argument("--resize", default="640x480", help="image size the patch shapes come from (W x H)")
    p.add_argument("--performance-resize", default="320x240", help="smaller for performance: 4096-d at 640x480 "
                   "costs about 2 TFLOP per query on either side")
    p.add_argument("--ransac-threads", type=int, default=os.cpu_count())
    args = p.parse_args()
    print(f"machine: {machine()}\n")
    variants = {"bfloat16": {"match_dtype": "bfloat16"}, "int8": {"match_dtype": "int8"},
                f"{args.ransac_threads} RANSAC threads": {"ransac_threads": args.ransac_threads}}
    print("| preset | image | patches | dims | matcher | variant | s/query | vs per-pair original | vs vprkit fp32 "
          "| rows rechecked in fp32 | Spearman vs original (min) | same top-1 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for preset in args.presets.split(","):
        size = args.performance_resize if preset.startswith("performance") else args.resize
        conf = PatchNetVLAD.CONFIG.resolve(preset, resize=[int(v) for v in size.split("x")], ransac_threads=1)
        grids = [patches.patch_grid(conf["resize"][1] // 16, conf["resize"][0] // 16, s, st, 16)
                 for s, st in zip(conf["patch_sizes"], conf["strides"], strict=True)]
        matchers = {"vprkit fp32": Matcher(conf, grids=grids)}
        matchers |= {k: Matcher({**conf, **v}, grids=grids) for k, v in variants.items()
                     if "ransac_threads" not in v or conf["matcher"] == "ransac"}
        t = {"original per-pair loop": 0.0, "matmuls alone": 0.0} | {k: 0.0 for k in matchers}
        rho = {k: 1.0 for k in matchers}
        top1 = {k: 0 for k in matchers}
        share = {k: 0.0 for k in matchers}
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.queries):  # per query, every variant in turn (interleaved)
                path = Path(tmp) / f"f{rng.integers(1 << 30)}.h5"
                q, names = make_features(path, conf, grids, args.num_rerank, rng)
                glob = np.sort(rng.random(args.num_rerank))[::-1]
                t0 = time.perf_counter()
                ref = naive_scores(conf, matchers["vprkit fp32"], path, q, names, glob)
                t["original per-pair loop"] += time.perf_counter() - t0
                t["matmuls alone"] += matmul_floor(q, path, names, conf["patch_sizes"], conf["match_batch"])
                for k, m in matchers.items():
                    dt, ours = batched(m.conf, m, path, q, names, glob)
                    t[k] += dt
                    rho[k] = min(rho[k], float(spearmanr(ours, ref).statistic))
                    top1[k] += int(np.argsort(-ours)[0] == np.argsort(-ref)[0])
                    share[k] += recheck_share(m.conf, path, q, names) / args.queries
        fp32 = t["vprkit fp32"]
        for k, sec in t.items():
            cells = [f"{sec / args.queries:.3f}", f"{t['original per-pair loop'] / sec:.2f}x", f"{fp32 / sec:.2f}x"]
            cells += [f"{share[k]:.2f}", f"{rho[k]:.4f}", f"{top1[k]}/{args.queries}"] if k in matchers else [""] * 3
            print(f"| {preset} | {size} | {sum(len(g) for g, _ in grids)} | {conf['num_pcs']} | {conf['matcher']} "
                  f"| {k} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
