"""Train NetVLAD (optionally with an attention module) on any dataset with positions: the seed's
`cluster`, `train` and `test` modes as one hloc-style step with named presets and `main(conf, ...)`.

The backbone is frozen except its last `train_layers` modules, so the frozen part runs once per image
and its output is kept in memory; each step then only runs the trainable tail, the attention module
and NetVLAD. Checkpoints carry backbone + attention + NetVLAD weights and plug into
`vprkit index --preset FEATURES --checkpoint best.pt`.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..aggregators import get_aggregator
from ..config import Presets, merge
from ..data.groundtruth import GroundTruth
from ..evaluation import metrics, outputs
from ..features import extract
from ..models import checkpoint as trained
from ..models import get_backbone
from . import guidance as guidance_mod
from . import route
from .checkpoint import load_checkpoint, run_folder, seed_everything
from .checkpoint import resume as resume_progress
from .data import SPLITS, PlaceSet, load_splits
from .losses import get_loss, guidance_loss
from .mining import Miner, MiningStats, Triplet

logger = logging.getLogger("vprkit")

DEFAULT_CONF: dict = {  # the de-attention code's choices (deepguider/deattention_with_stml_for_vpr)
    "features": "mobilenetv2-netvlad",  # extraction preset: backbone, NetVLAD size, preprocessing
    "resize_max": None,  # override the preset's long image side
    "attention": None,  # crn | bam | cbam | se | deattention | crn-ref | bam-ref | deattention-ref (+ chains a+b)
    "mask_mode": "features",  # where a spatial mask acts: features (the original's) | assignment (vprkit's)
    "loss": {"name": "triplet", "margin": 0.1},
    "guidance": {"source": None, "mask_dir": None, "checkpoint": None, "classes": ["human", "vehicle", "sky"],
                 "loss": "mse", "weight": 0.1, "resize": "bicubic"},
    "data": {"positions": "utm", "pos_thr": 10.0, "neg_thr": 25.0, "split": [0.7, 0.15, 0.15], "gap": None,
             "source": "queries", "copies": 4, "self_positive": True},  # source=map: label-free (train/route.py)
    "augment": {"crop": 0.9, "brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "grey": 0.0},
    "train": {"epochs": 30, "batch_size": 4, "optimizer": "adam", "lr": 1e-4, "momentum": 0.9,
              "weight_decay": 1e-3, "lr_step": 5, "lr_gamma": 0.5, "train_layers": 0, "num_negs": 10,
              "neg_samples": 1000, "mining": "violating", "mining_margin": 0.1, "cache_refresh": 1000,
              "patience": 10, "seed": 123, "cluster_images": 500, "max_queries_per_epoch": None, "init": None},
}
MINING = ("violating", "nearest")
_STML = {"loss": {"name": "stml", "margin": 0.1, "margin_pn": 1.4},
         "train": {"mining_margin": 1.5}}  # the original's sTML runs mine with --dataloader_margin=1.5
_SEG = {"guidance": {"source": "segmenter"}}
_DEATT = {"attention": "deattention-ref", **_SEG}  # the original's run 2 (baseline_deattention): human + vehicle
_DEATT_STML = {"attention": "deattention-ref+se-ref", **_SEG}  # its run 3 adds SE after de-attention
# vprkit's own choices: nearest negatives, masks weighting the soft assignment, its modules and guidance
_VPRKIT = {"mask_mode": "assignment", "train": {"mining": "nearest"}}
_VPRKIT_DEATT = {"attention": "deattention", "guidance": {"source": "segmenter", "classes": ["vehicle", "human"],
                                                          "weight": 0.001, "resize": "area"}}
_VGG = {"features": "vgg19-netvlad", "train": {"train_layers": 4}}  # conv5_3 + conv5_4 (and their ReLUs) trained


def _preset(*parts: dict) -> dict:
    return functools.reduce(merge, parts, {})


CONFS: dict[str, dict] = {
    # reference presets: the de-attention paper's training runs as its code computes them
    "mobilenetv2-netvlad": {},
    "mobilenetv2-netvlad-stml": _STML,
    "mobilenetv2-crn-netvlad": {"attention": "crn-ref"},
    "mobilenetv2-bam-netvlad": {"attention": "bam-ref"},
    "mobilenetv2-deattention-netvlad": _preset(_DEATT, {"guidance": {"classes": ["human", "vehicle"]}}),
    "mobilenetv2-deattention-stml": _preset(_DEATT_STML, _STML),
    "vgg19-netvlad": _VGG,
    "vgg19-deattention-stml": _preset(_DEATT_STML, _STML, _VGG),
    # vprkit's variants
    "mobilenetv2-netvlad-vprkit": _VPRKIT,
    "mobilenetv2-netvlad-stml-vprkit": _preset(_STML, _VPRKIT),
    "mobilenetv2-crn-netvlad-vprkit": _preset({"attention": "crn"}, _VPRKIT),
    "mobilenetv2-crn-stml-vprkit": _preset({"attention": "crn"}, _STML, _VPRKIT),
    "mobilenetv2-bam-netvlad-vprkit": _preset({"attention": "bam"}, _VPRKIT),
    "mobilenetv2-deattention-stml-vprkit": _preset(_VPRKIT_DEATT, _STML, _VPRKIT),
    "vgg19-deattention-stml-vprkit": _preset(_VPRKIT_DEATT, _STML, _VPRKIT, _VGG),
}
DEFAULT_PRESET = "mobilenetv2-netvlad"
MODES = ("cluster", "train", "test")


CONFIG = Presets("train netvlad", DEFAULT_CONF, CONFS, DEFAULT_PRESET)


def feature_conf(conf: dict) -> dict:
    """The extraction config the trained model stands for (preset + attention + resize override)."""
    fconf = extract.CONFIG.resolve(conf["features"])
    if fconf["aggregator"]["name"] != "netvlad":
        raise ValueError(f"features preset '{conf['features']}' does not use NetVLAD; pick a *-netvlad preset")
    fconf["aggregator"]["attention"] = conf["attention"]
    fconf["aggregator"]["mask_mode"] = conf["mask_mode"]
    if conf["resize_max"]:
        fconf["preprocessing"]["resize_max"] = conf["resize_max"]
    return fconf


def split_backbone(backbone: nn.Module, train_layers: int) -> tuple:
    """(frozen part: images -> features, trainable tail: features -> local features)."""
    if train_layers == 0:
        return (lambda x: backbone(x).local), nn.Identity()
    feats = getattr(backbone, "features", None)
    if not isinstance(feats, nn.Sequential):
        raise ValueError(f"train_layers={train_layers} needs a backbone with a `features` sequence "
                         f"(mobilenetv2, vgg16, vgg19); {type(backbone).__name__} can only train with 0")
    if not 0 < train_layers <= len(feats):
        raise ValueError(f"train_layers must be in 0..{len(feats)} for this backbone, got {train_layers}")
    return feats[: len(feats) - train_layers], feats[len(feats) - train_layers:]


class TrainModel(nn.Module):
    """Backbone + (attention inside) NetVLAD; the state dict is `backbone.*` + `aggregator.*`."""

    def __init__(self, backbone: nn.Module, aggregator: nn.Module, train_layers: int) -> None:
        super().__init__()
        self.backbone, self.aggregator = backbone, aggregator
        self._parts = split_backbone(backbone, train_layers)  # a tuple: not registered twice
        for p in backbone.parameters():
            p.requires_grad_(False)
        for p in self._parts[1].parameters():
            p.requires_grad_(True)

    def train(self, mode: bool = True) -> TrainModel:
        """Batch-norm statistics of the backbone stay frozen (training batches are tiny)."""
        super().train(mode)
        self.backbone.eval()
        return self

    @torch.no_grad()
    def frozen(self, images: torch.Tensor) -> torch.Tensor:
        return self._parts[0](images)

    def local(self, frozen: torch.Tensor) -> torch.Tensor:
        """Local features from frozen ones (a copy goes in: a tail may start with an in-place ReLU and
        must not change the cached features)."""
        tail = self._parts[1]
        return frozen if isinstance(tail, nn.Identity) else tail(frozen.clone())

    def forward(self, frozen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(descriptors (B, D), attention weight (B, 1, h, w) or None) from frozen features."""
        y, weight = self.aggregator.attend(self.local(frozen))
        return self.aggregator.pool(y, weight), weight


def build_model(conf: dict, device: str = "cpu") -> tuple[TrainModel, dict]:
    fconf = feature_conf(conf)
    backbone = get_backbone(**fconf["model"])
    agg = get_aggregator(**{**fconf["aggregator"], "dim": backbone.dim})
    return TrainModel(backbone, agg, conf["train"]["train_layers"]).to(device), fconf


class Bank:
    """Frozen-part outputs (and guidance masks) of a list of images, computed once and kept in memory.

    Unreadable images are skipped with a warning; `failed` holds their positions in `names`.
    """

    def __init__(self, model: TrainModel, fconf: dict, root: Path, names: list[str], desc: str,
                 guidance=None, transform=None) -> None:
        device = next(model.parameters()).device
        position: dict[str, list[int]] = {}  # a name repeats in augmented copies
        for i, n in enumerate(names):
            position.setdefault(n, []).append(i)
        self.feats: list[torch.Tensor] = []
        self.guidance: list[torch.Tensor] | None = [] if guidance is not None else None
        self.failed: list[int] = []
        with tqdm(total=len(names), desc=f"frozen features: {desc}", unit="img", leave=False) as bar:
            for batch_names, images, bad in extract.batches(model.backbone, fconf, root, names, transform):
                self.failed += [position[n].pop(0) for n in bad]
                if batch_names:
                    self.feats += list(model.frozen(images.to(device)).cpu())
                if self.guidance is not None:
                    self.guidance += [guidance(root, n, images.shape[-2:]) for n in batch_names]
                bar.update(len(batch_names) + len(bad))

    def __len__(self) -> int:
        return len(self.feats)


def run(model: TrainModel, feats: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """Descriptors (N, D) and per-image attention weights for frozen features of any shapes."""
    device = next(model.parameters()).device
    if len({f.shape for f in feats}) == 1:
        desc, weight = model(torch.stack(feats).to(device))
        return desc, None if weight is None else list(weight)
    outs = [model(f[None].to(device)) for f in feats]
    weights = None if outs[0][1] is None else [w[0] for _, w in outs]
    return torch.cat([d for d, _ in outs]), weights


@torch.no_grad()
def describe(model: TrainModel, bank: Bank, batch: int = 64) -> np.ndarray:
    """Descriptors of every image in a bank with the model in eval mode."""
    was = model.training
    model.eval()
    out = [run(model, bank.feats[i:i + batch])[0].cpu().numpy() for i in range(0, len(bank), batch)]
    model.train(was)
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


def recall(model: TrainModel, q_bank: Bank, m_bank: Bank, places: PlaceSet, top_k: int = 20) -> dict:
    """Recall@1/5/10/20 and mAP of the split's queries against its map (positives within pos_thr)."""
    import faiss

    q, m = describe(model, q_bank), describe(model, m_bank)
    index = faiss.IndexFlatIP(m.shape[1])
    index.add(np.ascontiguousarray(m, dtype=np.float32))
    _, ids = index.search(np.ascontiguousarray(q, dtype=np.float32), min(top_k, len(m)))
    return metrics.evaluate(ids, GroundTruth(places.positives))


def _bank_guidance(conf: dict) -> dict | None:
    """The guidance settings the in-memory masks were made with (None without guidance); the loss weight,
    kind and resize only act in training."""
    g = conf["guidance"]
    if g["source"] is None or not guidance_mod.is_guided(conf["attention"]):
        return None
    return {k: g[k] for k in ("source", "mask_dir", "checkpoint", "classes")}


def _label_free(conf: dict, query_dir, guide) -> bool:
    """Whether the queries are augmented map images (data.source=map); such a run takes no guidance masks (they
    would not follow the crops) and no query folder."""
    source = conf["data"]["source"]
    if source not in route.SOURCES:
        raise ValueError(f"unknown data.source '{source}'; choose one of {route.SOURCES}")
    if source == "queries" and query_dir is None:
        raise ValueError("a query folder is needed unless data.source=map (label-free training on the map)")
    if source == "map" and guide is not None:
        raise ValueError("label-free training (data.source=map) takes no guidance masks: set guidance.source=null")
    return source == "map"


class Session:
    """Everything the three modes share: config, splits, model and in-memory frozen features."""

    def __init__(self, conf: dict, map_dir, query_dir, out_dir, device: str = "cpu",
                 splits: tuple[str, ...] = ("train", "val", "test")) -> None:
        self._setup(conf, out_dir, device)
        guide = guidance_mod.get_source(conf["guidance"], conf["attention"], device)
        label_free = _label_free(conf, query_dir, guide)
        self.places = route.route_splits(conf["data"], map_dir) if label_free else load_splits(
            conf["data"], map_dir, query_dir)
        self.banks: dict[str, tuple[Bank, Bank]] = {}
        for name in splits:
            ps = self.places[name]
            if not ps.q_names or not ps.m_names:
                raise ValueError(f"the {name} split is empty ({len(ps.q_names)} queries, {len(ps.m_names)} map "
                                 f"images): check data.split / data.gap against the dataset's extent")
            augment = route.augmenter(conf["augment"], conf["train"]["seed"] + 1 + SPLITS.index(name)) \
                if label_free else None
            qb = Bank(self.model, self.fconf, Path(map_dir if label_free else query_dir), ps.q_names,
                      f"{name} queries", guide and guide.query, augment)
            mb = Bank(self.model, self.fconf, Path(map_dir), ps.m_names, f"{name} map", guide and guide.map)
            self.places[name] = ps.without(qb.failed, mb.failed)
            self.banks[name] = (qb, mb)

    def _setup(self, conf: dict, out_dir, device: str) -> None:
        """Config, output folder and a freshly seeded model."""
        self.conf, self.out, self.device = conf, Path(out_dir), device
        self.out.mkdir(parents=True, exist_ok=True)
        self.centroid_path = self.out / "centroids.npz"
        seed_everything(conf["train"]["seed"])
        self.model, self.fconf = build_model(conf, device)
        self.arch = trained.arch_record(self.fconf["model"], self.fconf["aggregator"], self.fconf["preprocessing"])

    def variant(self, conf: dict, out_dir) -> Session:
        """A session for another loss / attention / schedule over the same images, sharing the in-memory
        frozen features (for comparisons: the frozen backbone runs once for all variants)."""
        same = ("features", "resize_max", "data", "augment")
        diff = [k for k in same if conf[k] != self.conf[k]]
        diff += ["guidance masks"] if _bank_guidance(conf) != _bank_guidance(self.conf) else []
        if diff or conf["train"]["train_layers"] != self.conf["train"]["train_layers"]:
            raise ValueError(f"a variant must keep {same}, the guidance masks and train.train_layers; "
                             f"differs in {diff}")
        other = copy.copy(self)
        other._setup(conf, out_dir, self.device)
        return other

    def cluster(self) -> Path:
        """k-means centroids of local features of (a sample of) the training map images."""
        _, m_bank = self.banks["train"]
        rng = np.random.default_rng(self.conf["train"]["seed"])
        n = min(len(m_bank), self.conf["train"]["cluster_images"])
        with torch.no_grad():
            local = [self.model.local(m_bank.feats[i][None].to(next(self.model.parameters()).device))
                     for i in sorted(rng.choice(len(m_bank), n, replace=False))]
        x = torch.cat([f.flatten(2)[0].T for f in local]).cpu().numpy()
        if len(x) > 100_000:
            x = x[rng.choice(len(x), 100_000, replace=False)]
        self.model.aggregator.fit(x)
        arrays = {"centroids": self.model.aggregator.centroids.detach().cpu().numpy(),
                  "arch": json.dumps(self.arch, sort_keys=True)}
        outputs.atomic_savez(self.centroid_path, arrays)
        return self.centroid_path

    def init_centroids(self) -> None:
        """Initialise NetVLAD from saved centroids (clustering first when there are none)."""
        if not self.centroid_path.exists():
            self.cluster()
            return
        with np.load(self.centroid_path, allow_pickle=False) as data:
            if str(data["arch"]) != json.dumps(self.arch, sort_keys=True):
                raise ValueError(f"{self.centroid_path} was clustered for another architecture "
                                 f"({data['arch']}); delete it or use another output folder")
            self.model.aggregator.init_from_centroids(data["centroids"])

    def load(self, path: Path, optimizer=None, scheduler=None, restore_rng: bool = True) -> dict:
        """Load a checkpoint after checking it was trained for this architecture."""
        ckpt = trained.read_netvlad(path)
        if ckpt is None:
            raise ValueError(f"{path}: not a vprkit NetVLAD training checkpoint")
        diff = trained.arch_mismatch(self.arch, ckpt["meta"]["arch"])
        if diff:
            raise ValueError(f"{path} was trained for another architecture: " + "; ".join(diff))
        return load_checkpoint(path, self.model, optimizer, scheduler, restore_rng=restore_rng)


def _optimizer(conf: dict, params) -> torch.optim.Optimizer:
    t = conf["train"]
    if t["optimizer"] == "adam":
        return torch.optim.Adam(params, lr=t["lr"], weight_decay=t["weight_decay"])
    if t["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=t["lr"], momentum=t["momentum"], weight_decay=t["weight_decay"])
    raise ValueError(f"unknown optimizer '{t['optimizer']}'; choose 'adam' or 'sgd'")


def _tuple_loss(s: Session, miner: Miner, queries: list[int], rng: np.random.Generator, loss_fn) -> torch.Tensor | None:
    """Loss of one batch of queries: mined tuples forwarded together; None when nothing could be mined."""
    tuples = miner.mine(queries, rng)
    return tuples_loss(s, tuples, loss_fn) if tuples else None


def tuples_loss(s: Session, tuples: list[Triplet], loss_fn) -> torch.Tensor:
    """Loss (+ weighted guidance loss) of training tuples of the train split, forwarded together."""
    q_bank, m_bank = s.banks["train"]
    k = max(len(t.negatives) for t in tuples)
    negs = [np.resize(t.negatives, k) for t in tuples]  # pad by repetition; padded pairs are masked out
    mask = torch.tensor([[j < len(t.negatives) for j in range(k)] for t in tuples])
    feats = ([q_bank.feats[t.query] for t in tuples] + [m_bank.feats[t.positive] for t in tuples]
             + [m_bank.feats[j] for n in negs for j in n])
    desc, weights = run(s.model, feats)
    b = len(tuples)
    loss = loss_fn(desc[:b], desc[b:2 * b], desc[2 * b:].reshape(b, k, -1), mask.to(desc.device))
    g = s.conf["guidance"]
    if weights is not None and q_bank.guidance is not None and g["weight"] > 0:
        target = ([q_bank.guidance[t.query] for t in tuples] + [m_bank.guidance[t.positive] for t in tuples]
                  + [m_bank.guidance[j] for n in negs for j in n])
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
    opt = _optimizer(s.conf, [p for p in s.model.parameters() if p.requires_grad])
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


def main(conf: dict, map_dir: str | Path, query_dir: str | Path | None, out_dir: str | Path, *, mode: str = "train",
         resume: bool = True, checkpoint: str | Path | None = None, split: str = "test",
         device: str = "cpu") -> dict:
    """Run one mode: `cluster` (writes OUT/centroids.npz), `train` (OUT/last.pt, best.pt, log.csv) or
    `test` (Recall@N of `checkpoint`, or of the untrained model, on `split`). `query_dir` may be None with
    `data.source=map` (label-free: augmented map images are the queries)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode '{mode}'; choose one of {MODES}")
    out_dir = run_folder(out_dir)
    clustered = (Path(out_dir) / "centroids.npz").exists() or checkpoint is not None
    splits = {"cluster": ("train",), "train": ("train", "val"),
              "test": (split,) if clustered else ("train", split)}[mode]
    s = Session(conf, map_dir, query_dir, out_dir, device, tuple(dict.fromkeys(splits)))
    if mode == "cluster":
        return {"centroids": str(s.cluster())}
    if mode == "train":
        return train(s, resume)
    return test(s, checkpoint, split)
