"""DINOv2 models released by their authors: SALAD, BoQ (DINOv2-B) and MegaLoc.

Each entry builds vprkit's DINOv2 ViT-B/14 with the configuration the authors' code runs (all 12 blocks; the
official hub's position-embedding interpolation with its 0.1 offset; SALAD and MegaLoc take the final norm's
patch tokens and CLS token, BoQ the last block's raw patch tokens) and the matching head from
`vprkit.aggregators`. The `from_*` functions rename the authors' keys (as in their released files) to
`backbone.*` / `aggregator.*`. How each is checked against the authors' code: docs/models.md ("DINOv2 models")
and tests/data/zoo/<preset>/SOURCE.json.
"""

from __future__ import annotations

from . import Weights, ZooEntry, rename

SALAD_PAPER = "Izquierdo & Civera, Optimal Transport Aggregation for Visual Place Recognition, CVPR 2024"
BOQ_PAPER = "Ali-bey et al., BoQ: A Place is Worth a Bag of Learnable Queries, CVPR 2024"
MEGALOC_PAPER = "Berton & Masone, MegaLoc: One Retrieval to Place Them All, arXiv 2502.17237, 2025"
GSV = "GSV-Cities"
# The official torch.hub DINOv2 (facebookresearch/dinov2) resizes its 37x37 position grid with offset 0.1.
HUB_VITB = {"name": "dinov2", "arch": "vitb14", "interpolate_offset": 0.1, "weights": False}


def _hub_dinov2(state: dict, prefix: str) -> dict:
    """The authors' wrapped hub DINOv2 (`prefix`) moved to `backbone.`, without its `mask_token` (masked
    pre-training only; vprkit's DINOv2 has none)."""
    return rename({k: v for k, v in state.items() if k != prefix + "mask_token"}, [(prefix, "backbone.")])


def from_salad(state: dict) -> dict:
    """SALAD `VPRModel` (Lightning): `backbone.model.<hub DINOv2>` and `aggregator.<SALAD>`."""
    return _hub_dinov2(state, "backbone.model.")


def from_boq_dinov2(state: dict) -> dict:
    """BoQ `VPRModel`: `backbone.dino.<hub DINOv2>` and `aggregator.<BoQ>`."""
    return _hub_dinov2(state, "backbone.dino.")


ENTRIES: list[ZooEntry] = [
    ZooEntry(
        preset="salad-dinov2b",
        backbone=HUB_VITB,
        aggregator={"name": "salad", "num_channels": 768, "num_clusters": 64, "cluster_dim": 128, "token_dim": 256},
        resize=(322, 322), dim=8448,
        weights=Weights("dino_salad.ckpt", "https://github.com/serizba/salad/releases/download/v1.0.0/dino_salad.ckpt"),
        training_data=GSV, license="GPL-3.0 (SALAD); DINOv2 weights Apache-2.0", code="serizba/salad",
        paper=SALAD_PAPER, convert="zoo.vit:from_salad",
        notes="hubconf dinov2_salad(): DINOv2-B, final norm, CLS token + patch tokens; SALAD 64 x 128 + 256 token "
              "(README: eval.py --image_size 322 322, torchvision Resize bilinear)",
        extra={"interpolation": "bilinear"},
    ),
    ZooEntry(
        preset="boq-dinov2b",
        backbone={**HUB_VITB, "layer": 11},
        aggregator={"name": "boq", "in_channels": 768, "proj_channels": 384, "num_queries": 64, "num_layers": 2,
                    "row_dim": 32},
        resize=(322, 322), dim=12288,
        weights=Weights("dinov2_12288.pth",
                        "https://github.com/amaralibey/Bag-of-Queries/releases/download/v1.0/dinov2_12288.pth"),
        training_data=GSV, license="MIT (BoQ); DINOv2 weights Apache-2.0", code="amaralibey/Bag-of-Queries",
        paper=BOQ_PAPER, convert="zoo.vit:from_boq_dinov2",
        notes="hubconf get_trained_boq('dinov2', 12288): DINOv2-B, last block's patch tokens without the final norm "
              "(no CLS); BoQ 384 channels, 64 queries, 2 layers, 32 rows (README: ToTensor, then Resize 322 x 322 "
              "bicubic antialias on the float tensor)",
        extra={"interpolation": "bicubic-tensor"},
    ),
    ZooEntry(
        preset="megaloc",
        backbone={**HUB_VITB, "snap": "resize"},
        aggregator={"name": "megaloc", "num_channels": 768, "num_clusters": 64, "cluster_dim": 256, "token_dim": 256,
                    "mlp_dim": 512, "feat_dim": 8448},
        resize=None, dim=8448,
        weights=Weights("model.safetensors", "https://huggingface.co/gberton/MegaLoc/resolve/main/model.safetensors"),
        training_data="GSV-Cities, MSLS, SF-XL, MegaScenes, ScanNet (mixed; see the paper)",
        license="MIT (MegaLoc); DINOv2 weights Apache-2.0", code="gmberton/MegaLoc", paper=MEGALOC_PAPER,
        notes="hubconf get_trained_model(): own DINOv2-B copy (final norm, CLS + patches), SALAD 64 x 256 + 256 "
              "token, linear to 8448; images at full size, resized inside the model to the nearest multiples of 14 "
              "(bilinear, antialias); VPR-methods-evaluation passes no --image_size for megaloc",
    ),
]
