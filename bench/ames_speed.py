"""How much faster is vprkit's AMES re-ranking than the authors' way of computing the same scores, on this machine?

Reference path: the authors' forward re-derived with torch's nn.MultiheadAttention and their two (L, L) masks plus
key padding, the query descriptors repeated and embedded for every candidate, fp32 (as their evaluation runs it:
all top-100 candidates of a query in one batch). vprkit: `rerank.ames.score_candidates` (the query embedded once,
attention block by block with fused kernels, the masked-out blocks never computed), in fp32 and in bf16. Runs are
interleaved; the table gives the best of `--repeats` per query, ratios and the largest difference from the reference
in raw scores and in final scores (lambda 0.55, temp 0.3, the authors' fp defaults). With `--checkpoint` (a trained
fp model) and `--queries-file` / `--map-file` (local features it reads) the scores are real ones; otherwise random
descriptors and a model with random weights.

    OMP_NUM_THREADS=1 .venv/bin/python bench/ames_speed.py --budget 600/100
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from common import machine

from vprkit.features import local
from vprkit.models.ames import AMES, load_ames, rerank_score
from vprkit.rerank.ames import score_candidates


@torch.inference_mode()
def reference(model: AMES, q: torch.Tensor, qv: torch.Tensor, m: torch.Tensor, mv: torch.Tensor) -> torch.Tensor:
    """The authors' forward: [token | query | map] through nn.MultiheadAttention with (L, L) masks and key padding."""
    b, n = len(m), q.shape[0]
    x = model.embed(q.expand(b, -1, -1), qv.expand(b, -1))
    y = model.embed(m, mv).half().float()
    seq = torch.cat([model.mtc_token.expand(b, 1, -1), x, y], 1)
    image = torch.tensor([0] + [1] * n + [2] * m.shape[1])
    other = (image[:, None] != image[None, :]) & (image[:, None] > 0) & (image[None, :] > 0)
    same = (image[:, None] == image[None, :]) & (image[:, None] > 0)
    pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool), ~qv.expand(b, -1), ~mv], 1)
    for layer in model.decoder.layers:  # True = may not attend, as nn.MultiheadAttention reads masks
        seq = layer.norm1(seq + layer.self_attn(seq, seq, seq, attn_mask=other, key_padding_mask=pad,
                                                need_weights=False)[0])
        seq = layer.norm2(seq + layer.cross_attn(seq, seq, seq, attn_mask=same, key_padding_mask=pad,
                                                 need_weights=False)[0])
        seq = layer.norm3(seq + layer.linear2(F.relu(layer.linear1(seq))))
    return model.classifier(seq[:, 0]).squeeze(-1)


def _inputs(args: argparse.Namespace) -> tuple[AMES, list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor,
                                                torch.Tensor]:
    """(model, queries [(desc, valid)], map descriptors (N, Km, D), map valid)."""
    kq, km = map(int, args.budget.split("/"))
    if args.checkpoint:
        model, _ = load_ames(args.checkpoint)
        qd, qv = local.split(local.read_rows(args.queries_file)[:args.queries])
        md, mv = local.split(local.read_rows(args.map_file)[:args.candidates])
    else:
        torch.manual_seed(0)
        model = AMES(input_dim=384).eval()
        qd, qv = torch.randn(args.queries, kq, 384), torch.ones(args.queries, kq, dtype=torch.bool)
        md, mv = torch.randn(args.candidates, km, 384), torch.ones(args.candidates, km, dtype=torch.bool)
    return model, list(zip(qd, qv)), md, mv


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", default="600/100", help="query/map descriptors (random inputs)")
    p.add_argument("--queries", type=int, default=2)
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--checkpoint", help="a trained fp AMES (`vprkit train ames` best.pt)")
    p.add_argument("--queries-file", help="local features of queries (with --checkpoint)")
    p.add_argument("--map-file", help="local features of map images (with --checkpoint)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, queries, md, mv = _inputs(args)
    cand = np.arange(len(md))
    paths = {"reference (authors' forward, fp32)": lambda q, v: reference(model, q, v, md, mv),
             "vprkit fp32": lambda q, v: score_candidates(model, q, v, lambda r: (md[r], mv[r]), cand),
             "vprkit bf16": lambda q, v: score_candidates(model, q, v, lambda r: (md[r], mv[r]), cand,
                                                          precision="bf16")}
    best = {k: [float("inf")] * len(queries) for k in paths}
    scores: dict[str, list[torch.Tensor]] = {k: [None] * len(queries) for k in paths}
    for _ in range(args.repeats):
        for qi, (q, v) in enumerate(queries):
            for name, run in paths.items():  # interleaved: load changes hit all paths alike
                t = time.perf_counter()
                scores[name][qi] = run(q, v)
                best[name][qi] = min(best[name][qi], time.perf_counter() - t)
    ref_name = next(iter(paths))
    ref = torch.stack(scores[ref_name])
    glob = torch.zeros_like(ref)
    print(f"machine: {machine()}")
    print(f"{len(queries)} queries x {len(md)} candidates, descriptors {queries[0][0].shape[0]} / {md.shape[1]}, "
          f"{'trained model ' + args.checkpoint if args.checkpoint else 'random model and descriptors'}; raw "
          f"score spread (std) {ref.std():.3g}")
    print("| path | s per query | speed-up | max raw diff | max final-score diff |\n|---|---|---|---|---|")
    for name in paths:
        s = torch.stack(scores[name])
        final = (rerank_score(glob, s) - rerank_score(glob, ref)).abs().max()
        print(f"| {name} | {np.sum(best[name]) / len(queries):.3f} | "
              f"{np.sum(best[ref_name]) / np.sum(best[name]):.2f}x | {(s - ref).abs().max():.1e} | {final:.1e} |")


if __name__ == "__main__":
    main()
