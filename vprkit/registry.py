"""Named implementations of one kind (backbones, aggregators, segmenters, re-rankers, ...), imported on first use.

A registry maps a name to a class or to "module:Class" (a module path, or ".module" relative to the
registry's package), so a missing optional package only matters for the entry that needs it. Users plug in
their own implementation from their own package without editing vprkit, in code:

    from vprkit.models import BACKBONES
    BACKBONES.register("mynet", "mypkg.nets:MyNet")   # or @BACKBONES.register("mynet") on the class

or, for an installed package, with an entry point in its pyproject.toml (group `vprkit.backbones`,
`vprkit.aggregators`, `vprkit.segmenters`, `vprkit.rerankers`, ...), read the first time a name is not found:

    [project.entry-points."vprkit.backbones"]
    mynet = "mypkg.nets:MyNet"

A config then names it like any built-in entry: `--set model.name=mynet`.
"""

from __future__ import annotations

import importlib
import inspect
from importlib.metadata import entry_points
from typing import Any


class Registry(dict):
    """name -> class or "module:Class"; `load(name)` imports, `create(name, ...)` instantiates."""

    def __init__(self, kind: str, package: str, entries: dict[str, Any] | None = None,
                 group: str | None = None) -> None:
        super().__init__(entries or {})
        self.kind, self.package = kind, package
        self.group = group or f"vprkit.{kind.replace(' ', '_').replace('-', '_')}s"
        self._plugins_read = False

    def register(self, name: str, target: Any = None, replace: bool = False) -> Any:
        """Add `target` (a class or "module:Class") under `name`; without `target`, a class decorator.
        An existing name is refused unless `replace` (so a plug-in never hides a built-in by accident)."""
        def add(obj: Any) -> Any:
            if name in self and not replace:
                raise ValueError(f"{self.kind} '{name}' is already registered (as {self[name]}); pass replace=True")
            self[name] = obj
            return obj
        return add if target is None else add(target)

    def load(self, name: str) -> Any:
        """The class registered under `name` (its module imported now)."""
        if name not in self:
            self._read_plugins()
        if name not in self:
            raise KeyError(f"unknown {self.kind} '{name}'; choose one of {sorted(self)}")
        target = self[name]
        if not isinstance(target, str):
            return target
        module_name, _, attr = target.partition(":")
        return getattr(importlib.import_module(module_name, package=self.package), attr)

    def create(self, name: str, *args: Any, **conf: Any) -> Any:
        """An instance of the class registered under `name`, built with `args` and the config keywords (a keyword
        it does not take is refused naming the ones it does, before anything is built)."""
        cls = self.load(name)
        try:
            inspect.signature(cls).bind(*args, **conf)
        except TypeError as exc:
            params = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
            raise ValueError(f"{self.kind} '{name}': {exc}; its settings: {params}") from None
        return cls(*args, **conf)

    def _read_plugins(self) -> None:
        """Entries of installed packages (entry point group `self.group`), read once; built-ins keep their names."""
        if self._plugins_read:
            return
        self._plugins_read = True
        for ep in entry_points(group=self.group):
            self.setdefault(ep.name, ep.value)
