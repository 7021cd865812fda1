"""Every kind of journal event, as a typed model: the contract between the parts of a run.

The runner, the faults' undo records, the probes and the operator write these; the analysis,
the reports, ``chaos recover`` and the operator's history read them. A writer's event is
validated against its model before it reaches the file (a field the model does not know, or a
wrong type, is a bug caught where it is made), and a reader gets models, so the two cannot
drift apart unnoticed. docs/journal.md describes the format for people who build on it.

Fields are the ones the code writes; optional ones were added over time and default to None
(a journal of an older run of this schema version still loads). ``t`` is ``time.time()`` of
the runner's host: the one clock every event of a run shares.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1

Seconds = float
Phase = Literal["before", "during", "after"]
Direction = Literal["inbound", "outbound"]


class Event(BaseModel):
    """What every event has: when, and which kind."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    t: float
    kind: str


# --------------------------------------------------------------------------- the journal itself
class JournalHeader(Event):
    """The first line of a journal: which schema its events follow."""

    kind: Literal["journal"] = "journal"
    schema_version: int
    tool_version: str | None = None


# --------------------------------------------------------------------------- the run
class RunStarted(Event):
    kind: Literal["run.started"] = "run.started"
    run_id: str
    experiment: str
    title: str = ""
    tool_version: str | None = None
    target: str | None = None
    backend: str | None = None
    safeguards: dict[str, Any] = {}
    tolerances: dict[str, dict[str, Any]] = {}
    hypothesis: str | None = None
    trigger: dict[str, Any] | None = None
    overrides: dict[str, dict[str, Any]] | None = None


class RunAbortRequested(Event):
    kind: Literal["run.abort_requested"] = "run.abort_requested"
    by: str
    reason: str | None = None
    interrupt: bool = False


class PlannedActionRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    action_id: str
    fault: str
    scope: Literal["router", "node"] | None = None  # None: written before actions said their scope
    node: str
    router_id: str | None = None
    router_name: str | None = None
    replica_role: str | None = None
    affected_routers: list[str] = []
    inject: list[str] = []
    undo: list[dict[str, Any]] = []


class RunPlan(Event):
    kind: Literal["run.plan"] = "run.plan"
    routers: list[str] = []  # every router the plan disturbs (readers fall back on the actions')
    targets: list[str] = []
    waves: list[list[str]] = []
    actions: list[PlannedActionRecord] = []


class PreflightCheck(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    node: str
    check: str
    status: Literal["ok", "warn", "fail"]
    detail: str
    fix: str = ""


class RunPreflight(Event):
    kind: Literal["run.preflight"] = "run.preflight"
    ok: bool
    checks: list[PreflightCheck] = []


class RunFinished(Event):
    kind: Literal["run.finished"] = "run.finished"
    verdict: Literal["held", "deviated", "inconclusive", "aborted", "interrupted", "steady-state-broken", "skipped",
                     "invalid", "error", "left-injected"]
    exit_code: int
    reason: str = ""
    by: str | None = None


class RunHealth(Event):
    """The run's own health over the ``window`` seconds before ``t`` (chaos.probes.health)."""

    kind: Literal["run.health"] = "run.health"
    window: Seconds
    loop_lag_max: Seconds | None = None  # how late the event loop woke (max, p99)
    loop_lag_p99: Seconds | None = None
    runner_cpu: float | None = None  # cores this process used
    host_cpu: float | None = None  # share of all the host's CPUs busy
    cpu_pressure: float | None = None  # share of the window some runnable task waited for a CPU (PSI)
    lab_on_host: bool | None = None  # the routers run on this host (the lab): its CPU pressure is the lab's
    probe_sends: int | None = None  # ICMP sends in the window, skipped ones, p99 lateness / interval
    probe_skipped: int | None = None
    probe_late_p99: Seconds | None = None
    observer_lag_max: Seconds | None = None  # the replica stream's heartbeat, arrival minus the node's stamp


# --------------------------------------------------------------------------- faults
class UndoStepRecord(BaseModel):
    """One idempotent undo step as journaled before its injection (chaos.faults.base.UndoStep)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    via: Literal["ssh", "bmc", "api"]
    node: str
    command: str
    fault: str | None = None  # api: the fault type that replays it (None: agent-evacuate, older journals)
    disarm: bool = False  # cancels a dead-man: skipped when a step before it failed


class _FaultAction(Event):
    action_id: str
    fault: str
    router_id: str | None = None
    node: str


class FaultUndoRecorded(_FaultAction):
    kind: Literal["fault.undo_recorded"] = "fault.undo_recorded"
    undo: list[UndoStepRecord] = []
    # sha256 of the undo steps (``undo_digest``): recover runs these commands as root on the
    # nodes, so a byte changed inside a command (valid JSON still) must not run (None: older journals)
    undo_sha256: str | None = None


def undo_digest(steps: Sequence[Any]) -> str:
    """sha256 of undo steps in their journaled form (dicts or models), key order aside."""
    records = [UndoStepRecord.model_validate(s if isinstance(s, dict) else s.model_dump()).model_dump() for s in steps]
    return hashlib.sha256(json.dumps(records, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class FaultInjected(_FaultAction):
    kind: Literal["fault.injected"] = "fault.injected"
    detail: str = ""
    inject_s: Seconds | None = None
    deadman_at: float | None = None  # when the node-side dead-man undoes it by itself, unless cancelled


class FaultInjectFailed(_FaultAction):
    kind: Literal["fault.inject_failed"] = "fault.inject_failed"
    error: str


class FaultVerified(Event):
    kind: Literal["fault.verified"] = "fault.verified"
    action_id: str
    took: bool
    detail: str = ""


class FaultUndone(Event):
    kind: Literal["fault.undone"] = "fault.undone"
    action_id: str
    ok: bool
    detail: str = ""
    by: str | None = None  # "recover" when chaos recover did it
    restarted_by: Literal["agent", "tool"] | None = None  # keepalived faults


class FaultRecovered(Event):
    kind: Literal["fault.recovered"] = "fault.recovered"
    action_id: str
    ok: bool
    detail: str = ""


# --------------------------------------------------------------------------- probes and observers
class ProbeIcmp(Event):
    """A batch of echo requests to one floating IP; ``rtt`` null = no reply within the timeout."""

    kind: Literal["probe.icmp"] = "probe.icmp"
    router_id: str
    address: str
    seq: int
    sent: list[float]
    rtt: list[float | None]
    interval: Seconds
    timeout: Seconds
    ident: int | None = None
    send_errors: list[list[int]] | None = None


class ProbeTcp(Event):
    kind: Literal["probe.tcp"] = "probe.tcp"
    router_id: str
    session: str | None
    direction: Direction
    address: str | None = None
    event: Literal["opened", "stall", "resumed", "reset", "timeout", "closed", "failed", "skipped"]
    detail: str = ""
    since: float | None = None
    length: Seconds | None = None
    sent: int | None = None
    echoed: int | None = None


class ProbeNewconn(Event):
    kind: Literal["probe.newconn"] = "probe.newconn"
    router_id: str
    direction: Direction
    address: str | None = None
    port: int | None = None
    service: Literal["echo", "ssh", "listener"] | None = None
    ok: bool | None
    latency: Seconds | None = None
    error: str | None = None
    phase: Literal["connect", "exchange"] | None = None
    started: float | None = None
    detail: str | None = None


class ProbeSkipped(Event):
    kind: Literal["probe.skipped"] = "probe.skipped"
    probe: str
    router_id: str | None = None
    reason: str


class ObserveReplica(Event):
    kind: Literal["observe.replica"] = "observe.replica"
    router_id: str
    node: str
    state: str | None = None
    holds: bool
    reachable: bool = True
    source: Literal["monitor", "poll"] | None = None


class ConntrackSnapshot(Event):
    kind: Literal["conntrack.snapshot"] = "conntrack.snapshot"
    router_id: str
    node: str
    phase: Literal["before", "after"]
    flows: list[dict[str, Any]] | None = []
    cache: list[dict[str, Any]] | None = None
    error: str | None = None
    cache_error: str | None = None
    detail: str | None = None


class ArpGarp(Event):
    kind: Literal["arp.garp"] = "arp.garp"
    router_id: str
    address: str
    mac: str
    op: Literal["request", "reply"]
    interface: str | None = None
    port: str | None = None


class TcpResetSeen(Event):
    kind: Literal["tcp.reset_seen"] = "tcp.reset_seen"
    router_id: str
    src: str
    sport: int
    dst: str
    dport: int
    mac: str
    interface: str | None = None
    port: str | None = None


class ApiHaState(Event):
    kind: Literal["api.ha_state"] = "api.ha_state"
    router_id: str
    node: str
    ha_state: str | None = None
    agent_alive: bool | None = None


class HypothesisCheck(Event):
    kind: Literal["hypothesis.check"] = "hypothesis.check"
    phase: Phase
    tolerance: str
    scope: str
    value: float | int | bool | None = None
    ok: bool
    skipped: bool | None = None
    reason: str | None = None


BUILTIN_EVENTS: tuple[type[Event], ...] = (
    JournalHeader, RunStarted, RunAbortRequested, RunPlan, RunPreflight, RunFinished, RunHealth,
    FaultUndoRecorded, FaultInjected, FaultInjectFailed, FaultVerified, FaultUndone, FaultRecovered,
    ProbeIcmp, ProbeTcp, ProbeNewconn, ProbeSkipped, ObserveReplica, ConntrackSnapshot, ArpGarp,
    TcpResetSeen, ApiHaState, HypothesisCheck,
)

# kind -> model; plugins add theirs with register_event (their probes write their own kinds).
EVENT_MODELS: dict[str, type[Event]] = {m.model_fields["kind"].default: m for m in BUILTIN_EVENTS}


def register_event(model: type[Event]) -> type[Event]:
    """Make a plugin's event kind known to writers and readers (its ``kind`` default names it)."""
    kind = model.model_fields["kind"].default
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"{model.__name__} has no kind default")
    existing = EVENT_MODELS.get(kind)
    if existing is not None and existing is not model:
        raise ValueError(f"event kind {kind!r} is already {existing.__name__}'s")
    EVENT_MODELS[kind] = model
    return model


# The built-in events as one discriminated union (JSON schema, documentation); parse_event
# dispatches on ``kind`` through EVENT_MODELS so that plugins' kinds are included.
BuiltinEvent = Annotated[Union[BUILTIN_EVENTS], Field(discriminator="kind")]  # noqa: UP007 - a tuple of types


def parse_event(data: Any) -> Event | None:
    """The model of one event (validated), or None for a kind this tool does not know (a newer
    tool's, or a plugin's that is not installed): readers pass those over."""
    if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
        raise ValueError("an event is a JSON object with a string kind")
    model = EVENT_MODELS.get(data["kind"])
    return None if model is None else model.model_validate(data)
