"""Registries of named parts: the door through which built-in and plug-in neurons and surrogates come.

A name resolves, in order, to what was registered under it (the built-ins register themselves), to
an entry point of an installed package (``[project.entry-points."plifnet.neurons"]`` in its
``pyproject.toml``), or, when it contains a dot, to the class at that import path
(``my_package.neurons.ALIF``). Entry points are imported only when their name is asked for, and one
that fails to import is reported with its package and error, never skipped.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from plifnet.errors import PluginError, UserError


class Registry:
    """Names -> classes for one kind of part (``neuron``, ``surrogate``, ``adapter``), with plug-in discovery
    through the entry-point group ``group``."""

    def __init__(self, kind: str, group: str):
        self.kind, self.group = kind, group
        self.entries: dict[str, type] = {}

    def register(self, name: str, cls: type | None = None):
        """``register("alif", ALIF)``, or ``@register("alif")`` above a class."""
        if cls is None:
            return lambda cls: self.register(name, cls)
        if self.entries.get(name, cls) is not cls:
            raise UserError(f"the {self.kind} name {name!r} is taken by {self.entries[name].__qualname__}")
        self.entries[name] = cls
        return cls

    def __iter__(self):  # the registered names (built-ins and plug-ins loaded so far)
        return iter(self.entries)

    def names(self) -> list[str]:
        """Registered and installed names (installed plug-ins are listed, not imported)."""
        return sorted(set(self.entries) | {ep.name for ep in entry_points(group=self.group)})

    def load_all(self) -> list[type]:
        """Every registered class and every installed plug-in's, importing the plug-ins."""
        for ep in entry_points(group=self.group):
            self.get(ep.name)
        return list(self.entries.values())

    def get(self, name: str) -> type:
        if name in self.entries:
            return self.entries[name]
        for ep in entry_points(group=self.group, name=name):
            try:
                cls = ep.load()
            except Exception as error:
                package = ep.dist.name if ep.dist else "an installed package"
                raise PluginError(
                    f"the {self.kind} plug-in {name!r} of {package} ({ep.value}) failed to import: "
                    f"{type(error).__name__}: {error}"
                ) from error
            return self.register(name, cls)
        if "." in name:
            module, _, attribute = name.rpartition(".")
            try:
                return getattr(importlib.import_module(module), attribute)
            except (ImportError, AttributeError) as error:
                raise UserError(f"{self.kind} class {name!r} cannot be imported: {error}") from error
        raise UserError(
            f"unknown {self.kind} {name!r}; choose one of {self.names()}, give a class path "
            f"(package.module.Class), or install a package that declares it in the entry-point "
            f"group {self.group!r}"
        )
