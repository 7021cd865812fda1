"""Synthetic run folders for the report tests, and checks that they say what they were built to say.

``synth_run`` writes a journal in the runner's event format (chaos/journal/) with the
shapes the real probes write: ICMP batches per second, replica observations at changes, TCP
session events, a plan and one fault per router. Outages, drops and split brains are given per
router, so a test knows the right answer before the report computes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from chaos.report.run import load_run
from tests.journal_events import event

T0 = 1_800_000_000.0


def router_id(i: int) -> str:
    return f"{i + 1:08x}-0000-4000-8000-{i + 1:012x}"


@dataclass
class RouterPlan:
    outage: float = 3.0  # seconds without answers after the injection
    tcp_drop: bool = False  # the outbound session is reset at the failover
    split_brain: float = 0.0  # seconds both replicas hold the addresses after the takeover
    never_recovers: bool = False  # no replica takes over


def synth_run(
    folder: Path,
    routers: list[RouterPlan],
    *,
    experiment: str = "experiments/keepalived-kill.yaml",
    title: str = "Kill the primary's keepalived",
    tolerances: dict[str, Any] | None = None,
    start: float = T0,
    icmp: bool = True,
    tcp: bool = True,
    replicas: bool = True,
    inject: bool = True,
    finished: str | None = "held",
    conntrack: bool = False,
    interval: float = 0.1,
    warmup: float = 5.0,
    hold: float = 10.0,
    settle: float = 5.0,
    run_id: str | None = None,
    write_tolerances: bool = True,
) -> Path:
    """Write ``folder/journal.jsonl``; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    tolerances = {"outage_s": {"max": 5.0}, "tcp_dropped": {"max": 0}, "primaries_after": {"equals": 1},
                  "p95(outage_s)": {"max": 5.0}} if tolerances is None else tolerances
    events: list[dict[str, Any]] = []
    ev = lambda t, kind, **f: events.append(event(round(t, 6), kind, **f))  # noqa: E731
    started: dict[str, Any] = dict(
        run_id=run_id or folder.name, experiment=experiment, title=title, tool_version="0.1.0", target="lab:synth",
        safeguards={"max_concurrent_routers": 10, "max_nodes_at_once": 1}, hypothesis="Floating IPs answer again quickly",
    )
    if write_tolerances:
        started["tolerances"] = tolerances
    ev(start, "run.started", **started)
    ids = [router_id(i) for i in range(len(routers))]
    inj = start + warmup
    end = inj + hold + settle
    ev(start + 0.01, "run.plan", routers=ids, waves=[[f"a{i + 1}" for i in range(len(ids))]], actions=[
        {"action_id": f"a{i + 1}", "fault": "keepalived-kill", "node": "net1", "router_id": rid, "router_name": f"router-{i + 1}",
         "affected_routers": [rid], "inject": ["kill -KILL 1"], "undo": []} for i, rid in enumerate(ids)])
    for i, (rid, plan) in enumerate(zip(ids, routers)):
        takeover = None if (plan.never_recovers or not inject) else inj + plan.outage
        if replicas:
            ev(start + 0.1, "observe.replica", router_id=rid, node="net1", state="primary", holds=True, source="poll")
            ev(start + 0.1, "observe.replica", router_id=rid, node="net2", state="backup", holds=False, source="poll")
        if inject:
            ev(inj - 0.01, "fault.undo_recorded", action_id=f"a{i + 1}", fault="keepalived-kill", router_id=rid, node="net1", undo=[])
            ev(inj, "fault.injected", action_id=f"a{i + 1}", fault="keepalived-kill", router_id=rid, node="net1", detail="SIGKILL")
            if replicas and plan.split_brain == 0:
                ev(inj + 0.05, "observe.replica", router_id=rid, node="net1", state="fault", holds=False, source="monitor")
            if replicas and takeover is not None:
                ev(takeover, "observe.replica", router_id=rid, node="net2", state="primary", holds=True, source="monitor")
                if plan.split_brain:
                    ev(takeover + plan.split_brain, "observe.replica", router_id=rid, node="net1", state="backup", holds=False, source="monitor")
            ev(inj + hold, "fault.undone", action_id=f"a{i + 1}", ok=True, detail="respawned")
            if conntrack:
                flows = [{"proto": "tcp", "src": "100.64.0.1", "dst": f"100.64.32.{i + 1}", "sport": 40000 + k, "dport": 7} for k in range(4)]
                ev(inj - 0.1, "conntrack.snapshot", router_id=rid, node="net1", phase="before", flows=flows)
                ev(inj - 0.1, "conntrack.snapshot", router_id=rid, node="net2", phase="before", flows=flows[:3])
                ev(end - 1, "conntrack.snapshot", router_id=rid, node="net2", phase="after", flows=flows[:3])
        if icmp:
            address = f"100.64.32.{i + 1}"
            second = start
            while second < end:
                sent = [round(second + k * interval, 6) for k in range(int(round(1 / interval)))]
                lost_until = takeover if takeover is not None else end
                rtt = [None if inject and inj <= s < lost_until else 0.0008 for s in sent]
                ev(second + 0.95, "probe.icmp", router_id=rid, address=address, seq=round((second - start) / interval),
                   sent=sent, rtt=rtt, interval=interval, timeout=1.0)
                second += 1.0
        if tcp:
            for direction in ("inbound", "outbound"):
                sid = f"{direction[:3]}-{i}"
                ev(start + 0.5, "probe.tcp", router_id=rid, session=sid, direction=direction, event="opened", detail="")
                if inject:
                    ev(inj + 0.3, "probe.tcp", router_id=rid, session=sid, direction=direction, event="stall", detail="", since=inj)
                    if plan.tcp_drop and direction == "outbound":
                        ev(inj + plan.outage + 0.5, "probe.tcp", router_id=rid, session=sid, direction=direction, event="reset", detail="ECONNRESET")
                        continue
                    ev(inj + plan.outage + 0.2, "probe.tcp", router_id=rid, session=sid, direction=direction, event="resumed", detail="")
                ev(end - 0.5, "probe.tcp", router_id=rid, session=sid, direction=direction, event="closed", detail="")
    if finished:
        ev(end, "run.finished", verdict=finished, exit_code=0 if finished == "held" else 1, reason="" if finished == "held" else "stopped")
    events.sort(key=lambda e: e["t"])
    with open(folder / "journal.jsonl", "w", encoding="utf-8") as f:
        for e in events:
            f.write(json.dumps(e, separators=(",", ":")) + "\n")
    return folder


def test_synthetic_run_measures_what_it_was_built_with(tmp_path: Path) -> None:
    folder = synth_run(tmp_path / "r", [RouterPlan(outage=2.0), RouterPlan(outage=7.0, tcp_drop=True)])
    run = load_run(folder)
    by_id = {r.router_id: r for r in run.summary.routers}
    assert by_id[router_id(0)].metrics["outage_s"] == pytest.approx(2.0)
    assert by_id[router_id(1)].metrics["outage_s"] == pytest.approx(7.0)
    assert by_id[router_id(1)].metrics["tcp_dropped_outbound"] == 1
    assert by_id[router_id(0)].metrics["failover_s"] == pytest.approx(2.0)
    assert run.summary.verdict == "deviated"  # router 2 breaks outage_s <= 5 and tcp_dropped <= 0
    assert {t.name for t in run.summary.tolerances if not t.ok} == {"outage_s", "tcp_dropped", "p95(outage_s)"}
    assert run.router_names[router_id(1)] == "router-2"


def test_synthetic_split_brain_is_measured(tmp_path: Path) -> None:
    run = load_run(synth_run(tmp_path / "r", [RouterPlan(outage=1.0, split_brain=4.0)]))
    assert run.summary.routers[0].metrics["split_brain_s"] == pytest.approx(4.0)
