"""connect_time: how long a new TCP connection to each floating IP takes, and how many fail.

Every ``interval``, from the vantage point, one connection per router to the first TCP port a
floating IP declares (any service: an accept is enough); each attempt is one
``probe.connect_time`` event. Two metrics come from them, per router and window:
``connect_time_max_s`` (the slowest connection that succeeded) and ``connect_failures`` (the
attempts that did not connect within ``timeout``).

It uses the tool's probe helpers (chaos.probes.base): the paths and why one cannot be probed,
sockets opened inside the vantage namespace, the run bound that stops it by itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, Field

from chaos.experiment.metrics_catalog import Metric
from chaos.experiment.params import Duration, Params
from chaos.journal import Event, Journal, register_event
from chaos.probes.base import ANY_SERVICE, Loc, ProbeKind, ProbeRun, ProbeRunner, RunBound, TcpPath, close_writer, error_name, open_tcp, tcp_paths

KIND = "probe.connect_time"


@register_event
class ConnectTimeEvent(Event):
    """One connection attempt."""

    kind: Literal["probe.connect_time"] = "probe.connect_time"
    router_id: str
    address: str
    port: int
    ok: bool
    connect_s: float | None = None
    error: str | None = None


class ConnectTimeSettings(Params):
    interval: Annotated[Duration, Field(ge=0.05)] = 0.5
    timeout: Duration = 1.0


class ConnectTimeProbe:
    def __init__(self, paths: Sequence[TcpPath], journal: Journal, *, interval: float, timeout: float) -> None:
        self.paths = list(paths)
        self.journal = journal
        self.interval = interval
        self.timeout = timeout

    async def run(self, stop: asyncio.Event, max_duration: float) -> None:
        bound = RunBound(stop, max_duration)
        while not bound.over():
            started = time.monotonic()
            await asyncio.gather(*(self._attempt(p) for p in self.paths))
            if await bound.sleep(self.interval - (time.monotonic() - started)):
                return

    async def _attempt(self, path: TcpPath) -> None:
        t = time.time()
        started = time.monotonic()
        fields: dict[str, Any] = {"router_id": path.router_id, "address": path.host, "port": path.port}
        try:
            _, writer = await open_tcp(path.netns, path.host, path.port, self.timeout)
        except (OSError, TimeoutError) as exc:
            self.journal.write(KIND, t=t, **fields, ok=False, error=error_name(exc))
            return
        self.journal.write(KIND, t=t, **fields, ok=True, connect_s=round(time.monotonic() - started, 6))
        await close_writer(writer)


def _slowest(events: Sequence[Mapping[str, Any]], start: float, end: float) -> float | None:
    times = [float(e["connect_s"]) for e in events if e.get("ok") and e.get("connect_s") is not None]
    return max(times) if times else None


def _failures(events: Sequence[Mapping[str, Any]], start: float, end: float) -> int:
    return sum(1 for e in events if not e.get("ok"))


class ConnectTimeKind(ProbeKind):
    """``probes.connect_time``: new TCP connections to each disturbed router's floating IPs."""

    name: ClassVar[str] = "connect_time"
    settings_model: ClassVar[type[BaseModel]] = ConnectTimeSettings
    event_kinds: ClassVar[tuple[str, ...]] = (KIND,)
    metrics: ClassVar[tuple[Metric, ...]] = (
        Metric("connect_time_max_s", "s", "router", "connect_time",
               "Slowest successful TCP connection to one of the router's floating IPs.", compute=_slowest),
        Metric("connect_failures", "count", "router", "connect_time",
               "TCP connections to the router's floating IPs that did not connect within the timeout.",
               compute=_failures),
    )

    @classmethod
    def spec_problems(cls, settings: ConnectTimeSettings, *, target: Any) -> list[tuple[Loc, str]]:
        if settings.timeout >= settings.interval:
            return [(("timeout",), "must be shorter than the interval (one attempt per router at a time)")]
        return []

    @classmethod
    def build(cls, settings: ConnectTimeSettings, run: ProbeRun) -> list[ProbeRunner]:
        paths, skipped = tcp_paths(run.topology, run.router_ids, ("inbound",), services=ANY_SERVICE)
        for s in skipped:
            run.skipped(cls.name, s.reason, s.router_id)
        return [ConnectTimeProbe(paths, run.journal, interval=settings.interval, timeout=settings.timeout)] if paths else []
