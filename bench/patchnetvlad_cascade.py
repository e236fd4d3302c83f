"""Patch-NetVLAD re-ranking of real images (Corridor, Nordland dev): seconds per query and agreement with the
reference ranking, for the original's per-pair loop, vprkit's reference path, its exact speed options and the
cascade; all variants of a query run one after the other (interleaved), so their ratios share the machine's load.

`OMP_NUM_THREADS=1 .venv/bin/python bench/patchnetvlad_cascade.py --data ../shared/data --datasets corridor \\
    --queries 3 --agree-queries 20 --performance-pcs 512` (docs/benchmarks.md: one process per data set)

Per data set: the global `vgg19-netvlad` retrieval (top --num-rerank), then each preset's patch features
(k-means NetVLAD + PCA fitted on the map, as `bench/patchnetvlad_recall.py`; extraction not timed). The
"original per-pair loop" re-derives the original's `local_matcher` / `PatchMatcher`: per candidate it loads
each patch size's float32 `.npy`, takes `sqrt(2 - 2 q.d + 1e-9)` and its argmin both ways in torch, mutual
matches with numpy, `cv2.findHomography(..., FM_RANSAC, 24 px)` on more than 3 mutuals (or rapid spatial
scoring), then `(x - mean) / std` fusion and `argsort`. The reference is vprkit's float32 path with RANSAC in
one thread. Agreement: same top-1 candidate as the reference, Spearman of the candidates' positions.
The cascade's agreement is also computed on every query of --agree-queries from the reference's own per-pair
scores (a pair's raw score does not depend on the other candidates, so the expensive preset's scores on the
cheap preset's top-k are the reference's, re-fused over those k: what `cascade_from` computes).
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from collections import OrderedDict
from contextlib import ExitStack
from pathlib import Path

import cv2
import h5py
import numpy as np
import torch
from common import machine
from recall_table import DATASETS
from scipy.stats import spearmanr

from vprkit import api
from vprkit.data.images import list_images
from vprkit.features import patches
from vprkit.rerank import spatial
from vprkit.rerank.patchnetvlad import CASCADE_SHARED, Matcher, PatchNetVLAD
from vprkit.results import load_retrieval

SECONDS = {"ransac_inliers": 0.0, "nearest": 0.0}  # time inside these `spatial` functions (reference: 1 thread)


def timed(fn):
    """`fn` that adds its wall time to SECONDS[fn.__name__]."""
    def wrapper(*args, **kw):
        t0 = time.perf_counter()
        out = fn(*args, **kw)
        SECONDS[fn.__name__] += time.perf_counter() - t0
        return out
    return wrapper


def link_subset(src: Path, dst: Path, names: list[str]) -> Path:
    """A folder of links to `names` of `src`."""
    for n in names:
        (dst / n).parent.mkdir(parents=True, exist_ok=True)
        if not (dst / n).is_symlink():
            (dst / n).symlink_to((src / n).resolve())
    return dst


def write_original_files(fh: h5py.File, names: list[str], sizes: list[int], out: Path) -> dict[str, list[Path]]:
    """Each image's patches per size as the original stores them: one float32 `.npy` of shape (d, N)."""
    files = {}
    out.mkdir(parents=True, exist_ok=True)
    for n in names:
        files[n] = [out / f"psize{s}_{len(files)}.npy" for s in sizes]
        for s, path in zip(sizes, files[n], strict=True):
            np.save(path, np.ascontiguousarray(fh[f"{n}/p{s}"][()].astype(np.float32).T))
    return files


def original_query(q_files: list[Path], cand_files: list[list[Path]], conf: dict, m: Matcher) -> np.ndarray:
    """The original's per-pair loop for one query; returns its fused scores on vprkit's sign (higher = better)."""
    qfeat = [torch.transpose(torch.tensor(np.load(f)), 0, 1) for f in q_files]
    diffs = np.zeros((len(cand_files), len(q_files)))
    for k, files in enumerate(cand_files):
        dbfeat = [torch.tensor(np.load(f)) for f in files]
        for s, (x, y) in enumerate(zip(qfeat, dbfeat, strict=True)):
            dist = torch.sqrt(2 - 2 * torch.matmul(x, y) + 1e-9)
            fw = torch.min(dist, 0)[1].numpy()
            bw = torch.argmin(dist, 1).numpy()
            mutuals = np.atleast_1d(np.argwhere(bw[fw] == np.arange(len(fw))).squeeze())
            if conf["matcher"] == "ransac" and len(mutuals) > 3:
                kp = m.centres[s]
                _, mask = cv2.findHomography(kp[mutuals], kp[fw[mutuals]], cv2.FM_RANSAC,
                                             ransacReprojThreshold=m.thresholds[s])
                diffs[k, s] = -int((mask.ravel() == 1).sum()) / x.shape[0]
            elif conf["matcher"] == "spatial" and len(mutuals) > 0:
                g = m.grid[s].numpy().T
                d = g[:, mutuals] - g[:, fw[mutuals]]
                r = np.abs(d - d.mean(1, keepdims=True))
                diffs[k, s] = -(((g[0].max() - r[0]) ** 2 + (g[1].max() - r[1]) ** 2).sum() / x.shape[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        fused = sum(w * (diffs[:, s] - diffs[:, s].mean()) / diffs[:, s].std()
                    for s, w in enumerate(conf["patch_weights"]))
    return -fused


def cascade_order(cheap: np.ndarray, raw: torch.Tensor, m: Matcher, k: int, glob: np.ndarray) -> np.ndarray:
    """Candidate order of a cascade: the expensive preset's raw scores `raw` (S, B) fused over the cheap
    fused scores' top `k`, then the rest in the cheap order."""
    order = np.argsort(-cheap)
    head = order[:k]
    return np.concatenate([head[np.argsort(-m.fuse(raw[:, head], glob[head]))], order[k:]])


def agreement(order: np.ndarray, ref: np.ndarray) -> tuple[bool, float]:
    """(same top-1, Spearman of the candidates' positions) of two orders of the same candidates."""
    pos, pos_ref = np.argsort(order), np.argsort(ref)
    return bool(order[0] == ref[0]), float(spearmanr(pos, pos_ref).statistic)


def prepare(preset: str, over: dict, ret, work: Path) -> tuple[dict, Matcher, Path]:
    """(conf, matcher, cache folder) of a preset, its patch features extracted (not timed)."""
    conf = PatchNetVLAD.CONFIG.resolve(preset, **over)
    matcher, cache = PatchNetVLAD(conf).prepare(ret, work)
    return conf, matcher, cache


def run_dataset(args, ds: str, tmp: Path) -> None:
    """One data set: timing table over the first --queries queries, cascade agreement over --agree-queries."""
    map_dir, q_dir, _, _ = DATASETS[ds]
    root = Path(args.data).resolve()
    nordland = ds.startswith("nordland")
    limit = args.nordland_limit if nordland else None
    m_names = list_images(root / map_dir)[:limit]
    q_all = list_images(root / q_dir)[:limit]
    pick = np.linspace(0, len(q_all) - 1, min(args.agree_queries, len(q_all))).round().astype(int)
    q_names = [q_all[i] for i in pick]
    m_dir, q_link = link_subset(root / map_dir, tmp / "map", m_names), link_subset(root / q_dir, tmp / "q", q_names)
    if not (tmp / "res" / "results.json").is_file():  # a kept --work folder: the same retrieval
        idx = api.index_map(m_dir, tmp / "idx", preset="vgg19-netvlad")
        api.localize(idx, q_link, top_k=args.num_rerank, out_dir=tmp / "res")
    ret = load_retrieval(tmp / "res")
    resize = [int(v) for v in (args.nordland_resize if nordland else args.resize).split("x")]
    over = {"resize": resize, "backbone_cache": str(tmp / "backbone.h5"), "fit_max_images": args.fit_max_images,
            "ransac_threads": 1}
    perf_over = {**over, "num_pcs": args.performance_pcs}
    shared = {k: v for k, v in over.items() if k in CASCADE_SHARED}
    confs = {p: prepare(p, perf_over if p == "performance" else shared, ret, tmp / "work")
             for p in ("storage", "speed", "performance")}
    print(f"### {ds}: {len(m_names)} map images, {len(q_names)} queries (every {len(q_all) // len(q_names)}th), "
          f"top-{args.num_rerank}, patches at {resize[0]}x{resize[1]}, performance at {args.performance_pcs} dims\n",
          flush=True)
    timed = q_names[:: max(1, len(q_names) // args.queries)][: args.queries]
    with ExitStack() as stack:
        files = Files(ret, confs, stack)
        time_table(args, ret, confs, timed, tmp, files)
        agree_table(args, ret, confs, files)


def variants(preset: str, tops: list[int], threads: int) -> dict[str, tuple[str, dict, int]]:
    """label -> (cheap preset or '', conf overrides, cascade top-k) of the variants timed for `preset`
    (RANSAC-bound `performance`: int8 and match_batch alone left out, they touch only the matmul share)."""
    out = {"vprkit fp32 (reference)": ("", {}, 0), "match_dtype=bfloat16": ("", {"match_dtype": "bfloat16"}, 0)}
    if preset == "performance":
        out[f"ransac_threads={threads}"] = ("", {"ransac_threads": threads}, 0)
        out[f"ransac_threads={threads}, match_batch=100"] = ("", {"ransac_threads": threads, "match_batch": 100}, 0)
        out[f"ransac_threads={threads}, match_batch=100, map_cache_mb=1024"] = (
            "", {"ransac_threads": threads, "match_batch": 100, "map_cache_mb": 1024}, 0)
        fast = {"ransac_threads": threads}
        return out | {f"cascade storage -> top-{k}, ransac_threads={threads}": ("storage", fast, k) for k in tops}
    out |= {"match_dtype=int8": ("", {"match_dtype": "int8"}, 0),
            "match_batch=100 (one matmul per size)": ("", {"match_batch": 100}, 0),
            "match_batch=100, map_cache_mb=1024": ("", {"match_batch": 100, "map_cache_mb": 1024}, 0)}
    return out | ({f"cascade storage -> top-{k}": ("storage", {}, k) for k in tops} if preset == "speed" else {})


def with_conf(m: Matcher, over: dict) -> Matcher:
    """The same matcher (grids, thresholds, codebook) with some settings changed and its own map cache."""
    out = copy.copy(m)
    out.conf, out.cache = {**m.conf, **over}, OrderedDict()
    return out


class Files:
    """The presets' open feature files and the candidates of each query."""

    def __init__(self, ret, presets: dict, stack):
        self.ret, self.presets = ret, presets
        self.fq = {p: stack.enter_context(h5py.File(c / "query.h5", "r")) for p, (_, _, c) in presets.items()}
        self.fm = {p: stack.enter_context(h5py.File(c / "map.h5", "r")) for p, (_, _, c) in presets.items()}
        self.matchers: dict[tuple, Matcher] = {}  # one per preset and settings: a map cache lives across queries

    def matcher(self, preset: str, over: dict) -> Matcher:
        """The preset's matcher with `over`, the same object for every query."""
        key = (preset, *sorted(over.items()))
        if key not in self.matchers:
            self.matchers[key] = with_conf(self.presets[preset][1], over)
        return self.matchers[key]

    def scores(self, preset: str, m: Matcher, q: str, cand: np.ndarray, raw: bool = False):
        """Fused (or raw) scores of query `q` against candidate ids `cand` with matcher `m` of `preset`."""
        qi = self.ret.q_names.index(q)
        names = [self.ret.m_names[j] for j in cand]
        feats = patches.read_patches(self.fq[preset], [q], m.conf["patch_sizes"])
        if raw:
            return m.raw_scores(feats, self.fm[preset], names)
        pos = [list(self.ret.ids[qi]).index(j) for j in cand]
        return m.rank_scores(feats, self.fm[preset], names, self.ret.scores[qi, pos])

    def order(self, preset: str, q: str, cheap: str, over: dict, k: int) -> np.ndarray:
        """Order of query `q`'s candidate ids for one variant (a preset, or a cascade from `cheap`)."""
        cand = self.ret.ids[self.ret.q_names.index(q)]
        head = cand
        if cheap:
            rest = cand[np.argsort(-self.scores(cheap, self.matcher(cheap, over), q, cand))]
            head, tail = rest[:k], rest[k:]
        out = head[np.argsort(-self.scores(preset, self.matcher(preset, over), q, head))]
        return np.concatenate([out, tail]) if cheap else out


def time_table(args, ret, presets: dict, timed: list[str], tmp: Path, files: Files) -> None:
    """Seconds per query of every variant, interleaved per query, and agreement with the reference."""
    tops = [int(k) for k in args.cascade_top.split(",")]
    threads = args.threads or len(os.sched_getaffinity(0))
    print("| preset | variant | s/query | vs original per-pair loop | vs vprkit fp32 | same top-1 as reference "
          "| Spearman vs reference (min) |")
    print("|---|---|---|---|---|---|---|")
    for preset in args.presets.split(","):
        conf, m, _ = presets[preset]
        needed = sorted({ret.m_names[j] for q in timed for j in ret.ids[ret.q_names.index(q)]})
        npy = tmp / f"npy-{preset}"
        qf = write_original_files(files.fq[preset], timed, conf["patch_sizes"], npy / "q")
        mf = write_original_files(files.fm[preset], needed, conf["patch_sizes"], npy / "m") if needed else {}
        var = variants(preset, tops, threads)
        t = {"original per-pair loop": 0.0} | {v: 0.0 for v in var}
        same = {v: 0 for v in t}
        rho = {v: 1.0 for v in t}
        parts = dict.fromkeys(SECONDS, 0.0)
        for q in timed:
            cand = ret.ids[ret.q_names.index(q)]
            orders = {}
            for v, (cheap, over, k) in var.items():
                SECONDS.update(dict.fromkeys(SECONDS, 0.0))
                t0 = time.perf_counter()
                orders[v] = files.order(preset, q, cheap, over, k)
                t[v] += time.perf_counter() - t0
                if v == "vprkit fp32 (reference)":
                    parts = {key: parts[key] + SECONDS[key] for key in SECONDS}
            t0 = time.perf_counter()
            orig = original_query(qf[q], [mf[ret.m_names[j]] for j in cand], conf, m)
            t["original per-pair loop"] += time.perf_counter() - t0
            orders["original per-pair loop"] = cand[np.argsort(-orig)]
            ref = orders["vprkit fp32 (reference)"]
            for v, o in orders.items():
                top1, r = agreement(o, ref)
                same[v] += top1
                rho[v] = min(rho[v], r)
        n, orig_t, ref_t = len(timed), t["original per-pair loop"], t["vprkit fp32 (reference)"]
        for v, sec in t.items():
            print(f"| {preset} | {v} | {sec / n:.3f} | {orig_t / sec:.2f}x | {ref_t / sec:.2f}x | {same[v]}/{n} "
                  f"| {rho[v]:.4f} |", flush=True)
        nn, ransac = parts["nearest"], parts["ransac_inliers"]
        print(f"\n{preset}, reference per query: {ref_t / n:.3f} s = nearest neighbours (float32 matmul + argmax) "
              f"{nn / n:.3f} s ({nn / ref_t:.0%}) + OpenCV RANSAC {ransac / n:.3f} s ({ransac / ref_t:.0%}) + the rest "
              f"(reading, mutual pairs, spatial scores, fusion) {(ref_t - nn - ransac) / n:.3f} s", flush=True)
        if ransac:
            print(f"any exact path makes the same findHomography calls: on {threads} cores >= "
                  f"{ransac / n / threads:.3f} s per query, i.e. at most {orig_t * threads / ransac:.2f}x the original "
                  "per-pair loop", flush=True)
        print()


def agree_table(args, ret, presets: dict, files: Files) -> None:
    """Cascades against the full reference ranking, over every query, from the reference's own scores."""
    tops = [int(k) for k in args.cascade_top.split(",")]
    fast = {"ransac_threads": args.threads}
    rows: dict[str, list[tuple[bool, float, bool]]] = {}
    for q in ret.q_names:
        cand = ret.ids[ret.q_names.index(q)]
        glob = ret.scores[ret.q_names.index(q)]
        cheap = files.scores("storage", presets["storage"][1], q, cand)
        for preset in ("speed", "performance"):
            m = with_conf(presets[preset][1], fast)
            raw = files.scores(preset, m, q, cand, raw=True)
            ref = cand[np.argsort(-m.fuse(raw, glob))]
            for k in tops:
                order = cand[cascade_order(cheap, raw, m, k, glob)]
                top1, r = agreement(order, ref)
                rows.setdefault(f"{preset}: cascade storage -> top-{k}", []).append(
                    (top1, r, ref[0] in cand[np.argsort(-cheap)[:k]]))
    n = len(ret.q_names)
    print(f"| cascade (all {n} queries) | same top-1 as the full preset | reference top-1 in storage's top-k "
          "| Spearman vs full (mean) | Spearman (min) |")
    print("|---|---|---|---|---|")
    for label, r in rows.items():
        a = np.array(r, dtype=np.float64)
        print(f"| {label} | {a[:, 0].mean():.3f} ({int(a[:, 0].sum())}/{n}) | {a[:, 2].mean():.3f} "
              f"| {a[:, 1].mean():.4f} | {a[:, 1].min():.4f} |", flush=True)
    print()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--datasets", default="corridor,nordland_dev")
    p.add_argument("--presets", default="storage,speed,performance")
    p.add_argument("--num-rerank", type=int, default=100)
    p.add_argument("--queries", type=int, default=6, help="queries timed per data set")
    p.add_argument("--agree-queries", type=int, default=20, help="queries (evenly spaced) for the cascade agreement")
    p.add_argument("--nordland-limit", type=int, default=150, help="first N Nordland places (map and queries)")
    p.add_argument("--work", help="keep the retrieval and patch features here (reused by the next run)")
    p.add_argument("--resize", default="320x240")
    p.add_argument("--nordland-resize", default="384x192", help="size 8 keeps 85 patches (256x128: 9)")
    p.add_argument("--performance-pcs", type=int, default=4096)
    p.add_argument("--fit-max-images", type=int, default=30)
    p.add_argument("--cascade-top", default="10,20")
    p.add_argument("--threads", type=int, default=0, help="RANSAC threads of the parallel variants (0: cores)")
    args = p.parse_args()
    print(f"machine: {machine()}, OpenCV threads {cv2.getNumThreads()}\n")
    spatial.ransac_inliers, spatial.nearest = timed(spatial.ransac_inliers), timed(spatial.nearest)
    for ds in args.datasets.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(args.work) / ds if args.work else Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            run_dataset(args, ds, work)


if __name__ == "__main__":
    main()
