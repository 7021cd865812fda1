"""Metrics of a run, computed from the journal's raw events and nothing else.

Every number a report shows comes from here, so that a report can always be recomputed from a
journal (see ``chaos.journal`` for the event kinds). The functions are pure: the same
events give the same metrics. Definitions, units and resolutions are documented in
docs/metrics.md; the names in ``CATALOG`` are the names an experiment's tolerances use.

A metric that cannot be computed is ``None``, never 0, and the reason is kept next to it
(``RouterMetrics.missing``): "no data" must never pass for "no problem". One kind of ``None`` is
set apart (``RouterMetrics.skipped``): the probe said, in the journal, that it could not run on
this target for this router (no floating IP, no declared TCP port, no socket inside a VM off the
lab) and it produced nothing for it. The hypothesis reports those tolerances as skipped with the
probe's reason; a probe that ran and measured nothing is still a failure.

Time windows: a hypothesis tolerance is checked over a phase of the run (``before`` the first
injection, ``during`` the faults, ``after`` = the whole run). Samples are filtered by the window;
replica state is carried into the window from observations made before it, so a window that
starts mid-failover still knows who held the addresses.
"""

from __future__ import annotations

import bisect
import functools
import json
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from chaos.experiment.metric_refs import METRICS
from chaos.experiment.registry import registry
from chaos.experiment.metrics_catalog import BUILTIN_METRICS, Metric, Phase
from chaos.probes.health import worst as worst_saturation

Value = float | int | None


# One catalog for the validator, the analysis and the reports: names, units, which end is worse.
CATALOG: Mapping[str, Metric] = METRICS

_DROP_EVENTS = frozenset({"reset", "timeout"})
_END_EVENTS = frozenset({"reset", "timeout", "closed"})
_DIRECTIONS = ("inbound", "outbound")


# --- models of what is computed -------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LossRun(_Model):
    """Consecutive lost echo requests: [send of the first lost, send of the next answered)."""

    start: float
    end: float
    lost: int
    answered_again: bool  # False: the run lasted to the last send (a lower bound)


class FipMetrics(_Model):
    address: str
    outage_s: float | None
    lost: int | None
    sent: int | None
    outages: int | None
    interval_s: float | None  # median gap between sends: the resolution of outage_s
    loss_runs: list[LossRun]


class HolderChange(_Model):
    """From ``t`` on, these replicas (node names) held the router's addresses."""

    t: float
    holders: list[str]


class TcpEvent(_Model):
    t: float
    session: str | None  # None: a path the probe skipped (the detail says why)
    direction: str | None
    event: str
    detail: Any = None


class FaultRecord(_Model):
    action_id: str | None
    fault: str | None
    node: str | None
    injected: float | None
    undone: float | None
    undo_ok: bool | None
    restarted_by: str | None = None  # keepalived faults: "agent" (the L3 agent respawned it) or "tool"


class ResetSeen(_Model):
    """A TCP reset that reached the vantage point from one of the router's addresses."""

    t: float
    src: str
    sport: int | None
    dst: str
    dport: int | None
    mac: str | None
    port: str | None  # the lab's fabric port the sender's MAC was learned on: which replica


class RouterMetrics(_Model):
    router_id: str
    targeted: bool
    metrics: dict[str, Value]  # every CATALOG name, None where missing
    missing: dict[str, str]  # metric -> why it is None
    skipped: dict[str, str] = {}  # metric -> why its probe could not run on this target (None, and not missing)
    floating_ips: list[FipMetrics]
    holders: list[HolderChange]  # the holder set at the window's start, then every change in it
    holders_before: list[str] | None
    holders_after: list[str] | None
    new_primary: list[str] | None  # replicas that took the addresses at failover
    injected: float | None  # the injection that took the router's primary (else the first affecting it)
    takeover: float | None  # observation that showed the new primary
    tcp_events: list[TcpEvent]
    faults: list[FaultRecord]
    resets_seen: list[ResetSeen] = []  # TCP resets from its addresses at the vantage point, with their sender
    # What was saturated (chaos.probes.health: reason -> worst figure) while this router's faults
    # acted and it recovered: its figures may be the measurement's, not the cloud's.
    saturated: dict[str, float] = {}


class Distribution(_Model):
    """A metric over the targeted routers; None values are left out (count says how many stayed)."""

    p50: Value = None
    p95: Value = None
    p99: Value = None
    max: Value = None
    min: Value = None
    mean: float | None = None
    sum: Value = None
    count: int = 0


# --- reading the journal --------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """A span of the run; ``closed_end`` False means events at ``end`` exactly are outside."""

    phase: Phase
    start: float
    end: float
    closed_end: bool = True

    def contains(self, t: float) -> bool:
        return self.start <= t and (t <= self.end if self.closed_end else t < self.end)


@dataclass(frozen=True)
class _Observation:
    t: float
    node: str
    holds: bool


@dataclass
class _RouterEvents:
    icmp: dict[str, list[tuple[float, float | None]]] = field(default_factory=lambda: defaultdict(list))
    observations: list[_Observation] = field(default_factory=list)
    injections: list[dict[str, Any]] = field(default_factory=list)
    tcp: list[dict[str, Any]] = field(default_factory=list)
    newconn: list[dict[str, Any]] = field(default_factory=list)
    garp: list[dict[str, Any]] = field(default_factory=list)
    conntrack: list[dict[str, Any]] = field(default_factory=list)
    api: list[dict[str, Any]] = field(default_factory=list)
    resets: list[dict[str, Any]] = field(default_factory=list)
    plugin: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))  # plugin probes' kinds



_ROUTER_KINDS = {
    "probe.tcp": "tcp",
    "probe.newconn": "newconn",
    "arp.garp": "garp",
    "conntrack.snapshot": "conntrack",
    "api.ha_state": "api",
    "tcp.reset_seen": "resets",
}


class RunRecord:
    """The journal's events indexed by router, in time order; built once, read by every metric."""

    def __init__(self, events: Iterable[Mapping[str, Any]]) -> None:
        ordered = sorted((dict(e) for e in events if _is_event(e)), key=lambda e: float(e["t"]))
        self.events = ordered
        self.started: dict[str, Any] | None = None
        self.finished: dict[str, Any] | None = None
        self.plan: list[dict[str, Any]] = []
        self.plan_routers: list[str] | None = None
        self.injections: list[dict[str, Any]] = []
        self.undos: list[dict[str, Any]] = []
        self.recoveries: dict[str, float] = {}  # action id -> when the runner saw it recovered (or gave up)
        self.health: list[dict[str, Any]] = []  # run.health samples
        self.routers: dict[str, _RouterEvents] = defaultdict(_RouterEvents)
        self.garp_watched = False
        # (probe, router id or None for all, direction or None for both) -> why the probe could not run
        self.skips: dict[tuple[str, str | None, str | None], str] = {}
        for e in ordered:
            self._add(e)
        self._assign_node_faults()
        # A probe batch is written after its requests were sent: its samples may predate its ``t``.
        earliest = min(
            [float(ordered[0]["t"])] + [s for r in self.routers.values() for ss in r.icmp.values() for s, _ in ss]
        ) if ordered else 0.0
        self.start = float(self.started["t"]) if self.started else earliest
        last = float(ordered[-1]["t"]) if ordered else self.start
        self.end = float(self.finished["t"]) if self.finished else last

    def _add(self, e: dict[str, Any]) -> None:
        kind, t = e["kind"], float(e["t"])
        router_id = e.get("router_id")
        if kind == "run.started" and self.started is None:
            self.started = e
        elif kind == "run.finished":
            self.finished = e
        elif kind == "run.plan":
            self.plan.extend(a for a in e.get("actions") or [] if isinstance(a, Mapping))
            if isinstance(e.get("routers"), list):
                self.plan_routers = (self.plan_routers or []) + [str(r) for r in e["routers"]]
        elif kind == "fault.injected":
            self.injections.append(e)
            if router_id:
                self.routers[router_id].injections.append(e)
        elif kind == "fault.undone":
            self.undos.append(e)
        elif kind == "fault.recovered" and isinstance(e.get("action_id"), str):
            self.recoveries[e["action_id"]] = t
        elif kind == "run.health":
            self.health.append(e)
        elif kind == "probe.icmp" and router_id:
            samples = self.routers[router_id].icmp[str(e.get("address"))]
            samples.extend((float(s), None if r is None else float(r)) for s, r in zip(e.get("sent") or [], e.get("rtt") or []))
        elif kind == "observe.replica" and router_id and e.get("node"):
            self.routers[router_id].observations.append(_Observation(t, str(e["node"]), bool(e.get("holds"))))
        elif kind == "probe.skipped":
            self._skip(str(e.get("probe")), router_id, e.get("direction"), e.get("reason"))
        elif kind in _ROUTER_KINDS and router_id:
            getattr(self.routers[router_id], _ROUTER_KINDS[kind]).append(e)
        elif router_id and kind in _plugin_event_kinds():
            self.routers[router_id].plugin[kind].append(e)
        if kind == "arp.garp":
            self.garp_watched = True
        elif kind == "probe.tcp" and e.get("event") == "skipped":
            self._skip("tcp", router_id, e.get("direction"), e.get("detail"))
        elif kind == "probe.newconn" and e.get("ok") is None and e.get("error") == "skipped":
            self._skip("new_connections", router_id, e.get("direction"), e.get("detail"))

    def _skip(self, probe: str, router_id: Any, direction: Any, reason: Any) -> None:
        key = (probe, _opt_str(router_id), _opt_str(direction))
        self.skips.setdefault(key, str(reason or "the probe could not run on this target"))

    def skip_reason(self, probe: str, router_id: str, direction: str | None) -> str | None:
        """Why ``probe`` could not run for this router (and direction; None: in every direction it
        was asked for), or None when it did not say so."""
        found = [
            reason for (p, r, d), reason in self.skips.items()
            if p == probe and r in (router_id, None) and (direction is None or d in (direction, None))
        ]
        return "; ".join(dict.fromkeys(found)) or None

    def _assign_node_faults(self) -> None:
        """A fault without a router id (a node reboot) affects the routers its plan action lists
        as affected or, without that, every router with a replica observed on the node."""
        affected = {a.get("action_id"): a.get("affected_routers") for a in self.plan}
        for e in self.injections:
            if e.get("router_id") or not e.get("node"):
                continue
            listed = affected.get(e.get("action_id"))
            routers = [str(r) for r in listed] if isinstance(listed, list) else [
                r for r, ev in self.routers.items() if any(o.node == e["node"] for o in ev.observations)
            ]
            for r in routers:
                self.routers[r].injections.append(e)
                self.routers[r].injections.sort(key=lambda x: float(x["t"]))

    @functools.cached_property
    def targeted(self) -> frozenset[str]:
        return frozenset(self.targeted_routers())

    def targeted_routers(self) -> list[str]:
        """The plan's routers; else those its actions (or, without a plan, the injections) name;
        all routers seen if neither."""
        if self.plan_routers is not None:
            return sorted(set(self.plan_routers))
        actions = self.plan or self.injections
        targeted: set[str] = set()
        for a in actions:
            if a.get("router_id"):
                targeted.add(str(a["router_id"]))
            elif isinstance(a.get("affected_routers"), list):
                targeted.update(str(r) for r in a["affected_routers"])
            elif a.get("node"):
                targeted.update(r for r, ev in self.routers.items() if any(o.node == a["node"] for o in ev.observations))
        return sorted(targeted) if actions else sorted(self.routers)

    def first_injection(self) -> float | None:
        return float(self.injections[0]["t"]) if self.injections else None

    def window(self, phase: Phase) -> Window | None:
        """``before``: up to the first injection (everything if none yet); ``during``: first
        injection to last undo (or the end); ``after``: the whole run. None: the phase did not occur."""
        first = self.first_injection()
        if phase == "before":
            return Window("before", self.start, first, closed_end=False) if first is not None else Window(
                "before", self.start, self.end
            )
        if phase == "during":
            if first is None:
                return None
            last_undo = max((float(u["t"]) for u in self.undos), default=self.end)
            return Window("during", first, max(last_undo, first))
        return Window("after", self.start, self.end)

    def saturated_while(self, start: float, end: float) -> dict[str, float]:
        """What was saturated (reason -> worst figure) in the run.health samples overlapping
        [start, end]: each sample covers the ``window`` seconds before its ``t``."""
        return worst_saturation([
            h for h in self.health
            if float(h["t"]) >= start and float(h["t"]) - float(h.get("window") or 0.0) <= end
        ])

    def measured_span(self, router_id: str, w: Window) -> tuple[float, float]:
        """When this router's figures were measured: from the first fault that acted on it to
        when the last of them was seen recovered (or undone; the end of the window if neither),
        inside ``w``; the whole window for a router no fault acted on."""
        faults = [f for f in self.faults_of(router_id) if f.injected is not None and w.contains(f.injected)]
        if not faults:
            return w.start, w.end
        ends = [self.recoveries.get(f.action_id or "", f.undone if f.undone is not None else w.end) for f in faults]
        return min(f.injected for f in faults if f.injected is not None), min(w.end, max(ends))

    def faults_of(self, router_id: str) -> list[FaultRecord]:
        undone = {u.get("action_id"): u for u in self.undos}
        records = []
        for inj in self.routers[router_id].injections if router_id in self.routers else []:
            u = undone.get(inj.get("action_id"))
            records.append(
                FaultRecord(
                    action_id=_opt_str(inj.get("action_id")),
                    fault=_opt_str(inj.get("fault")),
                    node=_opt_str(inj.get("node")),
                    injected=float(inj["t"]),
                    undone=float(u["t"]) if u else None,
                    undo_ok=bool(u.get("ok")) if u else None,
                    restarted_by=_opt_str(u.get("restarted_by")) if u else None,
                )
            )
        return records


def _is_event(e: Any) -> bool:
    return isinstance(e, Mapping) and isinstance(e.get("kind"), str) and isinstance(e.get("t"), int | float)


def _opt_str(v: Any) -> str | None:
    return None if v is None else str(v)


# --- replica state over time ----------------------------------------------------------------


INITIAL_SNAPSHOT_S = 2.0
"""The observer's first reports of a router's replicas arrive one node after the other, a few
milliseconds apart: within this span of the first one they are one snapshot, not changes."""


class HolderTimeline:
    """Which replicas held the addresses, after each observation (per-replica state carried forward).

    The timeline starts once the first snapshot is complete (every replica that reported within
    ``INITIAL_SNAPSHOT_S`` of the first report has reported), so assembling it is not counted as
    a change of holders ({} -> {a} would be one transition and a moment without a primary).
    Observations with the same time (one poll journals all its replicas at once) are applied
    together, for the same reason.
    """

    def __init__(self, observations: Sequence[_Observation]) -> None:
        state: dict[str, bool] = {}
        self.times: list[float] = []
        self.sets: list[frozenset[str]] = []
        firsts: dict[str, float] = {}
        for o in observations:
            firsts.setdefault(o.node, o.t)
        t0 = min(firsts.values(), default=0.0)
        complete = max((t for t in firsts.values() if t - t0 <= INITIAL_SNAPSHOT_S), default=t0)
        for k, o in enumerate(observations):
            state[o.node] = o.holds
            if o.t < complete:
                continue
            if k + 1 < len(observations) and observations[k + 1].t == o.t:
                continue  # one poll's replicas share its time: one snapshot, not a change per replica
            self.times.append(o.t)
            self.sets.append(frozenset(n for n, h in state.items() if h))

    def at(self, t: float, *, inclusive: bool = True) -> frozenset[str] | None:
        """Holders after every observation up to ``t``; None before the first observation."""
        i = bisect.bisect_right(self.times, t) if inclusive else bisect.bisect_left(self.times, t)
        return self.sets[i - 1] if i else None

    def at_end(self, w: Window) -> frozenset[str] | None:
        return self.at(w.end, inclusive=w.closed_end)

    def changes(self, w: Window) -> list[HolderChange]:
        out: list[HolderChange] = []
        initial = self.at(w.start, inclusive=False)
        if initial is not None:
            out.append(HolderChange(t=w.start, holders=sorted(initial)))
        previous = initial
        for t, s in zip(self.times, self.sets):
            if w.contains(t) and s != previous:
                out.append(HolderChange(t=t, holders=sorted(s)))
            if t < w.start or w.contains(t):
                previous = s
        return out

    def transitions(self, w: Window) -> int:
        return sum(1 for k in range(1, len(self.sets)) if w.contains(self.times[k]) and self.sets[k] != self.sets[k - 1])

    def time_where(self, w: Window, holders_count_ok: Callable[[int], bool]) -> float:
        """Seconds of the window (after the first observation) whose holder count satisfies the test."""
        total = 0.0
        for k, (t, s) in enumerate(zip(self.times, self.sets)):
            seg_end = self.times[k + 1] if k + 1 < len(self.times) else w.end
            lo, hi = max(t, w.start), min(seg_end, w.end)
            if hi > lo and holders_count_ok(len(s)):
                total += hi - lo
        return total


def _seconds(value: float) -> float:
    """Durations to the microsecond: the journal's clock (time.time()) resolves no finer, and a
    difference of two unix times carries float noise (~1e-7 s) that must not decide a tolerance."""
    return round(float(value), 6)


# --- per floating IP ------------------------------------------------------------------------


def fip_metrics(address: str, samples: Sequence[tuple[float, float | None]]) -> FipMetrics:
    """Loss runs of one floating IP's echo requests, in send order; ``rtt`` None = lost."""
    samples = sorted(samples, key=lambda s: s[0])
    if not samples:
        return FipMetrics(address=address, outage_s=None, lost=None, sent=None, outages=None, interval_s=None, loss_runs=[])
    runs: list[LossRun] = []
    i, n = 0, len(samples)
    while i < n:
        if samples[i][1] is not None:
            i += 1
            continue
        j = i
        while j < n and samples[j][1] is None:
            j += 1
        answered = j < n
        end = samples[j][0] if answered else samples[-1][0]
        runs.append(LossRun(start=samples[i][0], end=end, lost=j - i, answered_again=answered))
        i = j
    gaps = sorted(b[0] - a[0] for a, b in zip(samples, samples[1:]))
    return FipMetrics(
        address=address,
        outage_s=_seconds(max((r.end - r.start for r in runs), default=0.0)),
        lost=sum(r.lost for r in runs),
        sent=n,
        outages=len(runs),
        interval_s=_seconds(gaps[len(gaps) // 2]) if gaps else None,
        loss_runs=runs,
    )


# --- per router -----------------------------------------------------------------------------


class _Result:
    """Collects a router's values and the reasons for the missing ones."""

    def __init__(self) -> None:
        self.values: dict[str, Value] = dict.fromkeys(CATALOG)
        self.missing: dict[str, str] = {}
        self.skipped: dict[str, str] = {}

    def set(self, name: str, value: Value, reason: str = "") -> None:
        self.values[name] = _seconds(value) if CATALOG[name].unit == "s" and value is not None else value
        if value is None:
            self.missing[name] = reason or "no data"

    def skip(self, name: str, reason: str) -> None:
        self.missing.pop(name, None)
        self.skipped[name] = reason


_DIRECTION_OF = {
    "tcp_dropped_inbound": "inbound", "tcp_dropped_outbound": "outbound",
    "new_conn_recovery_inbound_s": "inbound", "new_conn_recovery_outbound_s": "outbound",
}


def _silent(ev: _RouterEvents, probe: str, direction: str | None) -> bool:
    """Whether ``probe`` produced nothing for the router (in ``direction``) in the whole run."""
    def of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in events if direction is None or e.get("direction") == direction]

    if probe == "tcp":
        return not [e for e in of(ev.tcp) if e.get("session") is not None]
    if probe == "new_connections":
        return not [e for e in of(ev.newconn) if e.get("ok") is not None]
    if (kinds := _plugin_probes().get(probe)) is not None:
        return not any(ev.plugin.get(k) for k in kinds)
    return not {
        "icmp": ev.icmp, "primary": ev.observations, "arp": ev.garp, "conntrack": ev.conntrack, "api_lag": ev.api,
    }.get(probe, True)


def _skipped(res: _Result, ev: _RouterEvents, record: RunRecord, router_id: str) -> None:
    """Missing values whose probe said it could not run here and produced nothing: skipped."""
    for name, value in res.values.items():
        if value is not None:
            continue
        probe, direction = CATALOG[name].probe, _DIRECTION_OF.get(name)
        if not _silent(ev, probe, direction):
            continue
        reason = record.skip_reason(probe, router_id, direction)
        if reason is not None:
            res.skip(name, reason)


def router_metrics(record: RunRecord, router_id: str, window: Window | None = None) -> RouterMetrics:
    """Every catalog metric of one router over a window (the whole run by default)."""
    w = window or record.window("after")
    assert w is not None
    ev = record.routers[router_id] if router_id in record.routers else _RouterEvents()
    res = _Result()
    timeline = HolderTimeline(ev.observations)

    fips = _icmp(res, ev, w)
    injection = _disturbing_injection(ev.injections, timeline, w)
    before, after, takeover, new = _replicas(res, timeline, w, injection, bool(ev.observations))
    _tcp(res, ev, w)
    _newconn(res, ev, w, injection)
    _garp(res, ev, w, record.garp_watched, injection, takeover)
    _conntrack(res, ev, w, before, new)
    _api(res, ev, w, timeline, takeover, new)
    _plugin(res, ev, w)
    _skipped(res, ev, record, router_id)

    return RouterMetrics(
        router_id=router_id,
        targeted=router_id in record.targeted,
        saturated=record.saturated_while(*record.measured_span(router_id, w)),
        metrics=res.values,
        missing=res.missing,
        skipped=res.skipped,
        floating_ips=fips,
        holders=timeline.changes(w),
        holders_before=None if before is None else sorted(before),
        holders_after=None if after is None else sorted(after),
        new_primary=None if new is None else sorted(new),
        injected=injection,
        takeover=takeover,
        tcp_events=[
            TcpEvent(t=float(e["t"]), session=_opt_str(e.get("session")), direction=e.get("direction"),
                     event=str(e.get("event")), detail=e.get("detail"))
            for e in ev.tcp if w.contains(float(e["t"]))
        ],
        faults=[f for f in record.faults_of(router_id) if f.injected is not None and w.contains(f.injected)],
        resets_seen=[
            ResetSeen(t=float(e["t"]), src=str(e.get("src")), sport=e.get("sport"), dst=str(e.get("dst")),
                      dport=e.get("dport"), mac=_opt_str(e.get("mac")), port=_opt_str(e.get("port")))
            for e in ev.resets if w.contains(float(e["t"]))
        ],
    )


@functools.cache
def _plugin_probes() -> dict[str, tuple[str, ...]]:
    """Plugin probe name -> the journal kinds its metrics are computed from."""
    probes = {m.probe for name, m in CATALOG.items() if name not in BUILTIN_METRICS}
    return {name: tuple(kind.event_kinds) for name, kind in registry().probes.items() if name in probes}


@functools.cache
def _plugin_event_kinds() -> frozenset[str]:
    """The journal kinds the plugin probes' metrics read."""
    return frozenset(k for kinds in _plugin_probes().values() for k in kinds)


def _plugin(res: _Result, ev: _RouterEvents, w: Window) -> None:
    """Plugin probes' metrics: each computes its value from the router's events of its probe's
    kinds inside the window (``Metric.compute``)."""
    for name, metric in CATALOG.items():
        if metric.compute is None:
            continue
        kinds = _plugin_probes().get(metric.probe, ())
        events = sorted((e for k in kinds for e in ev.plugin.get(k, []) if w.contains(float(e["t"]))), key=lambda e: float(e["t"]))
        value = metric.compute(events, w.start, w.end) if events else None
        res.set(name, value, f"no {metric.probe} samples")


def _icmp(res: _Result, ev: _RouterEvents, w: Window) -> list[FipMetrics]:
    fips = [fip_metrics(a, [s for s in samples if w.contains(s[0])]) for a, samples in sorted(ev.icmp.items())]
    for name in ("outage_s", "lost", "sent", "outages"):
        values = [getattr(f, name) for f in fips if getattr(f, name) is not None]
        pick = min if CATALOG[name].worst == "min" else max
        res.set(name, pick(values) if values else None, "no icmp samples")
    return fips


def _replicas(
    res: _Result, tl: HolderTimeline, w: Window, injection: float | None, observed: bool
) -> tuple[frozenset[str] | None, frozenset[str] | None, float | None, frozenset[str] | None]:
    no_obs = "no replica observations"
    first_seen = tl.times[0] if tl.times else None
    if first_seen is None or first_seen > w.end or (not w.closed_end and first_seen >= w.end):
        for name in ("failover_s", "split_brain_s", "no_primary_s", "transitions", "primaries_before", "primaries_after"):
            res.set(name, None, no_obs if not observed else "no replica observation before the window's end")
        return None, None, None, None
    res.set("split_brain_s", tl.time_where(w, lambda n: n >= 2))
    res.set("no_primary_s", tl.time_where(w, lambda n: n == 0))
    res.set("transitions", tl.transitions(w))
    after = tl.at_end(w)
    res.set("primaries_after", None if after is None else len(after), no_obs)

    before = tl.at(injection, inclusive=False) if injection is not None else after
    res.set("primaries_before", None if before is None else len(before), "no replica observation before the fault")
    takeover: float | None = None
    new: frozenset[str] | None = None
    if injection is None:
        res.set("failover_s", None, "no fault injected")
    elif before is None:
        res.set("failover_s", None, "no replica observation before the fault")
    else:
        for t, s in zip(tl.times, tl.sets):
            if t >= injection and w.contains(t) and s - before:
                takeover, new = t, s - before
                break
        res.set("failover_s", None if takeover is None else takeover - injection, "no failover: no other replica took the addresses")
    return before, after, takeover, new


def _tcp(res: _Result, ev: _RouterEvents, w: Window) -> None:
    sessions: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in ev.tcp:
        if e.get("session") is not None and e.get("event") != "skipped":
            sessions[str(e["session"])].append(e)
    # A session that never opened ("failed") was never at risk of being dropped.
    sessions = {sid: events for sid, events in sessions.items() if any(e.get("event") == "opened" for e in events)}
    counted = 0
    dropped = dict.fromkeys(_DIRECTIONS, 0)
    dropped_other = 0
    max_stall = 0.0
    for events in sessions.values():
        begin = float(events[0]["t"])
        end_event = next((e for e in events if e.get("event") in _END_EVENTS), None)
        end = float(end_event["t"]) if end_event else math.inf
        if begin > w.end or end < w.start:
            continue
        counted += 1
        if end_event is not None and end_event.get("event") in _DROP_EVENTS and w.contains(end):
            direction = next((e.get("direction") for e in events if e.get("direction")), None)
            if direction in dropped:
                dropped[direction] += 1
            else:
                dropped_other += 1
        stalled_at: float | None = None
        for e in events:
            t = float(e["t"])
            if e.get("event") == "stall" and stalled_at is None:
                # ``since``: when the oldest unanswered line was sent, where the stall really began
                stalled_at = float(e["since"]) if isinstance(e.get("since"), int | float) else t
            elif e.get("event") in {"resumed", *_END_EVENTS} and stalled_at is not None:
                max_stall = max(max_stall, _clipped(stalled_at, t, w))
                stalled_at = None
        if stalled_at is not None:
            max_stall = max(max_stall, _clipped(stalled_at, w.end, w))
    reason = "no tcp samples" if not ev.tcp else "no TCP session could be opened"
    has = bool(sessions)
    res.set("tcp_sessions", counted if has else None, reason)
    res.set("tcp_dropped", sum(dropped.values()) + dropped_other if has else None, reason)
    for d in _DIRECTIONS:
        # 0 dropped of no session opened in that direction would pass for "none dropped"
        opened = any(e.get("direction") == d for events in sessions.values() for e in events)
        tried = any(e.get("direction") == d and e.get("session") is not None for e in ev.tcp)
        res.set(f"tcp_dropped_{d}", dropped[d] if opened else None,
                f"no {d} TCP session could be opened" if tried else f"no {d} TCP session was probed")
    res.set("tcp_max_stall_s", max_stall if has else None, reason)


def _disturbing_injection(injections: Sequence[Mapping[str, Any]], timeline: HolderTimeline, w: Window) -> float | None:
    """When the router's trouble started: the first injection in the window on a node that held
    its addresses at the time, else the first injection in the window.

    A router can be hit by several actions one after the other (a node fault on the node of its
    backup, then on the node of its primary): failover and recovery count from the one that
    took its primary away, not from an earlier one that only took a backup."""
    inside = [i for i in injections if w.contains(float(i["t"]))]
    for i in inside:
        holders = timeline.at(float(i["t"]), inclusive=False)
        if holders and i.get("node") in holders:
            return float(i["t"])
    return float(inside[0]["t"]) if inside else None


def _clipped(lo: float, hi: float, w: Window) -> float:
    return max(0.0, min(hi, w.end) - max(lo, w.start))


def _newconn(res: _Result, ev: _RouterEvents, w: Window, injection: float | None) -> None:
    for d in _DIRECTIONS:
        name = f"new_conn_recovery_{d}_s"
        # ok None: a skipped path, not an attempt. Ordered by start: an attempt that timed out
        # ends after later ones that already succeeded.
        attempts = sorted(
            (e for e in ev.newconn if e.get("direction") == d and e.get("ok") is not None and w.contains(float(e["t"]))),
            key=_attempt_start,
        )
        if not attempts:
            res.set(name, None, f"no {d} new-connection samples")
            continue
        if injection is None:
            res.set(name, None, "no fault injected")
            continue
        after = [e for e in attempts if float(e["t"]) >= injection]
        failed = [_attempt_start(e) for e in after if not e.get("ok")]
        if not failed:
            res.set(name, 0.0)
            continue
        last_failure = failed[-1]
        success = next((float(e["t"]) for e in after if e.get("ok") and _attempt_start(e) > last_failure), None)
        res.set(name, None if success is None else success - injection, f"new {d} connections still failing at the end")


def _attempt_start(e: Mapping[str, Any]) -> float:
    started = e.get("started")
    return float(started) if isinstance(started, int | float) else float(e["t"])


def _garp(
    res: _Result, ev: _RouterEvents, w: Window, watched: bool, injection: float | None, takeover: float | None
) -> None:
    garps = [float(e["t"]) for e in ev.garp if w.contains(float(e["t"]))]
    res.set("garp_count", len(garps) if watched else None, "no arp.garp events in the journal (GARP watcher not running)")
    if not watched:
        res.set("garp_delay_s", None, "no arp.garp events in the journal (GARP watcher not running)")
    elif takeover is None or injection is None:
        res.set("garp_delay_s", None, "no failover")
    else:
        # From the injection on, not from the takeover: a GARP sent before the observation saw the
        # addresses gives a negative delay, which is exactly the "GARP before ports" problem.
        first = next((t for t in garps if t >= injection), None)
        res.set("garp_delay_s", None if first is None else first - takeover, "no gratuitous ARP after the fault")


_FLOW_KEY_RE = re.compile(r"\b(src|dst|sport|dport)=(\S+)")


def flow_key(flow: Any) -> str:
    """Identity of a conntrack flow, the same on every node: protocol and original tuple.

    Counters, timeouts and states differ between replicas, so they are not part of it. Accepts
    the dicts a probe may write (proto/src/dst/sport/dport keys) or raw ``conntrack -L`` lines.
    """
    if isinstance(flow, Mapping):
        keys = ("proto", "src", "dst", "sport", "dport")
        if any(k in flow for k in keys):
            return "|".join(str(flow.get(k, "")) for k in keys)
        return json.dumps(flow, sort_keys=True, default=str)
    text = str(flow)
    proto = text.split()[0] if text.split() else ""
    seen: dict[str, str] = {}
    for k, v in _FLOW_KEY_RE.findall(text):
        seen.setdefault(k, v)  # the first tuple is the original direction
    return "|".join([proto] + [seen.get(k, "") for k in ("src", "dst", "sport", "dport")]) if seen else text


def _conntrack(
    res: _Result, ev: _RouterEvents, w: Window, before: frozenset[str] | None, new: frozenset[str] | None
) -> None:
    """Entries on the primary before the fault; how many a backup held (its kernel table or,
    with Neutron's conntrackd, its external cache); how many the new primary's kernel table
    lacks after the failover. A listing that failed makes the figure unknown with its reason."""
    kernel: dict[tuple[str, str], set[str] | None] = {}
    replicated_on: dict[str, set[str] | None] = {}
    errors: dict[tuple[str, str], str] = {}
    for e in ev.conntrack:
        if not w.contains(float(e["t"])):
            continue
        key = (str(e.get("node")), str(e.get("phase")))
        flows, cache = e.get("flows", []), e.get("cache")
        kernel[key] = None if flows is None else {flow_key(f) for f in flows}
        if flows is None:
            errors[key] = str(e.get("error") or "the conntrack listing failed")
        if key[1] == "before":
            held = set() if flows is None else {flow_key(f) for f in flows}
            held |= {flow_key(f) for f in cache or []}
            replicated_on[key[0]] = None if flows is None and cache is None else held
    names = ("conntrack_entries", "conntrack_replicated", "conntrack_lost")
    if not kernel:
        for name in names:
            res.set(name, None, "no conntrack snapshots")
        return
    if not before:
        for name in names:
            res.set(name, None, "primary before the fault unknown")
        return
    primary_keys = [(n, "before") for n in sorted(before) if (n, "before") in kernel]
    if not primary_keys:
        for name in names:
            res.set(name, None, "no conntrack snapshot on the primary before the fault")
        return
    failed = [errors[k] for k in primary_keys if kernel[k] is None]
    if failed:
        for name in names:
            res.set(name, None, f"unknown: on the primary before the fault, {failed[0]}")
        return
    flows: set[str] = set().union(*(kernel[k] or set() for k in primary_keys))
    res.set("conntrack_entries", len(flows))
    holders = sorted(new) if new else [n for n in replicated_on if n not in before]
    known = [replicated_on[n] for n in holders if replicated_on.get(n) is not None]
    if known:
        res.set("conntrack_replicated", max(len(flows & h) for h in known if h is not None))
    else:
        unknown = [errors.get((n, "before")) for n in holders if (n, "before") in errors]
        res.set("conntrack_replicated", None, f"unknown: {unknown[0]}" if unknown else "no conntrack snapshot on a backup before the fault")
    if not new:
        res.set("conntrack_lost", None, "no failover")
        return
    after_keys = [(n, "after") for n in sorted(new) if (n, "after") in kernel]
    after_failed = [errors[k] for k in after_keys if kernel[k] is None]
    if not after_keys:
        res.set("conntrack_lost", None, "no conntrack snapshot on the new primary after failover")
    elif after_failed:
        res.set("conntrack_lost", None, f"unknown: on the new primary after the failover, {after_failed[0]}")
    else:
        res.set("conntrack_lost", len(flows - set().union(*(kernel[k] or set() for k in after_keys))))


def _api_polls(events: Sequence[dict[str, Any]]) -> list[tuple[float, frozenset[str]]]:
    """API rows grouped into polls: a poll ends when a node shows up a second time."""
    polls: list[tuple[float, frozenset[str]]] = []
    nodes: set[str] = set()
    active: set[str] = set()
    start = 0.0
    for e in events:
        node = str(e.get("node"))
        if not nodes or node in nodes:
            if nodes:
                polls.append((start, frozenset(active)))
            nodes, active, start = set(), set(), float(e["t"])
        nodes.add(node)
        if e.get("ha_state") == "active":
            active.add(node)
    if nodes:
        polls.append((start, frozenset(active)))
    return polls


def _api(
    res: _Result, ev: _RouterEvents, w: Window, tl: HolderTimeline, takeover: float | None, new: frozenset[str] | None
) -> None:
    polls = [p for p in _api_polls(ev.api) if w.contains(p[0])]
    if not polls:
        res.set("api_disagreements", None, "no API polls")
        res.set("api_lag_s", None, "no API polls")
        return
    compared = [(t, active, tl.at(t)) for t, active in polls]
    compared = [c for c in compared if c[2] is not None]
    res.set("api_disagreements", sum(1 for _, active, real in compared if active != real) if compared else None,
            "no replica observation to compare the API with")
    if takeover is None or not new:
        res.set("api_lag_s", None, "no failover")
        return
    shown = next((t for t, active in polls if t >= takeover and active & new), None)
    res.set("api_lag_s", None if shown is None else shown - takeover, "the API never showed the new primary active")


# --- over routers ---------------------------------------------------------------------------


def percentile(values: Sequence[float | int], p: float) -> float | int:
    """Nearest-rank percentile: the smallest value with at least p% of the values at or below it."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def distribution(values: Iterable[Value]) -> Distribution:
    present = [v for v in values if v is not None]
    if not present:
        return Distribution()
    return Distribution(
        p50=percentile(present, 50),
        p95=percentile(present, 95),
        p99=percentile(present, 99),
        max=max(present),
        min=min(present),
        mean=sum(present) / len(present),
        sum=sum(present),
        count=len(present),
    )


def run_metrics(record: RunRecord, phase: Phase = "after") -> dict[str, RouterMetrics]:
    """Metrics of every router seen in the journal over a phase; empty if the phase did not occur."""
    w = record.window(phase)
    if w is None:
        return {}
    return {r: router_metrics(record, r, w) for r in sorted(set(record.routers) | record.targeted)}


def aggregates(routers: Mapping[str, RouterMetrics]) -> dict[str, Distribution]:
    """Distribution of every metric over the targeted routers."""
    targeted = [m for m in routers.values() if m.targeted]
    return {name: distribution(m.metrics[name] for m in targeted) for name in CATALOG}
