"""Make a zoo fixture by running the AUTHORS' OWN model code (never copied into vprkit) on three demo images.

usage (in a scratch venv with torch + torchvision, the authors' repository cloned outside vprkit):
    python tests/data/zoo/make_fixtures.py FIXTURE AUTHORS_REPO
FIXTURE is one of the names in BUILDERS. The authors' model is built through their own entry point (hubconf / README
code) with ImageNet downloads switched off, given seeded random weights (tests/zoo_fixtures.py: the same weights
the test regenerates), run on their own test-time transform of the images, and its descriptors are saved:
    tests/data/zoo/FIXTURE/spec.json    their state_dict keys / shapes, file name and container, seed, settings
    tests/data/zoo/FIXTURE/inputs.npz   the exact input tensors (x: (3, 3, H, W) float32)
    tests/data/zoo/FIXTURE/outputs.npy  their output descriptors (3, D) float32
    tests/data/zoo/FIXTURE/SOURCE.md    the command and the authors' commit
"""

from __future__ import annotations

import configparser
import functools
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests"))
from zoo_fixtures import ZOO_DATA, random_state, state_spec  # noqa: E402

IMAGES = ["vprkit/demo_data/corridor/query/0000000.jpg", "vprkit/demo_data/corridor/query/0000055.jpg",
          "vprkit/demo_data/corridor/ref/0000090.jpg"]
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def _torchvision():
    """torchvision with the two op schemas its CUDA wheel expects defined, so it imports on CPU torch."""
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor qdets, Tensor qscores, float iou_threshold) -> Tensor")
    import torchvision

    _torchvision.lib = lib  # keep the definitions alive
    return torchvision


def _stub(name: str, **attrs) -> None:
    """An empty module for an import the model does not use (training / dataset / plotting libraries)."""
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module


def _serve(state: dict, urls: list[str]):
    """Stand-in for torch.hub.load_state_dict_from_url: records the URL the authors' hubconf asks for."""
    def load(url, *args, **kwargs):
        urls.append(url)
        return state
    return load


def _no_download(constructor):
    """A torchvision model constructor that ignores `weights=` (the ImageNet download; overwritten anyway)."""
    return lambda weights=None: constructor()


def _images(transform) -> torch.Tensor:
    from PIL import Image

    return torch.stack([transform(Image.open(ROOT / p).convert("RGB")) for p in IMAGES])


def _gem_family(repo: Path, tv, hub_module: str, backbone: str, dim: int) -> dict:
    """CosPlace / EigenPlaces via their hubconf.get_trained_model; test transform = ToTensor + Normalize.
    EigenPlaces has CosPlace's keys, so it takes seed 1 (different weights)."""
    eigen = hub_module == "eigenplaces"
    seed = int(eigen)
    sys.path.insert(0, str(repo))
    network = __import__(f"{hub_module}_model.{hub_module}_network", fromlist=["x"])
    if eigen:  # their backbone init loads CosPlace weights through torch.hub (overwritten below anyway)
        torch.hub.load = lambda *a, **k: torch.nn.Module()
        probe = network.GeoLocalizationNet_(backbone, dim)
    else:  # the ImageNet download (overwritten below anyway)
        network.get_pretrained_torchvision_model = lambda name: getattr(tv.models, name.lower())()
        probe = network.GeoLocalizationNet(backbone, dim)
    spec = state_spec(probe.state_dict())
    urls: list[str] = []
    torch.hub.load_state_dict_from_url = _serve(random_state(spec, seed), urls)
    import hubconf

    model = hubconf.get_trained_model(backbone, dim)
    T = tv.transforms
    x = _images(T.Compose([T.ToTensor(), T.Normalize(*IMAGENET)]))
    return {"model": model, "x": x, "spec": spec, "container": "bare", "filename": Path(urls[0]).name,
            "url": urls[0], "seed": seed, "entry": f"hubconf.get_trained_model({backbone!r}, {dim})"}


def boq_r50(repo: Path, tv) -> dict:
    """BoQ via hubconf.get_trained_boq('resnet50', 16384); their README's input_transform at 384 x 384."""
    sys.path.insert(0, str(repo))
    import hubconf
    from backbones import ResNet

    ResNet.AVAILABLE_MODELS = {k: _no_download(f) for k, f in ResNet.AVAILABLE_MODELS.items()}
    probe = hubconf.VPRModel(ResNet("resnet50", crop_last_block=True),
                             hubconf.BoQ(in_channels=1024, proj_channels=512, num_queries=64, num_layers=2,
                                         row_dim=32))
    spec = state_spec(probe.state_dict())
    urls: list[str] = []
    torch.hub.load_state_dict_from_url = _serve(random_state(spec, 0), urls)
    model = hubconf.get_trained_boq(backbone_name="resnet50", output_dim=16384).eval()
    T = tv.transforms
    x = _images(T.Compose([T.ToTensor(), T.Resize((384, 384), interpolation=T.InterpolationMode.BICUBIC,
                                                  antialias=True), T.Normalize(*IMAGENET)]))
    return {"model": lambda t: model(t)[0], "x": x, "spec": spec, "container": "bare",
            "filename": Path(urls[0]).name, "url": urls[0], "entry": "hubconf.get_trained_boq('resnet50', 16384)"}


def _gsv_cities(repo: Path, conf: dict) -> object:
    """The authors' Lightning VPRModel (main.py) with its training-only imports stubbed."""
    sys.path.insert(0, str(repo))
    _stub("pytorch_lightning", LightningModule=type("LightningModule", (torch.nn.Module,),
                                                       {"save_hyperparameters": lambda self, *a, **k: None}))
    _stub("pytorch_lightning.callbacks", Callback=object, ModelCheckpoint=object)
    _stub("utils", get_loss=lambda *a: None, get_miner=lambda *a: None)
    _stub("dataloaders")
    _stub("dataloaders.GSVCitiesDataloader", GSVCitiesDataModule=object)
    _stub("timm")  # their EfficientNet / Swin backbones, imported by models/backbones/__init__.py
    import main

    return main.VPRModel(pretrained=False, **conf)  # pretrained: only the ImageNet download, overwritten below


def mixvpr_r50_4096(repo: Path, tv) -> dict:
    """MixVPR with the README's configuration, loaded as README/demo.py do; demo.py's load_image transform."""
    model = _gsv_cities(repo, {"backbone_arch": "resnet50", "layers_to_crop": [4], "agg_arch": "MixVPR",
                               "agg_config": {"in_channels": 1024, "in_h": 20, "in_w": 20, "out_channels": 1024,
                                              "mix_depth": 4, "mlp_ratio": 1, "out_rows": 4}})
    spec = state_spec(model.state_dict())
    model.load_state_dict(random_state(spec, 0))
    _stub("cv2")
    _stub("tqdm", tqdm=lambda x, **k: x)
    import demo

    x = torch.stack([demo.load_image(ROOT / p) for p in IMAGES])
    return {"model": model, "x": x, "spec": spec, "container": "bare",
            "filename": "resnet50_MixVPR_4096_channels(1024)_rows(4).ckpt", "url": None,
            "entry": "main.VPRModel(README configuration); demo.load_image"}


def convap_r50_4096(repo: Path, tv) -> dict:
    """Conv-AP 1024 x 2 x 2 with the gsv-cities README configuration; 320 x 320 bicubic as the README says."""
    model = _gsv_cities(repo, {"backbone_arch": "resnet50", "layers_to_crop": [], "agg_arch": "ConvAP",
                               "agg_config": {"in_channels": 2048, "out_channels": 1024, "s1": 2, "s2": 2}})
    spec = state_spec(model.state_dict())
    model.load_state_dict(random_state(spec, 0))
    T = tv.transforms
    x = _images(T.Compose([T.Resize((320, 320), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                           T.Normalize(*IMAGENET)]))
    return {"model": model, "x": x, "spec": spec, "container": "bare", "filename": "resnet50_ConvAP_1024_2x2.ckpt",
            "url": None, "entry": "main.VPRModel(README configuration)"}


NETVLAD_PCS = 256  # fixture only: the released files have 4096 (a 512 MB matrix); the code takes it from the config


def netvlad(repo: Path, tv) -> dict:
    """Patch-NetVLAD's feature_extract.py path: get_backend, get_model(append_pca_layer), load the .pth.tar's
    state_dict, encoder -> pool (patchnetvlad pooling) -> get_pca_encoding; input_transform((480, 640))."""
    sys.path.insert(0, str(repo))
    _stub("faiss")
    _stub("sklearn")
    _stub("sklearn.neighbors", NearestNeighbors=object)
    vgg16 = tv.models.vgg16
    tv.models.vgg16 = lambda *a, **k: vgg16()  # the ImageNet download (overwritten below)
    from patchnetvlad.models.models_generic import get_backend, get_model, get_pca_encoding
    from patchnetvlad.tools.datasets import input_transform

    config = configparser.ConfigParser()
    config.read(repo / "patchnetvlad" / "configs" / "performance.ini")
    config["global_params"]["num_pcs"] = str(NETVLAD_PCS)
    config["global_params"]["num_clusters"] = "64"
    encoder_dim, encoder = get_backend()
    spec = state_spec(get_model(encoder, encoder_dim, config["global_params"], append_pca_layer=True).state_dict())
    model = get_model(encoder, encoder_dim, config["global_params"], append_pca_layer=True)
    model.load_state_dict(random_state(spec, 0))
    model.eval()

    def describe(t: torch.Tensor) -> torch.Tensor:
        _, vlad_global = model.pool(model.encoder(t))
        return get_pca_encoding(model, vlad_global)

    x = _images(input_transform((480, 640)))
    return {"model": describe, "x": x, "spec": spec, "container": "state_dict",
            "filename": "pittsburgh_WPCA4096.pth.tar", "url": None, "num_pcs": NETVLAD_PCS,
            "entry": f"feature_extract.py (performance.ini, num_pcs={NETVLAD_PCS})"}


BUILDERS = {f.__name__.replace("_", "-"): f for f in (boq_r50, mixvpr_r50_4096, convap_r50_4096, netvlad)}
for _module in ("cosplace", "eigenplaces"):
    for _depth, _dim in ((18, 512), (50, 2048), (101, 2048)):
        BUILDERS[f"{_module}-r{_depth}-{_dim}"] = functools.partial(_gem_family, hub_module=_module,
                                                                     backbone=f"ResNet{_depth}", dim=_dim)


def main(name: str, repo: Path) -> None:
    tv = _torchvision()
    torch.set_grad_enabled(False)
    made = BUILDERS[name](repo, tv)
    model = made["model"]
    if isinstance(model, torch.nn.Module):
        model.eval()
    out = model(made["x"]).float().numpy()
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    folder = ZOO_DATA / name
    folder.mkdir(parents=True, exist_ok=True)
    extra = {k: made[k] for k in ("url", "num_pcs") if made.get(k) is not None}
    seed = made.get("seed", 0)
    spec = {"fixture": name, "seed": seed, "filename": made["filename"], "container": made["container"],
            "authors_commit": commit, "authors_entry": made["entry"], "images": IMAGES, **extra, "keys": made["spec"]}
    (folder / "spec.json").write_text(json.dumps(spec, indent=1) + "\n")
    np.savez_compressed(folder / "inputs.npz", x=made["x"].numpy().astype(np.float32))
    np.save(folder / "outputs.npy", out.astype(np.float32))
    cmd = f"python tests/data/zoo/make_fixtures.py {name} /work/scratch/zoo-cnn/{repo.name}"
    (folder / "SOURCE.md").write_text(
        f"# {name}\n\nMade by running the authors' code ({repo.name} at commit {commit}, entry point: "
        f"{made['entry']}) with torch {torch.__version__}, torchvision {tv.__version__} on CPU:\n\n    {cmd}\n\n"
        f"Weights: seeded random (tests/zoo_fixtures.py, seed {seed}), keys and shapes as in their model "
        f"(spec.json), saved by the test as `{made['filename']}` ({made['container']} state dict). "
        f"inputs.npz: their test-time transform of {', '.join(IMAGES)}; outputs.npy: their descriptors "
        f"{tuple(out.shape)}. Their downloads (ImageNet init, released weights) are replaced as the docstrings of "
        f"make_fixtures.py say; nothing else of their code is changed.\n")
    print(name, out.shape, float(np.abs(out).max()), np.linalg.norm(out, axis=1))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]).resolve())
