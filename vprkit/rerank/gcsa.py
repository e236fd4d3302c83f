"""GCSA re-ranking: contextual similarity over visual and non-visual affinities (position, view, radio).

The query and each of its top-K candidates are described by their affinities to the same anchors
(the query and the top-L of the global retrieval), one channel per modality; the trained network
(`vprkit.models.gcsa`, trained with `vprkit train gcsa`) turns those contexts into a new
similarity. Map side information comes from `map_sideinfo`, the query's from `query_sideinfo`;
with `query_prior_sigma` the query positions read there are treated as ground truth and replaced
by simulated noisy priors (the noise model is logged and stored in the results).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.groundtruth import GroundTruth
from ..data.sideinfo import SideInfo, load_sideinfo, noise_model, simulate_prior
from ..evaluation.msls import write_msls_csv
from ..features import extract, h5io
from ..index.layout import MAP_FEATURES, QUERY_FEATURES, STATE_FILE
from ..models.checkpoint import load_trained_model
from ..models.gcsa import GCSA
from ..results import Retrieval, stored_query_descriptors
from . import affinity
from .base import Reranker

logger = logging.getLogger("vprkit")
SIDE_DEFAULTS = {"position_scale": 5.0, "fov_deg": 90.0, "fov_range": 50.0, "radio_scale_db": 10.0}


def side_affinity(modality: str, tok: SideInfo, anc: SideInfo, conf: dict) -> np.ndarray:
    """(len(tok), len(anc)) affinity of one side modality, NaN where unknown."""
    conf = {**SIDE_DEFAULTS, **conf}
    if modality == "position":
        if tok.position.shape[1] != anc.position.shape[1]:
            raise ValueError(f"query positions are {tok.position.shape[1]}-D but map positions "
                             f"{anc.position.shape[1]}-D: use side information of the same kind")
        return affinity.positional(tok.position, anc.position, conf["position_scale"])
    if modality == "fov":
        if tok.position.shape[1] != 2 or anc.position.shape[1] != 2:
            raise ValueError("field-of-view affinity needs 2-D positions (east, north)")
        return affinity.fov_overlap(tok.position, tok.heading, anc.position, anc.heading, conf["fov_deg"],
                                    conf["fov_range"])
    if modality == "radio":
        return affinity.radio(tok.radio, anc.radio, conf["radio_scale_db"])
    raise KeyError(f"unknown side modality '{modality}'; choose position, fov or radio")


def _with_query(q_side: SideInfo, qi: int, m_side: SideInfo, idx: np.ndarray) -> SideInfo:
    """Side information of [query qi] + map images idx (-1 = padding, all unknown)."""
    m = m_side.subset(np.maximum(idx, 0))
    pad = idx < 0
    m.position[pad], m.heading[pad] = np.nan, np.nan
    radio = [q_side.radio[qi]] + [None if p else r for p, r in zip(pad, m.radio)]
    return SideInfo([q_side.names[qi], *m.names], np.vstack([q_side.position[qi:qi + 1], m.position]),
                    np.concatenate([q_side.heading[qi:qi + 1], m.heading]), radio)


@dataclass
class Contexts:
    """Descriptors, candidates and map side information of a retrieval, batched for the network."""

    q_desc: torch.Tensor  # (Q, D)
    m_desc: torch.Tensor  # (M + 1, D); the last row is zeros, used for padded (-1) ids
    ids: np.ndarray  # (Q, K) candidates, -1 padded
    num_anchors: int
    m_side: SideInfo
    modalities: list[str]
    side_conf: dict

    @classmethod
    def build(cls, q_desc: np.ndarray, m_desc: np.ndarray, ids: np.ndarray, num_anchors: int, m_side: SideInfo,
              modalities: list[str], side_conf: dict) -> Contexts:
        m = torch.from_numpy(np.vstack([m_desc, np.zeros((1, m_desc.shape[1]), m_desc.dtype)])).float()
        return cls(torch.from_numpy(q_desc).float(), m, ids, num_anchors, m_side, list(modalities), side_conf)

    def anchor_ids(self, rows: np.ndarray) -> np.ndarray:
        """Top-L candidates of each query (padded with -1 when the retrieval is shorter)."""
        anc = np.full((len(rows), self.num_anchors), -1, dtype=np.int64)
        n = min(self.num_anchors, self.ids.shape[1])
        anc[:, :n] = self.ids[rows, :n]
        return anc

    def tensors(self, rows: np.ndarray, project: Callable[[torch.Tensor], torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(desc (B,1+K,D), anchors (B,1+L,D), pad (B,1+K)) for queries `rows`: query first, then map images.

        With `project`, descriptors come out projected, each distinct image projected once (a batch
        repeats map images many times); padded slots are zero rows either way.
        """
        cand, anc = self.ids[rows], self.anchor_ids(rows)
        idx = np.concatenate([cand, anc], axis=1)
        uniq, inv = np.unique(np.where(idx < 0, len(self.m_desc) - 1, idx), return_inverse=True)
        table, q = self.m_desc[torch.from_numpy(uniq)], self.q_desc[torch.from_numpy(rows)]
        if project is not None:
            table, q = project(table), project(q)
        tokens = table[torch.from_numpy(inv.reshape(idx.shape))] * torch.from_numpy(idx >= 0)[..., None]
        k = cand.shape[1]
        desc = torch.cat([q[:, None], tokens[:, :k]], dim=1)
        anchors = torch.cat([q[:, None], tokens[:, k:]], dim=1)
        pad = torch.from_numpy(np.concatenate([np.zeros((len(rows), 1), bool), cand < 0], axis=1))
        return desc, anchors, pad

    def side(self, rows: np.ndarray, q_side: SideInfo | None) -> dict[str, torch.Tensor]:
        """Side affinities (B, 1+K, 1+L) per modality of [query, candidates] to [query, anchors]."""
        cand, anc = self.ids[rows], self.anchor_ids(rows)
        side = {}
        for mod in self.modalities:
            out = np.empty((len(rows), 1 + cand.shape[1], 1 + anc.shape[1]), dtype=np.float32)
            for b, qi in enumerate(rows):
                out[b] = side_affinity(mod, _with_query(q_side, qi, self.m_side, cand[b]),
                                       _with_query(q_side, qi, self.m_side, anc[b]), self.side_conf)
            side[mod] = torch.from_numpy(out)
        return side

    def subset(self, rows: np.ndarray) -> Contexts:
        """The contexts of queries `rows` only."""
        return Contexts(self.q_desc[torch.from_numpy(rows)], self.m_desc, self.ids[rows], self.num_anchors,
                        self.m_side, self.modalities, self.side_conf)


def _batches(n: int, size: int) -> list[np.ndarray]:
    return [np.arange(s, min(s + size, n)) for s in range(0, n, size)]


def side_batches(ctx: Contexts, q_side: SideInfo | None, batch_size: int = 64
                 ) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """(query rows, their side affinities) batch by batch, computed as they are asked for. They do not depend
    on the model: keep them in a list to score the same queries again (validation every epoch)."""
    for rows in _batches(len(ctx.ids), batch_size):
        yield rows, ctx.side(rows, q_side)


@torch.no_grad()
def refined_scores(model: GCSA, ctx: Contexts, sides: Iterable[tuple[np.ndarray, dict[str, torch.Tensor]]]
                   ) -> np.ndarray:
    """(Q, K) refined similarities for every query (padded candidates get -inf); `sides` from `side_batches`."""
    model.eval()
    out = np.empty(ctx.ids.shape, dtype=np.float32)
    for rows, side in sides:
        desc, anchors, pad = ctx.tensors(rows, model.project)
        out[rows] = model(desc, anchors, side, pad, projected=True).numpy()
    return np.where(ctx.ids < 0, -np.inf, out)


@torch.no_grad()
def projected_scores(model: GCSA, ctx: Contexts, batch_size: int = 256) -> np.ndarray:
    """(Q, K) cosine of projected descriptors (the stage-1 similarity; padded candidates get -inf)."""
    model.eval()
    out = np.concatenate([model.projected_scores(ctx.tensors(rows, model.project)[0]).numpy()
                          for rows in _batches(len(ctx.ids), batch_size)])
    return np.where(ctx.ids < 0, -np.inf, out)


def order(ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidates sorted by score, best first (stable, so ties keep the retrieval order)."""
    o = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(ids, o, 1), np.take_along_axis(scores, o, 1)


def load_model(path: str | Path) -> tuple[GCSA, dict]:
    """A trained GCSA network and the training conf stored with it."""
    model, meta = load_trained_model(path, GCSA, "model_config", "train one with `vprkit train gcsa`")
    return model, meta.get("conf", {})


def query_descriptors(retrieval: Retrieval, cache_dir: Path) -> np.ndarray:
    """Global descriptors of the retrieval's queries: those `vprkit query` stored, else extracted (cached)."""
    stored = stored_query_descriptors(retrieval)
    if stored is not None:
        return stored
    conf, state = retrieval.manifest["conf"], retrieval.index_dir / STATE_FILE
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / QUERY_FEATURES
    extract.main(conf, retrieval.query_dir, path, state if state.exists() else None, names=retrieval.q_names)
    return h5io.read_global(path, retrieval.q_names)


def load_sides(retrieval: Retrieval, map_spec: str | None, query_spec: str | None, modalities: list[str],
               sigma: float | None, seed: int) -> tuple[SideInfo, SideInfo]:
    """Map and query side information; query positions replaced by simulated priors when `sigma` is set."""
    m_side = load_sideinfo(map_spec, retrieval.m_names, retrieval.map_dir)
    q_side = load_sideinfo(query_spec, retrieval.q_names, retrieval.query_dir, origin=m_side.origin)
    for mod in modalities:
        if not m_side.has(mod).any():
            raise ValueError(f"the GCSA model uses '{mod}' but the map side information ({map_spec}) has none")
        missing = int((~q_side.has(mod)).sum())
        if missing:
            logger.warning("GCSA: %d of %d queries have no %s: that channel is masked for them", missing,
                           len(q_side.names), mod)
    if sigma:
        q_side = simulate_prior(q_side, sigma, seed)
        logger.warning("GCSA: %s", noise_model(sigma, seed))
    return m_side, q_side


class GCSAReranker(Reranker):
    """Registered as 'gcsa'. Needs a checkpoint from `vprkit train gcsa`."""

    name = "gcsa"
    default_conf = {"checkpoint": None, "num_rerank": 100, "map_sideinfo": None, "query_sideinfo": None,
                    "query_prior_sigma": None, "seed": 0, "batch_size": 64}
    confs = {
        "default": {},
        "route": {"map_sideinfo": "index", "query_sideinfo": "index", "query_prior_sigma": 3.0},
        "msls": {"map_sideinfo": "msls", "query_sideinfo": "msls"},
    }

    def rerank(self, retrieval: Retrieval, work_dir: Path) -> tuple[np.ndarray, np.ndarray]:
        c = self.conf
        if not c["checkpoint"]:
            raise ValueError("GCSA needs a trained model: --set checkpoint=PATH (`vprkit train gcsa`)")
        model, train_conf = load_model(c["checkpoint"])
        m_side, q_side = load_sides(retrieval, c["map_sideinfo"], c["query_sideinfo"], model.modalities,
                                    c["query_prior_sigma"], c["seed"])
        m_desc = h5io.read_global(retrieval.index_dir / MAP_FEATURES, retrieval.m_names)
        q_desc = query_descriptors(retrieval, Path(work_dir))
        ctx = Contexts.build(q_desc, m_desc, retrieval.ids, model.num_anchors, m_side, model.modalities,
                             train_conf.get("side", {}))
        return order(retrieval.ids, refined_scores(model, ctx, side_batches(ctx, q_side, c["batch_size"])))

    def finish(self, out_dir: Path, retrieval: Retrieval, ids: np.ndarray, scores: np.ndarray,
               result: dict, truth: GroundTruth | None = None) -> None:
        """The MSLS-challenge CSV, and the query prior's noise model when positions were simulated."""
        write_msls_csv(out_dir / "msls_predictions.csv", retrieval.q_names, retrieval.m_names, ids)
        if self.conf["query_prior_sigma"]:
            (out_dir / "noise_model.txt").write_text(noise_model(self.conf["query_prior_sigma"], self.conf["seed"])
                                                     + "\n")
