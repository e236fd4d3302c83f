"""Patch-NetVLAD re-ranking (Hausler et al., CVPR 2021) with the original's three presets.

For each query, the top-N candidates of the global retrieval are re-ordered by matching multi-scale
patch descriptors (`vprkit.features.patches`): mutual nearest neighbours, then RANSAC inliers
('performance') or rapid spatial scoring ('speed', 'storage') per patch size, z-normalised over the
query's candidates and fused with per-size weights (`vprkit.rerank.spatial`). All candidates of a query
are matched in one batched torch call (CPU or CUDA: `--set device=cuda`).

Patch features come from, in order of preference:
  1. `checkpoint=FILE`: a Patch-NetVLAD / NetVLAD checkpoint (VGG16 `encoder.*`, `pool.conv.weight`,
     `pool.centroids`, optional `WPCA.0.weight/bias`), loaded with `weights_only=True`;
  2. the index's own NetVLAD when the global preset is VGG19 + NetVLAD (`vgg19-netvlad`);
  3. VGG19 conv5_4 (bundled Oxford weights) + a NetVLAD whose centroids are k-means-fitted on the map.
PCA-whitening (no checkpoint PCA) is fitted on the map's patches. Features are cached in the
re-ranking folder as fp16 HDF5 (resumable) and reused on the next run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
from collections import OrderedDict
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from ..aggregators.netvlad import NetVLAD
from ..data.groundtruth import GroundTruth
from ..data.images import ImageError, list_images, load_image
from ..data.safeio import replacing
from ..evaluation import metrics, report
from ..evaluation.outputs import atomic_savez, atomic_write
from ..features import patches
from ..index.layout import STATE_FILE
from ..models import get_backbone
from ..models.base import load_state_dict
from ..results import Retrieval
from . import spatial
from .base import Reranker

logger = logging.getLogger("vprkit")


ORIGINAL_NS = (1, 5, 10, 20, 50, 100)  # the original's n_values_all
FIGURE_WIDTH = 200  # px of each image in a report's match figure
# Settings a cascade's cheap preset takes from the expensive one (everything but the method's own numbers).
CASCADE_SHARED = ("resize", "num_clusters", "checkpoint", "fit_max_images", "fit_max_patches", "batch_size",
                  "match_batch", "device", "seed", "match_dtype", "backbone_cache", "ransac_threads", "whiten",
                  "map_cache_mb")


def write_kapture_paths(path: Path, q_paths: list[str], m_paths: list[str], ids: np.ndarray) -> None:
    """The original's *_predictions.txt: `query path, map path` per line, best first, no score."""
    lines = ["# kapture format: 1.0", "# query_image, map_image"]
    for q, row in zip(q_paths, ids, strict=True):
        lines += [f"{q}, {m_paths[j]}" for j in row if j >= 0]
    atomic_write(path, "\n".join(lines) + "\n")


def write_kapture_pairs(path: Path, q_names: list[str], m_names: list[str], ids: np.ndarray,
                        scores: np.ndarray) -> None:
    """vprkit's scored pairs (`query, map, score` per line, best first, names relative to their folders)."""
    lines = ["# kapture format: 1.0", "# query_image, map_image, score"]
    for qi, q in enumerate(q_names):
        lines += [f"{q}, {m_names[j]}, {s:.6f}" for j, s in zip(ids[qi], scores[qi]) if j >= 0]
    atomic_write(path, "\n".join(lines) + "\n")


class PatchNetVLAD(Reranker):
    """Multi-scale patch matching with spatial verification over the global top-N."""

    name = "patchnetvlad"
    default_conf = {
        "num_rerank": 100,
        "resize": [640, 480],  # (width, height) every image is resized to (bilinear), as the original
        "patch_sizes": [5], "strides": [1], "patch_weights": [1.0],
        "num_pcs": 4096, "whiten": True,
        "pq_bytes": None,  # store map patches as product-quantised codes of this many bytes (None: fp16)
        "matcher": "spatial",  # 'ransac' (OpenCV homography) or 'spatial' (rapid spatial scoring)
        "ransac_threshold": 1.5,  # in feature cells x patch stride (24 px for VGG at stride 1, as the original)
        # RANSAC of all a query's candidates and sizes in this many threads (OpenCV releases the GIL), overlapping
        # the next candidates' matmuls; 0 = one per core available to this process, 1 = in the calling thread
        "ransac_threads": 0,
        "global_weight": 0.0,  # + global_weight * zscore(global similarity); 0 = the original (patches only)
        # a patch size whose scores are all equal over a query's candidates: the original's z-score is then
        # NaN for every candidate, so that query's order is numpy's argsort of NaNs (arbitrary, kept here as
        # the original); True makes that size contribute 0 instead
        "skip_constant": False,
        "num_clusters": 32, "checkpoint": None,
        "fit_max_images": 100, "fit_max_patches": 6000, "batch_size": 4,
        "match_batch": 4,  # candidates per batched call: small keeps similarity blocks in a CPU cache; raise on GPU
        # MB of decoded map patches kept between queries (least recently used dropped first): a map image is a
        # candidate of many queries, and reading it from HDF5 is a third of `storage`'s time; 0 = read every time
        "map_cache_mb": 0.0,
        "device": "cpu", "seed": 0,
        # 'bfloat16' / 'int8' run the similarity matmuls in that precision (faster on CPUs with AVX512-BF16 /
        # VNNI, and on GPUs) and recompute in float32 every nearest neighbour within the precision's error bound,
        # so the mutual matches (and scores) are float32's
        "match_dtype": "float32",
        "backbone_cache": None,  # HDF5 path: backbone maps shared by presets (same resize) between runs
        # cascade: this preset (e.g. 'storage') re-ranks all candidates first, this one only its top cascade_top
        "cascade_from": None, "cascade_top": 10,
    }
    # The original's three configs (patch scores only), then product-quantised map storage (vprkit's).
    confs = {
        "performance": {"patch_sizes": [2, 5, 8], "strides": [1, 1, 1], "patch_weights": [0.45, 0.15, 0.4],
                        "num_pcs": 4096, "matcher": "ransac"},
        "speed": {"patch_sizes": [5], "strides": [1], "patch_weights": [1.0], "num_pcs": 512, "matcher": "spatial"},
        "storage": {"patch_sizes": [5], "strides": [1], "patch_weights": [1.0], "num_pcs": 128,
                    "matcher": "spatial"},
    }
    confs.update({f"{name}-pq": {**c, "pq_bytes": b} for (name, c), b in zip(confs.items(), (512, 64, 32))})
    # vprkit's variants: the same plus the z-scored global similarity (constant patch sizes contribute 0).
    confs.update({f"{name}+global": {**c, "global_weight": 1.0, "skip_constant": True} for name, c in confs.items()})

    def rerank(self, retrieval: Retrieval, work_dir: Path) -> tuple[np.ndarray, np.ndarray]:
        """With `cascade_from`, that (cheap) preset re-ranks all candidates and this one only its top
        `cascade_top`; the rest keep the cheap order and scores."""
        if not self.conf["cascade_from"]:
            return self.rerank_all(retrieval, work_dir)
        shared = {k: self.conf[k] for k in CASCADE_SHARED}
        cheap_ids, cheap_scores = PatchNetVLAD(self.CONFIG.resolve(self.conf["cascade_from"], shared)).rerank_all(
            retrieval, work_dir)
        k = self.conf["cascade_top"]
        ids, scores = self.rerank_all(cascade_head(retrieval, cheap_ids, k), work_dir)
        return np.concatenate([ids, cheap_ids[:, k:]], 1), np.concatenate([scores, cheap_scores[:, k:]], 1)

    def _cache(self, retrieval: Retrieval, work_dir: Path) -> tuple[str, Path]:
        """The key of this preset's patch features and the folder that caches them (model, map.h5, query.h5)."""
        conf = self.conf
        key = json.dumps({k: conf[k] for k in ("resize", "patch_sizes", "strides", "num_pcs", "whiten",
                                                "num_clusters", "checkpoint", "seed", "pq_bytes")}
                         | {"index": retrieval.manifest.get("model_key"), "map": retrieval.fingerprint,
                            "resample": patches.RESAMPLE.name}, sort_keys=True)
        return key, Path(work_dir) / f"patches-{hashlib.sha1(key.encode()).hexdigest()[:10]}"

    def prepare(self, retrieval: Retrieval, work_dir: Path) -> tuple[Matcher, Path]:
        """(the matcher, the cache folder holding `query.h5` and `map.h5`): the patch features of every query
        and candidate, extracted once (resumable) in a folder keyed by what produced them."""
        conf = self.conf
        key, cache = self._cache(retrieval, work_dir)
        cache.mkdir(parents=True, exist_ok=True)
        model = build_model(conf, retrieval, cache / "model.npz")
        needed = sorted({retrieval.m_names[j] for j in retrieval.ids.ravel() if j >= 0})
        patches.extract(model, retrieval.map_dir, needed, cache / "map.h5", key, compress=True)
        patches.extract(model, retrieval.query_dir, retrieval.q_names, cache / "query.h5", key)
        return self._matcher(model), cache

    def _matcher(self, model: patches.PatchModel) -> Matcher:
        """The matcher of this preset over `model`'s patch grids, reading PQ-coded map patches with its codebook."""
        matcher = Matcher(self.conf, model)
        matcher.codebook = model.pq_centroids.cpu()
        return matcher

    def rerank_all(self, retrieval: Retrieval, work_dir: Path) -> tuple[np.ndarray, np.ndarray]:
        """This preset's ranking of every candidate of `retrieval`."""
        matcher, cache = self.prepare(retrieval, work_dir)
        new_ids, new_scores = retrieval.ids.copy(), np.full(retrieval.ids.shape, np.nan, dtype=np.float32)
        with h5py.File(cache / "map.h5", "r") as fm, h5py.File(cache / "query.h5", "r") as fq:
            for qi, q in enumerate(tqdm(retrieval.q_names, desc="patch matching", unit="query")):
                valid = np.flatnonzero(retrieval.ids[qi] >= 0)
                if q not in fq or not len(valid):
                    continue
                cand = [retrieval.m_names[j] for j in retrieval.ids[qi, valid]]
                fused = matcher.rank_scores(patches.read_patches(fq, [q], self.conf["patch_sizes"]), fm, cand,
                                            retrieval.scores[qi, valid])
                # numpy's default sort on the original's sign (lower = better), so ties and all-NaN queries
                # (a constant patch size) come out in the original's order on the same numpy
                order = np.argsort(-fused)
                new_ids[qi, valid] = retrieval.ids[qi, valid][order]
                new_scores[qi, valid] = fused[order]
        return new_ids, new_scores

    def finish(self, out_dir: Path, retrieval: Retrieval, ids: np.ndarray, scores: np.ndarray,
               result: dict, truth: GroundTruth | None = None) -> None:
        """The original's outputs under its names, so scripts that read them still work.

        NetVLAD_/PatchNetVLAD_predictions.txt (full image paths, no score), recalls.txt (N = 1, 5, 10, 20,
        50, 100 over all queries); vprkit's scored pairs go to NetVLAD_/PatchNetVLAD_scored_pairs.txt.
        """
        n = ids.shape[1]
        q_paths = [str(retrieval.query_dir.resolve() / q) for q in retrieval.q_names]
        m_paths = [str(retrieval.map_dir.resolve() / m) for m in retrieval.m_names]
        rankings = {"NetVLAD": (retrieval.ids[:, :n], retrieval.scores[:, :n]), "PatchNetVLAD": (ids, scores)}
        for name, (rows, vals) in rankings.items():
            write_kapture_paths(out_dir / f"{name}_predictions.txt", q_paths, m_paths, rows)
            write_kapture_pairs(out_dir / f"{name}_scored_pairs.txt", retrieval.q_names, retrieval.m_names, rows,
                                vals)
        if truth is not None:
            lines = [f"Recall {name}@{k}: {r:.4f}" for name, (rows, _) in rankings.items()
                     for k, r in metrics.recall_at_n(rows, truth, ORIGINAL_NS, all_queries=True).items()]
            atomic_write(out_dir / "recalls.txt", "\n".join(lines) + "\n")

    def match_figures(self, folder: Path, retrieval: Retrieval, ids: np.ndarray, queries: np.ndarray,
                      work_dir: Path) -> dict[int, report.MatchFigure]:
        """Each of `queries` beside its top-1 in `ids`, with the correspondences RANSAC verifies for every
        patch size (as `vprkit match-two` draws them), from the patch features `rerank` cached in `work_dir`.

        Why figure files and not coordinates drawn in the browser: the figure is `draw_matches`'s, the one
        drawing code match-two uses, at a size where patch lines can be seen (the 160-px thumbnails are too
        small); and every figure costs a RANSAC per patch size and two image loads, so a budget of queries
        bounds both the time and the disk (about 20 kB a figure), whatever the number of queries.
        """
        _, cache = self._cache(retrieval, work_dir)  # features only where `rerank` extracted them (a cascade's head)
        matcher = self._matcher(build_model(self.conf, retrieval, cache / "model.npz"))
        sizes, scale = self.conf["patch_sizes"], FIGURE_WIDTH / self.conf["resize"][0]
        out: dict[int, report.MatchFigure] = {}
        folder.mkdir(parents=True, exist_ok=True)
        with h5py.File(cache / "map.h5", "r") as fm, h5py.File(cache / "query.h5", "r") as fq:
            for qi in tqdm(queries, desc="match figures", unit="query"):
                q, j = retrieval.q_names[qi], int(ids[qi, 0])
                if j < 0 or q not in fq or f"{retrieval.m_names[j]}/p{sizes[0]}" not in fm:
                    continue
                lines = verified_lines(matcher, [x[0] for x in patches.read_patches(fq, [q], sizes)],
                                       patches.read_patches(fm, [retrieval.m_names[j]], sizes, matcher.codebook))
                paths = [retrieval.query_dir / q, retrieval.map_dir / retrieval.m_names[j]]
                name = hashlib.sha1("\n".join(map(str, paths)).encode()).hexdigest()[:20] + ".jpg"
                try:
                    draw_matches(images_for_display(paths, self.conf["resize"]), lines, folder / name, scale)
                except (ImageError, OSError) as exc:  # gone since its features were cached: no figure, no failure
                    logger.warning("no match figure for %s: %s", q, exc)
                    continue
                out[int(qi)] = report.MatchFigure(name, dict(zip(map(str, sizes), lines, strict=True)))
        return out


def cascade_head(retrieval: Retrieval, ids: np.ndarray, k: int) -> Retrieval:
    """`retrieval` restricted to the first `k` of another ordering `ids` of its candidates (global scores kept)."""
    head = ids[:, :k]
    pos = np.array([[np.flatnonzero(row == j)[0] if j >= 0 else 0 for j in h] for row, h in zip(retrieval.ids, head)],
                   dtype=np.int64).reshape(head.shape)
    scores = np.where(head >= 0, np.take_along_axis(retrieval.scores, pos, 1), np.nan)
    return dataclasses.replace(retrieval, ids=head, scores=scores)


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


def _checkpoint_parts(path: str) -> tuple[NetVLAD, dict[str, torch.Tensor]]:
    """NetVLAD layer and optional PCA arrays from a Patch-NetVLAD / NetVLAD checkpoint (weights only)."""
    state = load_state_dict(path)
    if "pool.centroids" not in state or "pool.conv.weight" not in state:
        raise ValueError(f"{path}: not a NetVLAD checkpoint (no 'pool.centroids' / 'pool.conv.weight')")
    cent, w = state["pool.centroids"].float(), state["pool.conv.weight"].float()
    agg = NetVLAD(num_clusters=cent.shape[0], dim=cent.shape[1])
    bias = state.get("pool.conv.bias", torch.zeros(cent.shape[0])).float()
    agg.load_state_dict({"conv.weight": w.reshape(*w.shape[:2], 1, 1), "conv.bias": bias, "centroids": cent})
    pca = {}
    if "WPCA.0.weight" in state:
        pw = state["WPCA.0.weight"].float()
        pca = {"pca_weight": pw.reshape(pw.shape[0], -1),
               "pca_bias": state.get("WPCA.0.bias", torch.zeros(pw.shape[0])).float()}
    return agg, pca


def _index_netvlad(retrieval: Retrieval) -> NetVLAD | None:
    """The global index's NetVLAD layer when it pools VGG19 features (so patches share its vocabulary)."""
    conf = retrieval.manifest.get("conf", {})
    state_path = retrieval.index_dir / STATE_FILE
    if conf.get("model", {}).get("name") != "vgg19" or conf.get("aggregator", {}).get("name") != "netvlad" \
            or not state_path.is_file():
        return None
    with np.load(state_path, allow_pickle=False) as data:
        state = {k: data[k] for k in data.files}
    agg = NetVLAD(num_clusters=state["centroids"].shape[0], dim=state["centroids"].shape[1])
    agg.load_state(state)
    return agg


def fit_netvlad(model: patches.PatchModel, root: Path, names: list[str]) -> None:
    """k-means NetVLAD vocabulary from conv features of (a sample of) the given images."""
    conf = model.conf
    sample = sorted(random.Random(conf["seed"]).sample(names, min(len(names), conf["fit_max_images"])))
    feats = []
    for i in range(0, len(sample), conf["batch_size"]):
        ok, loc, _ = model.local_features(root, sample[i:i + conf["batch_size"]])
        if ok:
            feats.append(loc.permute(0, 2, 3, 1).reshape(-1, loc.shape[1]).cpu().numpy())
    if not feats:
        raise ValueError(f"{root}: no readable images to fit the NetVLAD vocabulary on")
    local = np.concatenate(feats)
    local = local[np.random.default_rng(conf["seed"]).permutation(len(local))[:100_000]]
    model.aggregator.fit(local)


def build_model(conf: dict, retrieval: Retrieval | None, state_path: Path | None,
                images: tuple[Path, list[str]] | None = None) -> patches.PatchModel:
    """The patch model: backbone + NetVLAD + PCA, loaded from `state_path` or fitted (then saved there).

    Fitting uses the map of `retrieval`, or `images` (root, names) when there is no map (match-two).
    """
    pca: dict[str, torch.Tensor] = {}
    index_agg = _index_netvlad(retrieval) if retrieval is not None and not conf["checkpoint"] else None
    if conf["checkpoint"]:
        agg, pca = _checkpoint_parts(conf["checkpoint"])
        if pca and pca["pca_weight"].shape[0] != conf["num_pcs"]:
            raise ValueError(f"{conf['checkpoint']}: its PCA has {pca['pca_weight'].shape[0]} dims but num_pcs is "
                             f"{conf['num_pcs']}: use the checkpoint made for {conf['num_pcs']} dims (the original "
                             f"loads '..._WPCA{conf['num_pcs']}.pth.tar') or set num_pcs")
        model = patches.PatchModel(conf, get_backbone("vgg16", checkpoint=conf["checkpoint"]), agg,
                                   drop_last_relu=True)
    else:
        backbone = get_backbone("vgg19")
        agg = index_agg or NetVLAD(num_clusters=conf["num_clusters"], dim=backbone.dim)
        model = patches.PatchModel(conf, backbone, agg)
    if state_path is not None and state_path.is_file():
        with np.load(state_path, allow_pickle=False) as data:
            model.aggregator.load_state({k[4:]: data[k] for k in data.files if k.startswith("agg.")})
            model.pca_weight, model.pca_bias, model.pq_centroids = (
                torch.from_numpy(data[k]) for k in ("pca_weight", "pca_bias", "pq_centroids"))
        return model.to(torch.device(conf["device"]))
    root, names = images if images is not None else (retrieval.map_dir, list_images(retrieval.map_dir))
    if not conf["checkpoint"] and index_agg is None:
        fit_netvlad(model, root, names)
    if pca:
        model.pca_weight, model.pca_bias = pca["pca_weight"], pca["pca_bias"]
    elif retrieval is not None:
        model.fit_pca(root, names)
    if state_path is not None:
        arrays = {f"agg.{k}": v for k, v in model.aggregator.state().items()}
        atomic_savez(state_path, arrays | {"pca_weight": model.pca_weight.numpy(),
                                           "pca_bias": model.pca_bias.numpy(),
                                           "pq_centroids": model.pq_centroids.numpy()})
    return model.to(torch.device(conf["device"]))


def match_two(image_a: str | Path, image_b: str | Path, conf: dict, out_png: str | Path | None = None) -> dict:
    """Patch-NetVLAD score of two images (weighted sum of per-size raw scores, higher = more similar).

    Without a map there is nothing to fit PCA on, so (unless `checkpoint` brings its PCA) the raw
    normalised patch VLADs are matched, with a vocabulary fitted on the two images. Draws the patch
    correspondences that survive RANSAC (homography) for every patch size into `out_png`.
    """
    names = [str(image_a), str(image_b)]
    model = build_model(conf, None, None, images=(Path(""), names))
    _, local, bad = model.local_features(Path(""), names)
    if bad:
        raise ValueError(f"cannot read {', '.join(bad)}")
    feats = model.describe(local)
    sizes = conf["patch_sizes"]
    matcher = Matcher(conf, model)
    q, db = [feats[f"p{s}"][0] for s in sizes], [feats[f"p{s}"][1:] for s in sizes]
    raw = matcher.scale_scores(q, db)[:, 0]
    score = float(sum(w * r for w, r in zip(conf["patch_weights"], raw.tolist(), strict=True)))
    lines = verified_lines(matcher, q, db)
    if out_png is not None:
        draw_matches(images_for_display(names, conf["resize"]), lines, Path(out_png))
    return {"score": score, "scale_scores": dict(zip(map(str, sizes), raw.tolist(), strict=True)),
            "inliers": dict(zip(map(str, sizes), map(len, lines), strict=True))}


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


def images_for_display(names: list[str | Path], size: list[int]):
    """The two images at the size the patches were computed at."""
    return [load_image(n).resize(tuple(size), patches.RESAMPLE) for n in names]


def draw_matches(images: list, lines: list[list[tuple]], path: Path, scale: float = 1.0) -> None:
    """Side-by-side image (format from the suffix) with one colour per patch size; each line joins matched
    patch centres. `scale` resizes the images first (the lines stay one pixel wide)."""
    from PIL import Image, ImageDraw

    if scale != 1.0:
        images = [im.resize((round(im.width * scale), round(im.height * scale)), patches.RESAMPLE) for im in images]
        lines = [[((xa * scale, ya * scale), (xb * scale, yb * scale)) for (xa, ya), (xb, yb) in pairs]
                 for pairs in lines]
    w, h = images[0].size
    canvas = Image.new("RGB", (2 * w, h))
    canvas.paste(images[0], (0, 0))
    canvas.paste(images[1], (w, 0))
    draw = ImageDraw.Draw(canvas)
    colours = [(255, 60, 60), (60, 220, 60), (60, 140, 255), (255, 200, 0)]
    for s, pairs in enumerate(lines):
        for (xa, ya), (xb, yb) in pairs:
            c = colours[s % len(colours)]
            draw.line([(xa, ya), (xb + w, yb)], fill=c, width=1)
            for x, y in ((xa, ya), (xb + w, yb)):
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], outline=c)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:  # quality: JPEG's, ignored by PNG
        canvas.save(tmp, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"), quality=85)
