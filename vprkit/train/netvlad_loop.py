"""NetVLAD's training loop (mining, loss, LR schedule, per-epoch validation, checkpoints, early stopping) and test."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..evaluation import outputs
from ..models import checkpoint as trained
from .checkpoint import resume as resume_progress
from .losses import get_loss, guidance_loss
from .mining import Miner, MiningStats, Triplet, layout
from .netvlad_model import describe, recall, run
from .netvlad_session import Session
from .optim import make_optimizer

logger = logging.getLogger("vprkit")
MINING = ("violating", "nearest")


def _tuple_loss(s: Session, miner: Miner, queries: list[int], rng: np.random.Generator, loss_fn) -> torch.Tensor | None:
    """Loss of one batch of queries: mined tuples forwarded together; None when nothing could be mined."""
    tuples = miner.mine(queries, rng)
    return tuples_loss(s, tuples, loss_fn) if tuples else None


def tuples_loss(s: Session, tuples: list[Triplet], loss_fn) -> torch.Tensor:
    """Loss (+ weighted guidance loss) of training tuples of the train split, forwarded together."""
    q_bank, m_bank = s.banks["train"]
    queries, images, mask = layout(tuples)
    desc, weights = run(s.model, [q_bank.feats[i] for i in queries] + [m_bank.feats[j] for j in images])
    b, k = mask.shape
    loss = loss_fn(desc[:b], desc[b:2 * b], desc[2 * b:].reshape(b, k, -1), torch.from_numpy(mask).to(desc.device))
    g = s.conf["guidance"]
    if weights is not None and q_bank.guidance is not None and g["weight"] > 0:
        target = [q_bank.guidance[i] for i in queries] + [m_bank.guidance[j] for j in images]
        loss = loss + g["weight"] * torch.stack([guidance_loss(w[None], gt[None].to(w.device), g["loss"], g["resize"])
                                                 for w, gt in zip(weights, target)]).mean()
    return loss


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def train(s: Session, resume: bool = True) -> dict:
    """The training loop: mining, loss, LR schedule, per-epoch validation, checkpoints, early stopping.
    Continues a run found in the output folder (same settings, more epochs allowed) unless `resume` is False."""
    t = s.conf["train"]
    if t["init"]:  # start from a trained model (e.g. adapt a labelled model to a new map), not from k-means
        s.load(Path(t["init"]), restore_rng=False)
    else:
        s.init_centroids()
    opt = make_optimizer(t, [p for p in s.model.parameters() if p.requires_grad])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=t["lr_step"], gamma=t["lr_gamma"])
    places = s.places["train"]
    if t["mining"] not in MINING:
        raise ValueError(f"unknown train.mining '{t['mining']}'; choose one of {MINING}")
    miner = Miner(places.positives, places.non_negatives, len(places.m_names), t["num_negs"], t["neg_samples"],
                  t["mining_margin"] if t["mining"] == "violating" else None)
    rng = np.random.default_rng(t["seed"])
    progress = resume_progress(s.out / "last.pt", s.out / "best.pt", s.out / "log.csv", t["patience"],
                               lambda path: s.load(path, opt, sched), resume, s.conf, ("train.epochs",))
    step = progress.meta.get("step", 0)
    if progress.meta:
        rng.bit_generator.state = json.loads(progress.meta["mining_rng"])
        miner.previous = progress.meta["neg_cache"].numpy().copy()
        logger.info("resuming after epoch %d (step %d)", progress.meta["epoch"], step)
    board = _tensorboard(s.out)
    loss_fn = get_loss(**s.conf["loss"])
    q_bank, m_bank = s.banks["train"]
    row: dict = {}
    for epoch in progress.epochs(t["epochs"]):
        s.model.train()
        order = rng.permutation(len(places.q_names))[: t["max_queries_per_epoch"]]
        miner.stats, losses, since = MiningStats(), [], None
        batches = range(0, len(order), t["batch_size"])
        for b in tqdm(batches, desc=f"epoch {epoch + 1}/{t['epochs']}", unit="batch", leave=False):
            if since is None or since >= t["cache_refresh"]:
                miner.refresh(describe(s.model, q_bank), describe(s.model, m_bank))
                since = 0
            since += 1
            loss = _tuple_loss(s, miner, order[b:b + t["batch_size"]].tolist(), rng, loss_fn)
            if loss is None:
                continue
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            losses.append(loss.item())
        sched.step()
        val = recall(s.model, *s.banks["val"], s.places["val"])
        st = miner.stats
        row = {"epoch": epoch, "step": step, "loss": float(np.mean(losses)) if losses else float("nan"),
               "lr": opt.param_groups[0]["lr"], **{f"val_{k}": val[k] for k in ("R@1", "R@5", "R@10", "R@20")},
               "skipped_no_positive": st.no_positive, "skipped_no_negative": st.no_negative,
               "skipped_no_violating": st.no_violating, "few_negatives": st.few_negatives}
        progress.end_epoch(epoch, val["R@5"], row, s.model, opt, sched,
                           meta={"kind": trained.KIND, "arch": s.arch, "conf": s.conf, "val": val},
                           state={"step": step, "mining_rng": json.dumps(rng.bit_generator.state),
                                  "neg_cache": torch.from_numpy(miner.previous.copy())})
        if board is not None:
            for k, v in row.items():
                board.add_scalar(k, v, epoch)
        logger.info("epoch %d: %s", epoch, row)
    if board is not None:
        board.close()
    return row


def test(s: Session, checkpoint: str | Path | None = None, split: str = "test") -> dict:
    """Recall@N on a split; without a checkpoint, the k-means-initialised (untrained) NetVLAD."""
    if checkpoint is not None:
        s.load(Path(checkpoint), restore_rng=False)
    else:
        s.init_centroids()
    res = recall(s.model, *s.banks[split], s.places[split])
    res["checkpoint"] = str(checkpoint) if checkpoint else None
    res["split"] = split
    outputs.write_json(s.out / f"test-{split}-{Path(checkpoint).stem if checkpoint else 'untrained'}.json", res)
    return res
