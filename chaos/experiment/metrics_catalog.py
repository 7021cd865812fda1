"""The metrics a hypothesis can name: what each one measures, in which unit, over what.

This is data, shared by the validator (a tolerance must name a metric here), the analysis
(which computes each metric from the journal's raw samples) and the reports (units and
definitions). docs/experiment-format.md spells out the same definitions at length; keep the
two in step.

Every metric is computed per router or per floating IP, over the samples of one phase window
(see ``PHASES``); an aggregate such as ``p95(outage_s)`` then summarises those values over
every targeted router (or floating IP, for per-floating-IP metrics).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Scope = Literal["router", "floating-ip"]
Unit = Literal["s", "count"]
Phase = Literal["before", "during", "after"]

PHASES: tuple[Phase, ...] = ("before", "during", "after")
"""Windows a tolerance is checked over.

before: the warmup, from the probes' start to the first injection (checked before injecting:
        a deviation there means the steady state was already broken and nothing is injected);
during: from the first injection to the end of the last undo;
after:  the whole run, from the probes' start to the end of the settle time (the default).
"""

AGGREGATES: tuple[str, ...] = ("p50", "p95", "p99", "max", "min", "mean", "sum", "count")
"""Aggregates over the targeted routers' (or floating IPs') values of a metric."""


@dataclass(frozen=True)
class Metric:
    name: str
    unit: Unit
    scope: Scope
    probe: str
    """The probe whose samples the metric is computed from; a tolerance needs it enabled."""
    definition: str
    worst: Literal["max", "min"] = "max"
    """Which end is worse: how a router's value is taken from its floating IPs' values."""
    phases: tuple[Phase, ...] = PHASES
    """Phases in which the metric has a meaning (primaries_after has none before the fault)."""
    compute: Callable[[Sequence[Mapping[str, Any]], float, float], float | int | None] | None = None
    """A plugin probe's metric: its value for one router from that router's events of the
    probe's kinds inside a window (events, window start, window end); None when it has none.
    The built-in metrics are computed by chaos.analysis.metrics."""


_CATALOG: tuple[Metric, ...] = (
    Metric(
        "outage_s", "s", "floating-ip", "icmp",
        "Longest run of consecutive lost echo requests to the floating IP: from the send time of "
        "its first request to the send time of the first answered request after it (or of the "
        "window's last request plus one interval); 0 when nothing is lost. Resolution: the probe "
        "interval.",
    ),
    Metric(
        "lost", "count", "floating-ip", "icmp",
        "Echo requests to the floating IP that got no reply within the probe's timeout.",
    ),
    Metric(
        "sent", "count", "floating-ip", "icmp",
        "Echo requests sent to the floating IP (the denominator of lost).",
        worst="min",
    ),
    Metric(
        "outages", "count", "floating-ip", "icmp",
        "Separate runs of consecutive lost echo requests to the floating IP (a flapping address "
        "shows several).",
    ),
    Metric(
        "failover_s", "s", "router", "primary",
        "From the first injection to the first time a replica that did not hold the router's "
        "addresses before takes them; no value when none took over.",
        phases=("during", "after"),
    ),
    Metric(
        "split_brain_s", "s", "router", "primary",
        "Total time during which two or more replicas held the router's addresses at once, by "
        "the replica observer's latest report for each replica.",
    ),
    Metric(
        "no_primary_s", "s", "router", "primary",
        "Total time during which no replica held the router's addresses, by the replica "
        "observer's latest report for each replica (a replica on a node that is down holds none).",
    ),
    Metric(
        "transitions", "count", "router", "primary",
        "Changes of the set of replicas holding the router's addresses (a clean failover is one "
        "change: {a} -> {b}; through a gap it is two: {a} -> {} -> {b}).",
    ),
    Metric(
        "primaries_before", "count", "router", "primary",
        "Replicas holding the router's addresses just before the first injection.",
        phases=("before", "after"),
    ),
    Metric(
        "primaries_after", "count", "router", "primary",
        "Replicas holding the router's addresses at the end of the run (after the settle time).",
        phases=("after",),
    ),
    Metric(
        "tcp_sessions", "count", "router", "tcp",
        "TCP echo sessions the probe opened through the router (inbound and outbound together).",
        worst="min",
    ),
    Metric(
        "tcp_dropped", "count", "router", "tcp",
        "TCP sessions that ended with a reset or a timeout before the probe closed them.",
    ),
    Metric(
        "tcp_dropped_inbound", "count", "router", "tcp",
        "tcp_dropped for the sessions opened from the vantage to the floating IP.",
    ),
    Metric(
        "tcp_dropped_outbound", "count", "router", "tcp",
        "tcp_dropped for the sessions opened from the VM out through the router's SNAT.",
    ),
    Metric(
        "tcp_max_stall_s", "s", "router", "tcp",
        "Longest time a TCP session went without an echoed byte beyond the probe's stall "
        "threshold: from the stall report to the resume (or to the session's end).",
    ),
    Metric(
        "new_conn_recovery_inbound_s", "s", "router", "new_connections",
        "New TCP connections from the vantage to the floating IP: from the injection to the first "
        "successful attempt after the last failed one; 0 when none failed.",
        phases=("during", "after"),
    ),
    Metric(
        "new_conn_recovery_outbound_s", "s", "router", "new_connections",
        "The same for new connections from the VM out through the router's SNAT to the vantage.",
        phases=("during", "after"),
    ),
    Metric(
        "garp_delay_s", "s", "router", "arp",
        "From a replica's transition to primary to the first gratuitous ARP for the router's "
        "addresses seen on the external network (the largest such delay in the window).",
        phases=("during", "after"),
    ),
    Metric(
        "garp_count", "count", "router", "arp",
        "Gratuitous ARPs for the router's addresses seen on the external network.",
    ),
    Metric(
        "conntrack_entries", "count", "router", "conntrack",
        "Conntrack entries for the router's floating IPs on the primary before the injection.",
        worst="min",
        phases=("before", "after"),
    ),
    Metric(
        "conntrack_replicated", "count", "router", "conntrack",
        "Of those entries, how many the backup held before the fault (conntrackd replication).",
        worst="min",
        phases=("after",),
    ),
    Metric(
        "conntrack_lost", "count", "router", "conntrack",
        "Of those entries, how many were missing on the new primary after the failover.",
        phases=("after",),
    ),
    Metric(
        "api_lag_s", "s", "router", "api_lag",
        "From an observed transition to primary to the first API poll in which the Neutron API "
        "reported that replica's agent ha_state active (the largest such lag in the window).",
    ),
    Metric(
        "api_disagreements", "count", "router", "api_lag",
        "API polls in which the agent reported active by the API was not the observed primary.",
    ),
)

BUILTIN_METRICS: dict[str, Metric] = {m.name: m for m in _CATALOG}
