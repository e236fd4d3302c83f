"""The patch model of Patch-NetVLAD: backbone + NetVLAD + PCA, from an authors' checkpoint, the index's NetVLAD, or
fitted on the map (k-means vocabulary, PCA-whitening of its patches)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ...aggregators.netvlad import NetVLAD
from ...data.images import list_images
from ...features import patches
from ...models import get_backbone
from ...results import Retrieval
from . import files


def fit_netvlad(model: patches.PatchModel, root: Path, names: list[str]) -> None:
    """k-means NetVLAD vocabulary from conv features of (a sample of) the given images."""
    conf = model.conf
    sample = sorted(random.Random(conf["seed"]).sample(names, min(len(names), conf["fit_max_images"])))
    feats = []
    for i in range(0, len(sample), conf["batch_size"]):
        ok, loc, _ = model.local_features(root, sample[i:i + conf["batch_size"]])
        if ok:
            feats.append(loc.permute(0, 2, 3, 1).reshape(-1, loc.shape[1]).cpu().numpy())
    if not feats:
        raise ValueError(f"{root}: no readable images to fit the NetVLAD vocabulary on")
    local = np.concatenate(feats)
    local = local[np.random.default_rng(conf["seed"]).permutation(len(local))[:100_000]]
    model.aggregator.fit(local)


def build_model(conf: dict, retrieval: Retrieval | None, state_path: Path | None,
                images: tuple[Path, list[str]] | None = None) -> patches.PatchModel:
    """The patch model: backbone + NetVLAD + PCA, loaded from `state_path` or fitted (then saved there).

    Fitting uses the map of `retrieval`, or `images` (root, names) when there is no map (match-two).
    """
    pca: dict[str, torch.Tensor] = {}
    index_agg = files.index_netvlad(retrieval) if retrieval is not None and not conf["checkpoint"] else None
    if conf["checkpoint"]:
        agg, pca = files.checkpoint_parts(conf["checkpoint"])
        if pca and pca["pca_weight"].shape[0] != conf["num_pcs"]:
            raise ValueError(f"{conf['checkpoint']}: its PCA has {pca['pca_weight'].shape[0]} dims but num_pcs is "
                             f"{conf['num_pcs']}: use the checkpoint made for {conf['num_pcs']} dims (the original "
                             f"loads '..._WPCA{conf['num_pcs']}.pth.tar') or set num_pcs")
        model = patches.PatchModel(conf, get_backbone("vgg16", checkpoint=conf["checkpoint"]), agg,
                                   drop_last_relu=True)
    else:
        backbone = get_backbone("vgg19")
        agg = index_agg or NetVLAD(num_clusters=conf["num_clusters"], dim=backbone.dim)
        model = patches.PatchModel(conf, backbone, agg)
    if state_path is not None and state_path.is_file():
        files.load_state(model, state_path)
        return model.to(torch.device(conf["device"]))
    root, names = images if images is not None else (retrieval.map_dir, list_images(retrieval.map_dir))
    if not conf["checkpoint"] and index_agg is None:
        fit_netvlad(model, root, names)
    if pca:
        model.pca_weight, model.pca_bias = pca["pca_weight"], pca["pca_bias"]
    elif retrieval is not None:
        model.fit_pca(root, names)
    if state_path is not None:
        files.save_state(model, state_path)
    return model.to(torch.device(conf["device"]))
