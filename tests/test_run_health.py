"""The run's own health (issue 14, part 6): sampled for real, judged from the journal alone.

A deviation measured while the tool or the lab was saturated is never reported as the cloud's:
the summary makes it ``inconclusive`` when every failure was measured while saturated, and
names the saturated routers otherwise. The sampler runs here on a real event loop, with a real
journal, against a loop blocked on purpose; the judging runs over journals built from the
journal's own models (tests/journal_events.py). The ICMP send counts and the replica stream's
lag are checked against the lab in tests/test_engine.py (every shipped experiment).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from chaos.analysis.summary import summarize
from chaos.journal import Journal, read_journal
from chaos.probes.health import LIMITS, RunHealth, describe, saturation
from tests.journal_events import event


class Sender:
    """A probe that sends on a schedule (the ICMP probe's ``send_counts`` contract)."""

    interval = 0.02

    def __init__(self) -> None:
        self.skipped = 0
        self.histogram = [0] * 1000  # 1 ms bins, up to 1 s

    def send_counts(self) -> tuple[int, Sequence[int], float]:
        return self.skipped, self.histogram, 0.001


class Stream:
    def __init__(self) -> None:
        self.lags: list[float] = []

    def drain_lags(self) -> list[float]:
        lags, self.lags = self.lags, []
        return lags


def test_host_cpu_pressure_counts_only_where_the_lab_runs_on_the_host() -> None:
    assert saturation({"cpu_pressure": 0.95}) == {} and saturation({"cpu_pressure": 0.95, "lab_on_host": False}) == {}
    assert saturation({"cpu_pressure": 0.95, "lab_on_host": True}) == {"cpu_pressure": 0.95}


@pytest.mark.parametrize(("key", "field", "limit"), [
    ("loop_lag_max", "loop_lag_max", LIMITS["loop_lag_max"]),
    ("observer_lag_max", "observer_lag_max", LIMITS["observer_lag_max"]),
    ("runner_cpu", "runner_cpu", LIMITS["runner_cpu"]),
    ("probe_late", "probe_late_p99", LIMITS["probe_late"]),
])
def test_each_limit_marks_a_sample_saturated_only_past_it(key: str, field: str, limit: float) -> None:
    assert saturation({field: limit}) == {}
    assert saturation({field: limit * 1.01 + 0.001}) == {key: pytest.approx(limit * 1.01 + 0.001)}
    assert saturation({field: limit * 1.01 + 0.001, "lab_on_host": True}) == {key: pytest.approx(limit * 1.01 + 0.001)}
    assert saturation({field: None}) == {} and saturation({field: True}) == {}
    assert describe(key, 0.5)  # in words


def test_skipped_sends_count_as_a_share_of_all_sends() -> None:
    assert saturation({"probe_sends": 900, "probe_skipped": 100}) == {}  # 10 %: at the limit
    assert saturation({"probe_sends": 880, "probe_skipped": 120}) == {"probe_skipped": pytest.approx(0.12)}


async def test_a_blocked_event_loop_and_late_sends_are_sampled_and_journaled(tmp_path: Path) -> None:
    sender, stream = Sender(), Stream()
    path = tmp_path / "journal.jsonl"
    with Journal(path) as journal:
        health = RunHealth(journal, senders=[sender], lag_sources=[stream], interval=0.3)
        stop = asyncio.Event()
        task = asyncio.create_task(health.run(stop, 10.0))
        await asyncio.sleep(0.35)  # a quiet first sample
        sender.histogram[1] += 50  # 50 sends, each within 2 ms of schedule
        stream.lags += [0.01, 0.02]
        await asyncio.sleep(0.3)
        time.sleep(0.25)  # the loop is blocked: every probe sharing it would send late
        sender.histogram[249] += 40  # 40 sends 0.25 s late: the blocked loop held them
        sender.histogram[1] += 10
        sender.skipped += 20  # and 20 skipped: a round behind
        stream.lags += [0.9]
        await asyncio.sleep(0.35)
        stop.set()
        await asyncio.wait_for(task, 5)
    samples = [e for e in read_journal(path) if e["kind"] == "run.health"]
    assert len(samples) >= 3 and health.samples == len(samples)
    quiet, blocked = samples[0], next(s for s in samples if (s["loop_lag_max"] or 0) >= 0.2)
    host = {"cpu_pressure", "runner_cpu"}  # this host's own load (other work may run beside the test)
    assert quiet["loop_lag_max"] < LIMITS["loop_lag_max"] and set(saturation(quiet)) <= host
    assert blocked["probe_sends"] == 50 and blocked["probe_skipped"] == 20
    assert blocked["probe_late_p99"] == pytest.approx(0.25) and blocked["observer_lag_max"] == pytest.approx(0.9)
    assert set(saturation(blocked)) - host == {"loop_lag_max", "probe_late", "probe_skipped", "observer_lag_max"}
    assert 0 < blocked["runner_cpu"] <= 2  # the blocked 0.25 s was CPU-idle (sleep), the loop's work was not
    assert health.saturated_samples >= 1


# --------------------------------------------------------------------------- judging from the journal
T0 = 1_800_000_000.0
ROUTERS = ("a" * 8 + "-0000-4000-8000-" + "0" * 12, "b" * 8 + "-0000-4000-8000-" + "0" * 12)


def journal_of_two_faults(*, saturated_at: float | None, outage: dict[str, float]) -> list[dict[str, Any]]:
    """Router A is disturbed at +10 s and recovered at +16 s, router B at +30 s and +36 s; one
    health sample a second from +1 s to +45 s, the one ending at ``saturated_at`` with the event
    loop 0.4 s late; each router's floating IP loses ``outage[router]`` seconds of pings."""
    evs = [event(T0, "run.started", run_id="r", experiment="x.yaml"),
           event(T0 + 0.1, "run.plan", routers=list(ROUTERS), targets=list(ROUTERS), waves=[["a1"], ["b1"]], actions=[])]
    for i, (rid, start) in enumerate(zip(ROUTERS, (10.0, 30.0), strict=True)):
        aid = f"{'ab'[i]}1"
        fip = f"203.0.113.{10 + i}"
        evs += [
            event(T0 + start, "fault.injected", action_id=aid, fault="ha-link-down", router_id=rid, node="network-1"),
            event(T0 + start + 3, "fault.undone", action_id=aid, ok=True, detail="undone"),
            event(T0 + start + 6, "fault.recovered", action_id=aid, ok=True, detail="healthy"),
        ]
        sent = [T0 + start - 5 + k * 0.1 for k in range(200)]  # 20 s of pings every 100 ms
        lost = outage[rid]
        rtt = [None if T0 + start <= s < T0 + start + lost else 0.001 for s in sent]
        evs.append(event(T0 + start + 16, "probe.icmp", router_id=rid, address=fip, seq=1, sent=sent, rtt=rtt,
                         interval=0.1, timeout=1.0, ident=1))
    for k in range(1, 46):
        late = 0.4 if saturated_at is not None and k == saturated_at else 0.002
        evs.append(event(T0 + k, "run.health", window=1.0, loop_lag_max=late, loop_lag_p99=late, runner_cpu=0.1,
                         host_cpu=0.2, cpu_pressure=0.0))
    evs.append(event(T0 + 46, "run.finished", verdict="held", exit_code=0))
    return evs


TOLERANCE = {"outage_s": {"max": 2}}


def test_a_failure_measured_only_while_saturated_is_inconclusive() -> None:
    a, b = ROUTERS
    summary = summarize(journal_of_two_faults(saturated_at=12, outage={a: 3.0, b: 0.5}), TOLERANCE)
    assert summary.verdict == "inconclusive"
    (tol,) = summary.tolerances
    assert tol.failing_routers == [a] and tol.saturated_routers == [a]
    routers = {r.router_id: r for r in summary.routers}
    assert routers[a].saturated == {"loop_lag_max": pytest.approx(0.4)} and routers[b].saturated == {}
    assert any("only where the measurement was saturated" in n and "not the cloud's" in n for n in summary.notes)
    assert summary.health is not None and summary.health.saturated_samples == 1
    (period,) = summary.health.periods
    assert period.start == pytest.approx(T0 + 11) and period.reasons == {"loop_lag_max": pytest.approx(0.4)}


def test_a_failure_also_measured_cleanly_is_deviated_and_names_the_saturated_router() -> None:
    a, b = ROUTERS
    summary = summarize(journal_of_two_faults(saturated_at=12, outage={a: 3.0, b: 3.0}), TOLERANCE)
    assert summary.verdict == "deviated"
    (tol,) = summary.tolerances
    assert sorted(tol.failing_routers) == sorted(ROUTERS) and tol.saturated_routers == [a]


def test_saturation_outside_a_routers_span_does_not_excuse_its_failure() -> None:
    a, b = ROUTERS
    # saturated at +25 s: after A recovered (+16 s), before B was disturbed (+30 s)
    summary = summarize(journal_of_two_faults(saturated_at=25, outage={a: 3.0, b: 0.5}), TOLERANCE)
    assert summary.verdict == "deviated" and summary.tolerances[0].saturated_routers == []
    assert all(not r.saturated for r in summary.routers)


def test_a_run_that_held_while_saturated_stays_held_with_a_note() -> None:
    a, b = ROUTERS
    summary = summarize(journal_of_two_faults(saturated_at=31, outage={a: 0.5, b: 0.5}), TOLERANCE)
    assert summary.verdict == "held"
    assert any("1 of 2 router(s) were measured while the tool or the lab was saturated" in n for n in summary.notes)


def test_a_run_scope_aggregate_failing_while_saturated_is_inconclusive() -> None:
    a, b = ROUTERS
    summary = summarize(journal_of_two_faults(saturated_at=33, outage={a: 0.5, b: 3.0}), {"max(outage_s)": {"max": 2}})
    assert summary.verdict == "inconclusive" and summary.tolerances[0].saturated_routers == [b]


def test_a_journal_without_health_samples_is_judged_as_before() -> None:
    a, b = ROUTERS
    events = [e for e in journal_of_two_faults(saturated_at=12, outage={a: 3.0, b: 0.5}) if e["kind"] != "run.health"]
    summary = summarize(events, TOLERANCE)
    assert summary.verdict == "deviated" and summary.health is None


def test_the_send_lateness_limit_lies_below_what_the_icmp_probe_can_report() -> None:
    """The probe's lateness histogram ends at its last bin (later sends land there): a limit at
    or above that edge could never be passed (it was 0.1 s, the edge itself)."""
    from chaos.probes.icmp import LATENESS_BIN, LATENESS_BINS

    assert LIMITS["probe_late"] < LATENESS_BIN * LATENESS_BINS
    ceiling = {"probe_late_p99": LATENESS_BIN * LATENESS_BINS}
    assert "probe_late" in saturation(ceiling)
