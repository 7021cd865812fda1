"""Skipped tolerances: a probe that could not run on the target is neither held nor failed.

Synthetic journals (no lab): the probes' own "cannot run here" records (``probe.tcp`` /
``probe.newconn`` skipped paths, ``probe.skipped``) against a probe that ran and measured
nothing, which must stay a failure. Then the same results through summary.json, junit.xml,
report.md and report.html, as a reader of each sees them.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from chaos.analysis.hypothesis import check_hypothesis
from chaos.analysis.metrics import RunRecord, router_metrics
from chaos.analysis.summary import load_summary, summarize, write_summary
from chaos.report.render import render_reports
from chaos.journal import Journal
from tests.test_hypothesis import R1, R2, ev, run

OUTBOUND_SKIP = "outbound needs a socket inside the VM, which only the lab has"
NO_ECHO = "no floating IP of the router declares a TCP port with an echo service"


def tcp_skip(router: str, direction: str, reason: str) -> dict[str, Any]:
    return ev(0.5, "probe.tcp", router_id=router, session=None, direction=direction, event="skipped", detail=reason)


def newconn_skip(router: str, direction: str, reason: str) -> dict[str, Any]:
    return ev(0.5, "probe.newconn", router_id=router, direction=direction, ok=None, latency=None, error="skipped",
              phase=None, detail=reason)


def attempt(t: float, router: str, direction: str, ok: bool) -> dict[str, Any]:
    return ev(t, "probe.newconn", router_id=router, direction=direction, address="100.64.32.1", ok=ok,
              latency=0.01 if ok else None, error=None if ok else "timeout", phase=None if ok else "connect",
              started=1_800_000_000.0 + t - 0.01)


def test_every_router_skipped_makes_the_tolerance_skipped_with_the_reason() -> None:
    events = run((R1, "..x.."), (R2, "....."))
    events += [tcp_skip(r, d, NO_ECHO if d == "inbound" else OUTBOUND_SKIP) for r in (R1, R2) for d in ("inbound", "outbound")]
    events += [newconn_skip(r, "outbound", OUTBOUND_SKIP) for r in (R1, R2)]
    events += [attempt(1 + 0.5 * i, r, "inbound", True) for i in range(8) for r in (R1, R2)]
    result = check_hypothesis(events, {
        "tcp_dropped": {"max": 0}, "new_conn_recovery_outbound_s": {"max": 10},
        "new_conn_recovery_inbound_s": {"max": 10}, "outage_s": {"max": 1},
    })
    by = {r.name: r for r in result.results}
    assert result.ok and not result.failed
    for name in ("tcp_dropped", "new_conn_recovery_outbound_s"):
        assert by[name].skipped and by[name].ok and by[name].value is None
        assert set(by[name].skipped_routers) == {R1, R2}
    assert OUTBOUND_SKIP in by["new_conn_recovery_outbound_s"].reason
    assert NO_ECHO in by["tcp_dropped"].reason and OUTBOUND_SKIP in by["tcp_dropped"].reason
    assert "skipped (" in by["tcp_dropped"].describe()
    assert by["tcp_dropped"].journal_fields()["skipped"] is True
    # the probes that ran are judged as always
    assert not by["new_conn_recovery_inbound_s"].skipped and by["new_conn_recovery_inbound_s"].value == 0
    assert not by["outage_s"].skipped and by["outage_s"].value is not None


def test_a_probe_that_ran_and_measured_nothing_still_fails() -> None:
    events = run((R1, "....."))
    # the inbound session was declared and tried but never opened: a real failure, not "not possible"
    events += [ev(0.6, "probe.tcp", router_id=R1, session="inb-1", direction="inbound", event="failed",
                  detail="connect to 100.64.32.1:7: ECONNREFUSED"),
               tcp_skip(R1, "outbound", OUTBOUND_SKIP)]
    result = check_hypothesis(events, {"tcp_dropped": {"max": 0}, "tcp_dropped_outbound": {"max": 0}})
    by = {r.name: r for r in result.results}
    assert not by["tcp_dropped"].ok and not by["tcp_dropped"].skipped
    assert "no TCP session could be opened" in (by["tcp_dropped"].reason or "")
    assert by["tcp_dropped_outbound"].skipped  # that direction was not possible
    # a probe that never said anything about this router (not enabled, crashed): no data, a failure
    silent = check_hypothesis(run((R1, ".....")), {"tcp_sessions": {"min": 1}})
    assert not silent.ok and not silent.results[0].skipped and "no data" in silent.results[0].reason


def test_some_routers_skipped_are_left_out_and_named() -> None:
    events = run((R1, "....."), (R2, "....."))
    # R1 declares an echo port (its session opened and survived); R2 declares none
    events += [ev(0.6, "probe.tcp", router_id=R1, session="inb-1", direction="inbound", event="opened", detail=""),
               ev(5.5, "probe.tcp", router_id=R1, session="inb-1", direction="inbound", event="closed", detail="",
                  sent=20, echoed=20),
               tcp_skip(R2, "inbound", NO_ECHO)]
    for tolerances in ({"tcp_dropped": {"max": 0}}, {"max(tcp_dropped)": {"max": 0}}):
        res = check_hypothesis(events, tolerances).results[0]
        assert res.ok and not res.skipped and res.value == 0
        assert res.skipped_routers == {R2: NO_ECHO} and R2 not in res.failing_routers
        assert "skipped on 1 router(s)" in res.describe()
    # a failure on the router that was measured is still a failure
    broken = [e for e in events if e.get("event") != "closed"] + [
        ev(3, "probe.tcp", router_id=R1, session="inb-1", direction="inbound", event="reset", detail="ECONNRESET")]
    res = check_hypothesis(broken, {"tcp_dropped": {"max": 0}}).results[0]
    assert not res.ok and res.failing_routers == [R1] and res.skipped_routers == {R2: NO_ECHO}


def test_probe_skipped_events_cover_routers_without_floating_ips_and_every_router() -> None:
    events = run((R1, "....."))
    events = [e for e in events if e["kind"] != "probe.icmp"] + [
        ev(0.5, "probe.skipped", probe="icmp", router_id=R1, reason="the router has no floating IP"),
        ev(0.5, "probe.skipped", probe="arp", router_id=None, reason="no vantage namespace"),
    ]
    rm = router_metrics(RunRecord(events), R1)
    assert rm.metrics["outage_s"] is None and rm.skipped["outage_s"] == "the router has no floating IP"
    assert "outage_s" not in rm.missing
    assert rm.skipped["garp_count"] == "no vantage namespace"
    res = check_hypothesis(events, {"count(outage_s)": {"min": 1}, "garp_count": {"min": 1}}).results
    assert all(r.skipped and r.ok for r in res)  # count() of nothing measurable is not 0 routers failing


def test_skipped_through_summary_junit_and_reports(tmp_path: Path) -> None:
    events = run((R1, "....."))
    events[2:2] = [tcp_skip(R1, "inbound", NO_ECHO), tcp_skip(R1, "outbound", OUTBOUND_SKIP)]  # reasons in journal order
    tolerances = {"outage_s": {"max": 1}, "tcp_dropped": {"max": 0}}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with Journal(run_dir / "journal.jsonl") as journal:
        for e in events:
            fields = {k: v for k, v in e.items() if k not in ("t", "kind")}
            if e["kind"] == "run.started":
                fields["tolerances"] = tolerances
            journal.write(e["kind"], t=e["t"], **fields)
    summary = summarize(events, tolerances)
    assert summary.verdict == "held"
    assert [t.name for t in summary.tolerances if t.skipped] == ["tcp_dropped"]
    assert any("skipped tolerances" in n and "tcp_dropped" in n for n in summary.notes)
    write_summary(summary, run_dir / "summary.json")
    assert load_summary(run_dir / "summary.json").tolerances[1].skipped  # the file keeps it
    assert json.loads((run_dir / "summary.json").read_text())["tolerances"][1]["skipped_routers"] == {R1: NO_ECHO + "; " + OUTBOUND_SKIP}
    render_reports(run_dir)
    suite = ET.parse(run_dir / "junit.xml").getroot()
    assert (suite.get("failures"), suite.get("skipped")) == ("0", "1")
    skipped = [c for c in suite.iter("testcase") if c.find("skipped") is not None]
    assert len(skipped) == 1 and "tcp_dropped" in skipped[0].get("name", "")
    assert NO_ECHO in skipped[0].find("skipped").get("message", "")  # type: ignore[union-attr]
    md = (run_dir / "report.md").read_text()
    assert "| `tcp_dropped` |" in md and "skipped" in md.split("| `tcp_dropped` |")[1].splitlines()[0]
    html = (run_dir / "report.html").read_text()
    assert 'data-tolerance="tcp_dropped" data-ok="true" data-skipped="true"' in html.replace('class="skipped" ', "")
    assert "1 skipped (not measurable on this target)" in html
