"""Train GCSA in two stages, as in the paper: (1) the descriptor projection alone, on the cosine of
projected descriptors; (2) the whole network (affinity projections + transformer), initialised from
stage 1's checkpoint (the projection frozen by default). Both stages minimise a listwise
average-precision loss on the refined similarities, so training optimises what mAP@10 measures.

Input is a `vprkit query` results folder of *training* queries (their retrieval, descriptors and
ground truth) plus side information. Query position priors are re-simulated every epoch (a fresh
noise draw is free data augmentation); validation uses one fixed draw. Every epoch is checkpointed
(exact resume), the best epoch of each stage is kept and logged to CSV.

    vprkit train gcsa RESULTS_DIR --gt index -o OUT --map-sideinfo index --query-sideinfo index \
        --preset position --set query_prior_sigma=3
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..config import Presets
from ..data.groundtruth import GroundTruth, ground_truth_for_kept
from ..data.images import list_images
from ..data.sideinfo import SideInfo, noise_model, simulate_prior
from ..evaluation import metrics
from ..features import h5io
from ..models.gcsa import GCSA
from ..rerank.gcsa import (
    MAP_FEATURES,
    SIDE_DEFAULTS,
    Contexts,
    load_sides,
    order,
    projected_scores,
    query_descriptors,
    refined_scores,
    side_batches,
)
from ..results import Retrieval, load_retrieval
from .checkpoint import load_checkpoint, resume, run_folder, save_checkpoint, seed_everything

logger = logging.getLogger("vprkit")

default_conf = {
    "model": {"proj_dim": 128, "width": 64, "num_layers": 1, "num_heads": 4, "dropout": 0.1},
    "modalities": ["position"],
    "num_candidates": 100,
    "num_anchors": 50,
    "side": dict(SIDE_DEFAULTS),
    "query_prior_sigma": 3.0,
    "stage1": {"epochs": 8, "lr": 1e-3},
    "stage2": {"epochs": 25, "lr": 1e-3, "freeze_proj": True},
    "batch_size": 32,
    "val_fraction": 0.15,
    "patience": 5,
    "seed": 0,
}
confs = {
    "visual": {"modalities": []},
    "position": {"modalities": ["position"]},
    "position-fov": {"modalities": ["position", "fov"]},
    "radio": {"modalities": ["radio"]},
}


CONFIG = Presets("train gcsa", default_conf, confs, "position")


def ap_loss(scores: torch.Tensor, labels: torch.Tensor, num_bins: int = 25) -> torch.Tensor:
    """1 - quantised average precision (Revaud et al., ICCV 2019), averaged over rows with a positive.

    Scores in [-1, 1] are soft-assigned to bins with a triangular kernel; precision and recall per
    bin give a differentiable AP. Rows without positives carry no signal and are left out.
    """
    delta = 2.0 / (num_bins - 1)
    centers = 1.0 - delta * torch.arange(num_bins, dtype=scores.dtype)
    w = torch.clamp(1.0 - (scores[..., None] - centers).abs() / delta, min=0.0)  # (B, K, bins)
    y = labels.to(scores.dtype)
    hits = (w * y[..., None]).sum(1)  # (B, bins)
    precision = hits.cumsum(1) / (w.sum(1).cumsum(1) + 1e-16)
    npos = y.sum(1)
    keep = npos > 0
    if not keep.any():
        return scores.sum() * 0.0
    ap = (precision * hits).sum(1)[keep] / npos[keep]
    return 1.0 - ap.mean()


def init_stage2(model: GCSA, stage1_checkpoint: str | Path, freeze_proj: bool) -> list[torch.nn.Parameter]:
    """Load stage 1's weights into `model`; returns the parameters stage 2 trains."""
    load_checkpoint(stage1_checkpoint, model, restore_rng=False)
    model.input_proj.requires_grad_(not freeze_proj)
    return [p for p in model.parameters() if p.requires_grad]


class Trainer:
    """Holds the training data and runs the two stages (each resumed from its last epoch when `resume`)."""

    def __init__(self, conf: dict, ctx: Contexts, truth: GroundTruth, q_true: SideInfo, out_dir: Path,
                 resume: bool = True) -> None:
        self.conf, self.ctx, self.truth, self.q_true, self.out_dir = conf, ctx, truth, q_true, out_dir
        self.resume = resume
        rng = np.random.default_rng(conf["seed"])
        perm = rng.permutation(len(ctx.ids))
        n_val = int(round(conf["val_fraction"] * len(perm)))
        self.val, self.train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        self.labels = torch.from_numpy(np.stack([np.isin(ctx.ids[i], truth.positives[i]) for i in range(len(ctx.ids))]))
        self.val_ctx = ctx.subset(self.val)

    def query_side(self, epoch: int) -> SideInfo:
        """This epoch's simulated query priors (or the given positions when no noise is simulated)."""
        sigma = self.conf["query_prior_sigma"]
        return simulate_prior(self.q_true, sigma, self.conf["seed"] + epoch) if sigma else self.q_true

    @cached_property
    def val_sides(self) -> list[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        """Side affinities of the validation queries (one fixed prior draw), computed once for all epochs."""
        sigma = self.conf["query_prior_sigma"]
        side = simulate_prior(self.q_true, sigma, self.conf["seed"] + 10_000) if sigma else self.q_true
        return list(side_batches(self.val_ctx, side.subset(self.val)))

    def validate(self, model: GCSA, stage: int) -> dict:
        """Metrics of the validation queries' re-ranking (stage 1: projected-descriptor cosine)."""
        scores = (projected_scores(model, self.val_ctx) if stage == 1 else
                  refined_scores(model, self.val_ctx, self.val_sides))
        ids, _ = order(self.val_ctx.ids, scores)
        return metrics.evaluate(ids, GroundTruth([self.truth.positives[i] for i in self.val]))

    def _loss(self, model: GCSA, stage: int, rows: np.ndarray, q_side: SideInfo) -> torch.Tensor:
        desc, anchors, pad = self.ctx.tensors(rows, model.project)
        scores = (model.projected_scores(desc) if stage == 1 else
                  model(desc, anchors, self.ctx.side(rows, q_side), pad, projected=True))
        return ap_loss(scores, self.labels[torch.from_numpy(rows)] & ~pad[:, 1:])

    def stage(self, model: GCSA, stage: int, params: list[torch.nn.Parameter]) -> Path:
        """Train one stage; returns its best checkpoint (reused as is when the stage already finished)."""
        sc = self.conf[f"stage{stage}"]
        opt = torch.optim.Adam(params, lr=sc["lr"])
        progress = resume(self.out_dir / f"stage{stage}-last.pt", self.out_dir / f"stage{stage}.pt",
                          self.out_dir / f"stage{stage}.csv", self.conf["patience"],
                          lambda path: load_checkpoint(path, model, opt), self.resume, self.conf,
                          ("stage1.epochs", "stage2.epochs"))
        meta = {"model_config": model.config(), "conf": self.conf, "stage": stage}
        for epoch in progress.epochs(sc["epochs"]):
            model.train()
            q_side = self.query_side(epoch)
            rows = np.random.permutation(self.train)
            losses = []
            for s in tqdm(range(0, len(rows), self.conf["batch_size"]), desc=f"GCSA stage {stage} epoch {epoch}",
                          leave=False):
                loss = self._loss(model, stage, np.sort(rows[s:s + self.conf["batch_size"]]), q_side)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
            val = self.validate(model, stage)
            progress.end_epoch(epoch, val["mAP@10"], {"loss": float(np.mean(losses)), "val_mAP@10": val["mAP@10"],
                                                      "val_R@1": val["R@1"]}, model, opt, meta={**meta, "val": val})
            logger.info("stage %d epoch %d loss %.4f val mAP@10 %.4f", stage, epoch, np.mean(losses), val["mAP@10"])
        return progress.best


def train(conf: dict, ctx: Contexts, truth: GroundTruth, q_true: SideInfo, out_dir: str | Path,
          resume: bool = True) -> Path:
    """Both stages on prepared contexts; returns the final checkpoint (out_dir/gcsa.pt)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(conf["seed"])
    model = GCSA(ctx.q_desc.shape[1], conf["num_anchors"], conf["modalities"], **conf["model"])
    trainer = Trainer(conf, ctx, truth, q_true, out_dir, resume)
    if conf["model"]["proj_dim"]:
        s1 = trainer.stage(model, 1, list(model.input_proj.parameters()))
        params = init_stage2(model, s1, conf["stage2"]["freeze_proj"])
    else:
        params = list(model.parameters())
    best = trainer.stage(model, 2, params)
    final = out_dir / "gcsa.pt"
    load_checkpoint(best, model, restore_rng=False)
    save_checkpoint(final, model, model_config=model.config(), conf=conf,
                    noise_model=noise_model(conf["query_prior_sigma"], conf["seed"]) if conf["query_prior_sigma"]
                    else "none")
    return final


def main(conf: dict, results_dir: str | Path, out_dir: str | Path, *, gt: str, map_sideinfo: str | None = None,
         query_sideinfo: str | None = None, threshold: float | None = None, resume: bool = True) -> Path:
    """Train GCSA on a `vprkit query` results folder of training queries; returns the checkpoint path.
    A run found in `out_dir` is continued (same settings, more epochs allowed) when `resume`."""
    out_dir = run_folder(out_dir)
    retrieval: Retrieval = load_retrieval(results_dir)
    n = conf["num_candidates"]
    if retrieval.ids.shape[1] < max(n, conf["num_anchors"]):
        logger.warning("the retrieval has only %d candidates per query (asked for %d candidates, %d anchors)",
                       retrieval.ids.shape[1], n, conf["num_anchors"])
    truth = ground_truth_for_kept(gt, list_images(retrieval.query_dir), retrieval.q_names, retrieval.m_names,
                                  threshold)
    m_side, q_true = load_sides(retrieval, map_sideinfo, query_sideinfo, conf["modalities"], None, conf["seed"])
    m_desc = h5io.read_global(retrieval.index_dir / MAP_FEATURES, retrieval.m_names)
    q_desc = query_descriptors(retrieval, out_dir / "cache")
    ctx = Contexts.build(q_desc, m_desc, retrieval.ids[:, :n], conf["num_anchors"], m_side, conf["modalities"],
                         conf["side"])
    return train(conf, ctx, truth, q_true, out_dir, resume)
