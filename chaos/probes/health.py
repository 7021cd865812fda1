"""The run's own health: is the measurement keeping up, or is it measuring its own overload?

A run that disturbs many routers at once can saturate the machine it measures from (and, on the
lab, the machine the routers run on): probe sends slip or are skipped, the event loop wakes late,
the replica stream falls behind the kernel. Outages then look longer or shorter than they were,
and a deviation could be the measurement's, not the cloud's. So the run records its own health
next to the figures, once a second (``run.health`` events), and the summary flags every figure
measured while the tool or the lab was saturated (``saturation``), instead of blaming the cloud.

What one sample holds, over the second it covers:

- event-loop lag: how late a 50 ms ticker woke (max and p99). Every probe and the observer share
  this loop, so a late loop is a late measurement.
- the runner's CPU (cores: user+system time of this process per wall second) and the host's
  (fraction of all CPUs busy, from /proc/stat), and the host's CPU pressure (PSI: the share of
  time some runnable task waited for a CPU, /proc/pressure/cpu). On the lab target the routers,
  keepalived and sshd run on this host, so the host's figures are the lab's, and its CPU pressure
  counts as saturation; against a real cloud a busy runner host shows in the loop lag and the
  probes' lateness instead (the routers do not run here).
- ICMP send lateness: sends, skipped sends and the p99 lateness against the schedule, from the
  ICMP probe's histogram (``SendCounter``).
- the replica stream's lag: a node stamps each heartbeat with its clock; arrival here minus that
  stamp is how far behind the kernel's events the observer runs (plus the clocks' offset on a
  real cloud, a few milliseconds under NTP; zero on the lab, one clock).

The thresholds (``LIMITS``) mark what makes a figure unreliable, not what is merely busy. The
figures that matter here (outage, failover, no primary) are read to about 0.1 s against
tolerances of seconds, so: a loop 100 ms late, sends 50 ms late (p99; the ICMP probe's lateness
histogram ends at 100 ms, so its limit must lie below that) or a tenth of them skipped
(each skip widens the probe's resolution by an interval; a send a few milliseconds late does not
change an outage of seconds), a stream 0.5 s behind, a lab host where runnable tasks waited for a
CPU 90 % of the time, a runner using 90 % of its one core (the event loop is one thread). A loaded
2-core host running a small lab sees ICMP sends 10-20 ms late at 20 ms intervals and CPU
pressure of 50-70 % without any figure moving: that is busy, not saturated.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import resource
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from chaos.journal import Journal
from chaos.log import get_logger
from chaos.probes.icmp import histogram_quantiles

log = get_logger("health")

INTERVAL = 1.0  # one sample per second
TICK = 0.05  # the event-loop ticker's period
LIMITS: Mapping[str, float] = {
    "loop_lag_max": 0.1,  # seconds the event loop woke late (max in the sample)
    "probe_late": 0.05,  # seconds: p99 ICMP send lateness (the probe's histogram ends at 0.1 s)
    "probe_skipped": 0.1,  # share of ICMP sends skipped because the loop fell a round behind
    "observer_lag_max": 0.5,  # seconds the replica stream's heartbeat arrived after the node sent it
    "cpu_pressure": 0.9,  # share of the sample some runnable task waited for a CPU (PSI "some"; lab only)
    "runner_cpu": 0.9,  # cores this process used (its event loop is one thread)
}


class SendCounter(Protocol):
    """A probe that sends on a schedule and counts how late its sends were (the ICMP probe)."""

    interval: float

    def send_counts(self) -> tuple[int, Sequence[int], float]:
        """(skipped sends so far, the lateness histogram so far, the histogram's bin width in s)."""
        ...


class LagSource(Protocol):
    """Something that measures how far behind the events it follows it runs (the observer)."""

    def drain_lags(self) -> list[float]:
        """The lags (seconds) measured since the last call."""
        ...


@dataclass
class _Cpu:
    """Cumulative CPU counters at one moment."""

    wall: float
    runner: float  # seconds of CPU this process used
    host_busy: float | None  # jiffies of all CPUs busy
    host_total: float | None
    pressure_us: float | None  # PSI "some" total, microseconds

    @classmethod
    def now(cls) -> _Cpu:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        busy = total = pressure = None
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
            busy = total - fields[3] - fields[4]
        with contextlib.suppress(OSError, ValueError, IndexError):
            some = Path("/proc/pressure/cpu").read_text().split("\n", 1)[0]
            pressure = float(some.rsplit("total=", 1)[1])
        return cls(time.monotonic(), usage.ru_utime + usage.ru_stime, busy, total, pressure)


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class RunHealth:
    """Samples the run's health every ``interval`` into ``run.health`` events, and warns once per
    episode when the measurement is saturated (so a person watching knows while it happens)."""

    def __init__(
        self,
        journal: Journal,
        *,
        senders: Sequence[SendCounter] = (),
        lag_sources: Sequence[LagSource] = (),
        interval: float = INTERVAL,
        lab_on_host: bool = False,
    ) -> None:
        self.journal = journal
        self.lab_on_host = lab_on_host
        self.senders = list(senders)
        self.lag_sources = list(lag_sources)
        self.interval = interval
        self.samples = 0
        self.saturated_samples = 0
        self._ticks: list[float] = []
        self._last_clean = True

    async def run(self, stop: asyncio.Event, max_duration: float) -> None:
        """Until ``stop`` or ``max_duration``; the ticker stops with it (structured: one group)."""
        async with asyncio.TaskGroup() as tg:
            ticker = tg.create_task(self._tick(stop, max_duration))
            try:
                await self._sample_until(stop, max_duration)
            finally:
                ticker.cancel()

    async def _tick(self, stop: asyncio.Event, max_duration: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + max_duration
        due = loop.time() + TICK
        while not stop.is_set() and due < end:
            await asyncio.sleep(max(0.0, due - loop.time()))
            now = loop.time()
            self._ticks.append(max(0.0, now - due))
            # A loop blocked for several periods is one late wake-up, not a burst of them.
            due = max(due + TICK, now + TICK / 2)

    async def _sample_until(self, stop: asyncio.Event, max_duration: float) -> None:
        end = time.monotonic() + max_duration
        before = _Cpu.now()
        histograms = [(list(counts), skipped) for skipped, counts, _ in (s.send_counts() for s in self.senders)]
        for source in self.lag_sources:
            source.drain_lags()  # lags from before the first sample belong to no sample
        while time.monotonic() < end:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(self.interval, max(0.0, end - time.monotonic())))
            after = _Cpu.now()
            fields, histograms = self._sample(before, after, histograms)
            before = after
            if fields is not None:
                self._write(fields)
            if stop.is_set():
                return

    def _sample(
        self, before: _Cpu, after: _Cpu, histograms: list[tuple[list[int], int]]
    ) -> tuple[dict[str, Any] | None, list[tuple[list[int], int]]]:
        wall = after.wall - before.wall
        if wall <= 0.05:  # too short to say anything (a stop right after a sample)
            return None, histograms
        ticks, self._ticks = self._ticks, []
        fields: dict[str, Any] = {
            "window": round(wall, 3),
            "loop_lag_max": round(max(ticks), 4) if ticks else None,
            "loop_lag_p99": round(_quantile(ticks, 0.99), 4) if ticks else None,
            "runner_cpu": round((after.runner - before.runner) / wall, 3),
            "host_cpu": None,
            "cpu_pressure": None,
            "lab_on_host": self.lab_on_host,
        }
        if after.host_total is not None and before.host_total is not None and after.host_total > before.host_total:
            assert after.host_busy is not None and before.host_busy is not None
            fields["host_cpu"] = round((after.host_busy - before.host_busy) / (after.host_total - before.host_total), 3)
        if after.pressure_us is not None and before.pressure_us is not None:
            fields["cpu_pressure"] = round(min(1.0, (after.pressure_us - before.pressure_us) / 1e6 / wall), 3)
        new_histograms = []
        sends = skipped = 0
        late: list[float] = []  # p99 send lateness (s) of each sender
        for sender, (old, old_skipped) in zip(self.senders, histograms, strict=True):
            now_skipped, counts, width = sender.send_counts()
            diff = [n - o for n, o in zip(counts, old, strict=False)] if old else list(counts)
            sends += sum(diff)
            skipped += now_skipped - old_skipped
            late += histogram_quantiles(diff, (0.99,), width)
            new_histograms.append((list(counts), now_skipped))
        if self.senders:
            fields.update(probe_sends=sends, probe_skipped=skipped, probe_late_p99=round(max(late), 4) if late else None)
        lags = [lag for source in self.lag_sources for lag in source.drain_lags()]
        if self.lag_sources:
            fields["observer_lag_max"] = round(max(lags), 4) if lags else None
        return fields, new_histograms

    def _write(self, fields: dict[str, Any]) -> None:
        self.samples += 1
        reasons = saturation(fields)
        if reasons:
            self.saturated_samples += 1
            if self.saturated_samples == 1 or self._last_clean:
                log.warning("the measurement is saturated: figures from now on may be the tool's, not the cloud's",
                            reasons=[describe(k, v) for k, v in reasons.items()])
        self._last_clean = not reasons
        self.journal.write("run.health", **fields)



def saturation(sample: Mapping[str, Any]) -> dict[str, float]:
    """What in one ``run.health`` sample was past its limit (``LIMITS``): key -> the figure.

    Used by the live warning and by the summary, from the journal alone, so a report recomputed
    later says the same."""
    found: dict[str, float] = {}

    def over(key: str, value: Any, limit: float) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > limit:
            found[key] = float(value)

    over("loop_lag_max", sample.get("loop_lag_max"), LIMITS["loop_lag_max"])
    over("observer_lag_max", sample.get("observer_lag_max"), LIMITS["observer_lag_max"])
    if sample.get("lab_on_host"):  # the routers run on this host: its CPU is the lab's
        over("cpu_pressure", sample.get("cpu_pressure"), LIMITS["cpu_pressure"])
    over("runner_cpu", sample.get("runner_cpu"), LIMITS["runner_cpu"])
    over("probe_late", sample.get("probe_late_p99"), LIMITS["probe_late"])
    sends, skipped = sample.get("probe_sends"), sample.get("probe_skipped")
    if isinstance(sends, int) and isinstance(skipped, int) and skipped > 0:
        over("probe_skipped", skipped / max(1, sends + skipped), LIMITS["probe_skipped"])
    return found


def describe(key: str, value: float) -> str:
    """One saturation reason in a report's words."""
    return {
        "loop_lag_max": f"the runner's event loop woke up to {value:.2f} s late",
        "observer_lag_max": f"the replica stream ran up to {value:.2f} s behind the nodes",
        "cpu_pressure": f"runnable tasks waited for a CPU {value:.0%} of the time on this host",
        "runner_cpu": f"the runner used {value:.2f} of its one core",
        "probe_late": f"ICMP sends were up to {value:.2f} s late (p99)",
        "probe_skipped": f"{value:.1%} of ICMP sends were skipped",
    }.get(key, f"{key} {value:g}")


def worst(samples: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The worst figure of each saturation reason over several samples."""
    return merge_worst(saturation(sample) for sample in samples)


def merge_worst(found: Iterable[Mapping[str, float]], into: dict[str, float] | None = None) -> dict[str, float]:
    """Reason -> the worst of its figures over several sets of reasons (``into``, updated, if given)."""
    merged = {} if into is None else into
    for reasons in found:
        for key, value in reasons.items():
            merged[key] = max(value, merged.get(key, value))
    return merged
