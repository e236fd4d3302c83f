"""Chamfer re-ranking: local descriptors matched without any training.

The raw similarity of a query and a candidate is the mean, over the query's descriptors, of the best
cosine similarity among the candidate's descriptors, after PCA-whitening fitted on a sample of the map's
descriptors (backbone descriptors share a large common component that makes every raw cosine high).
It is fused with the global similarity exactly as AMES is (`lambda * global + (1 - lambda) *
sigmoid(temp * raw)`), so `rerank.ames.tune_fusion` chooses lambda and temp on a validation retrieval.

It is the target `fp-chamfer` distils into AMES, and a baseline any trained re-ranker must beat: it needs no
checkpoint, only the local features (`features.local`, cached in `cache_dir` like AMES's).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..features import local
from ..models.ames import ChamferTeacher, chamfer_similarity
from ..models.pca import fit_pca
from ..results import Retrieval
from .ames import AMESReranker


class ChamferReranker(AMESReranker):
    """Re-rank by the whitened Chamfer similarity of local descriptors (training-free), fused as AMES is."""

    name = "chamfer"
    confs = {"dinov2-value": {"features": "dinov2-value"}, "dinov2": {"features": "dinov2"}}
    # lambda / temp: the best validation mAP on Nordland (bench/ames_rerank.py); choose yours with tune_fusion
    default_conf = {"features": "dinov2-value", "resize_max": None, "dim": 128, "whiten_images": 500,
                    "lamb": 0.4, "temp": 0.5, "num_rerank": 100, "num_query_desc": 600, "num_map_desc": 100,
                    "cache_dir": None, "device": "cpu"}

    def check(self, retrieval: Retrieval) -> None:
        """Training-free: no model to check (AMES's check would ask for one)."""
        return None

    def raw_scores(self, retrieval: Retrieval, work_dir: Path) -> np.ndarray:
        """(Q, N) Chamfer similarities of each query and its candidates (NaN where there is no candidate)."""
        c = self.conf
        fconf = local.CONFIG.resolve(c["features"], {"preprocessing.resize_max": c["resize_max"]})
        q_path, m_path = self.local_features(fconf, retrieval, work_dir)
        sample = np.unique(np.linspace(0, len(retrieval.m_names) - 1, c["whiten_images"]).round().astype(int))
        sim = whitening(*local.split(local.read_rows(m_path, sample)), c["dim"])
        q_desc, q_valid = local.split(local.read_rows(q_path))
        raw = np.full(retrieval.ids.shape, np.nan, dtype=np.float32)
        for qi in tqdm(range(len(raw)), desc="chamfer re-ranking", unit="query"):
            ok = retrieval.ids[qi] >= 0
            m_desc, m_valid = local.split(local.read_rows(m_path, retrieval.ids[qi][ok]))
            raw[qi, ok] = score_candidates(sim, q_desc[qi], q_valid[qi], m_desc, m_valid).numpy()
        return raw


def whitening(desc: torch.Tensor, valid: torch.Tensor, dim: int) -> ChamferTeacher:
    """The Chamfer similarity through PCA-whitening of the L2-normalised valid descriptors `desc` (n, K, D)
    (no projection when there are too few to fit one)."""
    x = F.normalize(desc[valid], dim=-1)
    if len(x) < 2:
        return ChamferTeacher(nn.Identity())
    mean, proj = (torch.from_numpy(a).float() for a in fit_pca(x.numpy(), dim))
    layer = nn.Linear(proj.shape[1], proj.shape[0])
    with torch.no_grad():
        layer.weight.copy_(proj)
        layer.bias.copy_(-(proj @ mean))
    return ChamferTeacher(layer)


@torch.inference_mode()
def score_candidates(sim: ChamferTeacher, q_desc: torch.Tensor, q_valid: torch.Tensor, m_desc: torch.Tensor,
                     m_valid: torch.Tensor) -> torch.Tensor:
    """(N,) Chamfer similarity of one query (Kq, D) to N candidates (N, Km, D): the query embedded once."""
    return chamfer_similarity(sim.embed(q_desc[None]), q_valid[None], sim.embed(m_desc), m_valid)
