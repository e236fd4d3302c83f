"""The Patch-NetVLAD re-ranker: presets, features of every query and candidate (cached, resumable), the fused
ranking, the cascade of two presets, the original's outputs and the report's match figures."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from ...data.groundtruth import GroundTruth
from ...data.images import ImageError
from ...evaluation import metrics, report
from ...features import patches
from ...results import Retrieval
from ..base import Reranker
from . import files
from .draw import draw_matches, images_for_display
from .matcher import Matcher, verified_lines
from .model import build_model

logger = logging.getLogger("vprkit")

ORIGINAL_NS = (1, 5, 10, 20, 50, 100)  # the original's n_values_all
# Measured: `speed+global` on Corridor (111 queries, 111 candidate and 100 fitting images at 320x240, untrained)
# took 975 s on the 2-core CPU of docs/benchmarks.md, nearly all of it describing images: 975 / (322 x 0.0768 MP)
SECONDS_PER_MPIXEL = 39.0
FIGURE_WIDTH = 200  # px of each image in a report's match figure
# Settings a cascade's cheap preset takes from the expensive one (everything but the method's own numbers).
CASCADE_SHARED = ("resize", "num_clusters", "checkpoint", "fit_max_images", "fit_max_patches", "batch_size",
                  "match_batch", "device", "seed", "match_dtype", "backbone_cache", "ransac_threads", "whiten",
                  "map_cache_mb")


class RunEstimate:
    """The matching's run time, estimated from the per-pair cost measured on the first query and said once."""

    def __init__(self, pairs: int) -> None:
        self.pairs, self.start, self.first = pairs, time.perf_counter(), None

    def tell(self, pairs: int) -> None:
        """Called before each query's `pairs` candidates: after the first query, log the estimate."""
        if self.first is None:
            self.first = pairs
        elif self.start is not None:
            per_pair = (time.perf_counter() - self.start) / self.first
            logger.warning("patchnetvlad: %.3f s per query-candidate pair measured on the first query: about %.0f s "
                           "for the %d pairs of this run", per_pair, per_pair * self.pairs, self.pairs)
            self.start = None


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

    def check(self, retrieval: Retrieval | None) -> None:
        """Before any work: warn that an untrained (k-means) vocabulary usually ranks worse than the retrieval, and
        say how long the run will take (`estimated_seconds`)."""
        if retrieval is not None:
            logger.warning("patchnetvlad: about %.0f s to describe this run's images (estimated from a calibrated "
                           "%.0f s per megapixel described, see docs/patchnetvlad.md); the matching is estimated "
                           "once the first query is matched", self.estimated_seconds(retrieval), SECONDS_PER_MPIXEL)
        if self.conf["checkpoint"]:
            return
        fused = "" if self.conf["global_weight"] else " (a `+global` preset fuses the global similarity back in)"
        logger.warning("patchnetvlad without --set checkpoint=FILE uses an untrained NetVLAD vocabulary (k-means on "
                       "the map): on untrained features its ranking is usually worse than the global retrieval it "
                       "re-ranks (Corridor R@1 0.910 -> 0.640; see docs/patchnetvlad.md)%s", fused)

    def estimated_seconds(self, retrieval: Retrieval) -> float:
        """Seconds to describe the queries, the candidates and (untrained) the images the vocabulary and PCA are
        fitted on, at `SECONDS_PER_MPIXEL`."""
        images = len(retrieval.q_names) + len(np.unique(retrieval.ids[retrieval.ids >= 0]))
        images += 0 if self.conf["checkpoint"] else self.conf["fit_max_images"]
        width, height = self.conf["resize"]
        return SECONDS_PER_MPIXEL * images * width * height / 1e6

    def map_bytes(self, retrieval: Retrieval, work_dir: Path) -> float:
        """Patch features are kept for the candidates only: bytes per candidate map image."""
        described = len(np.unique(retrieval.ids[retrieval.ids >= 0]))
        return sum(p.stat().st_size for p in self.map_files(work_dir)) / max(described, 1)

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
        estimate = RunEstimate(int((retrieval.ids >= 0).sum()))
        with h5py.File(cache / "map.h5", "r") as fm, h5py.File(cache / "query.h5", "r") as fq:
            for qi, q in enumerate(tqdm(retrieval.q_names, desc="patch matching", unit="query")):
                valid = np.flatnonzero(retrieval.ids[qi] >= 0)
                if q not in fq or not len(valid):
                    continue
                estimate.tell(len(valid))
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
            files.write_kapture_paths(out_dir / f"{name}_predictions.txt", q_paths, m_paths, rows)
            files.write_kapture_pairs(out_dir / f"{name}_scored_pairs.txt", retrieval.q_names, retrieval.m_names,
                                      rows, vals)
        if truth is not None:
            files.write_recalls(out_dir / "recalls.txt", {
                name: metrics.recall_at_n(rows, truth, ORIGINAL_NS, all_queries=True)
                for name, (rows, _) in rankings.items()})

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
