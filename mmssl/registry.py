"""Name -> class tables for modalities, objectives, data sources and evaluation tasks, filled by decorators
and entry points.

Built-in modalities and objectives are declared as entry points in our own
pyproject.toml, exactly like a third-party plugin, so the plugin path runs every
time. Entry points load lazily, on the first lookup or listing. Set
``MMSSL_DISABLE_PLUGIN_AUTOLOAD=1`` to load only this distribution's own entry
points (as pytest's ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` does).
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import logging
import os
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Callable, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T", bound=type)

OWN_DISTRIBUTION = "mmssl"
AUTOLOAD_ENV = "MMSSL_DISABLE_PLUGIN_AUTOLOAD"


class RegistryError(KeyError):
    """A lookup miss, a duplicate registration or a broken plugin."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly.
        return str(self.args[0])


@dataclass(frozen=True)
class Entry:
    name: str
    cls: type
    source: str  # where it came from: "module:qualname" plus the distribution if known


def _describe(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def closest(name: str, choices: list[str]) -> str:
    """' Did you mean 'x'?' for the closest choice, or ''."""
    match = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else ""


class Registry(Generic[T]):
    """A name -> class table with lazy entry-point loading.

    Args:
        kind: what is registered ("modality"), used in messages.
        group: the entry-point group that plugins declare (``mmssl.modalities``).
        check: called with each class before it is registered; raises RegistryError
            saying what to change when the class does not fit the contract.
    """

    def __init__(self, kind: str, group: str, check: Callable[[Any, str, str], None] | None = None) -> None:
        self.kind = kind
        self.group = group
        self.check = check
        self._entries: dict[str, Entry] = {}
        # plugins that could not join: name -> why (a failed import, a taken name). A
        # lookup of the name raises it; others are unaffected; a listing shows it.
        self._problems: dict[str, str] = {}
        self._loaded_entry_points = False
        self._loading = False

    def register(self, name: str, source: str | None = None) -> Callable[[T], T]:
        """Class decorator: ``@register_modality("image")``."""

        def decorator(cls: T) -> T:
            self.add(name, cls, source)
            return cls

        return decorator

    def add(self, name: str, cls: T, source: str | None = None) -> None:
        if not isinstance(name, str) or not name.isidentifier():
            raise RegistryError(f"{self.kind} name must be a Python identifier, got {name!r} ({_describe(cls)})")
        existing = self._entries.get(name)
        if existing is not None:
            if existing.cls is cls:
                return
            raise RegistryError(
                f"duplicate {self.kind} '{name}': already registered by {existing.source}, "
                f"registered again by {source or _describe(cls)}. Rename one of them."
            )
        if self.check is not None:
            self.check(cls, name, source or _describe(cls))
        cls.name = name  # the registry key is the class's canonical name
        self._entries[name] = Entry(name, cls, source or _describe(cls))

    def get(self, name: str) -> T:
        """The class registered as ``name``; a miss lists the known names and the closest one."""
        self._load_entry_points()
        if name not in self._entries and name in self._problems:
            raise RegistryError(self._problems[name])
        if name not in self._entries:
            known = sorted(self._entries)
            raise RegistryError(
                f"unknown {self.kind} '{name}'.{closest(name, known)} Known {self.kind} names: {known}. "
                f"A plugin registers one with the entry-point group '{self.group}'."
            )
        return self._entries[name].cls

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._entries

    def list(self, pattern: str = "*") -> list[str]:
        """Registered names matching an fnmatch pattern, sorted."""
        self._load_entry_points()
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def entries(self) -> list[Entry]:
        self._load_entry_points()
        return [self._entries[n] for n in sorted(self._entries)]

    def problems(self) -> dict[str, str]:
        """Plugins that could not join, by name: why (an import error, a name already taken)."""
        self._load_entry_points()
        return dict(sorted(self._problems.items()))

    def _load_entry_points(self) -> None:
        if self._loaded_entry_points or self._loading:
            return
        self._loading = True
        try:
            own_only = os.environ.get(AUTOLOAD_ENV, "") not in ("", "0")
            found = [(ep, ep.dist.name if ep.dist is not None else "?") for ep in entry_points(group=self.group)]
            # this distribution's own entries first: a plugin cannot take a built-in's name
            for ep, dist in sorted(found, key=lambda pair: pair[1] != OWN_DISTRIBUTION):
                if own_only and dist != OWN_DISTRIBUTION:
                    log.info("plugin autoload disabled: skipping %s '%s' from %s", self.kind, ep.name, dist)
                    continue
                self._load_one(ep, dist)
            self._loaded_entry_points = True
        finally:
            self._loading = False

    def _load_one(self, ep: EntryPoint, dist: str) -> None:
        """Register one entry point; a plugin that fails to import, is no class, or takes
        a name already registered is kept out, its reason recorded and logged."""
        where = f"{self.kind} plugin '{ep.name}' = '{ep.value}' from distribution '{dist}'"
        try:
            cls = ep.load()
        except Exception as exc:
            self._refuse(ep.name, f"could not load {where}: {type(exc).__name__}: {exc}")
            return
        if not inspect.isclass(cls):
            self._refuse(ep.name, f"{where} is not a class")
            return
        try:
            self.add(ep.name, cls, f"{ep.value} (entry point in {dist})")
        except RegistryError as exc:
            if dist == OWN_DISTRIBUTION:
                raise
            self._refuse(ep.name, f"{exc} The plugin's entry was refused.")

    def _refuse(self, name: str, why: str) -> None:
        log.warning("%s", why)
        if name not in self._entries:  # a name taken by a refused plugin still finds the one registered
            self._problems[name] = why
        else:
            self._problems[f"{name} (refused duplicate)"] = why


def _check_modality(cls: Any, name: str, source: str) -> None:
    """A modality is a ``modalities.base.Modality`` bundle of encoder, processor and
    renderer; a one-class nn.Module (the contract before mmssl 0.2) is refused saying so."""
    from torch import nn

    from modalities.base import Modality

    if inspect.isclass(cls) and issubclass(cls, nn.Module):
        raise RegistryError(
            f"modality '{name}' ({source}) is one nn.Module, the one-class contract of mmssl before 0.2: split it "
            "into an Encoder (the nn.Module: forward and capability hooks), a Processor (load, transform, augment, "
            "collate) and a Renderer (concept_space, render), and register a modalities.base.Modality subclass that "
            "names them (docs/plugins.md, 'Migrating a one-class modality')"
        )
    if not (inspect.isclass(cls) and issubclass(cls, Modality)):
        raise RegistryError(f"modality '{name}' ({source}) is no modalities.base.Modality subclass")


MODALITIES: Registry = Registry("modality", "mmssl.modalities", check=_check_modality)
OBJECTIVES: Registry = Registry("objective", "mmssl.objectives")
SOURCES: Registry = Registry("source", "mmssl.sources")
EVAL_TASKS: Registry = Registry("evaluation task", "mmssl.eval_tasks")


def register_modality(name: str) -> Callable[[T], T]:
    """Register a ``modalities.base.Modality`` subclass (encoder, processor, renderer) under ``name``."""
    return MODALITIES.register(name)


def register_objective(name: str) -> Callable[[T], T]:
    """Register an Objective subclass under ``name``."""
    return OBJECTIVES.register(name)


def register_source(name: str) -> Callable[[T], T]:
    """Register a data source kind (a ``mmssl.data.SourceKind`` subclass) under ``name``."""
    return SOURCES.register(name)


def register_eval_task(name: str) -> Callable[[T], T]:
    """Register an evaluation task (a ``mmssl.eval.tasks.EvalTask`` subclass) under ``name``."""
    return EVAL_TASKS.register(name)


def get_modality(name: str) -> type:
    return MODALITIES.get(name)


def get_objective(name: str) -> type:
    return OBJECTIVES.get(name)


def list_modalities(pattern: str = "*") -> list[str]:
    return MODALITIES.list(pattern)


def list_objectives(pattern: str = "*") -> list[str]:
    return OBJECTIVES.list(pattern)


def list_sources(pattern: str = "*") -> list[str]:
    return SOURCES.list(pattern)
