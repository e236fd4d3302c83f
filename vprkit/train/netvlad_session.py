"""A NetVLAD training session: config, splits, model and the in-memory frozen features its modes share."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from ..models import checkpoint as trained
from . import guidance as guidance_mod
from . import route
from .checkpoint import load_centroids, load_checkpoint, save_centroids, seed_everything
from .data import SPLITS, load_splits
from .netvlad_model import Bank, build_model


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
        save_centroids(self.centroid_path, self.model.aggregator.centroids.detach().cpu().numpy(), self.arch)
        return self.centroid_path

    def init_centroids(self) -> None:
        """Initialise NetVLAD from saved centroids (clustering first when there are none)."""
        if not self.centroid_path.exists():
            self.cluster()
            return
        self.model.aggregator.init_from_centroids(load_centroids(self.centroid_path, self.arch))

    def load(self, path: Path, optimizer=None, scheduler=None, restore_rng: bool = True) -> dict:
        """Load a checkpoint after checking it was trained for this architecture."""
        ckpt = trained.read_netvlad(path)
        if ckpt is None:
            raise ValueError(f"{path}: not a vprkit NetVLAD training checkpoint")
        diff = trained.arch_mismatch(self.arch, ckpt["meta"]["arch"])
        if diff:
            raise ValueError(f"{path} was trained for another architecture: " + "; ".join(diff))
        return load_checkpoint(path, self.model, optimizer, scheduler, restore_rng=restore_rng)
