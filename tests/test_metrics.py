"""Definitions of the metrics, pinned on small synthetic journals (pure functions: no lab)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from chaos.analysis.metrics import (
    CATALOG,
    RunRecord,
    distribution,
    fip_metrics,
    flow_key,
    percentile,
    router_metrics,
    run_metrics,
)
from chaos.journal import read_journal
from tests.journal_events import event

R1 = "11111111-1111-4111-8111-111111111111"
R2 = "22222222-2222-4222-8222-222222222222"
T0 = 1_800_000_000.0
DATA = Path(__file__).parent / "data" / "journals"


def ev(t: float, kind: str, **fields: Any) -> dict[str, Any]:
    return event(T0 + t, kind, **fields)


def icmp(t: float, router: str, address: str, answers: str, interval: float = 0.02) -> dict[str, Any]:
    """A probe.icmp batch from a pattern: '.' answered, 'x' lost, one request every interval."""
    sent = [T0 + t + i * interval for i in range(len(answers))]
    return event(sent[-1], "probe.icmp", router_id=router, address=address, seq=round(t / interval), sent=sent,
                 rtt=[0.001 if c == "." else None for c in answers], interval=interval, timeout=1.0)


def obs(t: float, router: str, node: str, holds: bool) -> dict[str, Any]:
    return ev(t, "observe.replica", router_id=router, node=node, state="primary" if holds else "backup",
              holds=holds, source="monitor")


def inject(t: float, router: str | None, node: str = "net1", action: str = "a1") -> dict[str, Any]:
    return ev(t, "fault.injected", action_id=action, fault="kill_keepalived", router_id=router, node=node, detail="")


def metrics_of(events: list[dict[str, Any]], router: str = R1) -> dict[str, Any]:
    return router_metrics(RunRecord(events), router).metrics


def metrics_reasons(events: list[dict[str, Any]], router: str = R1) -> dict[str, str]:
    """Why each missing metric is missing."""
    return router_metrics(RunRecord(events), router).missing


# --- ICMP ----------------------------------------------------------------------------------


def test_one_loss_run_of_seven_samples_at_20ms_is_a_140ms_outage() -> None:
    m = metrics_of([icmp(0, R1, "100.64.32.1", "....xxxxxxx...")])
    assert m["outage_s"] == pytest.approx(0.14)
    assert (m["lost"], m["sent"], m["outages"]) == (7, 14, 1)


def test_two_runs_count_as_two_outages_and_the_longest_is_the_outage() -> None:
    fip = fip_metrics("100.64.32.1", [(T0 + i * 0.02, None if c == "x" else 0.001) for i, c in enumerate("..xx....xxxxx..")])
    assert fip.outages == 2
    assert fip.lost == 7
    assert fip.outage_s == pytest.approx(0.10)
    assert [r.lost for r in fip.loss_runs] == [2, 5]
    assert fip.interval_s == pytest.approx(0.02)


def test_no_loss_is_zero_and_no_samples_is_none_with_reason() -> None:
    assert metrics_of([icmp(0, R1, "100.64.32.1", "......")])["outage_s"] == 0.0
    rm = router_metrics(RunRecord([obs(0, R1, "net1", True)]), R1)
    assert rm.metrics["outage_s"] is None and rm.metrics["lost"] is None
    assert rm.missing["outage_s"] == "no icmp samples"


def test_loss_never_answered_again_lasts_to_the_last_send() -> None:
    fip = fip_metrics("a", [(T0 + i * 0.1, None if c == "x" else 0.001) for i, c in enumerate("..xxxx")])
    assert fip.outage_s == pytest.approx(0.3)
    assert fip.loss_runs[0].answered_again is False


def test_batches_are_merged_in_send_order_across_events() -> None:
    # the loss run spans two batches: 3 lost at the end of one, 2 at the start of the next
    events = [icmp(0, R1, "a", "..xxx"), icmp(0.1, R1, "a", "xx...")]
    m = metrics_of(events)
    assert (m["outages"], m["lost"]) == (1, 5)
    assert m["outage_s"] == pytest.approx(0.1)


def test_router_value_is_the_worst_floating_ip() -> None:
    events = [icmp(0, R1, "a", "..xx.....", 0.02), icmp(0, R1, "b", ".xxxxx...", 0.02), icmp(0, R1, "c", "...")]
    m = metrics_of(events)
    assert m["outage_s"] == pytest.approx(0.10)
    assert m["lost"] == 5
    assert m["sent"] == 3  # fewest samples is the worst evidence
    assert m["outages"] == 1


# --- replicas ------------------------------------------------------------------------------


def test_failover_is_injection_to_another_replica_holding_the_addresses() -> None:
    events = [
        obs(0, R1, "net1", True), obs(0, R1, "net2", False),
        inject(10, R1),
        obs(10.4, R1, "net1", False),  # the old primary drops: not a failover yet
        obs(13.25, R1, "net2", True),
    ]
    rm = router_metrics(RunRecord(events), R1)
    assert rm.metrics["failover_s"] == pytest.approx(3.25)
    assert rm.holders_before == ["net1"] and rm.new_primary == ["net2"]
    assert rm.metrics["no_primary_s"] == pytest.approx(2.85)
    assert rm.metrics["transitions"] == 2
    assert (rm.metrics["primaries_before"], rm.metrics["primaries_after"]) == (1, 1)


def test_one_polls_replicas_at_one_time_are_one_snapshot_not_a_transition() -> None:
    """A poll journals every replica of a router with its own single ``t``; applied one by one,
    the backup's line first made {} -> {net2} a transition (the example plugin's
    ``transitions == 0`` failed on a run where nothing moved)."""
    events = [
        obs(0, R1, "net1", False), obs(0, R1, "net2", True),  # the first poll, backup first
        obs(0.12, R1, "net1", False), obs(0.13, R1, "net2", True),  # the stream's first snapshot
        obs(5, R1, "net1", False), obs(5, R1, "net2", True),  # a later poll
    ]
    rm = router_metrics(RunRecord(events), R1)
    assert rm.metrics["transitions"] == 0 and rm.metrics["no_primary_s"] == 0
    assert [c.holders for c in rm.holders] == [["net2"]]


def test_no_failover_is_none_and_says_why() -> None:
    rm = router_metrics(RunRecord([obs(0, R1, "net1", True), inject(1, R1), obs(2, R1, "net1", True)]), R1)
    assert rm.metrics["failover_s"] is None
    assert "no failover" in rm.missing["failover_s"]
    rm = router_metrics(RunRecord([obs(0, R1, "net1", True)]), R1)
    assert rm.missing["failover_s"] == "no fault injected"


def test_node_fault_without_router_id_affects_routers_with_a_replica_there() -> None:
    events = [obs(0, R1, "net1", True), obs(0, R2, "net3", True), inject(5, None, node="net1"), obs(6, R1, "net2", True)]
    record = RunRecord(events)
    assert record.targeted_routers() == [R1]
    assert router_metrics(record, R1).metrics["failover_s"] == pytest.approx(1.0)
    assert router_metrics(record, R2).metrics["failover_s"] is None


def test_split_brain_intervals_are_summed_with_state_carried_forward() -> None:
    events = [
        ev(0, "run.started", run_id="r", experiment="e.yaml", title="t", tool_version="0", target="lab", safeguards={}),
        obs(0, R1, "net1", True), obs(0, R1, "net2", False),
        obs(2, R1, "net2", True),   # both hold: 2..3.5
        obs(3.5, R1, "net1", False),
        obs(6, R1, "net1", True),   # both hold again: 6..6.25
        obs(6.25, R1, "net2", False),
        obs(7, R1, "net2", False),  # no change: not a transition
        ev(10, "run.finished", verdict="held", exit_code=0, reason=""),
    ]
    rm = router_metrics(RunRecord(events), R1)
    assert rm.metrics["split_brain_s"] == pytest.approx(1.75)
    assert rm.metrics["no_primary_s"] == 0.0
    assert rm.metrics["transitions"] == 4
    assert [c.holders for c in rm.holders] == [["net1"], ["net1", "net2"], ["net2"], ["net1", "net2"], ["net1"]]


def test_no_primary_counts_from_the_first_observation_to_the_end() -> None:
    events = [
        obs(1, R1, "net1", False), obs(1, R1, "net2", False),  # nobody: 1..4
        obs(4, R1, "net2", True),
        obs(8, R1, "net2", False),  # nobody again to the end at 9
        ev(9, "run.finished", verdict="held", exit_code=0, reason=""),
    ]
    assert metrics_of(events)["no_primary_s"] == pytest.approx(4.0)
    assert metrics_of(events)["primaries_after"] == 0


# --- TCP and new connections ---------------------------------------------------------------


def tcp(t: float, session: str | None, direction: str, event: str, **extra: Any) -> dict[str, Any]:
    return ev(t, "probe.tcp", router_id=R1, session=session, direction=direction, event=event, detail="", **extra)


def test_tcp_dropped_counts_resets_and_timeouts_by_direction() -> None:
    events = [
        tcp(0, "s1", "inbound", "opened"), tcp(0, "s2", "inbound", "opened"),
        tcp(0, "s3", "outbound", "opened"), tcp(0, "s4", "outbound", "opened"),
        tcp(5, "s1", "inbound", "stall"), tcp(6.5, "s1", "inbound", "resumed"),
        tcp(5, "s2", "inbound", "stall"), tcp(9, "s2", "inbound", "reset"),
        tcp(5, "s3", "outbound", "timeout"),
        tcp(12, "s4", "outbound", "closed"), tcp(12, "s1", "inbound", "closed"),
    ]
    m = metrics_of(events)
    assert m["tcp_sessions"] == 4
    assert m["tcp_dropped"] == 2
    assert (m["tcp_dropped_inbound"], m["tcp_dropped_outbound"]) == (1, 1)
    assert m["tcp_max_stall_s"] == pytest.approx(4.0)  # s2 stalled from 5 until its reset at 9


def test_new_connection_recovery_is_injection_to_first_success_after_last_failure() -> None:
    def nc(t: float, direction: str, ok: bool) -> dict[str, Any]:
        return ev(t, "probe.newconn", router_id=R1, direction=direction, ok=ok, latency=0.01 if ok else None,
                  error=None if ok else "timeout")

    events = [
        obs(0, R1, "net1", True), nc(1, "inbound", True), nc(1, "outbound", True), inject(2, R1),
        nc(3, "inbound", False), nc(4, "inbound", True), nc(5, "inbound", False), nc(6.5, "inbound", True),
        nc(3, "outbound", True),
    ]
    m = metrics_of(events)
    assert m["new_conn_recovery_inbound_s"] == pytest.approx(4.5)
    assert m["new_conn_recovery_outbound_s"] == 0.0
    still_failing = metrics_of(events[:-2])
    assert still_failing["new_conn_recovery_inbound_s"] is None


# --- GARP, conntrack, API ------------------------------------------------------------------


def failover_events() -> list[dict[str, Any]]:
    return [obs(0, R1, "net1", True), obs(0, R1, "net2", False), inject(10, R1), obs(10, R1, "net1", False),
            obs(12, R1, "net2", True)]


def test_garp_delay_from_takeover_and_count() -> None:
    garp = [ev(t, "arp.garp", router_id=R1, address="100.64.32.1", mac="fa:16:3e:00:00:01", op="reply", port="qg-1")
            for t in (1, 12.3, 13)]
    m = metrics_of(failover_events() + garp)
    assert m["garp_delay_s"] == pytest.approx(0.3)
    assert m["garp_count"] == 3
    # no arp.garp events at all: the watcher did not run, so no count rather than a false 0
    m = metrics_of(failover_events())
    assert m["garp_count"] is None and m["garp_delay_s"] is None


def test_conntrack_entries_replicated_and_lost() -> None:
    def snap(node: str, phase: str, flows: list[Any]) -> dict[str, Any]:
        return ev(9 if phase == "before" else 14, "conntrack.snapshot", router_id=R1, node=node, phase=phase, flows=flows)

    f = [{"proto": "tcp", "src": "100.64.0.1", "dst": "100.64.32.1", "sport": p, "dport": 7, "timeout": 100} for p in (1, 2, 3)]
    raw = "tcp 6 431999 ESTABLISHED src=100.64.0.1 dst=100.64.32.1 sport=2 dport=7 src=x dst=y"
    backup = [dict(f[0], timeout=5), {"proto": "tcp", "src": "100.64.0.1", "dst": "100.64.32.1", "sport": 2, "dport": 7, "state": "ESTABLISHED"}]
    events = failover_events() + [snap("net1", "before", f), snap("net2", "before", backup), snap("net2", "after", [f[0]])]
    m = metrics_of(events)
    assert (m["conntrack_entries"], m["conntrack_replicated"], m["conntrack_lost"]) == (3, 2, 2)
    assert flow_key(backup[1]) == flow_key(f[1]) == flow_key(raw)  # a raw conntrack -L line is the same flow


def test_conntrack_replicated_counts_conntrackds_external_cache() -> None:
    """Neutron's conntrackd keeps replicated flows in the backup's external cache, not its
    kernel table: they count as replicated. A listing that failed is unknown, never lost."""
    f = [{"proto": "tcp", "src": "100.64.0.1", "dst": "100.64.32.1", "sport": p, "dport": 7} for p in (1, 2, 3)]

    def snap(node: str, phase: str, **fields: Any) -> dict[str, Any]:
        return ev(9 if phase == "before" else 14, "conntrack.snapshot", router_id=R1, node=node, phase=phase, **fields)

    base = failover_events() + [snap("net1", "before", flows=f, cache=None)]
    m = metrics_of(base + [snap("net2", "before", flows=[], cache=f[:2]), snap("net2", "after", flows=f, cache=[])])
    assert (m["conntrack_entries"], m["conntrack_replicated"], m["conntrack_lost"]) == (3, 2, 0)
    failed = snap("net2", "after", flows=None, cache=None, error="conntrack -L failed: exit 255: exec of \"conntrack\" failed")
    m = metrics_of(base + [snap("net2", "before", flows=[], cache=f), failed])
    assert m["conntrack_replicated"] == 3 and m["conntrack_lost"] is None
    assert "exec of" in metrics_reasons(base + [snap("net2", "before", flows=[], cache=f), failed])["conntrack_lost"]
    on_primary = metrics_of(failover_events() + [snap("net1", "before", flows=None, cache=None, error="x")])
    assert on_primary["conntrack_entries"] is None and on_primary["conntrack_lost"] is None


def test_api_lag_and_disagreements() -> None:
    def api(t: float, node: str, state: str) -> dict[str, Any]:
        return ev(t, "api.ha_state", router_id=R1, node=node, ha_state=state)

    polls = [
        api(5, "net1", "active"), api(5, "net2", "standby"),    # agrees
        api(11, "net1", "active"), api(11, "net2", "standby"),  # old primary dropped: disagrees
        api(13, "net1", "active"), api(13, "net2", "standby"),  # net2 holds: disagrees
        api(15, "net1", "standby"), api(15, "net2", "active"),  # shows net2 active: lag 15 - 12
    ]
    m = metrics_of(failover_events() + polls)
    assert m["api_lag_s"] == pytest.approx(3.0)
    assert m["api_disagreements"] == 2


# --- over routers --------------------------------------------------------------------------


def test_nearest_rank_percentiles_on_known_lists() -> None:
    values = list(range(1, 101))
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 99)) == (50, 95, 99)
    assert percentile([15, 20, 35, 40, 50], 30) == 20
    assert percentile([15, 20, 35, 40, 50], 40) == 20
    assert percentile([15, 20, 35, 40, 50], 50) == 35
    assert percentile([15, 20, 35, 40, 50], 100) == 50
    assert percentile([7], 1) == 7
    d = distribution([3.0, None, 1.0, 2.0])
    assert (d.p50, d.max, d.min, d.mean, d.sum, d.count) == (2.0, 3.0, 1.0, 2.0, 6.0, 3)
    assert distribution([None]).count == 0 and distribution([None]).p95 is None


def test_phases_window_the_samples() -> None:
    events = [
        ev(0, "run.started", run_id="r", experiment="e", title="t", tool_version="0", target="lab", safeguards={}),
        obs(0, R1, "net1", True), obs(0, R1, "net2", False),
        icmp(1, R1, "a", "..x..", 0.1),       # one lost before
        inject(10, R1),
        icmp(10, R1, "a", "..xxxx..", 0.1),   # four lost during
        obs(10.5, R1, "net2", True), obs(10.6, R1, "net1", False),
        ev(20, "fault.undone", action_id="a1", ok=True, detail=""),
        icmp(25, R1, "a", ".x.", 0.1),         # one lost after the undo
        ev(30, "run.finished", verdict="held", exit_code=0, reason=""),
    ]
    record = RunRecord(events)
    before, during, after = (run_metrics(record, p)[R1].metrics for p in ("before", "during", "after"))
    assert (before["lost"], during["lost"], after["lost"]) == (1, 4, 6)
    assert before["primaries_after"] == 1 and before["failover_s"] is None
    assert during["failover_s"] == pytest.approx(0.5)
    assert during["split_brain_s"] == pytest.approx(0.1)
    assert after["primaries_after"] == 1


def test_every_catalog_metric_is_computed_for_a_recorded_journal() -> None:
    record = RunRecord(read_journal(DATA / "kill-primary.jsonl"))
    rm = run_metrics(record)[R1]
    assert rm.targeted
    # The journal has every kind of event, so every metric has a value of its unit's kind
    # (the keys alone prove nothing: the analysis starts from dict.fromkeys(CATALOG)).
    assert rm.missing == {} and rm.skipped == {}
    for name, metric in CATALOG.items():
        value = rm.metrics[name]
        assert value is not None, f"{name} was not computed"
        if metric.unit == "count":
            assert isinstance(value, int) and not isinstance(value, bool) and value >= 0, (name, value)
        else:
            assert isinstance(value, float) and value >= 0, (name, value)
    assert rm.metrics["failover_s"] == pytest.approx(3.6)
    assert rm.metrics["outage_s"] == pytest.approx(3.6)
    assert json.loads(rm.model_dump_json())["metrics"]["outages"] == 1


def test_tcp_stall_starts_at_since_and_unopened_sessions_are_not_counted() -> None:
    events = [
        tcp(0, None, "inbound", "skipped"),
        tcp(0, "s1", "inbound", "opened"), tcp(0, "s2", "outbound", "failed"),
        tcp(5.0, "s1", "inbound", "stall", since=T0 + 4.2), tcp(6.0, "s1", "inbound", "resumed", since=T0 + 4.2),
        tcp(9, "s1", "inbound", "closed"),
    ]
    m = metrics_of(events)
    assert (m["tcp_sessions"], m["tcp_dropped"], m["tcp_dropped_inbound"]) == (1, 0, 0)
    # no outbound session ever opened: 0 dropped would pass for "none dropped"; the probe did not
    # say it could not run outbound, so this is missing (a failure), not skipped
    rm = router_metrics(RunRecord(events), R1)
    assert rm.metrics["tcp_dropped_outbound"] is None
    assert rm.missing["tcp_dropped_outbound"] == "no outbound TCP session could be opened"
    assert "tcp_dropped_outbound" not in rm.skipped
    assert m["tcp_max_stall_s"] == pytest.approx(1.8)
    rm = router_metrics(RunRecord([tcp(0, "s2", "outbound", "failed")]), R1)
    assert rm.metrics["tcp_dropped"] is None and rm.missing["tcp_dropped"] == "no TCP session could be opened"


def test_new_connections_are_ordered_by_attempt_start_and_skips_ignored() -> None:
    def nc(t: float, started: float, ok: bool | None) -> dict[str, Any]:
        return ev(t, "probe.newconn", router_id=R1, direction="inbound", ok=ok, latency=None, error=None,
                  started=None if ok is None else T0 + started)

    # the attempt started at 3 times out at 6; the one started at 3.5 succeeds at once
    events = [obs(0, R1, "net1", True), inject(1, R1), nc(1, 1, None), nc(2.5, 2, False), nc(6, 3, False), nc(3.51, 3.5, True)]
    assert metrics_of(events)["new_conn_recovery_inbound_s"] == pytest.approx(2.51)


def test_plan_routers_and_affected_routers_decide_what_is_targeted() -> None:
    plan = ev(0, "run.plan", routers=[R1, R2], waves=[["a1"]], actions=[
        {"action_id": "a1", "fault": "reboot", "node": "net1", "router_id": None, "affected_routers": [R1, R2]}])
    events = [plan, obs(0.5, R1, "net1", True), obs(0.5, R2, "net2", True), inject(1, None, node="net1", action="a1"),
              obs(3, R1, "net2", True), obs(4, R2, "net3", True)]
    record = RunRecord(events)
    assert record.targeted_routers() == [R1, R2]
    assert router_metrics(record, R1).metrics["failover_s"] == pytest.approx(2.0)
    assert router_metrics(record, R2).metrics["failover_s"] == pytest.approx(3.0)  # affected though not on net1


def test_failover_and_recovery_count_from_the_injection_that_took_the_primary() -> None:
    """A node fault on the backup's node first (nothing moves), then one on the primary's node
    7 s later: failover and recovery count from the second, not from the first."""
    newconn = [ev(t, "probe.newconn", router_id=R1, direction="inbound", ok=t < 7.2 or t > 13.9, started=T0 + t - 0.1)
               for t in [x / 2 for x in range(2, 40)]]
    events = [
        obs(0, R1, "net1", True), obs(0, R1, "net2", False),
        inject(3, R1, node="net2", action="a1"),   # the backup's node
        inject(7, R1, node="net1", action="a2"),   # the primary's node
        obs(7.1, R1, "net1", False), obs(14.5, R1, "net2", True), *newconn,
    ]
    m = metrics_of(events)
    assert m["failover_s"] == pytest.approx(7.5)
    assert m["new_conn_recovery_inbound_s"] == pytest.approx(14.0 - 7)  # first success after the last failure
    assert router_metrics(RunRecord(events), R1).injected == pytest.approx(T0 + 7)
