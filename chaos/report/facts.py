"""What every report format says the same way: value formatting, router order, plain answers.

The field report asked three questions operators could not answer without logging into nodes:
where is the primary now, did TCP sessions survive the failover, was connection state
replicated. The answers are worded here once so that HTML, Markdown and the terminal agree,
and "not measured" is said as such (a missing probe is never an answer of "yes").
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from chaos.analysis.hypothesis import ToleranceResult
from chaos.analysis.metrics import CATALOG, RouterMetrics, Value
from chaos.analysis.summary import Summary
from chaos.probes.health import LIMITS, describe

Status = Literal["good", "bad", "unknown"]

VERDICT_TEXT: dict[str, str] = {
    "held": "HELD: the steady-state hypothesis held",
    "deviated": "DEVIATED: a tolerance of the hypothesis failed",
    "inconclusive": "INCONCLUSIVE: a tolerance failed, but only where the tool or the lab was saturated (see Run health)",
    "aborted": "ABORTED: a safeguard stopped the run (everything was rolled back)",
    "interrupted": "INTERRUPTED: the run was stopped before it finished",
    "error": "ERROR: the run failed",
    "steady-state-broken": "STEADY STATE BROKEN: the hypothesis failed before injection; nothing was injected",
    "skipped": "SKIPPED: another run held a lease on a router or node of the plan; nothing was injected",
    "invalid": "INVALID: the experiment or its target could not be used; nothing was injected",
    "left-injected": "LEFT INJECTED: an undo failed; a fault may still be in place (see below: chaos recover undoes it)",
}

# The per-router columns every report shows (the rest are in summary.json).
TABLE_METRICS: tuple[str, ...] = (
    "outage_s", "lost", "failover_s", "no_primary_s", "split_brain_s", "primaries_after",
    "tcp_dropped", "tcp_max_stall_s", "new_conn_recovery_inbound_s", "new_conn_recovery_outbound_s",
    "conntrack_replicated", "conntrack_lost", "garp_delay_s", "api_lag_s",
)
SYMBOL = {"max": "≤", "min": "≥", "equals": "="}


def fmt(value: Value, metric: str | None = None) -> str:
    """A value for people: seconds to the millisecond, counts as integers, None as an em dash."""
    if value is None:
        return "—"
    unit = CATALOG[metric].unit if metric in CATALOG else None
    if unit == "s" or (isinstance(value, float) and not float(value).is_integer()):
        return f"{value:.3f} s" if unit == "s" else f"{value:.3f}"
    return f"{int(value)}" if float(value).is_integer() else f"{value:g}"


def fmt_bound(t: ToleranceResult) -> str:
    threshold = f"{t.threshold:g}" + (" s" if CATALOG.get(t.metric) and CATALOG[t.metric].unit == "s" and t.aggregate != "count" else "")
    return f"{SYMBOL[t.comparator]} {threshold}"


def fmt_time(t: float | None) -> str:
    if t is None:
        return "—"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def tolerance_value(t: ToleranceResult) -> str:
    metric = None if t.aggregate == "count" else t.metric
    if t.skipped:
        return "not measured"
    return "no data" if t.value is None else fmt(t.value, metric)


def failures_by_router(summary: Summary) -> dict[str, list[str]]:
    """Router id -> names of the router-scope tolerances it failed."""
    out: dict[str, list[str]] = {}
    for t in summary.tolerances:
        for r in t.failing_routers:
            out.setdefault(r, []).append(f"{t.name} [{t.phase}]")
    return out


def router_order(summary: Summary, *, targeted_only: bool = True) -> list[RouterMetrics]:
    """Routers that failed a tolerance first (most failures first), then the longest outage."""
    failing = failures_by_router(summary)
    routers = [r for r in summary.routers if r.targeted or not targeted_only]

    def key(r: RouterMetrics) -> tuple[int, int, float, str]:
        outage = r.metrics.get("outage_s")
        return (0 if r.targeted else 1, -len(failing.get(r.router_id, [])), -(outage if outage is not None else -1.0), r.router_id)

    return sorted(routers, key=key)


@dataclass
class Answer:
    question: str
    short: str
    status: Status
    details: list[str] = field(default_factory=list)


def primary_now(summary: Summary, names: dict[str, str]) -> Answer:
    """Where each targeted router's primary is at the end of the run."""
    q = "Where is the primary now?"
    routers = [r for r in summary.routers if r.targeted]
    if not routers:
        return Answer(q, "No router was targeted.", "unknown")
    counts: Counter[str] = Counter()
    per_node: Counter[str] = Counter()
    details: list[str] = []
    for r in routers:
        label = label_of(r.router_id, names)
        after = r.holders_after
        if after is None:
            counts["unknown"] += 1
            details.append(f"{label}: unknown (never observed)")
            continue
        before = r.holders_before or []
        moved = f" (was {', '.join(before) or 'none'})" if before and sorted(before) != sorted(after) else ""
        if len(after) == 1:
            counts["one"] += 1
            per_node[after[0]] += 1
            details.append(f"{label}: {after[0]}{moved}")
        elif not after:
            counts["none"] += 1
            details.append(f"{label}: NO PRIMARY{moved}")
        else:
            counts["several"] += 1
            details.append(f"{label}: SPLIT BRAIN on {', '.join(after)}{moved}")
    parts = [f"{counts['one']} of {len(routers)} routers end with exactly one primary"]
    if counts["none"]:
        parts.append(f"{counts['none']} with none")
    if counts["several"]:
        parts.append(f"{counts['several']} with two or more (split brain)")
    if counts["unknown"]:
        parts.append(f"{counts['unknown']} never observed")
    # what needs attention first; routers that simply have one primary come after
    details.sort(key=lambda d: (not any(w in d for w in ("NO PRIMARY", "SPLIT BRAIN", "unknown")), d))
    spread = ", ".join(f"{node} holds {n}" for node, n in sorted(per_node.items()))
    short = "; ".join(parts) + "." + (f" Primaries by node: {spread}." if spread else "")
    status: Status = "good" if counts["one"] == len(routers) else ("unknown" if counts["unknown"] == len(routers) else "bad")
    return Answer(q, short, status, details)


def tcp_survived(summary: Summary, names: dict[str, str] | None = None) -> Answer:
    q = "Did TCP sessions survive?"
    names = names or {}
    routers = [r for r in summary.routers if r.targeted and r.metrics.get("tcp_sessions") is not None]
    if not routers:
        return Answer(q, "Not measured: no TCP session probe ran (or no session could be opened).", "unknown")
    sessions = sum(int(r.metrics["tcp_sessions"] or 0) for r in routers)
    dropped = sum(int(r.metrics["tcp_dropped"] or 0) for r in routers)
    by_dir = {d: sum(int(r.metrics.get(f"tcp_dropped_{d}") or 0) for r in routers) for d in ("inbound", "outbound")}
    stalls = [r.metrics["tcp_max_stall_s"] for r in routers if r.metrics.get("tcp_max_stall_s") is not None]
    longest = max(stalls, default=None)
    stall = f" The longest stall was {fmt(longest, 'tcp_max_stall_s')}." if longest else ""
    if dropped == 0:
        short = f"Yes: all {sessions} sessions over {len(routers)} routers survived.{stall}"
        status: Status = "good"
    else:
        short = (f"No: {dropped} of {sessions} sessions were dropped (inbound {by_dir['inbound']}, "
                 f"outbound {by_dir['outbound']}).{stall}")
        status = "bad"
    details = [f"{label_of(r.router_id, names)}: {r.metrics['tcp_dropped']} of {r.metrics['tcp_sessions']} dropped"
               for r in routers if r.metrics.get("tcp_dropped")]
    return Answer(q, short, status, details)


def state_replicated(summary: Summary) -> Answer:
    q = "Was connection state replicated?"
    routers = [r for r in summary.routers if r.targeted and r.metrics.get("conntrack_entries") is not None]
    if not routers:
        return Answer(q, "Not measured: no conntrack snapshots in the journal.", "unknown")
    entries = sum(int(r.metrics["conntrack_entries"] or 0) for r in routers)
    repl_known = [r for r in routers if r.metrics.get("conntrack_replicated") is not None]
    replicated = sum(int(r.metrics["conntrack_replicated"] or 0) for r in repl_known)
    lost_known = [r for r in routers if r.metrics.get("conntrack_lost") is not None]
    lost = sum(int(r.metrics["conntrack_lost"] or 0) for r in lost_known)
    parts = [f"{entries} conntrack entries on the primaries before the fault"]
    parts.append(f"{replicated} of them were on the backup that took over" if repl_known else "replication not measured")
    parts.append(f"{lost} missing on the new primary after the failover" if lost_known else "loss after failover not measured")
    if repl_known and replicated >= entries and (not lost_known or lost == 0):
        status: Status = "good"
        lead = "Yes"
    elif repl_known and replicated == 0:
        status, lead = "bad", "No"
    elif repl_known:
        status, lead = "bad", "Partly"
    else:
        status, lead = "unknown", "Unknown"
    return Answer(q, f"{lead}: " + "; ".join(parts) + ".", status)


def keepalived_restarts(summary: Summary) -> Answer | None:
    """Who brought keepalived back after it was ended: Neutron's L3 agent (its process monitor,
    as on the cloud) or the tool (it waited respawn_wait in vain). None when no keepalived was
    ended in the run."""
    by = Counter(f.restarted_by for r in summary.routers for f in r.faults if f.restarted_by)
    actions = {f.action_id for r in summary.routers for f in r.faults if f.restarted_by}
    if not by:
        return None
    q = "Who restarted keepalived?"
    agent, tool = by.get("agent", 0), by.get("tool", 0)
    if tool == 0:
        return Answer(q, f"The L3 agent, for all {len(actions)} action(s): its process monitor respawned keepalived.", "good")
    text = (f"The tool, for {tool} of {agent + tool} router(s): the agent had not respawned keepalived within "
            "respawn_wait (check its check_child_processes_interval), so the undo started it the way the agent does.")
    return Answer(q, text, "bad")


def label_of(router_id: str, names: dict[str, str]) -> str:
    name = names.get(router_id)
    return f"{name} ({router_id[:8]})" if name else router_id


@dataclass(frozen=True)
class HealthFacts:
    """The run's own health in a report's words: one headline, figures with their limits, and
    the saturated periods (each with what was past its limit)."""

    headline: str
    rows: list[tuple[str, str, bool]]  # (what, figure, past its limit)
    periods: list[str]


def run_health(summary: Summary) -> HealthFacts | None:
    """None for a run without health samples (an older journal)."""
    h = summary.health
    if h is None:
        return None
    hit = [r for r in summary.routers if r.targeted and r.saturated]
    if h.saturated_samples:
        headline = (f"The measurement was saturated for {h.saturated_samples} of {h.samples} seconds; "
                    f"{len(hit)} targeted router(s) were measured then (flagged ⚠ below): their figures may be the "
                    "tool's or the lab's, not the cloud's.")
    else:
        headline = f"The measurement kept up for all {h.samples} seconds sampled: no figure was measured while saturated."

    def secs(v: float | None) -> str:
        return "—" if v is None else f"{v:.3f} s"

    def share(v: float | None) -> str:
        return "—" if v is None else f"{v:.0%}"

    def past(v: float | None, key: str) -> bool:
        return v is not None and v > LIMITS[key]

    skipped_share = (h.probe_skipped / max(1, (h.probe_sends or 0) + h.probe_skipped)) if h.probe_skipped is not None else None
    rows = [
        ("event loop, latest wake-up", f"{secs(h.loop_lag_max)} (limit {LIMITS['loop_lag_max']:g} s)", past(h.loop_lag_max, "loop_lag_max")),
        ("runner CPU, mean / peak", f"{'—' if h.runner_cpu_mean is None else f'{h.runner_cpu_mean:.2f}'} / "
         f"{'—' if h.runner_cpu_max is None else f'{h.runner_cpu_max:.2f}'} cores (limit {LIMITS['runner_cpu']:g})",
         past(h.runner_cpu_max, "runner_cpu")),
        ("host CPU busy, peak (on the lab: the lab's)", share(h.host_cpu_max), False),
        ("CPU pressure, peak (runnable tasks waiting)", f"{share(h.cpu_pressure_max)} (limit {LIMITS['cpu_pressure']:.0%})",
         past(h.cpu_pressure_max, "cpu_pressure")),
        ("ICMP sends / skipped", "—" if h.probe_sends is None else f"{h.probe_sends} / {h.probe_skipped or 0}"
         + ("" if skipped_share is None else f" ({skipped_share:.1%}; limit {LIMITS['probe_skipped']:.0%})"),
         skipped_share is not None and skipped_share > LIMITS["probe_skipped"]),
        ("ICMP send lateness p99, worst second", f"{secs(h.probe_late_p99_max)} (limit {LIMITS['probe_late']:g} s)",
         past(h.probe_late_p99_max, "probe_late")),
        ("replica stream behind the nodes, worst", f"{secs(h.observer_lag_max)} (limit {LIMITS['observer_lag_max']:g} s)",
         past(h.observer_lag_max, "observer_lag_max")),
    ]
    periods = [
        f"{fmt_time(p.start)} to {fmt_time(p.end)} ({p.end - p.start:.0f} s): "
        + "; ".join(describe(k, v) for k, v in sorted(p.reasons.items()))
        for p in h.periods
    ]
    return HealthFacts(headline, rows, periods)
