"""Run the authors' own code on seeded random weights to make the DINOv2 zoo fixtures (not part of vprkit).

Run from the repository root, in a scratch venv, with the authors' repositories (at the commits in each
SOURCE.json) checked out outside this repository as SCRATCH/{salad,Bag-of-Queries,MegaLoc,dinov2}:

    python -m venv SCRATCH/venv && SCRATCH/venv/bin/pip install torch==2.13.0 numpy pillow safetensors
    SCRATCH/venv/bin/pip install --no-deps torchvision==0.28.0
    SCRATCH/venv/bin/python tests/data/zoo/make_vit_fixtures.py PRESET --repos SCRATCH

For each preset it
1. builds the authors' model (their hubconf classes; DINOv2 from a local facebookresearch/dinov2, no weights),
2. writes its state-dict keys and shapes (keys.json),
3. draws the weights with tests/zoo_vit_fixture.py (seed below) and saves them in the released file format,
4. loads that file through the authors' hubconf entry point (their download call redirected to the file),
5. applies the authors' test-time transform to three demo images and runs the model,
6. writes inputs.npz (the uint8 images their ToTensor reads: after a PIL resize where they have one),
   expected.npz (their outputs) and SOURCE.json (hashes, commits, a float-tensor resize where they have one).
The weights file itself is not kept: the tests rebuild it bit for bit (SOURCE.json records its hash).
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO / "tests"))
from zoo_vit_fixture import random_state, save_released, state_sha256, tensor_sha256, to_input  # noqa: E402

IMAGES = ["query/0000000.jpg", "query/0000001.jpg", "ref/0000040.jpg"]  # vprkit/demo_data/corridor, 160x120
SEEDS = {"salad-dinov2b": 27001, "boq-dinov2b": 27002, "megaloc": 27003}


def _torchvision_without_ops() -> None:
    """The CUDA torchvision wheel's ops do not load on CPU torch; define the two schemas its import registers."""
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _torchvision_without_ops.lib = lib  # keep the registration alive


def _local_dinov2(dinov2_dir: Path) -> None:
    """`torch.hub.load('facebookresearch/dinov2', name)` -> the local checkout, architecture only."""
    original = torch.hub.load

    def load(repo, model, *args, **kwargs):
        if repo == "facebookresearch/dinov2":
            return original(str(dinov2_dir), model, source="local", pretrained=False)
        return original(repo, model, *args, **kwargs)

    torch.hub.load = load


def _stub(name: str, **attrs) -> None:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module


def _from_file(path: Path):
    """Stands in for `torch.hub.load_state_dict_from_url`: the released file, read as the authors' call reads it."""
    return lambda url, map_location=None, **kw: torch.load(path, map_location=map_location, weights_only=True)


def _git_head(path: Path) -> str:
    """The checkout's commit (a COMMIT file where the tree was exported without .git)."""
    if (path / "COMMIT").is_file():
        return (path / "COMMIT").read_text().strip()
    return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


def salad(repos: dict[str, Path], weights: Path):
    """serizba/salad hubconf `dinov2_salad()`: VPRModel(DINOv2-B 4 trainable blocks, final norm, CLS) + SALAD."""
    class LightningModule(torch.nn.Module):
        def save_hyperparameters(self, *a, **k):
            pass

    _stub("pytorch_lightning", LightningModule=LightningModule)
    _stub("utils", get_loss=lambda *a: None, get_miner=lambda *a: None)  # training losses only
    sys.path.insert(0, str(repos["salad"]))
    import hubconf
    from vpr_model import VPRModel

    skeleton = VPRModel(backbone_arch="dinov2_vitb14",
                        backbone_config={"num_trainable_blocks": 4, "return_token": True, "norm_layer": True},
                        agg_arch="SALAD",
                        agg_config={"num_channels": 768, "num_clusters": 64, "cluster_dim": 128, "token_dim": 256})

    def build():
        torch.hub.load_state_dict_from_url = _from_file(weights)
        return hubconf.dinov2_salad(backbone="dinov2_vitb14", pretrained=True)

    def transform():
        import torchvision.transforms as T
        return T.Compose([T.Resize((322, 322), interpolation=T.InterpolationMode.BILINEAR), T.ToTensor(),
                          T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])

    def run(model, x):
        feats, token = model.backbone(x)
        return {"descriptors": model.aggregator((feats, token)), "token": token}

    return skeleton, build, transform, run, "dino_salad.ckpt", "salad"


def boq(repos: dict[str, Path], weights: Path):
    """amaralibey/Bag-of-Queries hubconf `get_trained_boq('dinov2', 12288)`: all 12 blocks, no norm, no CLS."""
    sys.path.insert(0, str(repos["boq"]))
    import hubconf

    skeleton = hubconf.VPRModel(hubconf.DinoV2(), hubconf.BoQ(768, 384, 64, 2, 32))

    def build():
        torch.hub.load_state_dict_from_url = _from_file(weights)
        return hubconf.get_trained_boq(backbone_name="dinov2", output_dim=12288)

    def transform():  # the README's input_transform with im_size = (322, 322) for DINOv2: resizes the float tensor
        import torchvision.transforms as T
        return T.Compose([T.ToTensor(), T.Resize((322, 322), interpolation=T.InterpolationMode.BICUBIC, antialias=True),
                          T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])

    def run(model, x):
        return {"descriptors": model(x)[0]}

    return skeleton, build, transform, run, "dinov2_12288.pth", "boq"


def megaloc(repos: dict[str, Path], weights: Path):
    """gmberton/MegaLoc hubconf `get_trained_model()`: its own ViT-B/14 + SALAD-style head + linear, safetensors."""
    _stub("huggingface_hub", hf_hub_download=lambda repo_id, filename: str(weights))
    sys.path.insert(0, str(repos["megaloc"]))
    import hubconf
    from megaloc_model import MegaLoc

    def transform():  # VPR-methods-evaluation: no --image_size for megaloc; the model snaps to 14 itself
        import torchvision.transforms as T
        return T.Compose([T.ToTensor(), T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])

    def run(model, x):
        return {"descriptors": model(x)}

    return MegaLoc(), hubconf.get_trained_model, transform, run, "model.safetensors", "megaloc"


PRESETS = {"salad-dinov2b": salad, "boq-dinov2b": boq, "megaloc": megaloc}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", choices=sorted(PRESETS))
    parser.add_argument("--repos", type=Path, required=True,
                        help="folder holding salad/, Bag-of-Queries/, MegaLoc/, dinov2/ (the authors' checkouts)")
    args = parser.parse_args()
    repos = {"salad": args.repos / "salad", "boq": args.repos / "Bag-of-Queries",
             "megaloc": args.repos / "MegaLoc", "dinov2": args.repos / "dinov2"}
    _torchvision_without_ops()
    _local_dinov2(repos["dinov2"])
    torch.set_grad_enabled(False)
    from PIL import Image

    out = HERE / args.preset
    out.mkdir(exist_ok=True)
    seed = SEEDS[args.preset]
    with tempfile.TemporaryDirectory() as tmp:
        skeleton, build, transform, run, filename, repo_key = PRESETS[args.preset](repos, Path(tmp) / "weights")
        keys = [(name, list(t.shape)) for name, t in skeleton.state_dict().items()]
        (out / "keys.json").write_text("[\n" + ",\n".join(json.dumps(row) for row in keys) + "\n]\n")
        state = random_state([(n, tuple(s)) for n, s in keys], seed)
        save_released(state, Path(tmp) / filename).rename(Path(tmp) / "weights")
        del skeleton
        model = build().eval()
        loaded = {k: v for k, v in model.state_dict().items()}
        assert state_sha256(loaded) == state_sha256(state), "the authors' model did not load the seeded weights"

        demo = REPO / "vprkit" / "demo_data" / "corridor"
        pil = [Image.open(demo / p).convert("RGB") for p in IMAGES]
        steps = transform().transforms  # [PIL resize], ToTensor, [tensor resize], Normalize
        at = [type(t).__name__ for t in steps].index("ToTensor")
        images_u8 = np.stack([np.asarray(functools.reduce(lambda im, t: t(im), steps[:at], im)) for im in pil])
        tensor_resize = list(steps[at + 1].size) if at + 1 < len(steps) - 1 else None
        x = torch.stack([transform()(im) for im in pil])
        assert torch.equal(to_input(images_u8, tensor_resize), x), "inputs.npz does not rebuild the input exactly"
        outputs = {k: v.float().numpy() for k, v in run(model, x).items()}

    np.savez_compressed(out / "inputs.npz", images=images_u8)
    np.savez_compressed(out / "expected.npz", **outputs)
    source = {
        "preset": args.preset, "seed": seed, "weights_file": filename, "weights_sha256": state_sha256(state),
        "input_sha256": tensor_sha256(x), "images": IMAGES, "tensor_resize": tensor_resize,
        "authors_repo": {"salad": "serizba/salad", "boq": "amaralibey/Bag-of-Queries",
                         "megaloc": "gmberton/MegaLoc"}[repo_key],
        "authors_commit": _git_head(repos[repo_key]), "dinov2_commit": _git_head(repos["dinov2"]),
        "torch": torch.__version__, "command": f"python tests/data/zoo/make_vit_fixtures.py {args.preset} "
                                              "--repos SCRATCH",
    }
    (out / "SOURCE.json").write_text(json.dumps(source, indent=1) + "\n")
    print(json.dumps({k: list(v.shape) for k, v in outputs.items()}), source["weights_sha256"])


if __name__ == "__main__":
    main()
