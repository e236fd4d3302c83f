"""AMES re-ranking: a trained AMES model scores the query against each of its top candidates.

score = lambda * global similarity + (1 - lambda) * sigmoid(temp * raw AMES similarity), candidates
scored in batches. Local descriptors of queries (`num_query_desc`, default 600) and map
(`num_map_desc`, default 100) are extracted with the settings stored in the checkpoint and cached in
`cache_dir` (resumable). A binary (distilled) model reads the map as packed 128-bit codes, built once
from the map's fp descriptors with the model's own binarizer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..data.groundtruth import GroundTruth
from ..evaluation import metrics
from ..features import local
from ..models.ames import AMES, EMPTY_LOGIT, load_ames, load_authors_checkpoint, rerank_score
from ..results import Retrieval
from .base import Reranker

NO_MODEL = ("ames needs a trained model: --set checkpoint=PATH (train one with `vprkit train ames`) "
            "or authors_checkpoint=PATH (a released model of the AMES authors)")
MapReader = Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]]


class AMESReranker(Reranker):
    """Re-rank with an AMES checkpoint from `vprkit train ames` (fp or binary), or with one the authors released
    (`authors_checkpoint`; its local features are `features` / `resize_max` / `detector`, which must give the
    descriptor size it was trained on: 768 for their DINOv2 ViT-B/14-reg models)."""

    name = "ames"
    # lambda / temperature as tuned by the AMES authors for DINOv2 fp and distilled-binary models (their README)
    confs = {"fp": {"lamb": 0.55, "temp": 0.3}, "binary": {"lamb": 0.35, "temp": 0.1}}
    default_conf = {"checkpoint": None, "lamb": 0.55, "temp": 0.3, "num_rerank": 100, "num_query_desc": 600,
                    "num_map_desc": 100, "batch_size": 100, "precision": "fp32", "cache_dir": None, "device": "cpu",
                    "authors_checkpoint": None, "features": "dinov2", "resize_max": None, "detector": None}

    def check(self, retrieval: Retrieval) -> None:
        """No model, no run: refused before the output folder is made."""
        if not (self.conf["checkpoint"] or self.conf["authors_checkpoint"]):
            raise ValueError(NO_MODEL)

    def rerank(self, retrieval: Retrieval, work_dir: Path) -> tuple[np.ndarray, np.ndarray]:
        c = self.conf
        return fuse(retrieval.ids, retrieval.scores, self.raw_scores(retrieval, work_dir), c["lamb"], c["temp"])

    def raw_scores(self, retrieval: Retrieval, work_dir: Path) -> np.ndarray:
        """(Q, N) raw AMES similarities of each query and its candidates (NaN where there is no candidate),
        before fusion: what `tune_fusion` needs to choose lambda and temp on a validation retrieval."""
        c = self.conf
        model, fconf = self.model()
        model.to(c["device"])
        q_path, m_path = self.local_features(fconf, retrieval, work_dir)
        read_map = self._map_reader(model, m_path)
        q_desc, q_valid = local.split(local.read_rows(q_path))
        if q_desc.shape[-1] != model.conf["input_dim"]:
            raise ValueError(f"{q_path}: {q_desc.shape[-1]}-d local descriptors, the AMES model reads "
                             f"{model.conf['input_dim']}-d")
        raw = np.full(retrieval.ids.shape, np.nan, dtype=np.float32)
        for qi in tqdm(range(len(raw)), desc="ames re-ranking", unit="query"):
            ok = retrieval.ids[qi] >= 0
            raw[qi, ok] = score_candidates(model, q_desc[qi], q_valid[qi], read_map, retrieval.ids[qi][ok],
                                           c["batch_size"], c["device"], c["precision"]).numpy()
        return raw

    def model(self) -> tuple[AMES, dict]:
        """(AMES model in eval mode, the local-feature settings it reads)."""
        c = self.conf
        if c["authors_checkpoint"]:
            fconf = local.CONFIG.resolve(c["features"], {"preprocessing.resize_max": c["resize_max"],
                                                                "detector": c["detector"]})
            return load_authors_checkpoint(c["authors_checkpoint"]), fconf
        if not c["checkpoint"]:
            raise ValueError(NO_MODEL)
        model, meta = load_ames(c["checkpoint"])
        return model, meta["features"]

    def local_features(self, fconf: dict, retrieval: Retrieval, work_dir: Path) -> tuple[Path, Path]:
        """The cached local features of the queries and of the map, extracted when missing (resumable; kept in
        `cache_dir`, or `work_dir`, for every later run with the same settings and images)."""
        c = self.conf
        cache = Path(c["cache_dir"] or work_dir)
        return (local.cached(fconf, retrieval.query_dir, retrieval.q_names, cache, "query", c["num_query_desc"],
                             c["device"]),
                local.cached(fconf, retrieval.map_dir, retrieval.m_names, cache, "map", c["num_map_desc"],
                             c["device"]))

    @staticmethod
    def _map_reader(model: AMES, m_path: Path) -> MapReader:
        """Rows -> (model inputs, valid): fp descriptors, or unpacked codes from the binary store."""
        if model.binarizer is None:
            return lambda rows: local.split(local.read_rows(m_path, rows))
        codes = local.write_codes(m_path, m_path.with_name(m_path.stem + f"_codes_{id_of(model)}.h5"),
                                  model.binarizer)
        return lambda rows: local.read_codes(codes, rows)


def id_of(model: AMES) -> str:
    """Short fingerprint of a model's binarizer, so codes of different models never get mixed up."""
    w = model.binarizer.W.detach().cpu().numpy().tobytes()
    return hashlib.sha1(w).hexdigest()[:10]


PRECISIONS = ("fp32", "bf16")


@torch.inference_mode()
def score_candidates(model: AMES, q_desc: torch.Tensor, q_valid: torch.Tensor, read_map: MapReader,
                     cand: np.ndarray, batch_size: int = 100, device: str = "cpu", precision: str = "fp32"
                     ) -> torch.Tensor:
    """Raw AMES similarity of one query (K, D) against map rows `cand`, in batches (by default all top-100 in one
    forward) sharing the query's embedding; EMPTY_LOGIT where the query or a candidate has no descriptor (no local
    evidence). `precision` bf16 runs the matrix products in bfloat16 (autocast; LayerNorm and softmax stay fp32):
    faster where the CPU or GPU has bf16 units, raw scores off by ~1e-2 (bench/ames_speed.py)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}'; choose one of {PRECISIONS}")
    q_in = model.encode(q_desc[None].to(device))
    q_valid = q_valid[None].to(device)
    out = []
    for s in range(0, len(cand), batch_size):
        m_in, m_valid = (t.to(device) for t in read_map(cand[s:s + batch_size]))
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            raw = model(q_in, q_valid, m_in, m_valid, encoded=True).float()
        out.append(raw.masked_fill(~m_valid.any(1) | ~q_valid.any(), EMPTY_LOGIT).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def fuse(ids: np.ndarray, global_scores: np.ndarray, raw: np.ndarray, lamb: float, temp: float
         ) -> tuple[np.ndarray, np.ndarray]:
    """Candidates (Q, N) re-ordered by `rerank_score` (best first; missing candidates, id -1, stay last)."""
    ok = ids >= 0
    final = rerank_score(torch.from_numpy(np.nan_to_num(global_scores)).float(),
                         torch.from_numpy(np.nan_to_num(raw)).float(), lamb, temp).numpy()
    order = np.argsort(np.where(ok, -final, np.inf), axis=1, kind="stable")
    out_ids = np.take_along_axis(ids, order, 1)
    out_scores = np.where(out_ids >= 0, np.take_along_axis(final, order, 1), np.nan).astype(np.float32)
    return out_ids, out_scores


LAMBDAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
TEMPS = (0.05, 0.1, 0.2, 0.5, 1.0)


def tune_fusion(ids: np.ndarray, global_scores: np.ndarray, raw: np.ndarray, truth: GroundTruth,
                lambdas=LAMBDAS, temps=TEMPS) -> dict:
    """lambda and temp with the best mAP of the fused ranking of a validation retrieval (never the test set).

    Ties go to the larger lambda (closer to the global ranking), so a model that adds nothing gets lambda 1
    and cannot lower the global figures. Returns {"lamb", "temp", "mAP", "R@1", "global_mAP"}.
    """
    best = None
    for lamb in sorted(lambdas, reverse=True):
        for temp in (temps if lamb < 1 else temps[:1]):  # lambda 1 ignores temp
            m = metrics.evaluate(fuse(ids, global_scores, raw, lamb, temp)[0], truth, ns=(1,), map_ks=())
            if best is None or m["mAP"] > best["mAP"] + 1e-12:
                best = {"lamb": lamb, "temp": temp, "mAP": m["mAP"], "R@1": m["R@1"]}
    return {**best, "global_mAP": metrics.mean_average_precision(ids, truth)}
