"""CNN models released by their authors: NetVLAD (Patch-NetVLAD's), CosPlace, EigenPlaces, MixVPR, Conv-AP, BoQ.

Each entry builds vprkit's ResNet / VGG16 and the matching head from `vprkit.aggregators`; the `from_*` functions
rename the authors' keys (as in their released files) to `backbone.*` / `aggregator.*`. Where each comes from and
how it is checked against the authors' code: docs/models.md ("CNN models") and tests/data/zoo/*/SOURCE.md.
"""

from __future__ import annotations

import torch

from . import Weights, ZooEntry, rename

NETVLAD_PAPER = "Arandjelovic et al., NetVLAD, CVPR 2016; Hausler et al., Patch-NetVLAD, CVPR 2021"
COSPLACE_PAPER = "Berton et al., Rethinking Visual Geo-localization for Large-Scale Applications, CVPR 2022"
EIGENPLACES_PAPER = "Berton et al., EigenPlaces: Training Viewpoint Robust Models for VPR, ICCV 2023"
MIXVPR_PAPER = "Ali-bey et al., MixVPR: Feature Mixing for Visual Place Recognition, WACV 2023"
CONVAP_PAPER = "Ali-bey et al., GSV-Cities: Toward Appropriate Supervised VPR, Neurocomputing 2022"
BOQ_PAPER = "Ali-bey et al., BoQ: A Place is Worth a Bag of Learnable Queries, CVPR 2024"
SFXL = "SF-XL (San Francisco eXtra Large)"
NO_LICENSE = "none stated (no LICENSE file)"
# The authors' ResNets are torchvision's children: CosPlace / EigenPlaces keep them as Sequential(children()[:-2]).
TORCHVISION_CHILDREN = [("0.", "conv1."), ("1.", "bn1."), ("4.", "layer1."), ("5.", "layer2."), ("6.", "layer3."),
                        ("7.", "layer4.")]


def _resnet_children(prefix: str) -> list[tuple[str, str]]:
    return [(prefix + old, "backbone." + new) for old, new in TORCHVISION_CHILDREN]


def from_cosplace(state: dict) -> dict:
    """CosPlace / EigenPlaces `GeoLocalizationNet`: `backbone.N` and `aggregation.{1.p,3}` (GeM p, fc)."""
    return rename(state, _resnet_children("backbone.") + [("aggregation.1.p", "aggregator.p"),
                                                          ("aggregation.3.", "aggregator.fc.")])


def from_gsv_cities(state: dict) -> dict:
    """MixVPR / Conv-AP `VPRModel` (gsv-cities code): `backbone.model.<torchvision name>` and `aggregator.*`."""
    return rename(state, [("backbone.model.", "backbone.")])


def from_boq(state: dict) -> dict:
    """BoQ `VPRModel`: `backbone.net.N` (torchvision children up to layer3) and `aggregator.*`."""
    return rename(state, _resnet_children("backbone.net."))


def from_patchnetvlad(state: dict) -> dict:
    """Patch-NetVLAD `.pth.tar`: `encoder.N` (VGG16 features), `pool.{conv.weight,centroids}`, `WPCA.0` (1x1 conv).

    Their NetVLAD has no assignment bias (`vladv2=False`), which is vprkit's NetVLAD with a zero bias; the WPCA
    conv weight (P, K*C, 1, 1) is the Linear weight (P, K*C).
    """
    out = rename(state, [("encoder.", "backbone.features."), ("pool.", "aggregator.pool."),
                         ("WPCA.0.", "aggregator.wpca.")])
    conv = out.get("aggregator.pool.conv.weight")
    if conv is not None and "aggregator.pool.conv.bias" not in out:
        out["aggregator.pool.conv.bias"] = torch.zeros(conv.shape[0], dtype=conv.dtype)
    if "aggregator.wpca.weight" in out:
        out["aggregator.wpca.weight"] = out["aggregator.wpca.weight"].flatten(1)
    return out


def _netvlad(preset: str, released: str, hf_name: str, data: str) -> ZooEntry:
    return ZooEntry(
        preset=preset,
        backbone={"name": "vgg16", "last_relu": False, "weights": False},
        aggregator={"name": "netvlad_wpca", "num_clusters": 64, "dim": 512, "num_pcs": 4096},
        resize=(480, 640), dim=4096,
        weights=Weights(released, f"https://huggingface.co/TobiasRobotics/Patch-NetVLAD/resolve/main/{hf_name}"
                                  "?download=true"),
        training_data=data, license="MIT", code="QVPR/Patch-NetVLAD", paper=NETVLAD_PAPER,
        convert="zoo.cnn:from_patchnetvlad",
        notes="VGG16 conv5_3 before its ReLU, NetVLAD 64 x 512, whitening PCA to 4096 (Patch-NetVLAD's global "
              "descriptor, configs/*.ini imageresize 640 x 480, PIL bilinear)",
        extra={"interpolation": "bilinear"},
    )


def _gem_fc(method: str, depth: int, dim: int) -> ZooEntry:
    """CosPlace or EigenPlaces (one network, GeM + fc; EigenPlaces trains it differently) on ResNet-`depth`."""
    repo = {"cosplace": "CosPlace", "eigenplaces": "EigenPlaces"}[method]
    released = f"ResNet{depth}_{dim}_{method}.pth"
    return ZooEntry(
        preset=f"{method}-r{depth}-{dim}",
        backbone={"name": "resnet", "depth": depth, "last_layer": 4, "frozen_stages": 2},
        aggregator={"name": "cosplace", "in_dim": 512 if depth == 18 else 2048, "out_dim": dim},
        resize=None, dim=dim,
        weights=Weights(released, f"https://github.com/gmberton/{repo}/releases/download/v1.0/{released}"),
        training_data=SFXL, license="MIT", code=f"gmberton/{repo}",
        paper=COSPLACE_PAPER if method == "cosplace" else EIGENPLACES_PAPER,
        convert="zoo.cnn:from_cosplace",
        notes="full-resolution test images (CosPlace's --resize_test_imgs is off by default; EigenPlaces has none)",
    )


MIXVPR = ZooEntry(
    preset="mixvpr-r50-4096",
    backbone={"name": "resnet", "depth": 50, "last_layer": 3, "frozen_stages": 2},
    aggregator={"name": "mixvpr", "in_channels": 1024, "in_h": 20, "in_w": 20, "out_channels": 1024,
                "mix_depth": 4, "mlp_ratio": 1, "out_rows": 4},
    resize=(320, 320), dim=4096,
    weights=Weights("resnet50_MixVPR_4096_channels(1024)_rows(4).ckpt", None,
                    note="Google Drive, from the MixVPR README: "
                         "https://drive.google.com/file/d/1vuz3PvnR7vxnDDLQrdHJaOA04SQrtk5L/view"),
    training_data="GSV-Cities", license=NO_LICENSE, code="amaralibey/MixVPR", paper=MIXVPR_PAPER,
    convert="zoo.cnn:from_gsv_cities",
    notes="ResNet-50 without layer4; images must be 320 x 320 (bicubic, their demo.py)",
    extra={"interpolation": "bicubic"},
)

CONVAP = ZooEntry(
    preset="convap-r50-4096",
    backbone={"name": "resnet", "depth": 50, "last_layer": 4, "frozen_stages": 2},
    aggregator={"name": "convap", "in_channels": 2048, "out_channels": 1024, "s1": 2, "s2": 2},
    resize=(320, 320), dim=4096,
    weights=Weights("resnet50_ConvAP_1024_2x2.ckpt", None,
                    note="Google Drive folder, from the gsv-cities README: "
                         "https://drive.google.com/drive/folders/1VYPw9uGD11NgiGFgfWueLt3noJYOIuhL"),
    training_data="GSV-Cities", license=NO_LICENSE, code="amaralibey/gsv-cities", paper=CONVAP_PAPER,
    convert="zoo.cnn:from_gsv_cities",
    notes="full ResNet-50, 1x1 conv to 1024 channels, 2 x 2 average pooling; 320 x 320 bicubic (their README)",
    extra={"interpolation": "bicubic"},
)

BOQ_R50 = ZooEntry(
    preset="boq-r50",
    backbone={"name": "resnet", "depth": 50, "last_layer": 3, "frozen_stages": 2},
    aggregator={"name": "boq", "in_channels": 1024, "proj_channels": 512, "num_queries": 64, "num_layers": 2,
                "row_dim": 32},
    resize=(384, 384), dim=16384,
    weights=Weights("resnet50_16384.pth",
                    "https://github.com/amaralibey/Bag-of-Queries/releases/download/v1.0/resnet50_16384.pth"),
    training_data="GSV-Cities", license="MIT", code="amaralibey/Bag-of-Queries", paper=BOQ_PAPER,
    convert="zoo.cnn:from_boq",
    notes="ResNet-50 without layer4; 384 x 384, bicubic with antialias on the float tensor (their README's "
          "input_transform: ToTensor, Resize, Normalize)",
    extra={"interpolation": "bicubic-tensor"},
)

ENTRIES: list[ZooEntry] = [
    _netvlad("netvlad-pitts30k", "pittsburgh_WPCA4096.pth.tar", "pitts_WPCA4096.pth.tar", "Pittsburgh 30k"),
    _netvlad("netvlad-msls", "mapillary_WPCA4096.pth.tar", "mapillary_WPCA4096.pth.tar",
             "Mapillary Street-Level Sequences"),
    *(_gem_fc(method, depth, dim) for method in ("cosplace", "eigenplaces")
      for depth, dim in ((18, 512), (50, 2048), (101, 2048))),
    MIXVPR, CONVAP, BOQ_R50,
]
