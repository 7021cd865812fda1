"""Prometheus metrics of runs and schedules, for ``chaos serve``'s /metrics and a Pushgateway.

The figures of a run come from its folder (summary.json and the journal), the record every
report also reads, so /metrics, the dashboard and the report of one run never disagree. A
one-shot ``chaos run --pushgateway URL`` fills a registry of its own with the same families
and pushes it, so the same dashboards and alerts work for runs started from CI.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter as Tally
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    push_to_gateway,
)

from chaos.errors import InvalidInput
from chaos.log import get_logger
from chaos.journal import read_journal
from chaos.state.store import RunRow

log = get_logger("metrics")

VERDICTS = ("held", "deviated", "inconclusive", "aborted", "interrupted", "error", "steady-state-broken", "skipped", "invalid",
            "left-injected")
SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0, 60.0)
RUN_BUCKETS = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0)
PUSH_TIMEOUT = 10.0


@dataclass
class RunFigures:
    """What /metrics takes from one finished run."""

    outages: list[float] = field(default_factory=list)  # per floating IP of the targeted routers
    failovers: list[float] = field(default_factory=list)  # per targeted router
    injected: Tally[str] = field(default_factory=Tally)  # by fault type
    undone: Tally[str] = field(default_factory=Tally)


def run_figures(run_dir: Path) -> RunFigures:
    """Per floating IP and per router figures from the summary, fault counts from the journal."""
    from chaos.analysis.summary import load_summary

    figures = RunFigures()
    try:
        summary = load_summary(run_dir / "summary.json")
    except InvalidInput:
        summary = None
    if summary is not None:
        for router in summary.routers:
            if not router.targeted:
                continue
            failover = router.metrics.get("failover_s")
            if isinstance(failover, int | float):
                figures.failovers.append(float(failover))
            figures.outages += [float(f.outage_s) for f in router.floating_ips if f.outage_s is not None]
    kinds: dict[str, str] = {}
    journal = run_dir / "journal.jsonl"
    if journal.is_file():
        for event in read_journal(journal):
            if event.get("kind") == "fault.injected":
                kinds[str(event.get("action_id"))] = str(event.get("fault"))
                figures.injected[str(event.get("fault"))] += 1
            elif event.get("kind") == "fault.undone" and event.get("ok"):
                figures.undone[kinds.get(str(event.get("action_id")), "unknown")] += 1
    return figures


class RunMetrics:
    """The metric families; one instance per registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.runs = Counter("chaos_runs", "Finished runs by experiment, verdict and trigger.",
                            ["experiment", "verdict", "trigger"], registry=r)
        self.duration = Histogram("chaos_run_duration_seconds", "Wall time of finished runs.",
                                  ["experiment"], buckets=RUN_BUCKETS, registry=r)
        self.outage = Histogram("chaos_outage_seconds", "Longest outage of each floating IP of the targeted routers, per run.",
                                ["experiment"], buckets=SECONDS_BUCKETS, registry=r)
        self.failover = Histogram("chaos_failover_seconds", "Failover time of each targeted router, per run.",
                                  ["experiment"], buckets=SECONDS_BUCKETS, registry=r)
        self.last_verdict = Gauge("chaos_last_verdict", "1 for the verdict of the experiment's last finished run, 0 for the others.",
                                  ["experiment", "verdict"], registry=r)
        self.last_finished = Gauge("chaos_last_run_finished_timestamp_seconds", "When the experiment's last run finished.",
                                   ["experiment"], registry=r)
        self.injected = Counter("chaos_faults_injected", "Fault actions injected.", ["experiment", "fault"], registry=r)
        self.undone = Counter("chaos_faults_undone", "Fault actions undone (rolled back).", ["experiment", "fault"], registry=r)

    def observe(self, row: RunRow, figures: RunFigures) -> None:
        e = row.experiment
        verdict = row.verdict or "error"
        self.runs.labels(e, verdict, row.trigger).inc()
        if row.duration_s is not None:
            self.duration.labels(e).observe(row.duration_s)
        for value in figures.outages:
            self.outage.labels(e).observe(value)
        for value in figures.failovers:
            self.failover.labels(e).observe(value)
        for v in VERDICTS:
            self.last_verdict.labels(e, v).set(1.0 if v == verdict else 0.0)
        if row.finished_at is not None:
            self.last_finished.labels(e).set(row.finished_at)
        for fault, n in figures.injected.items():
            self.injected.labels(e, fault).inc(n)
        for fault, n in figures.undone.items():
            self.undone.labels(e, fault).inc(n)


class OperatorMetrics(RunMetrics):
    """Run metrics plus what only a running operator knows: schedules, firings, runs in progress."""

    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.in_progress = Gauge("chaos_runs_in_progress", "Runs executing now.", ["experiment"], registry=r)
        self.firings = Counter("chaos_firings", "Schedule firings by outcome: started, skipped (with a reason), missed.",
                               ["experiment", "outcome"], registry=r)
        self.next_fire = Gauge("chaos_next_fire_timestamp_seconds", "When the experiment's schedule fires next.",
                               ["experiment"], registry=r)
        self.valid = Gauge("chaos_experiment_valid", "1 when the experiment file validates (0: its last good version is used).",
                           ["experiment"], registry=r)
        self.paused = Gauge("chaos_schedule_paused", "1 when the schedule is paused ('*': every schedule).",
                            ["experiment"], registry=r)

    def forget(self, experiment: str) -> None:
        """An experiment file was removed: its schedule gauges go (its history counters stay)."""
        for gauge in (self.next_fire, self.valid, self.paused):
            with contextlib.suppress(KeyError):
                gauge.remove(experiment)


async def push_run(url: str, row: RunRow, run_dir: Path) -> None:
    """Push one run's metrics to a Pushgateway (grouped by experiment); failures are logged:
    the run is over and its exit code is its verdict's, not the push's."""
    metrics = RunMetrics()
    metrics.observe(row, run_figures(run_dir))
    try:
        await asyncio.to_thread(push_to_gateway, url, job="chaos", registry=metrics.registry,
                                grouping_key={"experiment": row.experiment}, timeout=PUSH_TIMEOUT)
        log.info("metrics pushed", experiment=row.experiment)
    except Exception as exc:  # noqa: BLE001 - urllib raises several kinds; none may change the verdict
        log.error("pushing metrics failed", error=f"{type(exc).__name__}: {exc}")
