"""Settings of `vprkit train head`: its defaults (vprkit's recipe), the authors' recipes (`recipe=NAME`) and the
presets (one per head preset of features/head_presets.py, with that preset's training defaults), resolved by the one
config resolver: defaults <- recipe <- preset <- `--set`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from ..config import ConfigError, Presets
from ..features import head_presets

DEFAULT_CONF: dict = {
    "recipe": "vprkit",  # the loss / batch / optimiser block below came from (see RECIPES)
    "pca": None,  # project tokens to this many dims (PCA fitted on the training map's tokens)
    "loss": {"name": "triplet", "alpha": 1.0, "beta": 50.0, "base": 0.0, "epsilon": 0.1, "margin": 0.1,
             "margin_pn": 1.4},
    "data": {"positions": "utm", "pos_thr": 10.0, "neg_thr": 25.0, "split": [0.7, 0.15, 0.15], "gap": None,
             "source": "queries", "copies": 4, "self_positive": True},  # as `vprkit train netvlad`
    "augment": {"crop": 0.9, "brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "grey": 0.0},
    "cache": {"dir": None, "batch_size": 32},  # dir: token cache folder (default RUN/cache; share it across runs)
    # finetune: train the backbone's last N blocks too (0: frozen); mining: "global" (each query's hardest
    # negatives among `neg_samples` of the whole training map, `queries` tuples a step, NetVLAD's way) or "places"
    # (P x K place batches with hard negative places, the GSV-Cities way; the only one for the ms loss)
    "train": {"epochs": 5, "finetune": 0, "mining": "global", "queries": 8, "negatives": 10, "neg_samples": 1000,
              "places": 32, "per_place": 4, "hard": 0.5, "neighbours": 20, "optimizer": "adamw",
              "lr": 1e-4, "weight_decay": 1e-4, "momentum": 0.9, "warmup": 0, "warmup_epochs": 0, "milestones": [],
              "lr_gamma": 0.3, "lr_end": 1.0, "lr_end_steps": 0, "patience": 3, "seed": 123},
}
LOSSES = ("ms", "triplet", "stml")
MINING = ("global", "places")
# The authors' GSV-Cities recipes (docs/training.md cites the files): loss, miner, batch layout, optimiser, schedule.
MS = {"name": "ms", "alpha": 1.0, "beta": 50.0, "base": 0.0, "epsilon": 0.1}  # the three papers' loss and miner
RECIPES: dict[str, dict] = {
    "vprkit": {},
    # vprkit's choice for SALAD: its head did not learn under global triplet mining on Nordland (R@1 0.077 -> 0.074)
    # but does with place batches and the MS loss (-> 0.300); docs/training.md
    "vprkit-ms": {"loss": MS, "train": {"mining": "places", "lr": 1e-3, "epochs": 3}},
    "salad-gsv": {"loss": MS, "train": {
        "mining": "places", "finetune": 4, "places": 60, "per_place": 4, "hard": 0.0, "optimizer": "adamw",
        "lr": 6e-5, "weight_decay": 9.5e-9, "warmup": 0, "milestones": [], "lr_end": 0.2, "lr_end_steps": 4000,
        "epochs": 4, "patience": 0}},
    "mixvpr-gsv": {"loss": MS, "train": {
        "mining": "places", "places": 120, "per_place": 4, "hard": 0.0, "optimizer": "sgd", "lr": 0.05,
        "momentum": 0.9, "weight_decay": 1e-3, "warmup": 650, "milestones": [5, 10, 15, 25, 45], "lr_gamma": 0.3,
        "lr_end": 1.0, "lr_end_steps": 0, "epochs": 80, "patience": 0}},
    "boq-gsv": {"loss": MS, "train": {
        "mining": "places", "finetune": 2, "places": 128, "per_place": 4, "hard": 0.0, "optimizer": "adamw",
        "lr": 1e-4, "weight_decay": 1e-4, "warmup": 0, "warmup_epochs": 10, "milestones": [10, 20], "lr_gamma": 0.1,
        "lr_end": 1.0, "lr_end_steps": 0, "epochs": 40, "patience": 0}},
}


class HeadPresets(Mapping):
    """The extraction presets of head_presets.CONFS as training presets, read live (a head preset added there
    trains too); each takes the defaults, since the architecture comes from the extraction preset of its name."""

    def __getitem__(self, name: str) -> dict:
        if name not in head_presets.CONFS:
            raise KeyError(name)
        return head_presets.TRAIN.get(name, {})

    def __iter__(self) -> Iterator[str]:
        return iter(head_presets.CONFS)

    def __len__(self) -> int:
        return len(head_presets.CONFS)


def check_conf(conf: dict) -> dict:
    """Refuse a config without a preset (it names the backbone and head) and losses the training lacks."""
    if conf["preset"] is None:
        raise ConfigError(f"train head needs a preset (--preset), one of {sorted(head_presets.CONFS)}")
    if conf["loss"]["name"] not in LOSSES:
        raise ConfigError(f"unknown loss '{conf['loss']['name']}'; choose one of {LOSSES}")
    if conf["train"]["mining"] not in MINING:
        raise ConfigError(f"unknown train.mining '{conf['train']['mining']}'; choose one of {MINING}")
    if conf["train"]["mining"] == "global" and conf["loss"]["name"] == "ms":
        raise ConfigError("loss.name=ms needs train.mining=places (the multi-similarity loss works on place batches)")
    if conf["pca"] and conf["train"]["finetune"]:
        raise ConfigError("pca is fitted on the frozen backbone's tokens: it cannot be combined with train.finetune")
    return conf


# defaults <- the recipe (`recipe=NAME` picks it) <- the preset <- the overrides
CONFIG = Presets("train head", DEFAULT_CONF, HeadPresets(), check=check_conf, selectors={"recipe": RECIPES})
