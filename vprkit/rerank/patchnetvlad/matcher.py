"""Patch matching: one query's multi-scale patch features against a batch of candidates (mutual nearest
neighbours, then RANSAC inliers or rapid spatial scores per patch size, fused over sizes)."""

from __future__ import annotations

import os
from collections import OrderedDict
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import nullcontext

import h5py
import numpy as np
import torch

from ...features import patches
from .. import spatial


def ransac_pool(threads: int) -> Executor | nullcontext:
    """A pool of `threads` workers (0: one per core this process may use), or none for one thread."""
    n = threads or len(os.sched_getaffinity(0))
    return ThreadPoolExecutor(n) if n > 1 else nullcontext()


def _now(fn, *args) -> Future:
    """`fn(*args)` run in the calling thread, as a finished future."""
    fut: Future = Future()
    fut.set_result(fn(*args))
    return fut


class Matcher:
    """Scores one query's patch features against a batch of candidates, all candidates at once."""

    def __init__(self, conf: dict, model: patches.PatchModel | None = None,
                 grids: list[tuple[np.ndarray, np.ndarray]] | None = None, feat_stride: int = 16):
        self.conf = conf
        self.device = torch.device(conf["device"])
        if conf["match_dtype"] not in spatial.PRECISIONS:
            raise ValueError(f"unknown match_dtype '{conf['match_dtype']}'; choose one of {spatial.PRECISIONS}")
        if conf["matcher"] not in ("ransac", "spatial"):
            raise ValueError(f"unknown matcher '{conf['matcher']}'; choose 'ransac' or 'spatial'")
        grids = grids if grids is not None else model.grids()
        feat_stride = model.backbone.stride if model is not None else feat_stride
        self.grid = [torch.from_numpy(g) for g, _ in grids]
        self.centres = [c for _, c in grids]
        self.thresholds = [conf["ransac_threshold"] * feat_stride * st for st in conf["strides"]]
        self.codebook: torch.Tensor | None = None  # set when map patches are stored as PQ codes
        self.cache: OrderedDict[str, list[np.ndarray]] = OrderedDict()  # map name -> patches per size (one map file)

    def read_map(self, fm: h5py.File, names: list[str]) -> list[np.ndarray]:
        """Per patch size, the stacked patches of map images `names`, through the `map_cache_mb` cache."""
        sizes, budget = self.conf["patch_sizes"], self.conf["map_cache_mb"] * 2**20
        if not budget:
            return patches.read_patches(fm, names, sizes, self.codebook)
        missing = [n for n in names if n not in self.cache]
        if missing:
            for i, got in enumerate(zip(*patches.read_patches(fm, missing, sizes, self.codebook), strict=True)):
                self.cache[missing[i]] = list(got)
        out = [np.stack([self.cache[n][s] for n in names]) for s in range(len(sizes))]
        for n in names:
            self.cache.move_to_end(n)
        used = sum(a.nbytes for arrays in self.cache.values() for a in arrays)
        while used > budget and len(self.cache) > len(names):
            used -= sum(a.nbytes for a in self.cache.popitem(last=False)[1])
        return out

    def verified_pair(self, s: int, fw: torch.Tensor, mutual: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(query, candidate) patch indices of one candidate's mutual matches that RANSAC keeps."""
        qi, di = spatial.mutual_pairs(fw, mutual)
        keep = spatial.ransac_inliers(self.centres[s][di], self.centres[s][qi], self.thresholds[s])
        return qi[keep], di[keep]

    def verified(self, s: int, fw: torch.Tensor, mutual: torch.Tensor, pool: Executor | None = None
                 ) -> list[Future]:
        """Per candidate, a future of `verified_pair` (in `pool`, or already done without one)."""
        if pool is None:
            return [_now(self.verified_pair, s, fw[b], mutual[b]) for b in range(fw.shape[0])]
        return [pool.submit(self.verified_pair, s, fw[b], mutual[b]) for b in range(fw.shape[0])]

    def submit(self, q: list[np.ndarray], db: list[np.ndarray], pool: Executor | None = None) -> list:
        """Per size: the rapid spatial scores (B,), or one future of verified matches per candidate (RANSAC
        queued in `pool`, so the caller can go on with the next candidates' matmuls)."""
        out = []
        for s, (qs, ds) in enumerate(zip(q, db, strict=True)):
            qt = torch.as_tensor(qs, device=self.device).float()
            dt = torch.as_tensor(ds, device=self.device).float()
            fw, mutual = spatial.mutual_nn(qt, dt, self.conf["match_dtype"])
            fw, mutual = fw.cpu(), mutual.cpu()
            if self.conf["matcher"] == "ransac":
                out.append(self.verified(s, fw, mutual, pool))
            else:
                out.append(spatial.rapid_spatial_scores(self.grid[s], self.grid[s], fw, mutual))
        return out

    def collect(self, parts: list, num_query: list[int]) -> torch.Tensor:
        """Raw per-size scores (S, B) from `submit`'s parts: RANSAC inliers / query patches, or spatial scores."""
        out = []
        for part, nq in zip(parts, num_query, strict=True):
            if isinstance(part, torch.Tensor):
                out.append(part)
            else:
                counts = [len(f.result()[0]) for f in part]
                out.append(torch.tensor(counts, dtype=torch.float64) / max(nq, 1))
        return torch.stack(out)

    def scale_scores(self, q: list[np.ndarray], db: list[np.ndarray]) -> torch.Tensor:
        """Raw per-size scores (S, B): RANSAC inliers / query patches, or rapid spatial score.

        `q` per size (Nq, d) and `db` per size (B, Nd, d), any float dtype.
        """
        with ransac_pool(self.conf["ransac_threads"]) as pool:
            return self.collect(self.submit(q, db, pool), [len(x) for x in q])

    def raw_scores(self, q: list[np.ndarray], fm: h5py.File, cand: list[str]) -> torch.Tensor:
        """Raw per-size scores (S, B) of one query (`q` per size, (1, Nq, d)) against candidates read from `fm`.

        Candidates are matched `match_batch` at a time; with RANSAC threads every candidate's RANSAC is
        queued as soon as its matches are known and all are collected at the end (same counts: each
        `findHomography` call is deterministic and independent of the others).
        """
        sizes, bs = self.conf["patch_sizes"], self.conf["match_batch"]
        raw = torch.zeros(len(sizes), len(cand), dtype=torch.float64)  # candidates without features: 0
        have = [i for i, c in enumerate(cand) if c in self.cache or f"{c}/p{sizes[0]}" in fm]
        qs = [x[0] for x in q]
        with ransac_pool(self.conf["ransac_threads"]) as pool:
            pending = [(have[i:i + bs], self.submit(qs, self.read_map(fm, [cand[j] for j in have[i:i + bs]]), pool))
                       for i in range(0, len(have), bs)]
            for idx, parts in pending:
                raw[:, idx] = self.collect(parts, [len(x) for x in qs])
        return raw

    def rank_scores(self, q: list[np.ndarray], fm: h5py.File, cand: list[str], global_scores: np.ndarray
                    ) -> np.ndarray:
        """Fused score per candidate (higher = better) for one query (`q` per size, (1, Nq, d))."""
        return self.fuse(self.raw_scores(q, fm, cand), global_scores)

    def fuse(self, raw: torch.Tensor, global_scores: np.ndarray) -> np.ndarray:
        """Weighted z-scores of the sizes' scores (float64, as the original), plus the optional global term."""
        fused = spatial.fuse(raw.numpy(), self.conf["patch_weights"], self.conf["skip_constant"])
        if self.conf["global_weight"]:
            g = np.nan_to_num(np.asarray(global_scores, dtype=np.float64), nan=-1.0)
            fused = fused + self.conf["global_weight"] * spatial.zscore(g)
        return fused


def verified_lines(matcher: Matcher, q: list[np.ndarray], db: list[np.ndarray]) -> list[list[tuple]]:
    """Per patch size, the (query, candidate) pixel centres of the mutual matches RANSAC keeps between one
    query (per size (Nq, d)) and one candidate (per size (1, Nd, d)), as `Matcher.verified_pair` keeps them."""
    lines = []
    for s, (qs, ds) in enumerate(zip(q, db, strict=True)):
        fw, mutual = spatial.mutual_nn(torch.as_tensor(qs), torch.as_tensor(ds))
        qi, di = matcher.verified_pair(s, fw[0], mutual[0])
        lines.append([(tuple(matcher.centres[s][i].tolist()), tuple(matcher.centres[s][j].tolist()))
                      for i, j in zip(qi, di, strict=True)])
    return lines
