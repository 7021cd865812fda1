"""What an experiment file may say: pydantic models of the YAML, and the rules across fields.

The models check each field on its own (types, ranges, unknown keys: ``extra="forbid"``);
``combination_problems`` checks what no single field can (a ``value`` with ``mode: all``, a
tolerance on a metric whose probe is off, a run that cannot fit in ``max_run_duration``) and
returns every problem with the field path it belongs to, so the loader can point at the line.
``Experiment`` runs the same checks when built directly, so an ``Experiment`` object is always
a valid one, whoever made it.

Nothing here touches the network or the lab: a file is fully judged before anything runs.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    Strict,
    ValidationInfo,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError

from chaos.experiment.durations import (
    Duration,
    NonNegativeDuration,
    format_duration,
)
from chaos.experiment.metric_refs import MetricRef, parse_metric_ref
from chaos.experiment.metrics_catalog import PHASES, Phase
from chaos.experiment.params import Int, NoParams, Number, Params, Text
from chaos.experiment.registry import registry
from chaos.experiment.schedule import ScheduleField
from chaos.model import RouterId
from chaos.yamlfile import Loc, format_loc

"""A field path in the file: ("fault", "params", "signal"), ("probes", "tcp", "directions", 1)."""

TargetMode = Literal["one", "all", "fixed", "fixed-percent", "random-max-percent"]
Source = Literal["lab", "inventory", "openstack"]
ReplicaRole = Literal["primary", "backup", "any"]

_LAB_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,9}$")  # the lab's own rule (chaos.lab.spec); namespaces derive from it


def _lab_name(value: str) -> str:
    if not _LAB_NAME_RE.match(value):
        reason = f"invalid lab name {value!r}: use 1 to 10 lowercase letters or digits, starting with a letter"
        raise PydanticCustomError("lab_name", "{reason}", {"reason": reason})
    return value


def _non_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("blank", "must not be empty")
    return value


_Model = Params  # every section: frozen, unknown keys refused


# --------------------------------------------------------------------------- target
class RouterSelector(_Model):
    """Which routers are candidates; every selector given must match (AND)."""

    name: Text | None = Field(default=None, description="glob on the router's name, e.g. 'web-*'")
    ids: tuple[RouterId, ...] | None = Field(default=None, min_length=1)
    project: Text | None = Field(default=None, description="project (tenant) id")
    tags: tuple[Text, ...] | None = Field(default=None, min_length=1, description="every tag must be on the router")
    one_of: tuple[Annotated[Text, AfterValidator(_non_blank)], ...] | None = Field(
        default=None, min_length=1,
        description="exact router names or ids; a router matches when its name or id is one of them "
        "(`chaos run --router` sets it)",
    )

    def matches(self, *, name: str, router_id: str, project_id: str = "", tags: tuple[str, ...] = ()) -> bool:
        if self.name is not None and not fnmatch.fnmatchcase(name, self.name):
            return False
        if self.one_of is not None and name not in self.one_of and router_id not in self.one_of:
            return False
        if self.ids is not None and router_id not in self.ids:
            return False
        if self.project is not None and project_id != self.project:
            return False
        return self.tags is None or set(self.tags) <= set(tags)


class Target(_Model):
    """Which routers an experiment acts on, and where they come from."""

    routers: RouterSelector = RouterSelector()
    mode: TargetMode = "one"
    value: Number | None = Field(default=None, description="count for fixed, percent for the percent modes")
    seed: Int | None = Field(default=None, description="seed of the random choice, for a reproducible sample")
    source: Source = "lab"
    lab: Annotated[Text, AfterValidator(_lab_name)] | None = Field(
        default=None, description="lab name; None: the runner's setting (CHAOS_LAB_NAME, default chaoslab)"
    )
    inventory: Annotated[Path, Strict(False)] | None = Field(
        default=None, description="inventory file, relative to the experiment file: the routers and nodes "
        "(source: inventory), or how to reach the hosts discovery names and which ports to probe (source: openstack)"
    )
    cloud: Text | None = Field(default=None, description="clouds.yaml entry (source: openstack); None: OS_CLOUD")

    def lab_name(self, default: str) -> str:
        return self.lab or default

    def describe(self) -> str:
        how = {
            "one": "one router",
            "all": "all routers",
            "fixed": f"{_number(self.value)} routers",
            "fixed-percent": f"{_number(self.value)}% of routers",
            "random-max-percent": f"up to {_number(self.value)}% of routers (random)",
        }[self.mode]
        sel = self.routers
        filters = [f"name {sel.name!r}" if sel.name is not None and sel.name != "*" else ""]
        filters += [f"{len(sel.ids)} ids" if sel.ids else "", f"project {sel.project}" if sel.project else ""]
        filters += [f"tags {','.join(sel.tags)}" if sel.tags else ""]
        filters += [f"router {' or '.join(sel.one_of)}" if sel.one_of else ""]
        where = {
            "lab": f"lab {self.lab or '(default)'}",
            "inventory": f"inventory {self.inventory}",
            "openstack": f"cloud {self.cloud or '(OS_CLOUD)'}" + (f" (SSH: inventory {self.inventory})" if self.inventory else ""),
        }[self.source]
        chosen = ", ".join(f for f in filters if f)
        seed = f", seed {self.seed}" if self.seed is not None else ""
        return f"{how}{' matching ' + chosen if chosen else ''} in {where}{seed}"


# --------------------------------------------------------------------------- faults
class FaultSpec(_Model):
    """The ``fault`` section: which fault (``type``), on which replica, for how long, with which
    parameters. One model per fault type is built from the registry (``FAULT_SPECS``); the fault
    module owns its parameters model and the rules of its section (``Fault.spec_problems``)."""

    type: str
    replica: ReplicaRole = Field(default="primary", description="which replica of each chosen router is hit")
    duration: Duration | None = Field(default=None, description="how long the fault holds, where that applies")
    params: Params = NoParams()

    def kind(self) -> Any:
        """The fault class that injects this section (``chaos.faults.base.Fault``)."""
        return registry().fault(self.type)

    @property
    def scope(self) -> str:
        return str(self.kind().scope)

    def describe(self) -> str:
        return str(self.kind().describe_spec(self))


def _spec_model(fault_type: str, kind: Any) -> type[FaultSpec]:
    params_model = kind.params_model
    required = any(f.is_required() for f in params_model.model_fields.values())
    name = "".join(w.capitalize() for w in fault_type.split("-")) + "Spec"
    return create_model(  # type: ignore[no-any-return, call-overload]
        name, __base__=FaultSpec, __module__=__name__, __doc__=f"The fault section of a {fault_type} experiment.",
        type=(Literal[fault_type], ...),  # type: ignore[valid-type]
        params=(params_model, ... if required else params_model()),
    )


FAULT_SPECS: dict[str, type[FaultSpec]] = {t: _spec_model(t, k) for t, k in registry().faults.items()}
"""fault type -> the model of its ``fault`` section, for every fault the registry found."""
FAULT_TYPES: tuple[str, ...] = tuple(FAULT_SPECS)

Fault = Annotated[Union[tuple(FAULT_SPECS.values())], Field(discriminator="type")]  # type: ignore[valid-type]  # noqa: UP007
"""The ``fault`` section: one of the registered faults' section models, chosen by ``type``."""


def fault_spec_model(fault_type: str) -> type[FaultSpec]:
    """The section model of one fault type (KeyError names the known ones)."""
    try:
        return FAULT_SPECS[fault_type]
    except KeyError:
        raise KeyError(f"no fault type {fault_type!r} (known: {', '.join(FAULT_SPECS)})") from None


# --------------------------------------------------------------------------- safeguards
class Safeguards(_Model):
    """Limits the runner enforces; crossing one aborts the run and rolls everything back."""

    max_concurrent_routers: Int = Field(default=10, ge=1)
    max_nodes_at_once: Int = Field(default=1, ge=1)
    abort_when_routers_without_primary: Int = Field(
        default=1, ge=1, description="abort when this many routers have no primary for longer than grace"
    )
    grace: Duration = 15.0
    max_run_duration: Duration = 600.0


# --------------------------------------------------------------------------- probes
class ProbesSection(_Model):
    """The probes that run; a probe runs when its key is present (``arp:`` alone is enough).

    One optional key per probe the registry found (each probe module owns its settings model,
    ``ProbeKind.settings_model``), beside the section's own ``warmup`` and ``settle``.
    """

    warmup: NonNegativeDuration = Field(default=5.0, description="probes run this long before the injection")
    settle: NonNegativeDuration = Field(default=10.0, description="and this long after the recovery")

    @model_validator(mode="before")
    @classmethod
    def _bare_keys_enable(cls, data: Any) -> Any:
        """``arp:`` (null) and ``arp: true`` switch a probe on with defaults; ``false`` off."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name in PROBE_NAMES:
            if name in out and (out[name] is None or out[name] is True):
                out[name] = {}
            elif name in out and out[name] is False:
                del out[name]
        return out

    def enabled(self) -> tuple[str, ...]:
        return tuple(name for name in PROBE_NAMES if getattr(self, name) is not None)

    def settings(self, name: str) -> BaseModel | None:
        """The settings of probe ``name``, None when it is off."""
        return getattr(self, name, None)  # type: ignore[no-any-return]


PROBE_NAMES: tuple[str, ...] = tuple(registry().probes)
"""Every probe the registry found, in their order (built-in ones first)."""

Probes: type[ProbesSection] = create_model(  # type: ignore[call-overload]
    "Probes", __base__=ProbesSection, __module__=__name__, __doc__=ProbesSection.__doc__,
    **{name: (kind.settings_model | None, None) for name, kind in registry().probes.items()},
)

DEFAULT_PROBES = Probes(**{name: kind.settings_model() for name, kind in registry().probes.items() if kind.default_on})


# --------------------------------------------------------------------------- hypothesis
def _metric_ref(value: str) -> str:
    try:
        parse_metric_ref(value)
    except ValueError as exc:
        raise PydanticCustomError("unknown_metric", "{reason}", {"reason": str(exc)}) from None
    return value


MetricName = Annotated[Text, AfterValidator(_metric_ref)]


class Tolerance(_Model):
    """One bound on one metric: ``max``/``min`` are inclusive; ``equals`` is exact."""

    max: Number | None = None
    min: Number | None = None
    equals: Number | None = None
    phase: Phase = "after"

    def holds(self, value: float) -> bool:
        if self.equals is not None:
            return math.isclose(value, self.equals, abs_tol=1e-9)
        if self.max is not None and value > self.max:
            return False
        return not (self.min is not None and value < self.min)

    def describe(self) -> str:
        if self.equals is not None:
            return f"= {_number(self.equals)}"
        parts = [f">= {_number(self.min)}" if self.min is not None else "", f"<= {_number(self.max)}" if self.max is not None else ""]
        return " and ".join(p for p in parts if p)


@dataclass(frozen=True)
class ToleranceCheck:
    """One bound to check: the name as written, the metric it names, and the bound."""

    name: str
    ref: MetricRef
    tolerance: Tolerance


class Hypothesis(_Model):
    title: Text = ""
    tolerances: dict[MetricName, Tolerance] = Field(min_length=1)

    def checks(self, phase: Phase | None = None) -> list[ToleranceCheck]:
        """Every tolerance with its parsed metric, optionally only those of one phase."""
        return [
            ToleranceCheck(name, parse_metric_ref(name), tolerance)
            for name, tolerance in self.tolerances.items()
            if phase is None or tolerance.phase == phase
        ]


# --------------------------------------------------------------------------- experiment
class Experiment(_Model):
    """One experiment file, validated: what to hit, how, within which limits, and what must hold."""

    title: Annotated[Text, AfterValidator(_non_blank)]
    description: Text = ""
    tags: tuple[Text, ...] = ()
    target: Target
    fault: Fault
    safeguards: Safeguards = Safeguards()
    probes: Probes = DEFAULT_PROBES
    steady_state_hypothesis: Hypothesis
    schedule: ScheduleField | None = Field(
        default=None, description="when `chaos serve` runs it: cron, time zone, jitter, deadline, concurrency, blackouts"
    )

    @model_validator(mode="after")
    def _combinations(self, info: ValidationInfo) -> Experiment:
        """Field combinations; the loader checks them itself (to place each one on its line)."""
        if info.context and info.context.get("combinations_checked_by_loader"):
            return self
        problems = combination_problems(
            target=self.target, fault=self.fault, safeguards=self.safeguards,
            probes=self.probes, hypothesis=self.steady_state_hypothesis,
        )
        if problems:
            text = "; ".join(f"{format_loc(loc)}: {message}" for loc, message in problems)
            raise PydanticCustomError("combination", "{problems}", {"problems": text})
        return self

    def summary(self) -> str:
        """One line for `chaos validate`: what it targets and what it injects."""
        n = len(self.steady_state_hypothesis.checks())
        return (
            f"targets {self.target.describe()}; injects {self.fault.describe()}; "
            f"probes {', '.join(self.probes.enabled()) or 'none'}; {n} tolerance{'s' if n != 1 else ''}"
        )


SECTIONS: dict[str, Any] = {
    "target": Target,
    "fault": Fault,
    "safeguards": Safeguards,
    "probes": Probes,
    "steady_state_hypothesis": Hypothesis,
}
"""Top-level sections the combination checks read, each validatable on its own."""

SECTION_DEFAULTS: dict[str, Any] = {"safeguards": Safeguards(), "probes": DEFAULT_PROBES}


# --------------------------------------------------------------------------- combinations
def combination_problems(
    *,
    target: Target | None,
    fault: Any | None,
    safeguards: Safeguards | None,
    probes: Probes | None,
    hypothesis: Hypothesis | None,
) -> list[tuple[Loc, str]]:
    """Every rule that spans fields. A section that did not validate is None; rules that need
    it are skipped (its own errors are reported already)."""
    problems: list[tuple[Loc, str]] = []
    if target is not None:
        problems += _target_problems(target)
    if fault is not None:
        problems += [(("fault", *loc), message) for loc, message in fault.kind().spec_problems(fault)]
    if probes is not None:
        for name, kind in registry().probes.items():
            settings = probes.settings(name)
            if settings is not None:
                problems += [(("probes", name, *loc), message) for loc, message in kind.spec_problems(settings, target=target)]
    if hypothesis is not None:
        problems += _tolerance_problems(hypothesis, probes)
    if target is not None and safeguards is not None and target.mode == "fixed" and target.value is not None:
        if target.value > safeguards.max_concurrent_routers:
            problems.append(
                (("target", "value"), f"{_number(target.value)} routers exceed safeguards.max_concurrent_routers "
                 f"({safeguards.max_concurrent_routers})")
            )
    if safeguards is not None:
        if safeguards.grace >= safeguards.max_run_duration:
            problems.append(
                (("safeguards", "grace"), f"{format_duration(safeguards.grace)} is not shorter than "
                 f"max_run_duration ({format_duration(safeguards.max_run_duration)})")
            )
        if probes is not None:
            hold = fault.duration if fault is not None and fault.duration else 0.0
            least = probes.warmup + hold + probes.settle
            if least > safeguards.max_run_duration:
                problems.append(
                    (("safeguards", "max_run_duration"), f"{format_duration(safeguards.max_run_duration)} is shorter than "
                     f"warmup + fault.duration + settle ({format_duration(least)}): the run would always abort")
                )
    return problems


def _target_problems(target: Target) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    if target.mode in ("one", "all"):
        if target.value is not None:
            problems.append((("target", "value"), f"not allowed with mode {target.mode} (it takes no count or percent)"))
    elif target.value is None:
        what = "a router count" if target.mode == "fixed" else "a percent (0-100]"
        problems.append((("target", "value"), f"required with mode {target.mode}: {what}"))
    elif target.mode == "fixed":
        if not float(target.value).is_integer() or target.value < 1:
            problems.append((("target", "value"), f"mode fixed takes a whole number of routers >= 1, got {_number(target.value)}"))
    elif not 0 < target.value <= 100:
        problems.append((("target", "value"), f"a percent must be greater than 0 and at most 100, got {_number(target.value)}"))
    owner = {"lab": ("lab",), "inventory": ("inventory", "openstack"), "cloud": ("openstack",)}
    for key, sources in owner.items():
        if getattr(target, key) is not None and target.source not in sources:
            which = " or ".join(f"source: {s}" for s in sources)
            problems.append((("target", key), f"only with {which} (the source is {target.source})"))
    if target.source == "inventory" and target.inventory is None:
        problems.append((("target", "inventory"), "required with source: inventory (path of the inventory file)"))
    return problems


def _tolerance_problems(hypothesis: Hypothesis, probes: Probes | None) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    for name, tolerance in hypothesis.tolerances.items():
        loc: Loc = ("steady_state_hypothesis", "tolerances", name)
        ref = parse_metric_ref(name)
        metric = ref.metric
        bounds = {k: v for k, v in (("max", tolerance.max), ("min", tolerance.min), ("equals", tolerance.equals)) if v is not None}
        if len(bounds) != 1:  # one bound per name keeps a verdict readable: which bound failed
            given = ", ".join(bounds) or "none"
            problems.append((loc, f"give exactly one of max, min or equals (given: {given}); "
                                  f"bound a metric from both sides with a second name such as max({metric.name})"))
        for key, bound in bounds.items():
            if bound < 0:
                problems.append((loc + (key,), f"{_number(bound)} is negative; {ref.name} never is"))
            elif key == "equals" and _whole(ref) and not float(bound).is_integer():
                problems.append((loc + (key,), f"{ref.name} is a whole number; equals {_number(bound)} can never hold"))
        if tolerance.phase not in metric.phases:
            problems.append(
                (loc + ("phase",), f"{metric.name} has no value in phase {tolerance.phase} "
                 f"(possible: {', '.join(metric.phases)})")
            )
        if probes is None:  # invalid: its own problems are reported
            continue
        if probes.settings(metric.probe) is None:
            problems.append((loc, f"{metric.name} comes from the {metric.probe} probe, which is not enabled (add probes.{metric.probe})"))
        if tolerance.phase == "before" and probes.warmup == 0:
            problems.append((loc + ("phase",), "phase before needs probes.warmup greater than 0"))
    return problems


# --------------------------------------------------------------------------- helpers
def _whole(ref: MetricRef) -> bool:
    """Whether every value of ``ref`` is a whole number (counts, and sums/extremes of counts)."""
    if ref.aggregate == "count":
        return True
    return ref.metric.unit == "count" and ref.aggregate in (None, "max", "min", "sum")


def _number(value: float | None) -> str:
    if value is None:
        return "?"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


__all__ = [
    "FAULT_SPECS", "FAULT_TYPES", "PHASES", "PROBE_NAMES", "Experiment", "Fault", "FaultSpec", "Hypothesis", "Loc",
    "Probes", "RouterSelector", "Safeguards", "Target", "Tolerance", "ToleranceCheck", "combination_problems",
    "fault_spec_model", "format_loc",
]
