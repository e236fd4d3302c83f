"""The one config resolver (vprkit.config) and the one registry (vprkit.registry), against hand-written results."""

from __future__ import annotations

import sys
import types

import pytest

from vprkit.config import ConfigError, Presets, parse_overrides, resolve
from vprkit.registry import Registry

DEFAULTS = {"lr": 1e-4, "epochs": 30, "name": "run", "flag": False, "split": [0.7, 0.3], "gap": None,
            "data": {"pos_thr": 10.0, "neg_thr": 25.0}, "model": {"name": "vgg", "layer": 3}}
PRESETS = {"short": {"epochs": 2, "data": {"neg_thr": 5.0}}}


def test_deep_merge_then_dotted_overrides():
    conf = resolve(DEFAULTS, PRESETS, "short", {"data.pos_thr": 2, "lr": 1})
    assert conf == {**DEFAULTS, "epochs": 2, "lr": 1.0, "data": {"pos_thr": 2.0, "neg_thr": 5.0}, "preset": "short"}
    assert isinstance(conf["data"]["pos_thr"], float) and isinstance(conf["lr"], float)
    assert DEFAULTS["data"] == {"pos_thr": 10.0, "neg_thr": 25.0}  # inputs untouched


def test_a_section_value_sets_its_keys_one_by_one():
    assert resolve(DEFAULTS, PRESETS, None, {"data": {"neg_thr": 1}})["data"] == {"pos_thr": 10.0, "neg_thr": 1.0}


def test_none_in_overrides_means_not_given_and_a_none_default_takes_any_type():
    conf = resolve(DEFAULTS, PRESETS, "short", {"epochs": None, "gap": 3})
    assert conf["epochs"] == 2 and conf["gap"] == 3
    assert resolve(DEFAULTS, PRESETS, None, {"gap": "route"})["gap"] == "route"


@pytest.mark.parametrize(("overrides", "message"), [
    ({"epoch": 3}, "unknown setting 'epoch' for this preset; valid keys: lr, epochs, name, flag, split, gap, "
                   "data.pos_thr, data.neg_thr, model.name, model.layer"),
    ({"data.pos": 3}, "unknown setting 'data.pos'"),
    ({"lr.x": 3}, "unknown setting 'lr.x'"),
    ({"epochs": 2.5}, "'epochs' must be an integer like 30, got 2.5"),
    ({"epochs": True}, "'epochs' must be an integer"),
    ({"flag": 1}, "'flag' must be true or false like false, got 1"),
    ({"name": 3}, "'name' must be a string"),
    ({"split": 0.5}, "'split' must be a list"),
    ({"data": 1}, "'data' must be a section"),
    ({"lr": float("nan")}, "'lr' must be a finite number, got nan"),
    ({"gap": float("inf")}, "'gap' must be a finite number"),
])
def test_unknown_keys_and_wrong_types_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        resolve(DEFAULTS, PRESETS, None, overrides)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ConfigError, match=r"unknown train preset 'long'; choose one of \['short'\]"):
        resolve(DEFAULTS, PRESETS, "long", what="train preset")


def test_open_sections_take_new_keys_and_another_name_starts_afresh():
    conf = resolve(DEFAULTS, {}, None, {"model.checkpoint": "w.pt"}, open_sections=["model"])
    assert conf["model"] == {"name": "vgg", "layer": 3, "checkpoint": "w.pt"}
    conf = resolve(DEFAULTS, {}, None, {"model.name": "dino", "model.facet": "value"}, open_sections=["model"])
    assert conf["model"] == {"name": "dino", "facet": "value"}
    assert resolve(DEFAULTS, {}, None, {"model": {"layer": 5, "name": "vgg"}},
                   open_sections=["model"])["model"] == {"name": "vgg", "layer": 5}
    with pytest.raises(ConfigError, match="unknown setting 'model.checkpoint'"):  # closed unless declared open
        resolve(DEFAULTS, {}, None, {"model.checkpoint": "w.pt"})


def test_presets_object_checks_and_records_extras():
    def check(conf):
        if conf["epochs"] < 1:
            raise ConfigError("epochs must be >= 1")
        return conf

    step = Presets("train demo", DEFAULTS, PRESETS, "short", check=check, extra={"method": "demo"},
                   renamed={"quick": "short"})
    assert step.resolve()["epochs"] == 2 and step.resolve()["method"] == "demo"
    assert step.resolve(None, {"epochs": 4}, lr=0.5) == {**step.resolve(), "epochs": 4, "lr": 0.5}
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        step.resolve("short", epochs=0)
    with pytest.raises(ConfigError, match="train demo preset 'quick' is now called 'short'"):
        step.resolve("quick")
    assert [name for name, _ in step.listing()] == ["short"]


def test_a_selector_names_a_block_between_the_defaults_and_the_preset():
    blocks = {"plain": {}, "fast": {"lr": 0.1, "epochs": 5, "data": {"pos_thr": 2.0}}}
    step = Presets("train demo", {**DEFAULTS, "recipe": "plain"}, {**PRESETS, "fast-run": {"recipe": "fast"}},
                   selectors={"recipe": blocks})
    plain = step.resolve("short")
    assert (plain["recipe"], plain["lr"], plain["epochs"]) == ("plain", 1e-4, 2)
    fast = step.resolve("short", {"recipe": "fast"})  # the block's lr and pos_thr; the preset's epochs
    assert (fast["recipe"], fast["lr"], fast["epochs"], fast["data"]) == ("fast", 0.1, 2, {"pos_thr": 2.0,
                                                                                          "neg_thr": 5.0})
    assert step.resolve("short", {"recipe": "fast", "lr": 0.5})["lr"] == 0.5  # the overrides win
    assert step.resolve("fast-run")["lr"] == 0.1 and step.resolve("fast-run", recipe="plain")["lr"] == 1e-4
    with pytest.raises(ConfigError, match=r"unknown recipe 'slow' for train demo; choose one of \['fast', 'plain"):
        step.resolve("short", recipe="slow")
    assert [name for name, _ in step.listing()] == ["short", "fast-run", "recipe=plain", "recipe=fast"]
    assert dict(step.listing())["recipe=fast"] == blocks["fast"]


def test_parse_overrides_reads_json_values_else_strings():
    assert parse_overrides(["a=1", "b=2.5", "c=[1, 2]", "d=true", "e=null", "f=dinov2", "g.h={\"x\": 1}"]) == \
        {"a": 1, "b": 2.5, "c": [1, 2], "d": True, "e": None, "f": "dinov2", "g.h": {"x": 1}}
    with pytest.raises(ConfigError, match="--set expects KEY=VALUE, got 'oops'"):
        parse_overrides(["oops"])


class Thing:
    def __init__(self, size: int = 1):
        self.size = size


def test_registry_imports_lazily_and_registers_plugins(monkeypatch):
    module = types.ModuleType("fake_plugin_pkg")
    module.Thing = Thing
    monkeypatch.setitem(sys.modules, "fake_plugin_pkg", module)
    reg = Registry("widget", __name__, {"lazy": "fake_plugin_pkg:Thing"})
    assert reg.create("lazy", size=3).size == 3

    @reg.register("decorated")
    class Other(Thing):
        pass

    assert reg.load("decorated") is Other
    with pytest.raises(ValueError, match="widget 'lazy' is already registered"):
        reg.register("lazy", Thing)
    reg.register("lazy", Other, replace=True)
    assert reg.load("lazy") is Other
    with pytest.raises(ValueError, match=r"widget 'lazy': got an unexpected keyword argument 'colour'; its settings: "
                                         r"\['size'\]"):
        reg.create("lazy", colour="red")


def test_registry_finds_installed_entry_points_once(monkeypatch):
    calls = []

    def entry_points(group):
        calls.append(group)
        return [types.SimpleNamespace(name="ep", value="tests.test_config:Thing")]

    monkeypatch.setattr("vprkit.registry.entry_points", entry_points)
    reg = Registry("gadget", __name__, {"builtin": Thing})
    with pytest.raises(KeyError, match=r"unknown gadget 'nope'; choose one of \['builtin', 'ep'\]"):
        reg.load("nope")
    assert reg.create("ep").size == 1 and calls == ["vprkit.gadgets"]
