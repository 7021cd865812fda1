"""The run summary: the verdict, every tolerance's outcome and every router's metrics, in one file.

It is computed from the journal alone (``summarize``), so it can be recomputed at any time, and
it is what every report renders. The file format is versioned (``schema_version``) and
documented field by field in docs/metrics.md; a change that renames or removes a field must
bump the version.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from chaos.analysis.hypothesis import ToleranceResult, evaluate_all, parse_tolerances
from chaos.analysis.metrics import Distribution, ResetSeen, RouterMetrics, RunRecord, aggregates, run_metrics
from chaos.errors import InvalidInput
from chaos.probes.health import describe as describe_saturation
from chaos.probes.health import merge_worst, saturation

SCHEMA_VERSION = 1
Verdict = Literal["held", "deviated", "inconclusive", "aborted", "interrupted", "error", "steady-state-broken", "skipped", "invalid",
                  "left-injected"]
_VERDICTS: frozenset[str] = frozenset(Verdict.__args__)  # type: ignore[attr-defined]


class RunInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    experiment: str | None = None
    title: str | None = None
    target: str | None = None
    backend: str | None = None  # what ran the routers and Neutron's version (run.started)
    started: float | None = None  # unix time of run.started
    finished: float | None = None  # unix time of run.finished; None if the run did not finish
    duration: float | None = None  # seconds from started to finished (or to the last event)
    exit_code: int | None = None
    reason: str | None = None


class LeftInjected(BaseModel):
    """A fault whose undo was journaled and never completed: it may still be in place."""

    model_config = ConfigDict(extra="forbid")

    action_id: str
    fault: str | None = None
    node: str | None = None
    router_id: str | None = None
    detail: str = ""  # why the last undo failed; "" when no undo was tried (the run was killed)
    command: str  # what undoes it: chaos recover RUN
    deadman_at: float | None = None  # when its node-side dead-man undoes it by itself (fault.injected)

    def deadman(self) -> str:
        """The dead-man's promise in a report's words ("" without one): the node undoes it by
        itself then, if the node runs; ``chaos recover`` is still the way to be sure."""
        if self.deadman_at is None:
            return ""
        when = datetime.fromtimestamp(self.deadman_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"a dead-man on {self.node or 'the node'} undoes it by itself at {when} if the node is up"


class SaturatedPeriod(BaseModel):
    """A stretch of consecutive run.health samples with something past its limit."""

    model_config = ConfigDict(extra="forbid")

    start: float
    end: float
    reasons: dict[str, float]  # chaos.probes.health reason -> worst figure in the period


class RunHealthSummary(BaseModel):
    """The run's own health over the whole run (from its run.health samples), so a reader can
    tell a cloud's deviation from a measurement that could not keep up."""

    model_config = ConfigDict(extra="forbid")

    samples: int
    saturated_samples: int
    loop_lag_max: float | None = None  # seconds
    runner_cpu_max: float | None = None  # cores
    runner_cpu_mean: float | None = None
    host_cpu_max: float | None = None  # share of all CPUs
    cpu_pressure_max: float | None = None
    probe_sends: int | None = None
    probe_skipped: int | None = None
    probe_late_p99_max: float | None = None  # seconds: p99 ICMP send lateness, worst second
    observer_lag_max: float | None = None  # seconds
    periods: list[SaturatedPeriod] = []


class Summary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    run: RunInfo
    verdict: Verdict
    tolerances: list[ToleranceResult]
    routers: list[RouterMetrics]
    aggregates: dict[str, Distribution]
    notes: list[str]
    # Faults that may still be in place when the summary was written (an undo failed, or the
    # run was killed before undoing): a report must never let a reader think all was undone.
    left_injected: list[LeftInjected] = []
    # The run's own health (None: a journal from before run.health, or no sample was taken).
    health: RunHealthSummary | None = None


def _run_info(record: RunRecord) -> RunInfo:
    s, f = record.started or {}, record.finished or {}
    started = float(s["t"]) if s else None
    finished = float(f["t"]) if f else None
    return RunInfo(
        id=_str(s.get("run_id")),
        experiment=_str(s.get("experiment")),
        title=_str(s.get("title")),
        target=_str(s.get("target")),
        backend=_str(s.get("backend")),
        started=started,
        finished=finished,
        duration=(record.end - started) if started is not None and record.events else None,
        exit_code=f.get("exit_code") if isinstance(f.get("exit_code"), int) else None,
        reason=_str(f.get("reason")),
    )


def _str(v: Any) -> str | None:
    return None if v is None else str(v)


def _verdict(record: RunRecord, results: list[ToleranceResult], notes: list[str]) -> Verdict:
    """run.finished's verdict; a failed tolerance turns "held" into "deviated" (or "inconclusive"
    when every failure was measured while the tool or the lab was saturated: ``judge``); no
    run.finished means the run was cut short (killed, or still going)."""
    failed = [r.name for r in results if not r.ok]
    written = (record.finished or {}).get("verdict")
    if written in _VERDICTS:
        if written == "held" and failed:
            notes.append(f"the journal says held but these tolerances fail when recomputed: {', '.join(failed)}")
            return judge(results)
        if written in ("deviated", "inconclusive") and not failed:
            notes.append(f"the journal says {written} though every tolerance holds when recomputed")
        return written  # type: ignore[return-value]
    if record.finished is not None:
        notes.append(f"run.finished has an unknown verdict {written!r}")
        return "error"
    if failed:
        return judge(results)
    notes.append("the journal has no run.finished event: the run did not finish (killed, or still running)")
    return "interrupted"


def judge(results: list[ToleranceResult]) -> Literal["held", "deviated", "inconclusive"]:
    """held when no tolerance failed; inconclusive when every failed tolerance failed only on
    routers measured while the tool or the lab was saturated (a deviation the measurement may
    have made, never reported as the cloud's); else deviated."""
    failed = [r for r in results if not r.ok]
    if not failed:
        return "held"
    if all(_only_saturated(r) for r in failed):
        return "inconclusive"
    return "deviated"


def _only_saturated(result: ToleranceResult) -> bool:
    if not result.saturated_routers:
        return False
    return result.scope == "run" or set(result.failing_routers) <= set(result.saturated_routers)


def _with_saturation(results: list[ToleranceResult], routers: Mapping[str, RouterMetrics]) -> list[ToleranceResult]:
    """Each failed tolerance with the routers it concerns that were measured while saturated:
    its failing routers (router scope) or every targeted router (a run-scope aggregate)."""
    out = []
    for r in results:
        if not r.ok and not r.skipped:
            concerned = r.failing_routers if r.scope == "router" else [m.router_id for m in routers.values() if m.targeted]
            hit = sorted(rid for rid in concerned if rid in routers and routers[rid].saturated)
            r = r.model_copy(update={"saturated_routers": hit})
        out.append(r)
    return out


def left_injected(events: Iterable[Mapping[str, Any]], run_id: str | None) -> list[LeftInjected]:
    """Actions whose undo was recorded (``fault.undo_recorded``) and never completed (no
    ``fault.undone`` with ok), in journal order: the same rule ``chaos recover`` applies."""
    recorded: dict[str, Mapping[str, Any]] = {}
    failed: dict[str, str] = {}
    deadmen: dict[str, float] = {}
    done: set[str] = set()
    for e in events:
        aid = e.get("action_id")
        if not isinstance(aid, str):
            continue
        if e.get("kind") == "fault.undo_recorded":
            recorded[aid] = e
        elif e.get("kind") == "fault.injected" and isinstance(e.get("deadman_at"), (int, float)):
            deadmen[aid] = float(e["deadman_at"])
        elif e.get("kind") == "fault.undone":
            if e.get("ok"):
                done.add(aid)
            else:
                failed[aid] = str(e.get("detail") or "")
    command = f"chaos recover {run_id}" if run_id else "chaos recover RUN_FOLDER"
    return [
        LeftInjected(action_id=aid, fault=_str(e.get("fault")), node=_str(e.get("node")), router_id=_str(e.get("router_id")),
                     detail=failed.get(aid, ""), command=command, deadman_at=deadmen.get(aid))
        for aid, e in recorded.items() if aid not in done
    ]


def summarize(events: Iterable[Mapping[str, Any]], tolerances: Mapping[str, Any]) -> Summary:
    """The summary of a run from its journal events and the experiment's tolerances."""
    record = RunRecord(events)
    parsed = parse_tolerances(tolerances)
    routers = run_metrics(record, "after")
    results = _with_saturation(evaluate_all(record, parsed), routers)
    notes: list[str] = []
    if not record.events:
        notes.append("the journal is empty")
    if not routers:
        notes.append("no router appears in the journal")
    for r in routers.values():
        if r.targeted:
            notes.extend(f"router {r.router_id}: {name}: {why}" for name, why in sorted(r.missing.items()))
            notes.extend(f"router {r.router_id}: {name}: not measured on this target: {why}"
                         for name, why in sorted(r.skipped.items()))
        notes.extend(f"router {r.router_id}: {describe_reset(x)}" for x in r.resets_seen)
    skipped = [t.name for t in results if t.skipped]
    if skipped and len(skipped) == len(results):
        notes.append("every tolerance was skipped (no probe they need could run on this target): nothing was judged")
    elif skipped:
        notes.append(f"skipped tolerances (their probe could not run on this target): {', '.join(skipped)}")
    health = summarize_health(record.health)
    notes.extend(_saturation_notes(results, routers, health))
    verdict = _verdict(record, results, notes)
    run = _run_info(record)
    left = left_injected(record.events, run.id)
    if left and record.finished is not None and verdict != "left-injected":
        notes.append(f"{len(left)} fault(s) may still be in place although the run ended {verdict}: "
                     f"`{left[0].command}` undoes them")
    return Summary(
        run=run,
        verdict=verdict,
        tolerances=results,
        routers=list(routers.values()),
        aggregates=aggregates(routers),
        notes=notes,
        left_injected=left,
        health=health,
    )


def summarize_health(samples: list[Mapping[str, Any]]) -> RunHealthSummary | None:
    """The run's health figures over all its samples, and its saturated periods."""
    if not samples:
        return None

    def values(key: str) -> list[float]:
        return [float(v) for h in samples if isinstance(v := h.get(key), (int, float)) and not isinstance(v, bool)]

    def top(key: str) -> float | None:
        found = values(key)
        return max(found) if found else None

    periods: list[SaturatedPeriod] = []
    for h in samples:
        found = saturation(h)
        if not found:
            continue
        t, start = float(h["t"]), float(h["t"]) - float(h.get("window") or 0.0)
        last = periods[-1] if periods else None
        if last is not None and start <= last.end + 0.5:  # the next second: the same period
            last.end = t
            merge_worst([found], into=last.reasons)
        else:
            periods.append(SaturatedPeriod(start=start, end=t, reasons=found))
    cpu = values("runner_cpu")
    sends, skipped = values("probe_sends"), values("probe_skipped")
    return RunHealthSummary(
        samples=len(samples),
        saturated_samples=sum(1 for h in samples if saturation(h)),
        loop_lag_max=top("loop_lag_max"),
        runner_cpu_max=max(cpu) if cpu else None,
        runner_cpu_mean=round(sum(cpu) / len(cpu), 3) if cpu else None,
        host_cpu_max=top("host_cpu"),
        cpu_pressure_max=top("cpu_pressure"),
        probe_sends=int(sum(sends)) if sends else None,
        probe_skipped=int(sum(skipped)) if skipped else None,
        probe_late_p99_max=top("probe_late_p99"),
        observer_lag_max=top("observer_lag_max"),
        periods=periods,
    )


def _saturation_notes(
    results: list[ToleranceResult], routers: Mapping[str, RouterMetrics], health: RunHealthSummary | None
) -> list[str]:
    """What a reader must know before trusting the figures: which failures and which routers
    were measured while the tool or the lab was saturated, and by what."""
    notes = []
    for r in results:
        if r.saturated_routers:
            all_of_it = _only_saturated(r)
            notes.append(
                f"tolerance {r.name} failed " + ("only " if all_of_it else "") +
                f"where the measurement was saturated on {len(r.saturated_routers)} router(s) "
                f"({', '.join(r.saturated_routers[:5])}{', ...' if len(r.saturated_routers) > 5 else ''})"
                + (": the deviation may be the tool's or the lab's, not the cloud's" if all_of_it else "")
            )
    hit = [m for m in routers.values() if m.targeted and m.saturated]
    if hit and health is not None:
        worst = merge_worst(m.saturated for m in hit)
        targeted = sum(1 for m in routers.values() if m.targeted)
        notes.append(
            f"{len(hit)} of {targeted} router(s) were measured while the tool or the lab was saturated: "
            + "; ".join(describe_saturation(k, v) for k, v in sorted(worst.items()))
            + " (see Run health)"
        )
    return notes


def describe_reset(x: ResetSeen) -> str:
    """Who reset a connection, in the words a report uses."""
    sender = f"MAC {x.mac}" if x.mac else "an unknown MAC"
    where = f", learned on fabric port {x.port}" if x.port else ""
    return (f"TCP reset seen at the vantage point from {x.src}:{x.sport} to {x.dst}:{x.dport} "
            f"({sender}{where}) at {x.t:.3f}")


def write_summary(summary: Summary, path: Path) -> None:
    """Write atomically (temporary file, then rename), so a reader never sees half a summary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".summary-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(summary.model_dump_json(indent=2))
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_summary(path: Path) -> Summary:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"cannot read summary {path}: {exc}") from exc
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != SCHEMA_VERSION:
        raise InvalidInput(
            f"summary {path} has schema_version {version!r}; this chaos reads version {SCHEMA_VERSION}",
            hint="recompute it from the run's journal",
        )
    try:
        return Summary.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(f"summary {path} is not a valid summary: {exc}") from exc
