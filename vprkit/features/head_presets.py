"""Extraction presets of the heads `vprkit train head` trains on backbone tokens (docs/training.md).

The preset name is also the training preset: `vprkit train head MAP QUERIES -o RUN --preset NAME` trains it and
`vprkit index MAP -o IDX --preset NAME --checkpoint RUN/best.pt` indexes with the trained head (the checkpoint
brings the head's configuration, e.g. a PCA size chosen in training). Without a checkpoint the head is untrained
(seeded initialisation; NetVLAD k-means-fitted on the map): the baseline training is measured against.

DINOv2-S: block 8's value facet, as vprkit's untrained default uses (docs/defaults.md), at 224 px on the long side
(thumbnails are upsampled). Head sizes are vprkit's, smaller than the authors' DINOv2-B / ResNet-50 ones.
"""

from __future__ import annotations

DINOV2S = {"name": "dinov2_vits14", "layer": 8, "facet": "value"}
DINOV2S_DIM = 384
MOBILENETV2_LAST = {"name": "mobilenetv2"}  # 1280-d, stride 32
MOBILENETV2_MID = {"name": "mobilenetv2", "layer": 13}  # 96-d, stride 16 (MixVPR cuts ResNet mid-way too)

# MixVPR's fixed token grid (h, w): a landscape image's own grid at these presets' sizes (MobileNetV2 block 13 of
# 256 x 128, DINOv2-S of 224 x 112), so such frames keep every token; other shapes are pooled to it
MIXVPR_GRID = (8, 16)


def head_conf(head: str, dim: int) -> dict:
    """The head's own settings for `dim` input channels (vprkit's sizes)."""
    heads = {
        "salad": {"name": "salad", "num_channels": dim, "num_clusters": 32, "cluster_dim": 64, "token_dim": 256,
                  "mlp_dim": 512, "dropout": 0.3},
        "boq": {"name": "boq", "in_channels": dim, "proj_channels": 256, "num_queries": 32, "num_layers": 2,
                "row_dim": 16},
        "mixvpr": {"name": "mixvpr", "in_channels": dim, "in_h": MIXVPR_GRID[0], "in_w": MIXVPR_GRID[1],
                   "out_channels": 256, "mix_depth": 2, "mlp_ratio": 1, "out_rows": 16},
        "netvlad": {"name": "netvlad", "num_clusters": 32, "dim": dim},
        "gem-fc": {"name": "cosplace", "in_dim": dim, "out_dim": 512},
    }
    return heads[head]


CHANNEL_KEYS = ("num_channels", "in_channels", "dim", "in_dim")  # SALAD, BoQ / MixVPR, NetVLAD, GeM + fc


def with_channels(head: dict, dim: int) -> dict:
    """The head's settings for another number of input channels (after a PCA projection)."""
    return {k: dim if k in CHANNEL_KEYS else v for k, v in head.items()}


def _preset(model: dict, dim: int, head: str, resize_max: int) -> dict:
    agg = {"name": "token_head", "head": head_conf(head, dim), "in_dim": dim, "proj_dim": None,
           "grid": list(MIXVPR_GRID) if head == "mixvpr" else None, "seed": 0}
    return {"model": dict(model), "aggregator": agg, "preprocessing": {"resize_max": resize_max}}


CONFS: dict[str, dict] = {
    **{f"dinov2s-{h}": _preset(DINOV2S, DINOV2S_DIM, h, 224) for h in ("salad", "boq", "mixvpr", "netvlad", "gem-fc")},
    "mobilenetv2-mixvpr": _preset(MOBILENETV2_MID, 96, "mixvpr", 256),
    "mobilenetv2-gem-fc": _preset(MOBILENETV2_LAST, 1280, "gem-fc", 256),
}

# Training defaults of a preset (over `vprkit train head`'s defaults and recipe; a `recipe` here is the preset's
# default recipe): MobileNetV2 trains its last blocks on a CPU in minutes; DINOv2's blocks cost ~50x more, so they
# stay frozen unless asked (train.finetune=N).
TRAIN: dict[str, dict] = {
    **{name: {"train": {"finetune": 7}} for name in ("mobilenetv2-mixvpr", "mobilenetv2-gem-fc")},
    "dinov2s-salad": {"recipe": "vprkit-ms"},  # measured: SALAD learns with place batches, not global triplets
}
