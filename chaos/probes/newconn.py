"""New TCP connections through each router: can clients still connect while the fault holds?

Held sessions (``chaos.probes.tcp``) answer whether existing flows survive; this probe answers
whether new ones get through. Every ``interval``, for every router and direction, it opens a
NEW connection, checks that the service behind it answers, and closes it. What answers is what
the floating IP declares (``FloatingIP.probe_ports``; on a real cloud often only sshd): an
``echo`` service must send back one line, an ``ssh`` service must send its identification
string (``SSH-...``: the VM's own sshd answered, through the router's NAT), a ``listener`` only
has to accept. Each attempt is one ``probe.newconn`` event: router_id, direction, address (the
floating IP), port, service, ok, latency (seconds from the start of the connect to the answer,
null on failure), error (null, or ``timeout``, ``ECONNREFUSED``, ``not an SSH banner``, ...),
phase (where it failed: ``connect`` or ``exchange``; null when ok), started (wall time the
attempt began).

Attempts of all paths are spread over the interval. An attempt is bounded by ``timeout``,
which is shorter than the interval, so a path never has two attempts at once; a semaphore
bounds how many run together across paths. An attempt that cannot get a slot in time is
skipped (counted in the stats), not recorded as a failure: that would blame the network for
the probe's own limit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, Field

from chaos.experiment.params import Duration, Params
from chaos.model import Topology
from chaos.probes.base import (
    ANY_SERVICE,
    DIRECTIONS,
    Direction,
    Loc,
    ProbeKind,
    ProbeRun,
    ProbeRunner,
    ProbeStats,
    RunBound,
    TcpPath,
    close_writer,
    duplicate_directions,
    error_name,
    open_tcp,
    tcp_paths,
)
from chaos.journal import Journal

MESSAGE = b"chaos-newconn\n"
SSH_BANNER_PREFIX = b"SSH-"  # RFC 4253 4.2: the server may send other lines first; sshd does not


class NewConnectionProbe:
    """Opens a new connection per router and direction every interval; see the module docstring."""

    kind = "probe.newconn"

    def __init__(
        self,
        topology: Topology,
        journal: Journal,
        *,
        router_ids: Iterable[str] | None = None,
        directions: Iterable[str] = DIRECTIONS,
        interval: float = 1.0,
        timeout: float | None = None,
        max_concurrency: int = 32,
    ) -> None:
        timeout = min(1.0, 0.8 * interval) if timeout is None else timeout
        if interval <= 0 or not 0 < timeout < interval:
            raise ValueError("need 0 < timeout < interval: a path must never have two attempts at once")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.journal = journal
        self.interval = interval
        self.timeout = timeout
        self.paths, self.skipped = tcp_paths(topology, router_ids, directions, services=ANY_SERVICE)
        self._slots = asyncio.Semaphore(max_concurrency)
        self._busy: set[int] = set()
        self.attempts = 0
        self.succeeded = 0
        self.failed = 0
        self.skipped_attempts = 0
        self._failing: dict[int, bool] = {}

    async def run(self, stop: asyncio.Event, max_duration: float) -> None:
        """Attempt until ``stop`` or ``max_duration``; returns within ``max_duration + timeout``."""
        bound = RunBound(stop, max_duration)
        for skip in self.skipped:
            self.journal.write(
                self.kind, router_id=skip.router_id, direction=skip.direction, ok=None,
                latency=None, error="skipped", phase=None, detail=skip.reason,
            )
        if not self.paths:
            return
        n = len(self.paths)
        step = self.interval / n
        start = time.monotonic()
        k = j = 0
        async with asyncio.TaskGroup() as tg:
            while not bound.over():
                due = start + k * self.interval + j * step
                if await bound.sleep(due - time.monotonic()):
                    break
                if j in self._busy:
                    self.skipped_attempts += 1
                else:
                    self._busy.add(j)
                    tg.create_task(self._attempt(j, self.paths[j]))
                j += 1
                if j == n:
                    j = 0
                    k += 1
                    behind = time.monotonic() - (start + k * self.interval)
                    if behind > self.interval:  # held up for a whole round: resume, do not burst
                        k += int(behind // self.interval)

    async def _attempt(self, index: int, path: TcpPath) -> None:
        try:
            try:
                async with asyncio.timeout(self.timeout):
                    await self._slots.acquire()
            except TimeoutError:
                self.skipped_attempts += 1
                return
            try:
                await self._connect_and_echo(index, path)
            finally:
                self._slots.release()
        finally:
            self._busy.discard(index)

    async def _connect_and_echo(self, index: int, path: TcpPath) -> None:
        started_wall = time.time()
        started = time.monotonic()
        deadline = started + self.timeout
        phase = "connect"
        error: str | None = None
        latency: float | None = None
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await open_tcp(path.netns, path.host, path.port, self.timeout)
            phase = "exchange"
            async with asyncio.timeout_at(asyncio.get_running_loop().time() + max(0.0, deadline - time.monotonic())):
                error = await _exchange(path.service, reader, writer)
            if error is None:
                latency = time.monotonic() - started
        except (OSError, TimeoutError) as exc:
            error = error_name(exc)
        finally:
            if writer is not None:
                await close_writer(writer, timeout=0.5)
        ok = error is None
        self.attempts += 1
        if ok:
            self.succeeded += 1
        else:
            self.failed += 1
        self._failing[index] = not ok
        self.journal.write(
            self.kind,
            router_id=path.router_id,
            direction=path.direction,
            address=path.address,
            port=path.port,
            service=path.service,
            ok=ok,
            latency=None if latency is None else round(latency, 6),
            error=error,
            phase=None if ok else phase,
            started=round(started_wall, 6),
        )

    def stats(self) -> ProbeStats:
        return ProbeStats(
            probe="newconn",
            sent=self.attempts,
            received=self.succeeded,
            lost=self.failed,
            failing=tuple(
                f"{self.paths[i].direction}:{self.paths[i].address}" for i, bad in sorted(self._failing.items()) if bad
            ),
            detail={"paths": len(self.paths), "skipped_attempts": self.skipped_attempts, "skipped_paths": len(self.skipped)},
        )


async def _exchange(service: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str | None:
    """What proves the service behind the port answered; None when it did, else the error."""
    if service == "listener":
        return None  # the handshake completed: the SYN-ACK came back through the router's NAT
    if service == "ssh":
        banner = await reader.readline()  # the server speaks first (RFC 4253 4.2)
        if not banner:
            return "EOF"
        return None if banner.startswith(SSH_BANNER_PREFIX) else "not an SSH banner"
    writer.write(MESSAGE)
    await writer.drain()
    echo = await reader.readline()
    if echo != MESSAGE:
        return "EOF" if not echo else "wrong echo"
    return None


# --------------------------------------------------------------------------- the probe
class NewConnectionsSettings(Params):
    interval: Annotated[Duration, Field(ge=0.01)] = 0.5
    timeout: Duration = 1.0
    directions: tuple[Direction, ...] = Field(default=("inbound", "outbound"), min_length=1)


class NewConnectionsKind(ProbeKind):
    """``probes.new_connections``: a new TCP connection per router and direction every interval
    (an attempt never outlives 80 % of the interval, so a path never has two at once)."""

    name: ClassVar[str] = "new_connections"
    settings_model: ClassVar[type[BaseModel]] = NewConnectionsSettings
    order: ClassVar[int] = 30

    @classmethod
    def spec_problems(cls, settings: NewConnectionsSettings, *, target: Any) -> list[tuple[Loc, str]]:
        return duplicate_directions(settings.directions)

    @classmethod
    def build(cls, settings: NewConnectionsSettings, run: ProbeRun) -> list[ProbeRunner]:
        return [NewConnectionProbe(
            run.topology, run.journal, router_ids=run.router_ids, directions=settings.directions,
            interval=settings.interval, timeout=min(settings.timeout, 0.8 * settings.interval),
        )]
