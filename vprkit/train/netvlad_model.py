"""The NetVLAD training model: a backbone frozen but for its last layers, (attention inside) NetVLAD, and the frozen
features of every image kept in memory (`Bank`), so each step runs only the trainable tail."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..aggregators import get_aggregator
from ..data.groundtruth import GroundTruth
from ..evaluation import metrics
from ..features import extract
from ..models import get_backbone
from .data import PlaceSet


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
