"""Long-lived TCP sessions through each router: does an established session survive a failover?

Per router and direction (see ``chaos.probes.base.TcpPath``), ``sessions`` connections are
opened before the fault and kept open. Each sends a small numbered line every ``interval`` and
expects it echoed back in order, so it needs an echo service: inbound, a port the floating IP
declares with service ``echo`` (``FloatingIP.probe_ports``; the lab's VMs run one on port 7, a
real cloud's canary VM as docs/real-cloud.md sets it up); outbound, the vantage point's. The journal gets, per session, ``probe.tcp`` events:

- ``opened`` (detail: local and remote address), or ``failed`` when it could not be opened;
- ``stall``: no echo for ``stall`` seconds while a message was waiting; ``since`` is when the
  silence began (the later of the oldest unanswered send and the last echo);
- ``resumed``: echoes flow again; ``since`` as above and ``length`` the stall's length (s);
- and exactly one end: ``reset`` (ECONNRESET, EPIPE, or the peer closed), ``timeout`` (no echo
  for ``session_timeout`` seconds) or ``closed`` (normal end at stop or at the deadline).
  End events carry ``sent`` and ``echoed`` message counts.
- ``skipped`` (session null) for a router and direction that cannot be probed, with the reason
  (no floating IP, no echo port declared, outbound off the lab): its tolerances are then
  reported as skipped, not failed (``chaos.analysis.metrics``).

A session that dies is not reopened: the question is whether *this* session survives.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, Field

from chaos.experiment.durations import format_duration
from chaos.experiment.params import Duration, Int, Params
from chaos.model import Topology
from chaos.probes.base import (
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

MAX_LINE = 64


class _Session:
    """One TCP session's counters and the messages still waiting for their echo."""

    def __init__(self, sid: str, path: TcpPath) -> None:
        self.sid = sid
        self.path = path
        self.sent = 0
        self.echoed = 0
        self.garbled = 0
        self.pending: deque[tuple[int, float, float]] = deque()  # (number, sent_mono, sent_wall)
        self.stalled_since: tuple[float, float] | None = None  # (mono, wall) of the stall's start
        self.last_echo: tuple[float, float] = (0.0, 0.0)  # (mono, wall) of the last echo
        self.ended: str | None = None
        self.opened = False

    def silent_since(self) -> tuple[float, float]:
        """Since when nothing has come back while something was waiting: the later of the
        oldest unanswered send and the last echo. Using the last echo too means the burst of
        queued echoes after a stall does not look like a string of new stalls."""
        _, sent_mono, sent_wall = self.pending[0]
        return max((sent_mono, sent_wall), self.last_echo)


class TcpSessionProbe:
    """Held TCP sessions, inbound and outbound, per router; see the module docstring."""

    kind = "probe.tcp"

    def __init__(
        self,
        topology: Topology,
        journal: Journal,
        *,
        router_ids: Iterable[str] | None = None,
        directions: Iterable[str] = DIRECTIONS,
        sessions: int = 2,
        interval: float = 0.2,
        stall: float = 1.0,
        session_timeout: float = 30.0,
        connect_timeout: float = 3.0,
    ) -> None:
        if sessions < 1 or interval <= 0 or connect_timeout <= 0:
            raise ValueError("sessions, interval and connect_timeout must be positive")
        if not interval < stall < session_timeout:
            raise ValueError("need interval < stall < session_timeout")
        self.journal = journal
        self.interval = interval
        self.stall = stall
        self.session_timeout = session_timeout
        self.connect_timeout = connect_timeout
        self.paths, self.skipped = tcp_paths(topology, router_ids, directions)
        self._sessions = [
            _Session(f"{p.direction[:3]}-{p.address}-{k}", p) for p in self.paths for k in range(sessions)
        ]
        self.ready = asyncio.Event()  # set once every session has opened or failed to
        self._attempted = 0

    def _event(self, session: _Session | None, path: TcpPath, event: str, detail: str, **extra: Any) -> None:
        self.journal.write(
            self.kind,
            t=extra.pop("t", None),
            router_id=path.router_id,
            session=None if session is None else session.sid,
            direction=path.direction,
            address=path.address,
            event=event,
            detail=detail,
            **extra,
        )

    async def run(self, stop: asyncio.Event, max_duration: float) -> None:
        """Hold every session until ``stop`` or ``max_duration``; returns within
        ``max_duration`` plus a second of closing."""
        bound = RunBound(stop, max_duration)
        for skip in self.skipped:
            self.journal.write(
                self.kind, router_id=skip.router_id, session=None, direction=skip.direction,
                event="skipped", detail=skip.reason,
            )
        if not self._sessions:
            self.ready.set()
            return
        async with asyncio.TaskGroup() as tg:
            for session in self._sessions:
                tg.create_task(self._hold(session, bound))

    def _attempt_done(self) -> None:
        self._attempted += 1
        if self._attempted == len(self._sessions):
            self.ready.set()

    async def _hold(self, s: _Session, bound: RunBound) -> None:
        path = s.path
        try:
            timeout = max(0.1, min(self.connect_timeout, bound.remaining()))
            reader, writer = await open_tcp(path.netns, path.host, path.port, timeout)
        except (OSError, TimeoutError) as exc:
            s.ended = "failed"
            self._event(s, path, "failed", f"connect to {path.host}:{path.port}: {error_name(exc)}")
            self._attempt_done()
            return
        s.opened = True
        local = writer.get_extra_info("sockname")
        self._event(s, path, "opened", f"{local[0]}:{local[1]} -> {path.host}:{path.port}")
        self._attempt_done()
        receiver = asyncio.create_task(self._receive(s, reader))
        end: tuple[str, str] | None = None
        try:
            end = await self._send(s, writer, receiver, bound)
        finally:
            receiver.cancel()
            try:
                await receiver
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - its outcome is already decided
                pass
            await close_writer(writer)
            if end is None:  # cancelled: still say how the session ended
                end = ("closed", "probe cancelled")
            s.ended = end[0]
            self._event(s, path, end[0], end[1], sent=s.sent, echoed=s.echoed)

    async def _send(
        self, s: _Session, writer: asyncio.StreamWriter, receiver: asyncio.Task[tuple[str, str]], bound: RunBound
    ) -> tuple[str, str]:
        """Send a numbered line every interval and watch for stalls; returns how the session ended."""
        next_send = time.monotonic()
        while True:
            if receiver.done():
                return receiver.result()
            if bound.over():
                detail = "probe ended"
                if s.stalled_since is not None:
                    detail += f" while stalled for {time.monotonic() - s.stalled_since[0]:.3f}s"
                return ("closed", detail)
            now = time.monotonic()
            if s.pending:
                since_mono, since_wall = s.silent_since()
                age = now - since_mono
                if age > self.session_timeout:
                    return ("timeout", f"no echo for {age:.3f}s")
                if age > self.stall and s.stalled_since is None:
                    s.stalled_since = (since_mono, since_wall)
                    self._event(s, s.path, "stall", f"no echo for {age:.3f}s", since=round(since_wall, 6))
            if now >= next_send:
                n = s.sent
                try:
                    writer.write(f"{n}\n".encode())
                    async with asyncio.timeout(self.interval):
                        await writer.drain()
                except TimeoutError:
                    pass  # send buffer full while the path is down; the data is queued anyway
                except (ConnectionError, OSError) as exc:
                    return ("reset", f"send: {error_name(exc)}")
                s.pending.append((n, now, time.time()))
                s.sent += 1
                next_send += self.interval
                if next_send < now:  # the loop was held up: keep the cadence, do not burst
                    next_send = now + self.interval
            await asyncio.wait({receiver}, timeout=max(0.0, min(next_send - time.monotonic(), 0.05)))

    async def _receive(self, s: _Session, reader: asyncio.StreamReader) -> tuple[str, str]:
        """Match echoed lines to sent ones; returns how the session ended if the peer ended it."""
        while True:
            try:
                line = await reader.readline()
            except (ConnectionError, OSError) as exc:
                return ("reset", f"receive: {error_name(exc)}")
            except (asyncio.LimitOverrunError, ValueError):
                return ("reset", "receive: garbled stream")
            if not line.endswith(b"\n"):
                return ("reset", "receive: closed by the peer (EOF)")
            now = time.monotonic()
            try:
                number = int(line[:MAX_LINE])
            except ValueError:
                s.garbled += 1
                continue
            while s.pending and s.pending[0][0] < number:
                s.pending.popleft()  # cannot happen on TCP; keeps matching robust
            if not s.pending or s.pending[0][0] != number:
                s.garbled += 1
                continue
            since_mono, since_wall = s.silent_since()
            s.pending.popleft()
            s.echoed += 1
            if s.stalled_since is None and now - since_mono > self.stall:
                # The gap closed between two checks of the sender: record it all the same.
                s.stalled_since = (since_mono, since_wall)
                self._event(
                    s, s.path, "stall", f"no echo for more than {self.stall:.3f}s",
                    t=since_wall + self.stall, since=round(since_wall, 6),
                )
            s.last_echo = (now, time.time())
            if s.stalled_since is not None:
                since_mono, since_wall = s.stalled_since
                s.stalled_since = None
                self._event(
                    s, s.path, "resumed", f"echo after {now - since_mono:.3f}s",
                    since=round(since_wall, 6), length=round(now - since_mono, 6),
                )

    def stats(self) -> ProbeStats:
        sessions = self._sessions
        return ProbeStats(
            probe="tcp",
            sent=sum(s.sent for s in sessions),
            received=sum(s.echoed for s in sessions),
            lost=sum(1 for s in sessions if s.ended in ("reset", "timeout", "failed")),
            failing=tuple(
                s.sid for s in sessions if s.stalled_since is not None or s.ended in ("reset", "timeout", "failed")
            ),
            detail={
                "sessions": len(sessions),
                "open": sum(1 for s in sessions if s.opened and s.ended is None),
                "stalled": sum(1 for s in sessions if s.stalled_since is not None and s.ended is None),
                "garbled": sum(s.garbled for s in sessions),
                "skipped_paths": len(self.skipped),
            },
        )


# --------------------------------------------------------------------------- the probe
class TcpSettings(Params):
    sessions: Int = Field(default=2, ge=1, le=32, description="sessions per direction and router")
    interval: Annotated[Duration, Field(ge=0.001)] = 0.2
    directions: tuple[Direction, ...] = Field(default=("inbound", "outbound"), min_length=1)
    stall: Duration = Field(default=1.0, description="a session silent this long is stalled")


class TcpKind(ProbeKind):
    """``probes.tcp``: TCP sessions held through each disturbed router, and (from the lab's
    vantage namespace) who sent the resets they see."""

    name: ClassVar[str] = "tcp"
    settings_model: ClassVar[type[BaseModel]] = TcpSettings
    order: ClassVar[int] = 20

    @classmethod
    def spec_problems(cls, settings: TcpSettings, *, target: Any) -> list[tuple[Loc, str]]:
        problems = duplicate_directions(settings.directions)
        if settings.stall <= settings.interval:
            problems.append((("stall",), f"must be longer than probes.tcp.interval ({format_duration(settings.interval)}): "
                                         "a session is silent between two echoes"))
        return problems

    @classmethod
    def build(cls, settings: TcpSettings, run: ProbeRun) -> list[ProbeRunner]:
        runners: list[ProbeRunner] = [TcpSessionProbe(
            run.topology, run.journal, router_ids=run.router_ids, directions=settings.directions,
            sessions=settings.sessions, interval=settings.interval, stall=settings.stall,
        )]
        if run.topology.vantage.netns is not None:  # who sent a reset, when a held session sees one
            from chaos.probes.arp import ResetObserver, lab_port_lookup

            runners.append(ResetObserver(run.topology, run.routers, run.journal, port_lookup=lab_port_lookup(run.topology)))
        return runners
