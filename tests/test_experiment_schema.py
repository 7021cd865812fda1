"""The experiment format: durations, schedules (cron, time zone, jitter, blackouts), the schema's rules, positions, the shipped files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from chaos.experiment.durations import format_duration, parse_duration
from chaos.experiment.load import check_text, load_experiment
from chaos.experiment.metric_refs import METRICS, parse_metric_ref
from chaos.experiment.schedule import Schedule, cron_fields
from chaos.experiment.schema import FAULT_SPECS, Experiment

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "experiments").glob("*.yaml"))

MINIMAL = """\
title: t
target: {mode: one}
fault: {type: keepalived-kill}
steady_state_hypothesis:
  tolerances:
    outage_s: {max: 10}
"""


# --------------------------------------------------------------------------- durations
@pytest.mark.parametrize(
    ("text", "seconds"),
    [("20ms", 0.02), ("1.5s", 1.5), ("20s", 20.0), ("10m", 600.0), ("1h", 3600.0), (3, 3.0), (0.25, 0.25),
     ("7", 7.0), (".5s", 0.5), (" 2 s ", 2.0)],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "reason"),
    [("-1s", "negative"), (-2, "negative"), ("0s", "greater than zero"), (0, "greater than zero"),
     ("20 sec", "not a duration"), ("1d", "not a duration"), ("1m30s", "not a duration"), ("", "not a duration"),
     (True, "expected a duration"), ([1], "expected a duration"), (float("nan"), "finite"), (float("inf"), "finite")],
)
def test_parse_duration_rejects(text: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_duration(text)


def test_zero_only_where_allowed_and_formatting_round_trips() -> None:
    assert parse_duration("0s", allow_zero=True) == 0.0
    for seconds in (0.02, 0.5, 1.5, 20.0, 600.0, 3600.0, 90.0):
        assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)
    assert format_duration(600.0) == "10m" and format_duration(0.02) == "20ms" and format_duration(90.0) == "90s"


# --------------------------------------------------------------------------- cron (cronsim)
def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC) if "+" not in text else datetime.fromisoformat(text)


def test_cron_next_time_day_or_rule_and_macros() -> None:
    weekdays = Schedule(cron="0 3 * * 1-5")
    assert weekdays.next_after(_at("2026-11-27T04:00")) == _at("2026-11-30T03:00")  # Friday after 03:00 -> Monday
    either = Schedule(cron="0 0 1 * mon")  # both day fields restricted: the 1st OR a Monday (Vixie cron)
    assert either.times_between(_at("2026-11-29T00:00"), _at("2026-12-02T00:00")) == [
        _at("2026-11-30T00:00"), _at("2026-12-01T00:00")]
    assert cron_fields("@daily") == "0 0 * * *"
    assert Schedule(cron="*/15 3 * jan-mar mon-fri").next_after(_at("2026-01-05T03:50")) == _at("2026-01-06T03:00")
    assert Schedule(cron="5/20 * * * 7").next_after(_at("2026-11-29T00:06")) == _at("2026-11-29T00:25")  # 7 = Sunday


def test_cron_in_a_time_zone_across_daylight_saving() -> None:
    berlin = Schedule(cron="30 2 * * *", timezone="Europe/Berlin")
    # 2026-03-29: 02:00-03:00 does not exist in Berlin; Debian cron runs the job at 03:00 local (01:00 UTC)
    assert berlin.next_after(_at("2026-03-28T12:00")) == _at("2026-03-29T01:00")
    assert berlin.next_after(_at("2026-06-01T12:00")) == _at("2026-06-02T00:30")  # CEST: UTC+2


@pytest.mark.parametrize(
    ("text", "reason"),
    [("0 3 * *", "5 fields"), ("* * * * * *", "has 6"), ("60 * * * *", "bad minute"), ("0 24 * * *", "bad hour"),
     ("0 0 0 * *", "bad day-of-month"), ("0 0 * 13 *", "bad month"), ("0 0 * * 8", "bad day-of-week"),
     ("*/0 * * * *", "bad minute"), ("x * * * *", "bad minute"), ("0 0 * * funday", "bad day-of-week"),
     ("@fortnightly", "unknown cron macro"), ("0 0 31 2 *", "never fire")],
)
def test_cron_rejects(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        cron_fields(text)


def test_schedule_jitter_is_bounded_and_stable_per_firing() -> None:
    s = Schedule(cron="* * * * *", jitter=30)
    t = _at("2026-11-30T10:00")
    delays = {s.jitter_for("exp", t + timedelta(minutes=k)) for k in range(50)}
    assert all(0 <= d <= 30 for d in delays) and len(delays) > 40
    assert s.jitter_for("exp", t) == s.jitter_for("exp", t)  # the same firing after a restart
    assert Schedule(cron="* * * * *").jitter_for("exp", t) == 0.0


def test_blackouts_weekly_across_midnight_and_fixed_freeze() -> None:
    s = Schedule.model_validate({
        "cron": "* * * * *", "timezone": "Europe/Berlin",
        "blackouts": [{"name": "nights", "days": ["fri"], "start": "22:00", "end": "06:00"},
                      {"name": "freeze", "start": "2026-12-20T00:00", "end": "2027-01-04T00:00"}],
    })
    assert s.blackout_at(_at("2026-11-27T21:30")).name == "nights"  # Friday 22:30 in Berlin
    assert s.blackout_at(_at("2026-11-28T04:00")).name == "nights"  # Saturday 05:00: Friday's night
    assert s.blackout_at(_at("2026-11-29T04:00")) is None  # Sunday 05:00: Saturday's night is not listed
    assert s.blackout_at(_at("2026-12-24T12:00")).name == "freeze"  # naive edges are in the schedule's zone
    assert s.blackout_at(_at("2027-01-03T23:30")) is None  # 00:30 on the 4th in Berlin: the freeze is over


@pytest.mark.parametrize(
    ("schedule", "path", "reason"),
    [('"0 24 * * 1-5"', "schedule", "bad hour"),
     ('{cron: "@daily", timezone: Mars/Base}', "schedule.timezone", "unknown time zone"),
     ('{cron: "@daily", concurency: queue}', "schedule.concurency", "did you mean 'concurrency'"),
     ('{cron: "@daily", concurrency: replace}', "schedule.concurrency", "forbid, queue"),
     ('{cron: "@daily", jitter: -1s}', "schedule.jitter", "negative"),
     ('{cron: "@daily", blackouts: [{start: "09:00", end: "2026-12-01T00:00"}]}', "schedule.blackouts[0]", "both"),
     ('{cron: "@daily", blackouts: [{start: "25:00", end: "06:00"}]}', "schedule.blackouts[0].start", "neither")],
)
def test_schedule_problems_point_at_the_field(schedule: str, path: str, reason: str) -> None:
    text = (ROOT / "experiments" / "keepalived-term.yaml").read_text() + f"\nschedule: {schedule}\n"
    check = check_text(text, "x.yaml")
    assert check.experiment is None
    assert [p.path for p in check.problems] == [path], check.problems
    assert reason in check.problems[0].message
    assert check.problems[0].line == len(text.splitlines())  # the schedule's own line


# --------------------------------------------------------------------------- catalog
def test_metric_refs_and_catalog() -> None:
    assert parse_metric_ref("p95(outage_s)").aggregate == "p95"
    assert parse_metric_ref("outage_s").metric.scope == "floating-ip"
    assert parse_metric_ref("failover_s").metric.scope == "router"
    with pytest.raises(ValueError, match="did you mean 'split_brain_s'"):
        parse_metric_ref("split_brain")
    with pytest.raises(ValueError, match="unknown aggregate 'avg'"):
        parse_metric_ref("avg(outage_s)")
    for metric in METRICS.values():
        assert metric.unit in ("s", "count") and metric.definition.endswith(".")


def test_the_analysis_computes_every_metric_of_the_catalog() -> None:
    """A tolerance the validator accepts must have a value (or a reason why not) after a run."""
    from chaos.analysis.metrics import RunRecord, run_metrics
    from chaos.journal import read_journal

    journal = ROOT / "tests" / "data" / "journals" / "kill-primary.jsonl"
    routers = run_metrics(RunRecord(read_journal(journal)))
    assert routers
    for metrics in routers.values():
        # Every name is a key from the start (dict.fromkeys(CATALOG)): what can fail is a value
        # that stayed None without the analysis saying why.
        for name in METRICS:
            if metrics.metrics[name] is None:
                reason = metrics.missing.get(name) or metrics.skipped.get(name)
                assert reason, f"{name} is None for {metrics.router_id} with no reason given"
    computed = {name for m in routers.values() for name, value in m.metrics.items() if value is not None}
    assert computed == set(METRICS), f"never computed: {sorted(set(METRICS) - computed)}"


# --------------------------------------------------------------------------- schema
def _check(text: str):  # type: ignore[no-untyped-def]
    return check_text(text, "x.yaml")


def test_minimal_file_gets_the_documented_defaults() -> None:
    check = _check(MINIMAL)
    assert check.ok, check.problems
    exp = check.experiment
    assert exp is not None
    assert exp.target.source == "lab" and exp.target.lab is None and exp.target.lab_name("chaoslab") == "chaoslab"
    assert isinstance(exp.fault, FAULT_SPECS["keepalived-kill"]) and exp.fault.params.signal == "KILL" and exp.fault.params.respawn_wait is None  # the node's check_child_processes_interval + margin
    assert exp.fault.replica == "primary"
    assert exp.probes.enabled() == ("icmp", "primary") and exp.probes.icmp is not None and exp.probes.icmp.interval == 0.02
    assert exp.safeguards.max_nodes_at_once == 1 and exp.safeguards.max_run_duration == 600
    assert exp.steady_state_hypothesis.checks()[0].tolerance.phase == "after"


def test_bare_probe_keys_switch_probes_on_and_false_off() -> None:
    text = MINIMAL.replace("outage_s", "tcp_dropped") + "probes:\n  icmp: false\n  primary:\n  arp: true\n  tcp: {}\n"
    check = _check(text)
    assert check.experiment is not None, check.problems
    assert check.experiment.probes.enabled() == ("tcp", "primary", "arp")


def test_signal_spellings_and_stop_needs_a_duration() -> None:
    ok = _check(MINIMAL.replace("{type: keepalived-kill}", "{type: keepalived-kill, params: {signal: sigstop}, duration: 5s}"))
    assert ok.experiment is not None and ok.experiment.fault.params.signal == "STOP"  # type: ignore[union-attr]
    bad = _check(MINIMAL.replace("{type: keepalived-kill}", "{type: keepalived-kill, params: {signal: STOP}}"))
    assert [str(p) for p in bad.problems] == [
        "x.yaml:3:1: fault.duration: required with signal STOP: how long keepalived stays stopped before CONT"
    ]


def test_every_problem_of_a_file_is_reported_in_file_order() -> None:
    text = """\
title: ""
target: {mode: fixed, value: 2.5, cloud: c, routers: {ids: [not-a-uuid]}}
fault: {type: gateway-reboot, duration: 10s, params: {method: ipmi}}
safeguards: {grace: 20m, max_run_duration: 10m}
probes:
  tcp: {interval: 2s, stall: 1s, directions: [inbound, inbound]}
steady_state_hypothesis:
  tolerances:
    "count(tcp_dropped)": {equals: 1.5}
    sent: {min: -1}
"""
    got = [str(p) for p in _check(text).problems]
    assert got == [  # each position is the offending token (checked by hand)
        "x.yaml:1:8: title: must not be empty",
        "x.yaml:2:61: target.routers.ids[0]: router id 'not-a-uuid' is not a lowercase UUID like Neutron's",
        "x.yaml:3:63: fault.params.method: unknown value 'ipmi' (choose one of: lab, ssh, sysrq)",
        "x.yaml:4:21: safeguards.grace: 20m is not shorter than max_run_duration (10m)",
        "x.yaml:6:30: probes.tcp.stall: must be longer than probes.tcp.interval (2s): a session is silent between two echoes",
        "x.yaml:6:34: probes.tcp.directions: lists a direction twice",
        "x.yaml:9:36: steady_state_hypothesis.tolerances.count(tcp_dropped).equals: count(tcp_dropped) is a whole number; "
        "equals 1.5 can never hold",
        "x.yaml:10:5: steady_state_hypothesis.tolerances.sent: sent comes from the icmp probe, which is not enabled "
        "(add probes.icmp)",
        "x.yaml:10:17: steady_state_hypothesis.tolerances.sent.min: -1 is negative; sent never is",
    ]


def test_combination_rules_of_a_valid_target_section() -> None:
    text = MINIMAL.replace("target: {mode: one}", "target: {mode: fixed, value: 2.5, cloud: c}")
    got = [str(p) for p in _check(text).problems]
    assert got == [
        "x.yaml:2:30: target.value: mode fixed takes a whole number of routers >= 1, got 2.5",
        "x.yaml:2:42: target.cloud: only with source: openstack (the source is lab)",
    ]


def test_run_that_cannot_fit_in_max_run_duration_is_refused() -> None:
    text = MINIMAL.replace("{type: keepalived-kill}", "{type: ha-link-down, duration: 2m}") + (
        "safeguards: {max_run_duration: 1m}\n"
    )
    assert [str(p) for p in _check(text).problems] == [
        "x.yaml:7:32: safeguards.max_run_duration: 1m is shorter than warmup + fault.duration + settle (135s): "
        "the run would always abort"
    ]


def test_inventory_path_is_resolved_next_to_the_experiment(tmp_path: Path) -> None:
    (tmp_path / "inv.yaml").write_text("nodes: []\n")
    path = tmp_path / "exp.yaml"
    path.write_text(MINIMAL.replace("{mode: one}", "{mode: one, source: inventory, inventory: inv.yaml}"))
    assert load_experiment(path).target.inventory == tmp_path / "inv.yaml"
    path.write_text(MINIMAL.replace("{mode: one}", "{mode: one, source: inventory, inventory: missing.yaml}"))
    from chaos.experiment.load import check_experiment

    assert [p.message for p in check_experiment(path).problems] == [f"no inventory file at {tmp_path / 'missing.yaml'}"]


def test_experiment_built_directly_enforces_the_combination_rules() -> None:
    data = {
        "title": "t", "target": {"mode": "all", "value": 3}, "fault": {"type": "gateway-reboot"},
        "steady_state_hypothesis": {"tolerances": {"outage_s": {"max": 1}}},
    }
    with pytest.raises(ValidationError, match="target.value: not allowed with mode all"):
        Experiment.model_validate(data)
    del data["target"]["value"]  # type: ignore[attr-defined]
    assert isinstance(Experiment.model_validate(data).fault, FAULT_SPECS["gateway-reboot"])


def test_tolerance_holds() -> None:
    exp = _check(MINIMAL).experiment
    assert exp is not None
    tolerance = exp.steady_state_hypothesis.tolerances["outage_s"]
    assert tolerance.holds(10) and tolerance.holds(0) and not tolerance.holds(10.01)


# --------------------------------------------------------------------------- shipped
def test_every_shipped_experiment_is_valid_and_short_enough_for_ci() -> None:
    names = {p.name for p in SHIPPED}
    assert {"gateway-reboot.yaml", "keepalived-kill.yaml", "keepalived-term.yaml", "ha-link-down.yaml",
            "vrrp-partition.yaml"} <= names
    for path in SHIPPED:
        exp = load_experiment(path)
        if exp.fault.type == "agent-evacuate":  # moves replicas through the Neutron API (the lab's own)
            assert exp.target.source == "openstack" and exp.target.mode == "one"
        else:
            assert exp.target.source == "lab"
            assert exp.target.mode == "all" or (exp.target.mode == "fixed-percent" and exp.target.value == 50)
        planned = exp.probes.warmup + (exp.fault.duration or 0) + exp.probes.settle
        assert planned <= 45, f"{path.name}: {planned}s of planned run"
        assert exp.steady_state_hypothesis.tolerances["primaries_after"].equals == 1


def test_shipped_hypotheses_follow_vrrp_physics() -> None:
    """Neutron's defaults: advert_int 2, priority 50 -> Master_Down_Interval 7.6 s, Skew_Time 1.6 s."""
    master_down = 3 * 2 + (256 - 50) / 256 * 2
    skew = (256 - 50) / 256 * 2

    def tol(name: str, metric: str) -> float:
        exp = load_experiment(ROOT / "experiments" / name)
        t = exp.steady_state_hypothesis.tolerances[metric]
        return t.max if t.max is not None else t.min  # type: ignore[return-value]

    assert skew < tol("keepalived-term.yaml", "outage_s") < master_down  # TERM must beat a silent failover
    for name in ("ha-link-down.yaml", "gateway-reboot.yaml"):
        assert master_down < tol(name, "outage_s") <= master_down + 3
    kill = load_experiment(ROOT / "experiments/keepalived-kill.yaml")
    assert kill.fault.params.signal == "KILL"  # type: ignore[union-attr]
    term = load_experiment(ROOT / "experiments/keepalived-term.yaml")
    assert term.fault.params.signal == "TERM"  # type: ignore[union-attr]
    partition = load_experiment(ROOT / "experiments/vrrp-partition.yaml")
    split = partition.steady_state_hypothesis.tolerances["split_brain_s"]
    assert split.phase == "during" and split.min is not None and 0 < split.min < (partition.fault.duration or 0) - master_down


def test_the_documented_example_validates_and_the_docs_list_every_metric() -> None:
    import re

    doc = (ROOT / "docs/experiment-format.md").read_text()
    example = re.search(r"## Example\n\n```yaml\n(.*?)```", doc, re.S)
    assert example is not None
    check = check_text(example[1], "docs example")
    assert check.ok, check.problems
    for name in METRICS:
        assert f"| `{name}` |" in doc, f"{name} is missing from the docs' catalog"
