"""The steady-state hypothesis: tolerances checked against metrics computed from the journal.

An experiment writes its tolerances as ``{name: {max|min|equals: number, phase?: ...}}``. A name
is either a metric of the catalog, checked on every targeted router (each must satisfy it; the
result lists those that did not), or ``<stat>(metric)`` with stat one of p50, p95, p99, max,
min, mean, sum, count, checked once on the distribution over the targeted routers.

The runner calls ``check_hypothesis(events_so_far, tolerances, phase="before")`` and injects
nothing if it fails; the summary re-checks every tolerance over the whole journal. A missing
value fails its tolerance with "no data": no data is never evidence that the system held.

One exception, told apart in the journal by the probe itself: a probe that could not run on this
target (a router without a floating IP, no TCP port declared behind it, outbound sessions off the
lab: ``RouterMetrics.skipped``) makes its tolerance *skipped*, with the probe's reason, neither
held nor failed. A router-scope tolerance is checked on the routers where the probe ran and is
skipped only when it ran on none; the skipped routers are listed. Skipped is not held: reports
show it apart, junit marks it ``<skipped>``, and a run whose every tolerance is skipped says so.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import singledispatch
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from chaos.analysis.metrics import CATALOG, RouterMetrics, RunRecord, Value, aggregates, run_metrics
from chaos.experiment.metrics_catalog import AGGREGATES, PHASES, Phase
from chaos.errors import InvalidInput

Scope = Literal["run", "router"]
_AGG_RE = re.compile(r"^(?P<stat>[a-z0-9]+)\((?P<metric>[a-z_]+)\)$")


# --- comparators: one type each, compared by dispatch on the type ---------------------------


@dataclass(frozen=True)
class Max:
    threshold: float
    keyword = "max"


@dataclass(frozen=True)
class Min:
    threshold: float
    keyword = "min"


@dataclass(frozen=True)
class Equals:
    threshold: float
    keyword = "equals"


Comparator = Max | Min | Equals
_COMPARATORS: dict[str, type[Max] | type[Min] | type[Equals]] = {c.keyword: c for c in (Max, Min, Equals)}


@singledispatch
def satisfies(comparator: object, value: float) -> bool:
    raise TypeError(f"not a comparator: {comparator!r}")


@satisfies.register
def _(comparator: Max, value: float) -> bool:
    return value <= comparator.threshold


@satisfies.register
def _(comparator: Min, value: float) -> bool:
    return value >= comparator.threshold


@satisfies.register
def _(comparator: Equals, value: float) -> bool:
    return math.isclose(value, comparator.threshold, rel_tol=1e-9, abs_tol=1e-12)


@singledispatch
def badness(comparator: object, value: float) -> float:
    """How far a value is on the failing side, to name the worst router (higher = worse)."""
    raise TypeError(f"not a comparator: {comparator!r}")


@badness.register
def _(comparator: Max, value: float) -> float:
    return value


@badness.register
def _(comparator: Min, value: float) -> float:
    return -value


@badness.register
def _(comparator: Equals, value: float) -> float:
    return abs(value - comparator.threshold)


# --- tolerances ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerance:
    """One parsed tolerance of the hypothesis."""

    name: str
    metric: str
    aggregate: str | None  # the statistic for run-scope tolerances
    comparator: Comparator
    phase: Phase = "after"

    @property
    def scope(self) -> Scope:
        return "run" if self.aggregate else "router"


def parse_tolerance(name: str, spec: Any) -> list[Tolerance]:
    """Check one metric's tolerance(s) as written in an experiment; raise InvalidInput saying
    what is wrong. A list gives several (one per phase, say); ``{min: a, max: b}`` gives two."""
    if isinstance(spec, list | tuple):
        if not spec:
            raise InvalidInput(f"tolerance {name!r}: an empty list bounds nothing")
        return [t for one in spec for t in parse_tolerance(name, one)]
    if hasattr(spec, "model_dump"):
        spec = spec.model_dump(exclude_none=True)
    if not isinstance(spec, Mapping):
        raise InvalidInput(f"tolerance {name!r}: expected a mapping like {{max: 2.0}}, got {spec!r}")
    match = _AGG_RE.match(name)
    metric, aggregate = (match["metric"], match["stat"]) if match else (name, None)
    if aggregate is not None and aggregate not in AGGREGATES:
        raise InvalidInput(f"tolerance {name!r}: unknown statistic {aggregate!r}", hint=f"use one of {', '.join(AGGREGATES)}")
    if metric not in CATALOG:
        raise InvalidInput(f"tolerance {name!r}: unknown metric {metric!r}", hint=f"known metrics: {', '.join(CATALOG)}")
    unknown = set(spec) - set(_COMPARATORS) - {"phase"}
    if unknown:
        raise InvalidInput(f"tolerance {name!r}: unknown keys {sorted(unknown)}", hint="use max, min or equals, and phase")
    given = [k for k in _COMPARATORS if k in spec]
    if not given or ("equals" in given and len(given) > 1):
        raise InvalidInput(f"tolerance {name!r}: give max, min (or both), or equals alone (got {given or 'none'})")
    for key in given:
        threshold = spec[key]
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not math.isfinite(threshold):
            raise InvalidInput(f"tolerance {name!r}: {key} must be a finite number, got {threshold!r}")
    if "min" in given and "max" in given and spec["min"] > spec["max"]:
        raise InvalidInput(f"tolerance {name!r}: min {spec['min']} is greater than max {spec['max']}: it can never hold")
    phase = spec.get("phase", "after")
    if phase not in PHASES:
        raise InvalidInput(f"tolerance {name!r}: phase {phase!r} is not one of {', '.join(PHASES)}")
    return [
        Tolerance(name=name, metric=metric, aggregate=aggregate, comparator=_COMPARATORS[key](spec[key]), phase=phase)
        for key in given
    ]


def parse_tolerances(tolerances: Mapping[str, Any]) -> list[Tolerance]:
    return [t for name, spec in tolerances.items() for t in parse_tolerance(name, spec)]


# --- results -------------------------------------------------------------------------------


class ToleranceResult(BaseModel):
    """The outcome of one tolerance. ``value`` is the aggregate (run scope) or the worst router's
    value (router scope); ``values`` has every targeted router's value."""

    model_config = ConfigDict(extra="forbid")

    name: str
    metric: str
    aggregate: str | None
    comparator: Literal["max", "min", "equals"]
    threshold: float
    scope: Scope
    phase: Phase
    value: Value
    values: dict[str, Value]
    ok: bool  # the tolerance did not fail (held, or skipped)
    failing_routers: list[str]
    reason: str | None = None
    skipped: bool = False  # the probe could not run on this target for any targeted router
    skipped_routers: dict[str, str] = {}  # router -> why the probe could not run for it (left out of the check)
    # Failing routers (run scope: targeted routers) whose figures were measured while the tool or
    # the lab was saturated (RouterMetrics.saturated): the failure may be the measurement's.
    saturated_routers: list[str] = []

    def describe(self) -> str:
        """One line for people: ``outage_s <= 2 [after]: 3.1 (failing: <router>, ...)``."""
        symbol = {"max": "<=", "min": ">=", "equals": "=="}[self.comparator]
        text = f"{self.name} {symbol} {self.threshold:g} [{self.phase}]: "
        if self.skipped:
            return text + f"skipped ({self.reason})"
        text += "no value" if self.value is None else f"{self.value:g}"
        if self.failing_routers:
            text += f" (failing: {', '.join(self.failing_routers)})"
        if self.reason:
            text += f" ({self.reason})"
        if self.skipped_routers:
            text += f" (skipped on {len(self.skipped_routers)} router(s): {_reasons(self.skipped_routers)})"
        return text

    def journal_fields(self) -> dict[str, Any]:
        """Fields of the ``hypothesis.check`` journal event for this result."""
        fields = {"phase": self.phase, "tolerance": self.name, "scope": self.scope, "value": self.value, "ok": self.ok}
        if self.skipped:
            fields.update(skipped=True, reason=self.reason)
        return fields


def _reasons(by_router: Mapping[str, str]) -> str:
    """One reason when every router has the same, else each router's."""
    distinct = set(by_router.values())
    if len(distinct) == 1:
        return next(iter(distinct))
    return "; ".join(f"{r}: {why}" for r, why in sorted(by_router.items()))


class HypothesisResult(BaseModel):
    ok: bool
    results: list[ToleranceResult]

    @property
    def failed(self) -> list[ToleranceResult]:
        return [r for r in self.results if not r.ok]


def _result(tol: Tolerance, **fields: Any) -> ToleranceResult:
    return ToleranceResult(
        name=tol.name,
        metric=tol.metric,
        aggregate=tol.aggregate,
        comparator=tol.comparator.keyword,  # type: ignore[arg-type]
        threshold=tol.comparator.threshold,
        scope=tol.scope,
        phase=tol.phase,
        **fields,
    )


def evaluate(tol: Tolerance, routers: Mapping[str, RouterMetrics], phase_occurred: bool = True) -> ToleranceResult:
    """Check one tolerance against the routers' metrics of its phase."""
    if not phase_occurred:
        return _result(tol, value=None, values={}, ok=False, failing_routers=[], reason=f"no data: no {tol.phase} phase in the run")
    targeted = {r: m for r, m in routers.items() if m.targeted}
    if not targeted:
        return _result(tol, value=None, values={}, ok=False, failing_routers=[], reason="no data: no targeted router in the journal")
    skipped = {r: m.skipped[tol.metric] for r, m in sorted(targeted.items()) if tol.metric in m.skipped}
    if len(skipped) == len(targeted):  # the probe could run for none of them: nothing to judge
        return _result(tol, value=None, values={}, ok=True, failing_routers=[], skipped=True,
                       skipped_routers=skipped, reason=_reasons(skipped))
    if tol.aggregate is not None:
        dist = aggregates(routers)[tol.metric]
        value = getattr(dist, tol.aggregate)
        if value is None or (dist.count == 0 and tol.aggregate != "count"):
            return _result(tol, value=None, values={}, ok=False, failing_routers=[],
                           reason=f"no data: no router has a value for {tol.metric}", skipped_routers=skipped)
        ok = satisfies(tol.comparator, value)
        return _result(tol, value=value, values={}, ok=ok, failing_routers=[], skipped_routers=skipped)
    values = {r: m.metrics[tol.metric] for r, m in sorted(targeted.items())}
    failing = [r for r, v in values.items() if r not in skipped and (v is None or not satisfies(tol.comparator, v))]
    present = [v for v in values.values() if v is not None]
    worst = max(present, key=lambda v: badness(tol.comparator, v)) if present else None
    reasons = sorted({f"{r}: {targeted[r].missing.get(tol.metric, 'no data')}"
                      for r, v in values.items() if v is None and r not in skipped})
    reason = ("no data: " + "; ".join(reasons)) if reasons else None
    return _result(tol, value=worst, values=values, ok=not failing, failing_routers=failing, reason=reason,
                   skipped_routers=skipped)


def evaluate_all(record: RunRecord, tolerances: Sequence[Tolerance]) -> list[ToleranceResult]:
    """Every tolerance over its own phase of the run (metrics computed once per phase)."""
    by_phase: dict[Phase, dict[str, RouterMetrics]] = {}
    results = []
    for tol in tolerances:
        if tol.phase not in by_phase:
            by_phase[tol.phase] = run_metrics(record, tol.phase)
        results.append(evaluate(tol, by_phase[tol.phase], phase_occurred=record.window(tol.phase) is not None))
    return results


def check_hypothesis(
    events: Iterable[Mapping[str, Any]], tolerances: Mapping[str, Any], phase: Phase | None = None
) -> HypothesisResult:
    """Check the tolerances of one phase (all of them when phase is None) against the events so far."""
    parsed = [t for t in parse_tolerances(tolerances) if phase is None or t.phase == phase]
    results = evaluate_all(RunRecord(events), parsed)
    return HypothesisResult(ok=all(r.ok for r in results), results=results)
