"""Choose the default global pipeline across datasets, by leave-one-dataset-out (LOO) ranking.

Every candidate (resolution x DINOv2-S block x facet x aggregator, multi-layer, PCA-whitening) is scored
(R@1) on every dev set. Candidates are ranked per set; the default is the best mean rank over all sets. The
LOO table answers "what would this procedure have given on a set it never saw": for each set, the winner by
mean rank over the *other* sets, scored on the held-out one. Those are the figures to quote for new data.

One backbone pass per (set, resolution) yields every block / facet (`DinoV2.tokens`), so the sweep costs a
few passes per set; aggregation reuses vprkit's own VLAD / GeM classes and PCA fit.

    python bench/select_defaults.py --data ../shared/data [--nordland-limit 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch
from common import machine

from vprkit.aggregators.gem import GeM
from vprkit.aggregators.vlad import VLAD
from vprkit.data.images import list_images, load_image, resize_to_stride
from vprkit.index.expansion import alpha_query_expansion, database_augment
from vprkit.models.dinov2 import DinoV2

# name -> (map folder, query folder, index tolerance, limit option)
DATASETS = {
    "corridor": ("corridor/ref", "corridor/query", 2),
    "gardenspoint_mini10": ("gardenspoint_mini10/ref", "gardenspoint_mini10/query", 0),
    "essex3in1": ("essex3in1_thumbs/ref", "essex3in1_thumbs/query", 0),
    "nordland_dev": ("nordland_64x32_dev/summer", "nordland_64x32_dev/winter", 2),
}
RESOLUTIONS = {"long322": {"resize_max": 322}, "short224": {"resize_min": 224}}
LAYERS = (7, 8, 9)
FACETS = ("value", "token")
AGGREGATORS = ("gem", "vlad32", "vlad64", "vlad32+pcaw")
MULTI = ((8, 9),)
CURRENT_DEFAULT = "long322/L7/value/vlad32"
MAX_FIT = 50_000


def recall_at(sims: np.ndarray, tol: int, n: int = 1) -> float:
    """Index-aligned ground truth: query i matches map j when |i - j| <= tol."""
    top = np.argsort(-sims, axis=1, kind="stable")[:, :n]
    return float((np.abs(top - np.arange(len(sims))[:, None]) <= tol).any(axis=1).mean())


@torch.no_grad()
def tap_tokens(model: DinoV2, root: Path, names: list[str], pre: dict, taps: list) -> dict:
    """(layer, facet) -> list of (C, h, w) float16 maps, one per image, from one backbone pass each."""
    out: dict = {t: [] for t in taps}
    for name in names:
        img = resize_to_stride(load_image(root / name), pre.get("resize_max"), 14, pre.get("resize_min"))
        x = model.preprocess(img)[None]
        h, w = x.shape[2] // 14, x.shape[3] // 14
        for t, tok in model.tokens(x, taps).items():
            out[t].append(tok[0, 1:].T.reshape(-1, h, w).half())
    return out


def _stack(maps: list[torch.Tensor]) -> list[torch.Tensor]:
    return [m.float()[None] for m in maps]


@torch.no_grad()
def describe(agg: str, m_maps: list, q_maps: list, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Global descriptors of map and queries for one aggregator, fitted on the map as vprkit does."""
    if agg == "gem":
        pool = GeM(p=3.0, normalize_input=True)
        return (torch.cat([pool(m) for m in m_maps]).numpy(), torch.cat([pool(q) for q in q_maps]).numpy())
    k = int(agg.split("+")[0][4:])
    vlad = VLAD(num_clusters=k, pca_dim=512 if "pcaw" in agg else None, seed=seed)
    feats = torch.cat([m[0].flatten(1).T for m in m_maps]).numpy()
    if len(feats) > MAX_FIT:
        feats = feats[np.random.default_rng(seed).choice(len(feats), MAX_FIT, replace=False)]
    vlad.fit(feats)
    if vlad.pca_dim:
        vlad.fit_pca(torch.cat([vlad.raw(m) for m in m_maps]).numpy())
    return (torch.cat([vlad(m) for m in m_maps]).numpy(), torch.cat([vlad(q) for q in q_maps]).numpy())


def concat_layers(maps: dict, layers: tuple[int, ...], facet: str, i: int) -> torch.Tensor:
    """Image i's multi-layer map: per-layer L2-normalised channels, concatenated (as DinoV2(layer=[...]))."""
    parts = [torch.nn.functional.normalize(maps[(la, facet)][i].float(), dim=0) for la in layers]
    return torch.cat(parts)[None]


def with_expansions(name: str, md: np.ndarray, qd: np.ndarray, tol: int) -> dict[str, float]:
    """R@1 of a candidate alone and with DBA, alpha-QE and both (k=2, alpha=3, as in Radenovic et al.)."""
    dba = database_augment(md)
    return {name: recall_at(qd @ md.T, tol), f"{name}|dba": recall_at(qd @ dba.T, tol),
            f"{name}|qe": recall_at(alpha_query_expansion(qd, md) @ md.T, tol),
            f"{name}|dba+qe": recall_at(alpha_query_expansion(qd, dba) @ dba.T, tol)}


def score_dataset(model: DinoV2, data: Path, ds: str, limit: int | None) -> dict[str, float]:
    """R@1 of every candidate (and its DBA / alpha-QE versions) on one set."""
    m_dir, q_dir, tol = DATASETS[ds]
    m_names, q_names = (list_images(data / d)[:limit] for d in (m_dir, q_dir))
    taps = [(la, f) for la in LAYERS for f in FACETS]
    scores: dict[str, float] = {}
    for res, pre in RESOLUTIONS.items():
        t0 = time.time()
        m_maps, q_maps = (tap_tokens(model, data / d, n, pre, taps) for d, n in ((m_dir, m_names), (q_dir, q_names)))
        for (la, facet), agg in itertools.product(taps, AGGREGATORS):
            md, qd = describe(agg, _stack(m_maps[(la, facet)]), _stack(q_maps[(la, facet)]))
            scores.update(with_expansions(f"{res}/L{la}/{facet}/{agg}", md, qd, tol))
        for layers in MULTI:
            mm = [concat_layers(m_maps, layers, "value", i) for i in range(len(m_names))]
            qq = [concat_layers(q_maps, layers, "value", i) for i in range(len(q_names))]
            md, qd = describe("vlad32", mm, qq)
            scores.update(with_expansions(f"{res}/L{'+'.join(map(str, layers))}/value/vlad32", md, qd, tol))
        print(f"  {ds} {res}: {len(m_names)}+{len(q_names)} images, {time.time() - t0:.0f} s", flush=True)
    return scores


def ranks(scores: dict[str, dict[str, float]], sets: list[str]) -> dict[str, float]:
    """Mean rank over `sets` (1 = best; ties share the average rank)."""
    names = list(next(iter(scores.values())))
    total = dict.fromkeys(names, 0.0)
    for ds in sets:
        vals = np.array([scores[ds][n] for n in names])
        for n, v in zip(names, vals):
            total[n] += 1 + (vals > v).sum() + ((vals == v).sum() - 1) / 2
    return {n: t / len(sets) for n, t in total.items()}


def report(scores: dict[str, dict[str, float]]) -> str:
    sets = list(scores)
    lines = ["### Leave-one-dataset-out (winner chosen on the other sets, scored on the held-out one)", "",
             "| held-out set | winner on the others | its R@1 here | current default R@1 | best possible here |",
             "|---|---|---|---|---|"]
    for ds in sets:
        mean = ranks(scores, [s for s in sets if s != ds])
        win = min(mean, key=lambda n: (mean[n], n))
        best = max(scores[ds].values())
        lines.append(f"| {ds} | {win} | {scores[ds][win]:.3f} | {scores[ds][CURRENT_DEFAULT]:.3f} | {best:.3f} |")
    mean = ranks(scores, sets)
    top = sorted(mean, key=lambda n: (mean[n], n))[:12]
    lines += ["", "### Mean rank over all sets (best first; the default is the best plain candidate, without DBA / QE)",
              "",
              "| candidate | mean rank | " + " | ".join(f"{s} R@1" for s in sets) + " |",
              "|---|---|" + "---|" * len(sets)]
    for n in top + ([CURRENT_DEFAULT] if CURRENT_DEFAULT not in top else []):
        lines.append(f"| {n} | {mean[n]:.1f} | " + " | ".join(f"{scores[s][n]:.3f}" for s in sets) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--nordland-limit", type=int, default=300, help="first N places of Nordland dev (index-aligned)")
    p.add_argument("--json", help="also write every score here")
    args = p.parse_args()
    print(f"machine: {machine()}\n", flush=True)
    model = DinoV2().eval()
    scores = {}
    for ds in args.datasets.split(","):
        limit = args.nordland_limit if ds == "nordland_dev" else None
        scores[ds] = score_dataset(model, Path(args.data), ds, limit)
    print(report(scores))
    if args.json:
        Path(args.json).write_text(json.dumps(scores, indent=1))

if __name__ == "__main__":
    main()
