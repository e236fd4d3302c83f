"""One way to build every step's configuration: defaults, then a named preset, then the user's overrides.

`resolve(defaults, presets, name, overrides)` deep-merges the preset over the defaults and the overrides over
that; override keys may be dotted (`data.pos_thr=2` sets `conf["data"]["pos_thr"]`). Only keys that the
defaults or the preset define can be set (a typo would otherwise be ignored silently), except inside the
`open` sections (a backbone's or segmenter's keyword arguments; naming another implementation there starts the
section afresh), and each value must have the type of the value it replaces (an int is accepted for a float, a
number is never accepted for a string).

The meaning of `None`: in defaults and presets it is a real value ("off" / "automatic") and accepts a value of any
type; in overrides it means "not given": the preset's value stays (API keywords default to None).

`Presets` bundles one step's defaults and named presets; `STEPS` lists every step's, for `vprkit presets`.
`index_conf` is the config of a step that works on an index (a query, an append): the index's own, so its
`--preset` only checks and its `--set` may change what leaves the descriptors as they are.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data.safeio import InputError


class ConfigError(InputError):
    """A bad preset name or override: the message names the key and the valid choices."""


def resolve(defaults: dict, presets: Mapping[str, dict], name: str | None, overrides: dict | None = None, *,
            what: str = "preset", open_sections: Iterable[str] = ()) -> dict:
    """`defaults` <- `presets[name]` <- `overrides` (dotted keys), checked; a new dict, the inputs untouched.

    `name` None takes the defaults alone; the result records it as `conf["preset"]`. `open_sections` are the
    top-level keys whose contents are free (keyword arguments checked by what receives them).
    """
    if name is not None and name not in presets:
        raise ConfigError(f"unknown {what} '{name}'; choose one of {sorted(presets)}")
    conf = merge(defaults, presets.get(name, {})) if name is not None else copy.deepcopy(defaults)
    for key, value in (overrides or {}).items():
        if value is not None:
            _set(conf, key, value, frozenset(open_sections), what)
    conf["preset"] = name
    return conf


def merge(base: dict, over: dict) -> dict:
    """`over` deep-merged into a copy of `base` (dicts merge key by key; any other value replaces)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _set(conf: dict, key: str, value: Any, open_sections: frozenset[str], what: str) -> None:
    """Set dotted `key` in `conf` (the whole config) after checking that it exists and that `value` has its type;
    a dict value for a section sets its keys one by one."""
    *parents, leaf = key.split(".")
    free = (parents or [leaf])[0] in open_sections and bool(parents)  # a key inside an open section
    node = conf
    for part in parents:
        if free and part not in node:
            node[part] = {}
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"unknown setting '{key}' for this {what}; valid keys: {', '.join(valid_keys(conf))}")
        node = node[part]
    if leaf not in node and not free:
        raise ConfigError(f"unknown setting '{key}' for this {what}; valid keys: {', '.join(valid_keys(conf))}")
    if free and len(parents) == 1 and leaf == "name" and node.get("name") != value:
        node.clear()  # another implementation: the previous one's keyword arguments do not apply to it
    if isinstance(value, dict) and isinstance(node.get(leaf), dict):
        for sub, sub_value in sorted(value.items(), key=lambda kv: kv[0] != "name"):  # `name` first
            if sub_value is not None:
                _set(conf, f"{key}.{sub}", sub_value, open_sections, what)
        return
    node[leaf] = check_value(key, value, node.get(leaf))


def check_value(key: str, value: Any, ref: Any) -> Any:
    """`value` if it may replace `ref` (same type; an int for a float, converted; any type where `ref` is None);
    non-finite numbers are always refused."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"setting '{key}' must be a finite number, got {value}")
    if ref is None:
        return value
    if isinstance(ref, bool) or isinstance(value, bool):
        ok = isinstance(ref, bool) and isinstance(value, bool)
    elif isinstance(ref, float):
        ok = isinstance(value, (int, float))
        value = float(value) if ok else value
    elif isinstance(ref, (list, tuple)):
        ok = isinstance(value, (list, tuple))
        value = list(value) if ok else value
    else:
        ok = isinstance(value, type(ref))
    if not ok:
        raise ConfigError(f"setting '{key}' must be {_type_name(ref)} like {json.dumps(ref)}, got {value!r}")
    return value


def _type_name(ref: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
            tuple: "a list", dict: "a section"}.get(type(ref), type(ref).__name__)


def valid_keys(conf: dict, prefix: str = "") -> list[str]:
    """Every settable key of `conf`, dotted."""
    keys = []
    for key, value in conf.items():
        if key == "preset" and not prefix:
            continue
        if isinstance(value, dict) and value:
            keys += valid_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def require_counts(conf: dict, *keys: str) -> dict:
    """`conf` when each dotted key that is set (not None) holds an integer >= 1 (a count: batch size, top-k,
    image side), else a ConfigError naming the key."""
    for key in keys:
        value: Any = conf
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"setting '{key}' must be a positive integer, got {value!r}")
    return conf


def parse_overrides(pairs: Iterable[str]) -> dict:
    """`KEY=VALUE` strings (`--set`) to a dict; VALUE is JSON when it parses (numbers, lists, true, null), else a
    string."""
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got '{pair}'")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@dataclass
class Presets:
    """One step's configuration space: its defaults, its named presets and a check of the resolved config."""

    step: str  # as `vprkit presets` names it ("index", "rerank patchnetvlad", "train ames", ...)
    defaults: dict
    presets: Mapping[str, dict]  # any mapping (a lazy one may add presets defined elsewhere, e.g. released models)
    default: str | None = None  # the preset taken when none is named
    open_sections: tuple[str, ...] = ()
    check: Callable[[dict], dict] | None = None  # validates (and may complete) a resolved config
    extra: dict = field(default_factory=dict)  # recorded in every config (e.g. {"method": "ames"})
    renamed: dict[str, str] = field(default_factory=dict)  # old preset name -> its new name
    # key -> named blocks of settings (train head's `recipe`: a loss + schedule chosen apart from the preset)
    selectors: dict[str, Mapping[str, dict]] = field(default_factory=dict)

    def resolve(self, name: str | None = None, overrides: dict | None = None, /, **more: Any) -> dict:
        """The config of preset `name` (the step's default when None) with `overrides` and then `more`.

        A selector key's value (the overrides', else the preset's, else the default) names a block merged between
        the defaults and the preset, so the preset and the overrides still win over the block."""
        name = self.default if name is None else name
        if name in self.renamed:
            raise ConfigError(f"{self.step} preset '{name}' is now called '{self.renamed[name]}'")
        over = {**(overrides or {}), **more}
        defaults = self.defaults
        for key, blocks in self.selectors.items():
            choice = next(v for v in (over.get(key), self.presets.get(name, {}).get(key), defaults[key])
                          if v is not None)
            if not isinstance(choice, str) or choice not in blocks:
                raise ConfigError(f"unknown {key} '{choice}' for {self.step}; choose one of {sorted(blocks)}")
            defaults = merge(defaults, blocks[choice])
        conf = resolve(defaults, self.presets, name, over, what=f"{self.step} preset",
                       open_sections=self.open_sections)
        conf = {**self.extra, **conf}
        return self.check(conf) if self.check else conf

    def keys(self, name: str | None = None) -> list[str]:
        """The settable keys of preset `name`, dotted."""
        return valid_keys(self.resolve(name))

    def listing(self) -> Iterable[tuple[str, dict]]:
        """(name, full config) of every preset, the default first; then ('KEY=NAME', the settings it sets) of every
        selector block."""
        names = sorted(self.presets, key=lambda n: n != self.default)
        rows = [(n, self.resolve(n)) for n in names] if names else [("(defaults)", self.resolve(None))]
        return rows + [(f"{key}={choice}", block) for key, blocks in self.selectors.items()
                       for choice, block in blocks.items()]


def index_conf(presets: Presets, model_key: Callable[[dict], str], index_dir: Path, conf: dict, preset: str | None,
               overrides: dict | None = None) -> dict:
    """The config to describe images against an index with: the index's `conf`, refusing a `preset` other than the
    index's unless it gives the same descriptors (`model_key`: what decides them); `overrides` may change settings
    that keep the descriptors (runtime ones, a query's own), refused naming the index otherwise."""
    if preset not in (None, conf["preset"]):  # the precision is the index's (queries follow it)
        wanted = presets.resolve(preset, precision=conf.get("precision"))
        if model_key(wanted) != model_key(conf):
            raise ConfigError(f"{index_dir} was built with preset '{conf['preset']}' "
                              f"({conf['model']['name']} + {conf['aggregator']['name']}); querying it with "
                              f"'{preset}' would compare different descriptor spaces "
                              f"({', '.join(_differ(model_key(wanted), model_key(conf)))} differ)")
    if not overrides:
        return conf
    changed = {**resolve(conf, {}, None, overrides, what=f"index {index_dir}", open_sections=presets.open_sections),
               "preset": conf["preset"]}
    if model_key(changed) != model_key(conf):
        raise ConfigError(f"{index_dir}: {sorted(overrides)} would change the index's descriptors "
                          f"({', '.join(_differ(model_key(changed), model_key(conf)))}); only settings that keep "
                          "them may change here (build another index for other descriptors)")
    return presets.check(changed) if presets.check else changed


def _differ(key_a: str, key_b: str) -> list[str]:
    """The top-level settings in which two model keys (JSON objects) differ."""
    a, b = json.loads(key_a), json.loads(key_b)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
