"""Patch-NetVLAD's files: the authors' NetVLAD checkpoints, the index's NetVLAD state, the patch model's cached state
(model.npz) and the original's output files (kapture predictions, recalls.txt)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...aggregators.netvlad import NetVLAD
from ...evaluation.outputs import atomic_savez, atomic_write
from ...features import patches
from ...index.layout import STATE_FILE
from ...models.base import load_state_dict
from ...results import Retrieval


def write_kapture_paths(path: Path, q_paths: list[str], m_paths: list[str], ids: np.ndarray) -> None:
    """The original's *_predictions.txt: `query path, map path` per line, best first, no score."""
    lines = ["# kapture format: 1.0", "# query_image, map_image"]
    for q, row in zip(q_paths, ids, strict=True):
        lines += [f"{q}, {m_paths[j]}" for j in row if j >= 0]
    atomic_write(path, "\n".join(lines) + "\n")


def write_kapture_pairs(path: Path, q_names: list[str], m_names: list[str], ids: np.ndarray,
                        scores: np.ndarray) -> None:
    """vprkit's scored pairs (`query, map, score` per line, best first, names relative to their folders)."""
    lines = ["# kapture format: 1.0", "# query_image, map_image, score"]
    for qi, q in enumerate(q_names):
        lines += [f"{q}, {m_names[j]}, {s:.6f}" for j, s in zip(ids[qi], scores[qi]) if j >= 0]
    atomic_write(path, "\n".join(lines) + "\n")


def write_recalls(path: Path, recalls: dict[str, dict[int, float]]) -> None:
    """The original's recalls.txt: `Recall NAME@N: value` per ranking and N."""
    lines = [f"Recall {name}@{k}: {r:.4f}" for name, by_n in recalls.items() for k, r in by_n.items()]
    atomic_write(path, "\n".join(lines) + "\n")


def checkpoint_parts(path: str) -> tuple[NetVLAD, dict[str, torch.Tensor]]:
    """NetVLAD layer and optional PCA arrays from a Patch-NetVLAD / NetVLAD checkpoint (weights only)."""
    state = load_state_dict(path)
    if "pool.centroids" not in state or "pool.conv.weight" not in state:
        raise ValueError(f"{path}: not a NetVLAD checkpoint (no 'pool.centroids' / 'pool.conv.weight')")
    cent, w = state["pool.centroids"].float(), state["pool.conv.weight"].float()
    agg = NetVLAD(num_clusters=cent.shape[0], dim=cent.shape[1])
    bias = state.get("pool.conv.bias", torch.zeros(cent.shape[0])).float()
    agg.load_state_dict({"conv.weight": w.reshape(*w.shape[:2], 1, 1), "conv.bias": bias, "centroids": cent})
    pca = {}
    if "WPCA.0.weight" in state:
        pw = state["WPCA.0.weight"].float()
        pca = {"pca_weight": pw.reshape(pw.shape[0], -1),
               "pca_bias": state.get("WPCA.0.bias", torch.zeros(pw.shape[0])).float()}
    return agg, pca


def index_netvlad(retrieval: Retrieval) -> NetVLAD | None:
    """The global index's NetVLAD layer when it pools VGG19 features (so patches share its vocabulary)."""
    conf = retrieval.manifest.get("conf", {})
    state_path = retrieval.index_dir / STATE_FILE
    if conf.get("model", {}).get("name") != "vgg19" or conf.get("aggregator", {}).get("name") != "netvlad" \
            or not state_path.is_file():
        return None
    with np.load(state_path, allow_pickle=False) as data:
        state = {k: data[k] for k in data.files}
    agg = NetVLAD(num_clusters=state["centroids"].shape[0], dim=state["centroids"].shape[1])
    agg.load_state(state)
    return agg


def load_state(model: patches.PatchModel, path: Path) -> None:
    """The NetVLAD, PCA and PQ codebook a patch model fitted earlier (model.npz in the features cache)."""
    with np.load(path, allow_pickle=False) as data:
        model.aggregator.load_state({k[4:]: data[k] for k in data.files if k.startswith("agg.")})
        model.pca_weight, model.pca_bias, model.pq_centroids = (
            torch.from_numpy(data[k]) for k in ("pca_weight", "pca_bias", "pq_centroids"))


def save_state(model: patches.PatchModel, path: Path) -> None:
    """What `load_state` reads, written atomically."""
    arrays = {f"agg.{k}": v for k, v in model.aggregator.state().items()}
    atomic_savez(path, arrays | {"pca_weight": model.pca_weight.numpy(), "pca_bias": model.pca_bias.numpy(),
                                 "pq_centroids": model.pq_centroids.numpy()})
