"""Train AMES on any vprkit retrieval with ground truth (hloc-style step: presets + `main(conf, ...)`).

Pairs are (query, map image) from the global retrieval that `vprkit query` wrote: positives from the
ground truth and hard negatives from the query's top-`top_k` candidates that are not positives.
The model is the authors' architecture (`models.ames.AMES`; the authors released no training code).
`fp` mode learns with binary cross-entropy on the labels; `binary` mode distils a full-precision
teacher into a model that reads 128-bit codes from the authors' binarizer (ITQ-initialised, trained through
their erf surrogate; transformer initialised from the teacher), matching the teacher's probabilities.
Pairs where either image has no descriptor carry no local evidence and are left out of the loss (and of
the logged mean). Each epoch ends with a checkpoint (exact resume with RNG state), a CSV log row and the
validation mAP of the model's own ranking of held-out queries' top-k; the best epoch is kept as best.pt
and training stops early when it no longer improves.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..config import Presets
from ..data.groundtruth import GroundTruth, ground_truth_for_kept
from ..data.images import list_images
from ..evaluation.metrics import average_precision
from ..features import local
from ..models.ames import AMES, AUTHORS_CONF, ChamferTeacher, load_ames
from ..results import Retrieval, load_retrieval
from .checkpoint import load_checkpoint, run_folder, seed_everything
from .checkpoint import resume as resume_progress

logger = logging.getLogger("vprkit")

DEFAULT_CONF: dict = {
    "features": "dinov2", "resize_max": None, "num_query_desc": 600, "num_map_desc": 100,
    "model": dict(AUTHORS_CONF),
    "detector": None, "bits": None, "teacher": None, "distill_weight": 1.0, "itq_samples": 20000, "cache_dir": None,
    "epochs": 5, "lr": 3e-4, "weight_decay": 1e-4, "batch_size": 32,
    "top_k": 20, "num_pos": 2, "num_neg": 6, "val_fraction": 0.2, "patience": 3, "seed": 0, "device": "cpu",
}
CONFS: dict[str, dict] = {
    "fp": {},
    "binary": {"bits": 128, "lr": 1e-4},  # needs teacher=PATH of an fp model
    # labels plus the Chamfer similarity of the same descriptors as a soft target at every pair (small data)
    "fp-chamfer": {"teacher": "chamfer", "distill_weight": 0.5},
}


CONFIG = Presets("train ames", DEFAULT_CONF, CONFS, "fp")


def mine_pairs(cand: np.ndarray, truth: GroundTruth, queries: np.ndarray, top_k: int, num_pos: int, num_neg: int,
               rng: np.random.RandomState) -> np.ndarray:
    """(P, 3) int rows (query, map image, label): up to `num_pos` ground-truth positives and `num_neg` hard
    negatives (top-`top_k` candidates that are not positives) per query."""
    rows = []
    for qi in queries:
        pos = truth.positives[qi]
        if not len(pos):
            continue
        top = cand[qi, :top_k]
        neg = top[(top >= 0) & ~np.isin(top, pos)]
        rows += [(qi, m, 1) for m in rng.choice(pos, min(num_pos, len(pos)), replace=False)]
        rows += [(qi, m, 0) for m in rng.choice(neg, min(num_neg, len(neg)), replace=False)]
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def _forward(model: AMES, q: torch.Tensor, m: torch.Tensor, device: str) -> torch.Tensor:
    """Raw scores of stored rows q (B, Kq, 5 + D) against m (B, Km, 5 + D)."""
    qd, qv = local.split(q)
    md, mv = local.split(m)
    return model(qd.to(device), qv.to(device), md.to(device), mv.to(device))


def has_local(q: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """(B,) whether both images of each pair of stored rows have at least one descriptor."""
    return local.split(q)[1].any(1) & local.split(m)[1].any(1)


@torch.no_grad()
def validation_map(model: AMES, q_feats: torch.Tensor, m_feats: torch.Tensor, cand: np.ndarray,
                   truth: GroundTruth, queries: np.ndarray, top_k: int, device: str) -> float:
    """mAP of the model's own ordering of each query's top-k candidates (AP over all its positives)."""
    model.eval()
    aps = []
    for qi in queries:
        top = cand[qi, :top_k]
        top = top[top >= 0]
        if not len(truth.positives[qi]) or not len(top):
            continue
        raw = _forward(model, q_feats[qi].expand(len(top), -1, -1), m_feats[top], device).cpu().numpy()
        rel = np.isin(top[np.argsort(-raw, kind="stable")], truth.positives[qi])
        aps.append(average_precision(rel, len(truth.positives[qi])))
    return float(np.mean(aps)) if aps else float("nan")


def _build_model(conf: dict, dim: int, q_feats: torch.Tensor, m_feats: torch.Tensor, cand: np.ndarray
                 ) -> tuple[AMES, torch.nn.Module | None]:
    """(model to train, teacher or None). Input projection starts as whitening of map descriptors; an fp model
    may distil the Chamfer similarity (teacher="chamfer") besides its labels; a binary student starts from the
    teacher's transformer and an ITQ binarizer."""
    desc, valid = local.split(m_feats)
    desc = desc[valid]
    sample = desc[np.random.default_rng(conf["seed"]).permutation(len(desc))[:conf["itq_samples"]]]
    if not conf["bits"]:
        model = AMES(input_dim=dim, **conf["model"])
        model.init_whitening(sample)
        model.init_matching()
        chamfer = conf["teacher"] == "chamfer"
        return model, _chamfer_teacher(model, q_feats, m_feats, cand, conf) if chamfer else None
    if not conf["teacher"]:
        raise ValueError("binary AMES training distils an fp model: set teacher=PATH (a `vprkit train ames` best.pt)")
    teacher, _ = load_ames(conf["teacher"])
    student = AMES(**{**teacher.conf, "bits": conf["bits"]})
    transformer = {k: v for k, v in teacher.state_dict().items() if not k.startswith("remap_local.")}
    student.load_state_dict(transformer, strict=False)  # all but the input mapping, which differs
    student.remap_local[-1].load_state_dict(teacher.remap_local[-1].state_dict())  # the LayerNorm after it
    student.binarizer.init_itq(sample.numpy(), seed=conf["seed"])
    student.init_whitening(sample)
    return student, teacher.to(conf["device"])


def _chamfer_teacher(model: AMES, q_feats: torch.Tensor, m_feats: torch.Tensor, cand: np.ndarray, conf: dict,
                     sample: int = 2000) -> ChamferTeacher:
    """Chamfer similarity through the model's starting whitening, its logits standardized on (query, top-k
    candidate) pairs: no labels needed."""
    teacher = ChamferTeacher(copy.deepcopy(model.projection))
    top = cand[:, :conf["top_k"]]
    qi, ki = np.nonzero(top >= 0)
    pick = np.random.default_rng(conf["seed"]).permutation(len(qi))[:sample]
    qd, qv = local.split(q_feats[qi[pick]])
    md, mv = local.split(m_feats[top[qi[pick], ki[pick]]])
    with torch.no_grad():
        teacher.standardize(teacher.chamfer(qd, qv, md, mv))
    return teacher.to(conf["device"])


def _features(conf: dict, retrieval: Retrieval, out_dir: Path) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Local-feature settings (the teacher's for a student) and the stored rows of queries and map, in memory."""
    if conf["bits"] and conf["teacher"]:
        meta = load_ames(conf["teacher"])[1]
        fconf, conf["num_query_desc"], conf["num_map_desc"] = meta["features"], meta["num_query_desc"], \
            meta["num_map_desc"]
    else:
        fconf = local.CONFIG.resolve(conf["features"], {"preprocessing.resize_max": conf["resize_max"],
                                                                   "detector": conf["detector"]})
    cache = Path(conf["cache_dir"]) if conf["cache_dir"] else out_dir / "features"
    q_path = local.cached(fconf, retrieval.query_dir, retrieval.q_names, cache, "query", conf["num_query_desc"],
                          conf["device"])
    m_path = local.cached(fconf, retrieval.map_dir, retrieval.m_names, cache, "map", conf["num_map_desc"],
                          conf["device"])
    return fconf, torch.from_numpy(local.read_rows(q_path)), torch.from_numpy(local.read_rows(m_path))


def main(conf: dict, results_dir: str | Path, out_dir: str | Path, *, gt: str, threshold: float | None = None,
         resume: bool = True) -> Path:
    """Train on the retrieval in `results_dir` with ground truth `gt`; returns the best checkpoint's path."""
    out_dir = run_folder(out_dir)
    retrieval = load_retrieval(results_dir)
    truth = ground_truth_for_kept(gt, list_images(retrieval.query_dir), retrieval.q_names, retrieval.m_names,
                                  threshold)
    seed_everything(conf["seed"])
    fconf, q_feats, m_feats = _features(conf, retrieval, out_dir)
    model, teacher = _build_model(conf, q_feats.shape[-1] - local.META, q_feats, m_feats, retrieval.ids)
    model.to(conf["device"])
    opt = torch.optim.AdamW(model.parameters(), lr=conf["lr"], weight_decay=conf["weight_decay"])
    queries = np.random.default_rng(conf["seed"]).permutation(len(retrieval.q_names))
    n_val = int(round(conf["val_fraction"] * len(queries)))
    val, train = np.sort(queries[:n_val]), np.sort(queries[n_val:])
    meta = {"conf": conf, "model_conf": model.conf, "features": fconf, "num_query_desc": conf["num_query_desc"],
            "num_map_desc": conf["num_map_desc"]}
    progress = resume_progress(out_dir / "last.pt", out_dir / "best.pt", out_dir / "log.csv", conf["patience"],
                               lambda path: load_checkpoint(path, model, opt), resume, conf, ("epochs", "device"))
    for epoch in progress.epochs(conf["epochs"]):
        loss = _train_epoch(model, teacher, opt, conf, q_feats, m_feats, retrieval.ids, truth, train)
        score = validation_map(model, q_feats, m_feats, retrieval.ids, truth, val, conf["top_k"], conf["device"]) \
            if len(val) else -loss
        logger.info("epoch %d: loss %.4f, validation mAP %.4f", epoch, loss, score)
        progress.end_epoch(epoch, score, {"train_loss": loss, "val_mAP": score}, model, opt, meta=meta)
    return progress.best


def _train_epoch(model: AMES, teacher: torch.nn.Module | None, opt: torch.optim.Optimizer, conf: dict,
                 q_feats: torch.Tensor, m_feats: torch.Tensor,
                 cand: np.ndarray, truth: GroundTruth, train: np.ndarray) -> float:
    """One pass over freshly mined pairs; returns the mean loss over pairs with descriptors in both images."""
    model.train()
    pairs = mine_pairs(cand, truth, train, conf["top_k"], conf["num_pos"], conf["num_neg"], np.random)
    pairs = pairs[np.random.permutation(len(pairs))]
    total, count, bs = 0.0, 0, conf["batch_size"]
    for s in tqdm(range(0, len(pairs), bs), desc="ames train", unit="batch"):
        qi, mi, label = torch.from_numpy(pairs[s:s + bs]).T
        keep = has_local(q_feats[qi], m_feats[mi])
        if not keep.any():
            continue
        qi, mi, label = qi[keep], mi[keep], label[keep]
        raw = _forward(model, q_feats[qi], m_feats[mi], conf["device"])
        loss = F.binary_cross_entropy_with_logits(raw, label.float().to(raw.device))
        if teacher is not None:
            with torch.no_grad():
                target = torch.sigmoid(_forward(teacher, q_feats[qi], m_feats[mi], conf["device"]))
            w = conf["distill_weight"]
            loss = (1 - w) * loss + w * F.binary_cross_entropy_with_logits(raw, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.item() * len(label)
        count += len(label)
    return total / max(count, 1)
