"""SegVLAD as a re-ranker: score only each query's global top-N by similarity-weighted segment votes.

Map segments are extracted only for images that appear among the candidates (cached, resumable, in
the work folder); the vocabulary and PCA are fitted on a sample of the whole map.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ..index.layout import QUERY_SEGMENTS, SEGMENT_FEATURES
from ..results import Retrieval
from ..segvlad import extract
from ..segvlad.api import read_segments
from ..segvlad.index import bin_count, knn_chunked, owners, vote_weights
from .base import Reranker

_RERANK = {"num_rerank": 20, "device": "cpu"}


class SegVLADReranker(Reranker):
    """Candidates ordered by segment votes; candidates without votes keep their global order, after the rest.

    With `scoring=reference` (preset `ref`) the votes are min-max normalised over every query of the run."""

    name = "segvlad"
    # short names: ref (the original's choices), slic / dino / sam (vprkit's segvote variants); each holds a whole
    # extraction preset
    confs = {name.split("-", 1)[1]: {k: v for k, v in conf.items() if k != "preset"} | _RERANK
             for name, conf in extract.CONFIG.listing()}
    default_conf = confs["slic"]
    open_sections = extract.CONFIG.open_sections

    def _features(self, retrieval: Retrieval, work_dir: Path) -> tuple[Path, Path]:
        conf = extract.check_conf(dict(self.conf))
        work_dir.mkdir(parents=True, exist_ok=True)
        ext = extract.SegExtractor(conf, conf["device"])
        state = work_dir / f"segvlad_state-{retrieval.fingerprint}.npz"  # fitted on this index's map
        if state.exists():
            ext.load_state(state)
        else:
            ext.fit(retrieval.map_dir, retrieval.m_names)
            ext.save_state(state)
        used = np.unique(retrieval.ids[retrieval.ids >= 0])
        m_feats, q_feats = work_dir / SEGMENT_FEATURES, work_dir / QUERY_SEGMENTS
        extract.main(conf, retrieval.map_dir, m_feats, state, names=[retrieval.m_names[i] for i in used], extractor=ext)
        extract.main(conf, retrieval.query_dir, q_feats, state, names=retrieval.q_names, extractor=ext)
        return m_feats, q_feats

    def rerank(self, retrieval: Retrieval, work_dir: Path) -> tuple[np.ndarray, np.ndarray]:
        m_feats, q_feats = self._features(retrieval, Path(work_dir))
        k_seg = self.conf["top_k_segments"]
        hits, cands = [], []
        # both files open once; only one query and its candidates' segments are in memory at a time
        with h5py.File(q_feats, "r") as q_file, h5py.File(m_feats, "r") as m_file:
            for q_name, cand in zip(retrieval.q_names, retrieval.ids):
                [query] = read_segments(q_file, [q_name])
                valid = cand[cand >= 0]
                sets = read_segments(m_file, [retrieval.m_names[i] for i in valid])
                owner = np.repeat(np.arange(len(valid)), [len(s) for s in sets])
                store = np.concatenate(sets) if sets else np.zeros((0, query.shape[1]), np.float32)
                sims, seg = knn_chunked(query, store, min(k_seg, len(store)))
                hits.append((sims, owners(seg, owner)))
                cands.append(valid)
        ids = retrieval.ids.copy()
        scores = np.zeros(ids.shape, dtype=np.float32)
        # `reference` scoring normalises over the retrievals of every query of this run (the original's rule)
        for qi, ((_, images), weights, valid) in enumerate(zip(hits, vote_weights(hits, self.conf["scoring"]),
                                                                 cands)):
            votes = bin_count(images, weights, len(valid))
            order = np.argsort(-votes, kind="stable")  # ties (e.g. no votes) keep the global order
            ids[qi, : len(valid)], scores[qi, : len(valid)] = valid[order], votes[order]
        return ids, scores
