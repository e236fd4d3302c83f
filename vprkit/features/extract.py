"""Extract global descriptors for a folder of images (hloc-style step: presets + `main(conf, ...)`).

Resumable: finished images are skipped on rerun and each batch is flushed before the next one
starts. Broken images are reported by name, counted and skipped; the run goes on.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from ..aggregators import Aggregator, get_aggregator
from ..config import Presets, require_counts
from ..data.images import DEFAULT_MAX_PIXELS, ImageError, list_images, load_image, resize_to_stride, upright_rgb
from ..data.safeio import atomic_savez, content_hash
from ..models import Backbone, get_backbone, zoo
from ..models import checkpoint as trained
from ..models import head_checkpoint as trained_head
from ..models import precision as precisions
from . import h5io, head_presets, released

logger = logging.getLogger("vprkit")

# Named presets: backbone (+ layer/facet) + aggregator + preprocessing.
CONFS: dict[str, dict] = {
    "dinov2-vlad": {  # chosen across the dev sets by mean rank (docs/defaults.md, bench/select_defaults.py)
        "model": {"name": "dinov2_vits14", "layer": 8, "facet": "value"},
        "aggregator": {"name": "vlad", "num_clusters": 64},
        "preprocessing": {"resize_max": 322},
    },
    "dinov2-vlad-corridor": {  # the earlier default, tuned on Corridor alone
        "model": {"name": "dinov2_vits14", "layer": 7, "facet": "value"},
        "aggregator": {"name": "vlad", "num_clusters": 32},
        "preprocessing": {"resize_max": 322},
    },
    "dinov2-gem": {
        "model": {"name": "dinov2_vits14", "layer": 7, "facet": "value"},
        "aggregator": {"name": "gem", "p": 3.0, "normalize_input": True},
        "preprocessing": {"resize_max": 322},
    },
    "dinov2-cls": {
        "model": {"name": "dinov2_vits14"},
        "aggregator": {"name": "cls"},
        "preprocessing": {"resize_max": 322},
    },
    "vgg19-netvlad": {
        "model": {"name": "vgg19"},
        "aggregator": {"name": "netvlad", "num_clusters": 32, "dim": 512},
        "preprocessing": {"resize_max": 320},
    },
    "vgg19-gem": {
        "model": {"name": "vgg19"},
        "aggregator": {"name": "gem", "p": 3.0},
        "preprocessing": {"resize_max": 320},
    },
    "mobilenetv2-netvlad": {  # trainable with `vprkit train` (96-d stride-16 block)
        "model": {"name": "mobilenetv2", "layer": 13},
        "aggregator": {"name": "netvlad", "num_clusters": 32, "dim": 96},
        "preprocessing": {"resize_max": 320},
    },
    "mobilenetv2-gem": {
        "model": {"name": "mobilenetv2"},
        "aggregator": {"name": "gem", "p": 3.0},
        "preprocessing": {"resize_max": 320},
    },
    "pixels": {  # SeqSLAM's descriptor: 64x32 grey thumbnail, 8x8 patches z-normalised (no network)
        "model": {"name": "pixels", "width": 64, "height": 32, "patch": 8},
        "aggregator": {"name": "flatten"},
        "preprocessing": {"resize_max": None},
    },
}
CONFS.update(head_presets.CONFS)  # heads `vprkit train head` trains (untrained without a --checkpoint)
DEFAULT_PRESET = "dinov2-vlad"
DEFAULT_RUNTIME = {"batch_size": 16, "fit_max_images": 500, "max_pixels": DEFAULT_MAX_PIXELS, "fp16": False,
                   "store_local": False, "seed": 0, "precision": "fp32"}


AUTO, THUMBNAIL_PX = "auto", 48


def auto_preset(image_dir: str | Path, names: list[str], sample: int = 20) -> tuple[str, str]:
    """The preset for a map, with the reason (for the log): raw patch-normalised pixels for thumbnails whose short
    side is at most 48 px (where they beat DINOv2: Nordland 64x32, docs/defaults.md), else the default."""
    sizes = []
    for name in names[:: max(1, len(names) // sample)][:sample]:
        try:
            with Image.open(Path(image_dir) / name) as img:
                sizes.append(min(img.size))
        except OSError:
            continue
    short = float(np.median(sizes)) if sizes else float("inf")
    if short <= THUMBNAIL_PX:
        return "pixels", (f"images are thumbnails (median short side {short:.0f} px <= {THUMBNAIL_PX}): raw "
                          "patch-normalised pixels beat DINOv2 there (Nordland 64x32 R@1 0.197 vs 0.147-0.170)")
    return DEFAULT_PRESET, (f"median short side {short:.0f} px: the default, chosen across datasets by mean rank "
                            "(docs/defaults.md)")


class AllPresets(Mapping):
    """vprkit's own presets (CONFS), then the authors' released models (`vprkit models`), built from the zoo on
    first use so importing vprkit builds no entry."""

    def __getitem__(self, name: str) -> dict:
        return CONFS[name] if name in CONFS else zoo_conf(zoo.get(name))  # KeyError for an unknown name

    def __iter__(self) -> Iterator[str]:
        yield from CONFS
        yield from (name for name in zoo.entries() if name not in CONFS)

    def __len__(self) -> int:
        return len(CONFS) + len(set(zoo.entries()) - set(CONFS))


def zoo_conf(entry: zoo.ZooEntry) -> dict:
    """A released model as a preset. The zoo name is part of the model (so of the descriptor key: two releases of
    one architecture never mix); the preprocessing is the authors' fixed test-time resize (None: as given)."""
    return {"model": {**entry.backbone, "zoo": entry.preset}, "aggregator": dict(entry.aggregator),
            "preprocessing": {"resize": list(entry.resize) if entry.resize else None,
                              "interpolation": entry.extra.get("interpolation", "bilinear")}}


def check_conf(conf: dict) -> dict:
    """Refuse settings no run can use (a batch of none, an image side below one pixel, an unknown precision) and,
    for a released model, settings that would change the authors' descriptor."""
    precisions.check(conf.get("precision", "fp32"))
    if "zoo" in conf["model"]:
        check_zoo(conf)
    return require_counts(conf, "batch_size", "preprocessing.resize_max")


PRESETS = AllPresets()
CONFIG = Presets("index", DEFAULT_RUNTIME, PRESETS, DEFAULT_PRESET, open_sections=("model", "aggregator",
                                                                                  "preprocessing"), check=check_conf)


def check_zoo(conf: dict) -> None:
    """A released model keeps the authors' preprocessing and stores their descriptor as it is (float32)."""
    if conf["fp16"]:
        raise ValueError(f"preset {conf['preset']} stores the authors' descriptor as float32; drop --fp16")
    if conf["preprocessing"] != PRESETS[conf["preset"]]["preprocessing"]:
        raise ValueError(f"preset {conf['preset']} uses the authors' test-time resize "
                         f"({conf['preprocessing']['resize'] or 'as given'}); --resize-max does not apply")


def model_key(conf: dict) -> str:
    """The part of a config that determines the descriptor space (what must match map and query).

    A reduced precision changes the descriptors, so it is part of the key (with the int8 scheme's version: files
    of an earlier scheme are not extended with other descriptors); fp32 is left out so keys of files written
    before precisions existed stay valid. A released model is keyed by its preset, not by where its file lies
    (`vprkit query --preset NAME` matches an index built with `--checkpoint`).
    """
    key = {k: conf[k] for k in ("model", "aggregator", "preprocessing")}
    if "zoo" in key["model"]:  # the preset names the released file wherever it lies; its bytes are in `state_hash`
        key["model"] = {k: v for k, v in key["model"].items() if k != "checkpoint"}
    if conf.get("precision", "fp32") != "fp32":
        key["precision"] = precisions.KEYS.get(conf["precision"], conf["precision"])
    return json.dumps(key, sort_keys=True)


def prepare(img: Image.Image, conf: dict, backbone: Backbone,
            transform: Callable[[Image.Image], Image.Image] | None = None) -> torch.Tensor:
    """The backbone input (C, H, W) of one decoded RGB image, resized as the preset says (`resize_max`, or
    `resize_min` when given) to a multiple of the stride. Every caller (offline extraction, the Python API, the
    service, the streaming localizer, the service re-ranker) goes through here, so a live image is described
    exactly as the same image offline. A size-keeping `transform` (training augmentation) acts on the resized
    image before the backbone's preprocessing."""
    pre = conf["preprocessing"]
    if "resize" in pre:  # a released model: the authors' resize (a transform does not apply: no training here)
        return authors_input(backbone, img, pre)
    img = resize_to_stride(img, pre.get("resize_max"), backbone.stride, pre.get("resize_min"))
    return backbone.preprocess(transform(img) if transform else img)


def group(prepared: Iterable[tuple[str, torch.Tensor | None]], batch_size: int
          ) -> Iterator[tuple[list[str], torch.Tensor, list[str]]]:
    """(names, stacked tensors, failures) batches of up to `batch_size` consecutive equal-sized inputs; an input
    given as None failed and goes to failures. The one batching rule of offline and in-memory description (the
    batch a descriptor was computed in must not differ between the two)."""
    batch_names: list[str] = []
    tensors: list[torch.Tensor] = []
    failed: list[str] = []
    for name, x in prepared:
        if x is None:
            failed.append(name)
            continue
        if tensors and (x.shape != tensors[0].shape or len(tensors) == batch_size):
            yield batch_names, torch.stack(tensors), failed
            batch_names, tensors, failed = [], [], []
        batch_names.append(name)
        tensors.append(x)
    if tensors or failed:
        yield batch_names, torch.stack(tensors) if tensors else torch.empty(0), failed


def batches(backbone: Backbone, conf: dict, root: Path, names: list[str],
            transform: Callable[[Image.Image], Image.Image] | None = None
            ) -> Iterator[tuple[list[str], torch.Tensor, list[str]]]:
    """Yield (names, images, failures) batches of the image files `names` under `root` (see `prepare` and
    `group`); unreadable files are logged and go to failures."""
    def read() -> Iterator[tuple[str, torch.Tensor | None]]:
        for name in names:
            try:
                img = load_image(root / name, conf["max_pixels"])
            except ImageError as exc:
                logger.warning("skipping %s", exc)
                yield name, None
                continue
            yield name, prepare(img, conf, backbone, transform)

    return group(read(), conf["batch_size"])


def authors_input(backbone: Backbone, img: Image.Image, pre: dict) -> torch.Tensor:
    """A released model's input: the authors' resize to (height, width) (None: as given) and normalisation.

    `interpolation` "bilinear" / "bicubic" resizes the PIL image, as torchvision's Resize before ToTensor; with
    "-tensor" ("bicubic-tensor") the float tensor is resized, antialiased, as Resize after ToTensor (no rounding to
    8 bits, no clipping). Normalising first changes nothing: the interpolation weights sum to one.
    """
    size, mode = pre["resize"], pre["interpolation"]
    if size is None or (img.height, img.width) == tuple(size):
        return backbone.preprocess(img)
    if mode.endswith("-tensor"):
        x = backbone.preprocess(img)[None]
        return F.interpolate(x, size=tuple(size), mode=mode.removesuffix("-tensor"), antialias=True)[0]
    return backbone.preprocess(img.resize((size[1], size[0]), getattr(Image.Resampling, mode.upper())))


class Extractor:
    """Backbone + aggregator in eval mode, with the preprocessing and precision of the preset.

    `conf["precision"] == "auto"` is replaced in `conf` by the precision the probe picks, so the model key
    written with the features (and an index's manifest) names the precision actually used.
    """

    precision = "fp32"  # subclasses that build their own backbone (local features) run at fp32

    def __init__(self, conf: dict, device: str = "cpu"):
        self.conf = conf
        self.device = torch.device(device)
        model_conf, agg_conf = dict(conf["model"]), dict(conf["aggregator"])
        if "zoo" in model_conf:
            backbone, aggregator = released.modules(model_conf)
            self.backbone, self.aggregator = backbone.to(self.device), aggregator.to(self.device)
        else:
            # a `vprkit train netvlad` or `vprkit train head` checkpoint (the file read once), else None
            found = trained.read_trained(model_conf.get("checkpoint"), (trained.KIND, trained_head.KIND))
            kind = found["meta"]["kind"] if found is not None else None
            ckpt, head = (found if kind == trained.KIND else None), (found if kind == trained_head.KIND else None)
            if ckpt is not None:
                del model_conf["checkpoint"]
                agg_conf = trained.aggregator_conf(ckpt, model_conf, agg_conf, conf["preprocessing"])
            if head is not None:  # `vprkit train head`: the checkpoint brings the head's configuration
                del model_conf["checkpoint"]
                agg_conf = conf["aggregator"] = trained_head.aggregator_conf(head, model_conf, agg_conf,
                                                                              conf["preprocessing"])
            self.backbone: Backbone = get_backbone(**model_conf).eval().to(self.device)
            if agg_conf["name"] == "netvlad":
                agg_conf["dim"] = self.backbone.dim
            self.aggregator: Aggregator = get_aggregator(**agg_conf).eval().to(self.device)
            if ckpt is not None:
                trained.load_weights(ckpt, self.backbone, self.aggregator)
            if head is not None:
                trained_head.load_weights(head, self.aggregator, self.backbone)
        if conf.get("precision", "fp32") == "auto":
            conf["precision"] = precisions.probe(self.backbone, conf["model"], self.probe_size())["choice"]
        self.precision = precisions.check(conf.get("precision", "fp32"))
        precisions.prepare(self.backbone, self.precision)

    def probe_size(self) -> tuple[int, int]:
        """Input the precision probe times: a released model's fixed size, else a square of the preset's long side
        (224 without one), cut to the stride."""
        if self.conf["preprocessing"].get("resize"):
            return tuple(self.conf["preprocessing"]["resize"])
        side = self.conf["preprocessing"].get("resize_max") or 224
        side -= side % self.backbone.stride
        return side, side

    @classmethod
    def with_state(cls, conf: dict, state_path: str | Path | None, device: str = "cpu") -> Extractor:
        """The extractor of an existing index: `conf` from its manifest, its fitted vocabulary / PCA loaded from
        `state_path` (presets with nothing fitted have none)."""
        ext = cls(conf, device)
        if ext.aggregator.needs_fit:
            if state_path is None or not Path(state_path).is_file():
                raise FileNotFoundError(f"{state_path}: the fitted aggregator of this index is missing")
            ext.load_state(Path(state_path))
        return ext

    def batches(self, root: Path, names: list[str]) -> Iterator[tuple[list[str], torch.Tensor, list[str]]]:
        """Yield (names, images, failures) batches of equal-sized images; bad files go to failures."""
        return batches(self.backbone, self.conf, root, names)

    def prepare(self, img: Image.Image) -> torch.Tensor:
        """The backbone input of one decoded image (see `prepare`)."""
        return prepare(img, self.conf, self.backbone)

    def describe_images(self, images: list[Image.Image]) -> np.ndarray:
        """Global descriptors (N, D) float32 of images in memory (any mode, EXIF orientation applied: as a file is
        decoded), batched as offline extraction batches them, so they equal the descriptors `main` writes for the
        same image files (at fp32 storage)."""
        prepared = ((str(i), self.prepare(upright_rgb(img))) for i, img in enumerate(images))
        out = [self.describe(x)[0] for _, x, _ in group(prepared, self.conf["batch_size"])]
        if not out:
            return np.zeros((0, self.aggregator.output_dim(self.backbone.dim)), np.float32)
        return np.concatenate(out).astype(np.float32)

    @torch.no_grad()
    def local(self, images: torch.Tensor):
        """Backbone output for a batch, computed at the extractor's precision (returned as fp32)."""
        return precisions.forward_at(self.backbone, images.to(self.device), self.precision)

    @torch.no_grad()
    def describe(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(global descriptors (B, D), local features (B, C, h, w)) for a batch."""
        out = self.local(images)
        return self.aggregator(out.local, out.global_token).cpu().numpy(), out.local.cpu().numpy()

    def fit(self, root: Path, names: list[str]) -> None:
        """Fit the aggregator (vocabulary, PCA) on a bounded random sample of map images."""
        if not self.aggregator.needs_fit:
            return
        rng = random.Random(self.conf["seed"])
        sample = sorted(rng.sample(names, min(len(names), self.conf["fit_max_images"])))
        self.fit_local([self.local(images).local for _, images, _ in
                        tqdm(list(self.batches(root, sample)), desc="fit: local features", unit="batch")
                        if len(images)])

    def fit_local(self, batches: list[torch.Tensor]) -> None:
        """Fit the aggregator on local-feature batches (B, C, h, w) of the sampled map images."""
        local = np.concatenate([loc.permute(0, 2, 3, 1).reshape(-1, loc.shape[1]).cpu().numpy() for loc in batches])
        max_feats = 200_000
        if len(local) > max_feats:
            local = local[np.random.default_rng(self.conf["seed"]).choice(len(local), max_feats, replace=False)]
        self.aggregator.fit(local)
        if getattr(self.aggregator, "pca_dim", None):
            self.aggregator.fit_pca(np.concatenate([self.aggregator.raw(loc).numpy() for loc in batches]))

    def save_state(self, path: Path) -> None:
        """Write fitted aggregator arrays atomically as .npz (no pickle)."""
        atomic_savez(path, self.aggregator.state())

    def load_state(self, path: Path) -> None:
        with np.load(path, allow_pickle=False) as data:
            self.aggregator.load_state({k: data[k] for k in data.files})


def main(conf: dict, image_dir: str | Path, feature_path: str | Path, state_path: str | Path | None = None,
         names: list[str] | None = None, device: str = "cpu", extractor: Extractor | None = None) -> list[str]:
    """Write global descriptors of `image_dir` to `feature_path`; returns the names that succeeded.

    `state_path` holds the fitted aggregator: loaded if it exists, else fitted here (on these images,
    which should be the map) and saved.
    """
    root, feature_path = Path(image_dir), Path(feature_path)
    names = names if names is not None else list_images(root)
    ext = extractor or Extractor(conf, device)
    if ext.aggregator.needs_fit:
        if state_path is not None and Path(state_path).exists():
            ext.load_state(Path(state_path))
        else:
            ext.fit(root, names)
            if state_path is not None:
                ext.save_state(Path(state_path))
    state = state_hash(state_path, conf)
    todo = pending(feature_path, names, model_key(conf), root=root, state=state)
    failed: list[str] = []
    dtype = np.float16 if conf["fp16"] else np.float32
    with tqdm(total=len(todo), desc=f"extract {root.name}", unit="img") as bar:
        for batch_names, images, bad in ext.batches(root, todo):
            failed += bad
            if batch_names:
                desc, local = ext.describe(images)
                items = {n: {"global": d.astype(dtype)} for n, d in zip(batch_names, desc)}
                if conf["store_local"]:
                    for n, loc in zip(batch_names, local):
                        items[n]["local"] = loc.astype(np.float16)
                h5io.write_batch(feature_path, items, batch_attrs(model_key(conf), state), root)
            bar.update(len(batch_names) + len(bad))
    return succeeded(names, failed, len(todo))


def pending(feature_path: Path, names: list[str], key: str, dataset: str = "global", root: Path | None = None,
            state: str | None = None) -> list[str]:
    """Names still to extract into `feature_path`: those not there yet and, with `root`, those whose image file
    changed since. Refuses a file written by another model (`key`); a file computed with another fitted state
    (`state`, hash of the vocabulary / PCA file) is started again, and a damaged one salvaged; both are logged."""
    h5io.salvage(feature_path)
    if feature_path.exists():
        attrs = h5io.read_attrs(feature_path)
        previous = attrs.get("model_key")
        if previous is not None and previous != key:
            raise ValueError(f"{feature_path} holds features of another model ({previous}); use a new output file")
        if state is not None and attrs.get("state") != state:
            logger.warning("%s was computed with another fitted vocabulary / PCA; computing it again", feature_path)
            feature_path.unlink()
    done = h5io.finished_names(feature_path, dataset)
    if root is not None and done:
        changed = h5io.changed_sources(feature_path, root, sorted(done & set(names)))
        if changed:
            logger.warning("%s: %d images changed since their features were computed (e.g. %s); computing them "
                           "again", feature_path, len(changed), sorted(changed)[0])
            done -= changed
    return [n for n in names if n not in done]


def batch_attrs(key: str, state: str | None) -> dict:
    """File attributes written with every batch: the model key, and the fitted state's hash when there is one."""
    return {"model_key": key} | ({"state": state} if state is not None else {})


def state_hash(state_path: str | Path | None, conf: dict) -> str | None:
    """Hash of what was fitted or trained outside the config (the saved vocabulary / PCA file, the backbone's and
    segmenter's checkpoint files); None when there is none. Features computed with it record it."""
    files = [state_path, conf.get("model", {}).get("checkpoint"), (conf.get("segmenter") or {}).get("checkpoint")]
    return ":".join(content_hash(p) for p in files if p is not None and Path(p).is_file()) or None


def succeeded(names: list[str], failed: list[str], attempted: int) -> list[str]:
    """`names` minus the unreadable ones, after one warning that names them."""
    if failed:
        logger.warning("%d of %d images could not be read and were skipped: %s", len(failed), attempted,
                       ", ".join(failed[:10]) + (" ..." if len(failed) > 10 else ""))
    failed_set = set(failed)
    return [n for n in names if n not in failed_set]
