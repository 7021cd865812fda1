"""Which faults and probes exist: the built-in modules, and plugins found through entry points.

A fault or a probe describes itself in its own module: its name in experiment files, the model
of its parameters, its scope, its timeouts, how it injects, verifies and undoes (faults:
``chaos.faults.base.Fault``; probes: ``chaos.probes.base.ProbeKind``). This module only finds
them:

- built in: every module of the ``chaos.faults`` and ``chaos.probes`` packages is imported and
  each class it defines with its own ``type`` (a fault) or ``name`` (a probe) is one kind, so a
  new built-in fault is one new module;
- plugins: the classes that installed distributions declare under the entry point groups
  ``chaos.faults`` and ``chaos.probes`` (docs/plugins.md; examples/chaos-example-plugin).

The experiment schema builds its ``fault`` union and its ``probes`` section from what is found
here, the planner reads a fault's scope from it, and ``chaos recover`` finds the fault that
replays an API undo step through it. The modules are imported by name, so the static layering
stays as it is (the schema never imports a fault module): they must not import
``chaos.experiment.schema`` themselves (``chaos.experiment.params`` has what they need).

A plugin that cannot be loaded does not stop the tool: it is left out, and the problem is kept
(``Registry.problems``) for ``chaos validate`` and ``chaos doctor`` to name, and for the error
about an unknown fault type or probe to explain.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any, Literal

from pydantic import BaseModel

from chaos.experiment.metrics_catalog import BUILTIN_METRICS

FAULT_GROUP = "chaos.faults"
PROBE_GROUP = "chaos.probes"
Group = Literal["chaos.faults", "chaos.probes"]

FAULT_TYPE_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
PROBE_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
SCOPES = ("router", "node")
DURATION_RULES = ("required", "optional", "forbidden")
RESERVED_PROBE_KEYS = frozenset({"warmup", "settle"})  # the probes section's own settings


@dataclass(frozen=True)
class LoadProblem:
    """A plugin (or a built-in module) that was left out, and why."""

    group: str
    name: str  # the entry point's name, or the module's
    source: str  # "entry point NAME = VALUE (distribution D)" or "built-in module M"
    error: str

    def describe(self) -> str:
        return f"{self.source}: {self.error}"


@dataclass
class Registry:
    faults: dict[str, type] = field(default_factory=dict)
    probes: dict[str, type] = field(default_factory=dict)
    sources: dict[tuple[str, str], str] = field(default_factory=dict)  # (group, name) -> where it came from
    problems: list[LoadProblem] = field(default_factory=list)

    def fault(self, fault_type: str) -> type:
        try:
            return self.faults[fault_type]
        except KeyError:
            raise KeyError(f"no fault type {fault_type!r} (known: {', '.join(self.faults)})") from None

    def problem_for(self, group: str, name: str) -> LoadProblem | None:
        """Why a fault type or probe named ``name`` is missing, when a plugin of that name failed."""
        return next((p for p in self.problems if p.group == group and p.name == name), None)


# --------------------------------------------------------------------------- checks of a kind
def _fault_problem(cls: Any) -> str | None:
    fault_type = cls.__dict__.get("type")
    if not isinstance(fault_type, str) or not FAULT_TYPE_RE.match(fault_type):
        return f"its type {fault_type!r} is not a name such as my-fault (lowercase words joined by -)"
    if not (isinstance(cls.params_model, type) and issubclass(cls.params_model, BaseModel)):
        return "params_model is not a pydantic model"
    if cls.scope not in SCOPES:
        return f"scope {cls.scope!r} is not one of {', '.join(SCOPES)}"
    if cls.duration_rule not in DURATION_RULES:
        return f"duration_rule {cls.duration_rule!r} is not one of {', '.join(DURATION_RULES)}"
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        return f"it does not implement {missing}"
    return None


def _probe_problem(cls: Any) -> str | None:
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not PROBE_NAME_RE.match(name) or name in RESERVED_PROBE_KEYS:
        return f"its name {name!r} is not a key such as my_probe (lowercase, digits, _; not warmup or settle)"
    if not (isinstance(cls.settings_model, type) and issubclass(cls.settings_model, BaseModel)):
        return "settings_model is not a pydantic model"
    for metric in cls.metrics:
        if getattr(metric, "probe", None) != name:
            return f"its metric {getattr(metric, 'name', metric)!r} names probe {getattr(metric, 'probe', None)!r}, not {name!r}"
        if getattr(metric, "compute", None) is None:
            return f"its metric {metric.name!r} has no compute function (metrics_catalog.Metric.compute)"
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        return f"it does not implement {missing}"
    return None


_KEY = {FAULT_GROUP: "type", PROBE_GROUP: "name"}
_CHECK = {FAULT_GROUP: _fault_problem, PROBE_GROUP: _probe_problem}


def _kinds_of(module: ModuleType, group: Group) -> list[type]:
    """The classes ``module`` defines that are kinds of ``group`` (they name themselves)."""
    key = _KEY[group]
    return [
        obj for obj in vars(module).values()
        if isinstance(obj, type) and obj.__module__ == module.__name__
        and getattr(obj, "registry_group", None) == group and isinstance(obj.__dict__.get(key), str)
    ]


def _add(reg: Registry, group: Group, cls: type, source: str, name: str) -> None:
    table = reg.faults if group == FAULT_GROUP else reg.probes
    problem = _CHECK[group](cls)
    key = cls.__dict__.get(_KEY[group])
    if problem is None and key in table:
        problem = f"{_KEY[group]} {key!r} is taken by {reg.sources[(group, key)]}"
    if problem is None and group == PROBE_GROUP:
        taken = {m.name: p for p, c in reg.probes.items() for m in c.metrics}
        clash = next((m.name for m in cls.metrics if m.name in taken or m.name in BUILTIN_METRICS), None)
        if clash is not None:
            problem = f"its metric {clash!r} already exists"
    if problem is not None:
        reg.problems.append(LoadProblem(group, name, source, f"{cls.__name__}: {problem}"))
        return
    table[key] = cls
    reg.sources[(group, key)] = source


def _builtin(reg: Registry, group: Group) -> None:
    package = importlib.import_module(group)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"{group}.{info.name}")
        for cls in _kinds_of(module, group):
            _add(reg, group, cls, f"built-in module {module.__name__}", cls.__dict__[_KEY[group]])


def _plugins(reg: Registry, group: Group, entry_points: Iterable[metadata.EntryPoint]) -> None:
    for ep in sorted(entry_points, key=lambda e: e.name):
        dist = getattr(ep, "dist", None)
        source = f"entry point {ep.name} = {ep.value}" + (f" (distribution {dist.name})" if dist is not None else "")
        try:
            loaded = ep.load()
        except Exception as exc:  # a broken plugin must not take the tool down with it
            reg.problems.append(LoadProblem(group, ep.name, source, f"cannot be imported: {type(exc).__name__}: {exc}"))
            continue
        if not (isinstance(loaded, type) and getattr(loaded, "registry_group", None) == group):
            what = "a Fault subclass" if group == FAULT_GROUP else "a ProbeKind subclass"
            reg.problems.append(LoadProblem(group, ep.name, source, f"{ep.value} is not {what}"))
            continue
        key = loaded.__dict__.get(_KEY[group])
        if key != ep.name:
            reg.problems.append(LoadProblem(
                group, ep.name, source, f"the entry point's name must be the {_KEY[group]} it registers ({key!r})"
            ))
            continue
        _add(reg, group, loaded, source, ep.name)


def load(entry_points: dict[Group, Iterable[metadata.EntryPoint]] | None = None) -> Registry:
    """Find every fault and probe: the built-in ones first, then the plugins (in name order).

    ``entry_points`` replaces the installed ones (tests); by default they are read from the
    installed distributions' metadata.
    """
    reg = Registry()
    for group in (FAULT_GROUP, PROBE_GROUP):
        _builtin(reg, group)
        eps = entry_points.get(group, ()) if entry_points is not None else metadata.entry_points(group=group)
        _plugins(reg, group, eps)
    reg.probes = dict(sorted(reg.probes.items(), key=lambda kv: (kv[1].order, kv[0])))
    return reg


@functools.cache
def registry() -> Registry:
    """The registry of this process, loaded once on first use."""
    return load()


__all__ = ["FAULT_GROUP", "PROBE_GROUP", "LoadProblem", "Registry", "load", "registry"]
