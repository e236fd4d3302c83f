"""Train a released head (SALAD, BoQ, MixVPR, NetVLAD, GeM + fc), and optionally the backbone's last blocks, on the
user's route: `vprkit train head MAP QUERIES -o RUN --preset NAME` (hloc-style step: presets + `main(conf, ...)`).

The frozen backbone (or its stem before the `train.finetune` blocks) runs once per image into a token cache
(train/token_cache.py); epochs then run only the fine-tuned blocks and the head (train/head_model.py). Global mining
(vprkit's recipe) gives each query its best positive and hardest negatives from the current model's descriptors of
the whole training map (NetVLAD's Miner) for the triplet / sTML loss; place mining (the authors' recipes) makes
P x K place batches (train/place_batches.py) with hard negative places for the multi-similarity loss with its miner
(train/multisim.py) or the triplet / sTML losses.
Data options, splits and label-free mode (`data.source=map`, augmented map images as queries) are NetVLAD
training's (train/data.py, train/route.py). Validation R@1 every epoch keeps the best checkpoint; the test split is
scored at the end. The run's `best.pt` plugs into `vprkit index MAP -o IDX --preset NAME --checkpoint RUN/best.pt`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..aggregators import get_aggregator
from ..data.groundtruth import GroundTruth
from ..evaluation import metrics, outputs
from ..features import extract, head_presets
from ..models import get_backbone
from ..models import head_checkpoint as trained_head
from . import multisim, route, token_cache
from .checkpoint import load_checkpoint, run_folder, seed_everything
from .checkpoint import resume as resume_progress
from .data import PlaceSet, load_splits
from .head_conf import CONFIG as CONFIG  # the step's presets, as every step module has
from .head_model import HeadModel, describe, evaluated, fit_sample
from .losses import get_loss
from .mining import Miner, Triplet, layout
from .optim import make_optimizer
from .place_batches import Place, place_batches

logger = logging.getLogger("vprkit")


def feature_conf(conf: dict) -> dict:
    """The extraction config of the trained model: the preset, with the head resized for a PCA projection."""
    fconf = extract.CONFIG.resolve(conf["preset"], batch_size=conf["cache"]["batch_size"])
    agg = fconf["aggregator"]
    if conf["pca"]:
        agg.update(proj_dim=conf["pca"], head=head_presets.with_channels(agg["head"], conf["pca"]))
    return fconf


def arch_record(fconf: dict) -> dict:
    return {"model": fconf["model"], "aggregator": fconf["aggregator"], "preprocessing": fconf["preprocessing"]}


View = tuple[Path, list[str], "tuple[dict, int] | None"]  # image folder, names, (augmentation, seed) or None


class Session:
    """Config, splits, head and the in-memory tokens of every split's queries and map images."""

    def __init__(self, conf: dict, map_dir, query_dir, out_dir, device: str = "cpu",
                 splits: tuple[str, ...] = ("train", "val", "test")) -> None:
        self.conf, self.out, self.device = conf, Path(out_dir), device
        self.out.mkdir(parents=True, exist_ok=True)
        self.fconf = feature_conf(conf)
        self.seconds: dict[str, float] = {}
        label_free = _label_free(conf, query_dir)
        self.places = route.route_splits(conf["data"], map_dir) if label_free else load_splits(
            conf["data"], map_dir, query_dir)
        self.map_dir, q_root = Path(map_dir), Path(map_dir if label_free else query_dir)
        views = {name: self._views(name, i, q_root, label_free) for i, name in enumerate(splits)}
        t0 = time.perf_counter()
        backbone = get_backbone(**self.fconf["model"]).eval().to(device)
        stem, tail = backbone.split(conf["train"]["finetune"]) if conf["train"]["finetune"] else (backbone, None)
        files, bad = self._fill(views, backbone, stem)
        self.seconds["tokens"] = time.perf_counter() - t0
        seed_everything(conf["train"]["seed"])
        self.head = get_aggregator(**self.fconf["aggregator"])  # on the CPU while it projects the cached tokens
        t0 = time.perf_counter()
        self._drop_unreadable(bad, q_root, self.map_dir)
        if conf["pca"]:
            self._fit_pca(files[("train", str(self.map_dir), None)], self.places["train"].m_names)
        self.banks: dict[str, tuple[token_cache.Tokens, token_cache.Tokens]] = {}
        for name, (q_views, _) in views.items():
            ps = self.places[name]
            per_view = ps.q_names[: len(ps.q_names) // len(q_views)]  # label-free: copies follow each other
            q_parts = [token_cache.load(files[(name, str(root), aug and aug[1])], per_view, self.head.project)
                       for root, _, aug in q_views]
            m_tokens = token_cache.load(files[(name, str(self.map_dir), None)], ps.m_names, self.head.project)
            self.banks[name] = (sum(q_parts[1:], q_parts[0]), m_tokens)
        self.model = HeadModel(self.head, tail).to(device)
        self.seconds["load"] = time.perf_counter() - t0

    def _views(self, name: str, i: int, q_root: Path, label_free: bool) -> tuple[list[View], list[View]]:
        """(query views, map views) of a split; label-free queries are augmented map images, one seeded
        augmentation per copy and split."""
        ps = self.places[name]
        if not ps.q_names or not ps.m_names:
            raise ValueError(f"the {name} split is empty ({len(ps.q_names)} queries, {len(ps.m_names)} map "
                             f"images): check data.split / data.gap against the dataset's extent")
        copies = self.conf["data"]["copies"] if label_free and name == "train" else 1
        unique = list(dict.fromkeys(ps.q_names))
        q_views = [(q_root, unique, (self.conf["augment"], 1000 * i + c + 1) if label_free else None)
                   for c in range(copies)]
        return q_views, [(self.map_dir, ps.m_names, None)]

    def _fill(self, views: dict, backbone, stem) -> tuple[dict, set]:
        """Token cache files of every view ({(split, folder, seed): path}) and the unreadable (folder, name)s: the
        output of the frozen `stem` (the whole backbone, or its part before the fine-tuned blocks)."""
        cache = Path(self.conf["cache"]["dir"] or self.out / "cache")
        files, bad = {}, set()
        for name, (q_views, m_views) in views.items():
            for root, names, aug in q_views + m_views:
                key = token_cache.cache_key(self.fconf["model"], self.fconf["preprocessing"],
                                            *(aug if aug else (None, None)), self.conf["train"]["finetune"])
                path = token_cache.cache_path(cache, root, key)
                transform = token_cache.content_augmenter(*aug) if aug else None
                failed = token_cache.fill(backbone, self.fconf, root, names, path, key, transform, self.device,
                                          f"tokens {name} {root.name}", stem)
                bad |= {(str(root), n) for n in failed}
                files[(name, str(root), aug and aug[1])] = path
        return files, bad

    def _drop_unreadable(self, bad: set, q_root: Path, m_root: Path) -> None:
        """Splits without the images the backbone could not read (logged by the fill)."""
        for name, ps in self.places.items():
            bq = [i for i, n in enumerate(ps.q_names) if (str(q_root), n) in bad]
            bm = [j for j, n in enumerate(ps.m_names) if (str(m_root), n) in bad]
            self.places[name] = ps.without(bq, bm)

    def _fit_pca(self, path: Path, names: list[str], max_tokens: int = 100_000) -> None:
        """PCA of the training map's patch tokens (a sample) into the head's fixed projection."""
        tokens = token_cache.load(path, names)
        x = torch.cat([t.flatten(1).T.float() for t in tokens.local])
        rng = np.random.default_rng(self.conf["train"]["seed"])
        if len(x) > max_tokens:
            x = x[torch.from_numpy(rng.choice(len(x), max_tokens, replace=False))]
        mean = x.mean(0)
        _, _, vt = torch.linalg.svd(x - mean, full_matrices=False)
        self.head.set_pca(mean.numpy(), vt[: self.conf["pca"]].numpy())

    def arch(self) -> dict:
        return arch_record(self.fconf)


def _label_free(conf: dict, query_dir) -> bool:
    source = conf["data"]["source"]
    if source not in route.SOURCES:
        raise ValueError(f"unknown data.source '{source}'; choose one of {route.SOURCES}")
    if source == "queries" and query_dir is None:
        raise ValueError("a query folder is needed unless data.source=map (label-free training on the map)")
    return source == "map"


@torch.no_grad()
def recall(model: HeadModel, q: token_cache.Tokens, m: token_cache.Tokens, places: PlaceSet,
           top_k: int = 20) -> dict:
    """Recall@1/5/10/20 of a split's queries against its map (the model in eval mode)."""
    import faiss

    qd, md = (evaluated(model, t).cpu().numpy() for t in (q, m))
    index = faiss.IndexFlatIP(md.shape[1])
    index.add(np.ascontiguousarray(md, dtype=np.float32))
    _, ids = index.search(np.ascontiguousarray(qd, dtype=np.float32), min(top_k, len(md)))
    return metrics.evaluate(ids, GroundTruth(places.positives))


def epoch_batches(s: Session, rng: np.random.Generator) -> tuple[list, Callable]:
    """One epoch's batches and the loss of a batch. Global mining: batches of `queries` training queries, each
    mined, when its batch comes, against the descriptors of the whole training split taken at the epoch's start.
    Places: P x K place batches with hard negative places (`neighbours`)."""
    t, places = s.conf["train"], s.places["train"]
    if t["mining"] == "global":
        miner = Miner(places.positives, places.non_negatives, len(places.m_names), t["negatives"], t["neg_samples"])
        miner.refresh(*(evaluated(s.model, tokens).cpu().numpy() for tokens in s.banks["train"]))
        order = rng.permutation(len(places.positives))
        batches = [order[i:i + t["queries"]].tolist() for i in range(0, len(order), t["queries"])]
        return batches, lambda queries: tuple_loss(s, miner.mine(queries, rng))
    near = _neighbours(s, t["neighbours"]) if t["hard"] > 0 else None
    batches = place_batches(places.positives, places.non_negatives, t["places"], t["per_place"], rng, near, t["hard"])
    return batches, lambda batch: place_loss(s, batch)


def tuple_loss(s: Session, triplets: list[Triplet]) -> torch.Tensor | None:
    """The triplet / sTML loss of mined (query, best positive, hardest negatives) tuples; None without any."""
    if not triplets:
        return None
    q_tokens, m_tokens = s.banks["train"]
    queries, images, mask = layout(triplets)
    qd = describe(s.model, q_tokens, queries, grad=True)
    md = describe(s.model, m_tokens, images, grad=True)
    b, k = mask.shape
    return _margin_loss(s.conf["loss"])(qd, md[:b], md[b:].reshape(b, k, -1), torch.from_numpy(mask).to(qd.device))


def _margin_loss(loss: dict) -> Callable:
    margins = {"margin": loss["margin"]} | ({"margin_pn": loss["margin_pn"]} if loss["name"] == "stml" else {})
    return get_loss(loss["name"], **margins)


def place_loss(s: Session, batch: list[Place]) -> torch.Tensor:
    """The loss of one P x K batch: query + K-1 map images per place, labels by place."""
    q_tokens, m_tokens = s.banks["train"]
    k = len(batch[0].images) + 1
    qd = describe(s.model, q_tokens, [p.query for p in batch], grad=True)
    md = describe(s.model, m_tokens, [j for p in batch for j in p.images], grad=True).reshape(len(batch), k - 1, -1)
    desc = torch.cat([qd[:, None], md], dim=1)  # (P, K, D)
    loss = s.conf["loss"]
    if loss["name"] == "ms":
        labels = torch.arange(len(batch), device=desc.device).repeat_interleave(k)
        return multisim.multi_similarity_loss(desc.flatten(0, 1), labels, loss["alpha"], loss["beta"], loss["base"],
                                              loss["epsilon"])
    best = (md @ qd[:, :, None]).squeeze(-1).argmax(1)  # each query's most similar positive
    pos = md[torch.arange(len(batch)), best]
    others = torch.stack([torch.cat([desc[j] for j in range(len(batch)) if j != i]) for i in range(len(batch))])
    return _margin_loss(loss)(qd, pos, others)


def lr_factor(t: dict, step: int, epoch: int, epoch_steps: int) -> float:
    """Linear warm-up over `warmup` steps plus `warmup_epochs` epochs of `epoch_steps` steps, x `lr_gamma` at each
    epoch in `milestones`, linear decay to `lr_end` over the first `lr_end_steps` steps (the authors' schedules)."""
    warmup = t["warmup"] + t["warmup_epochs"] * epoch_steps
    f = min(1.0, (step + 1) / warmup) if warmup else 1.0
    f *= t["lr_gamma"] ** sum(epoch >= m for m in t["milestones"])
    if t["lr_end_steps"]:
        f *= 1.0 + (t["lr_end"] - 1.0) * min(step, t["lr_end_steps"]) / t["lr_end_steps"]
    return f


def epoch_steps(positives: list[np.ndarray], places: int) -> int:
    """An epoch's steps as `warmup_epochs` counts them: ceil(places with a positive / places per batch), the length
    of the authors' place loader (an epoch here may have a few more batches where places of a route conflict)."""
    return -(-sum(len(p) > 0 for p in positives) // places)


def _neighbours(s: Session, count: int) -> np.ndarray:
    """Each training query's most similar other training queries under the current head (hard negative places)."""
    d = evaluated(s.model, s.banks["train"][0])
    sim = d @ d.T
    sim.fill_diagonal_(-float("inf"))
    return sim.topk(min(count, len(d) - 1), dim=1).indices.cpu().numpy()


def init_head(s: Session) -> None:
    """NetVLAD starts from k-means of the training map's (projected) tokens; other heads from their seeded init."""
    if not s.head.needs_fit:
        return
    rng = np.random.default_rng(s.conf["train"]["seed"])
    s.head.head.fit(fit_sample(s.model, s.banks["train"][1], 100_000, rng).cpu().numpy())
    s.head.needs_fit = False


_score_note = ("no validation query has a positive (label-free with data.pos_thr below the image spacing, e.g. a "
               "map of separate places): the best checkpoint is the epoch of lowest training loss")


def train(s: Session, resume: bool = True) -> dict:
    """Epochs of P x K batches with hard negative places; validation R@1 each epoch; best.pt, last.pt, log.csv."""
    t = s.conf["train"]
    init_head(s)
    opt = make_optimizer(t, [p for p in s.model.parameters() if p.requires_grad])
    state = {"step": 0, "epoch": 0}
    steps = epoch_steps(s.places["train"].positives, t["places"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: lr_factor(t, state["step"], state["epoch"], steps))
    rng = np.random.default_rng(t["seed"])
    progress = resume_progress(s.out / "last.pt", s.out / "best.pt", s.out / "log.csv", t["patience"],
                               lambda path: load_checkpoint(path, s.model, opt, sched), resume, s.conf,
                               ("train.epochs", "cache.dir"))
    if progress.meta:
        state["step"] = progress.meta["step"]
        rng.bit_generator.state = json.loads(progress.meta["mining_rng"])
    row, val_r1 = {}, float("nan")
    t0 = time.perf_counter()
    for epoch in progress.epochs(t["epochs"]):
        state["epoch"] = epoch
        for group, base in zip(opt.param_groups, sched.base_lrs):  # the epoch's schedule from its first step
            group["lr"] = base * lr_factor(t, state["step"], epoch, steps)
        batches, batch_loss = epoch_batches(s, rng)
        s.model.train()
        losses = []
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{t['epochs']}", unit="batch", leave=False)
        for batch in bar:
            loss = batch_loss(batch)
            if loss is None:  # global mining found no tuple for these queries
                continue
            opt.zero_grad()
            loss.backward()
            opt.step()
            state["step"] += 1
            sched.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", val_r1=f"{val_r1:.3f}")
        val = recall(s.model, *s.banks["val"], s.places["val"])
        val_r1 = val["R@1"]
        score = val_r1 if np.isfinite(val_r1) else -float(np.mean(losses))  # see _score_note
        if not np.isfinite(val_r1) and epoch == progress.start:
            logger.warning(_score_note)
        row = {"step": state["step"], "loss": float(np.mean(losses)) if losses else float("nan"),
               "lr": opt.param_groups[0]["lr"], **{f"val_{k}": val[k] for k in ("R@1", "R@5", "R@10")}}
        progress.end_epoch(epoch, score, row, s.model, opt, sched,
                           meta={"kind": trained_head.KIND, "arch": s.arch(), "conf": s.conf, "val": val},
                           state={"step": state["step"], "mining_rng": json.dumps(rng.bit_generator.state)})
        tqdm.write(f"epoch {epoch + 1}: loss {row['loss']:.4f}, val R@1 {val_r1:.3f}")
    s.seconds["train"] = s.seconds.get("train", 0.0) + time.perf_counter() - t0
    return row


def test(s: Session, checkpoint: str | Path | None = None, split: str = "test") -> dict:
    """Recall@N on a split of the trained head (`checkpoint`), or of the untrained one."""
    if checkpoint is not None:
        ckpt = trained_head.read(checkpoint)
        if ckpt is None:
            raise ValueError(f"{checkpoint}: not a `vprkit train head` checkpoint")
        trained_head.load_weights(ckpt, s.head, s.model.backbone)
    else:
        init_head(s)
    res = recall(s.model, *s.banks[split], s.places[split])
    res.update(checkpoint=str(checkpoint) if checkpoint else None, split=split)
    return res


def main(conf: dict, map_dir: str | Path, query_dir: str | Path | None, out_dir: str | Path, *, device: str = "cpu",
         resume: bool = True) -> Path:
    """Fill the token cache, train, score the best checkpoint on the test split; returns OUT/best.pt. Writes
    OUT/test.json (test recalls and the time split: tokens, load, train)."""
    out_dir = run_folder(out_dir)
    s = Session(conf, map_dir, query_dir, out_dir, device)
    train(s, resume)
    best = out_dir / "best.pt"
    res = test(s, best)
    res["seconds"] = {k: round(v, 1) for k, v in s.seconds.items()}
    res["token_bytes"] = sum(t.nbytes() for pair in s.banks.values() for t in pair)
    outputs.write_json(out_dir / "test.json", res)
    return best
