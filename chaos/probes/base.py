"""What every probe shares: its self-description, live counters, the run bound, TCP sockets.

A probe is one module (chaos/probes/<name>.py, or a plugin's) with a ``ProbeKind``: the key that
switches it on under ``probes:``, the model of its settings, the rules of its section, and how
it is built for a run. The registry (``chaos.experiment.registry``) finds it; the experiment
schema builds the ``probes`` section from what it finds, and the runner builds every enabled
probe through it. A plugin's probe also brings its metrics (``ProbeKind.metrics``, each with a
compute function over the probe's own journal events), which tolerances can then name.

Probes run in the background while a fault holds. Each one writes raw samples to the journal
and keeps a few live counters for progress display; metrics are computed later from the
journal alone. Every probe stops by itself at ``max_duration`` or when the runner sets its stop
event, whichever comes first, so a forgotten probe can never run on.
"""

from __future__ import annotations

import asyncio
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from chaos.experiment.params import NoParams
from chaos.journal import Journal
from chaos.model import ProbeService, Router, Topology
from chaos.transport.netns import socket_in_netns

if TYPE_CHECKING:
    from chaos.experiment.metrics_catalog import Metric
    from chaos.transport.ssh import SshPool

Loc = tuple[str | int, ...]
Direction = Literal["inbound", "outbound"]


# --------------------------------------------------------------------------- what a probe is
class ProbeRunner(Protocol):
    """What the runner starts: runs until ``stop`` is set or ``max_duration`` passed.

    Optional: ``stats() -> ProbeStats`` (live progress) and ``ready: asyncio.Event`` (set once
    the probe is in place; nothing is injected before every probe is ready)."""

    def run(self, stop: asyncio.Event, max_duration: float) -> Awaitable[None]: ...


@dataclass
class ProbeRun:
    """What a probe is built from: the run's target, journal and SSH pool, and the routers the
    plan disturbs (its targets and every router sharing a node a node fault takes)."""

    topology: Topology
    journal: Journal
    ssh: SshPool
    routers: list[Router]
    enabled: Mapping[str, BaseModel] = field(default_factory=dict)  # every enabled probe's settings

    @property
    def router_ids(self) -> set[str]:
        return {r.id for r in self.routers}

    def skipped(self, probe: str, reason: str, router_id: str | None = None) -> None:
        """Say in the journal that ``probe`` cannot run here (for one router, or at all): its
        tolerances are then reported as skipped with ``reason``, not failed."""
        self.journal.write("probe.skipped", probe=probe, router_id=router_id, reason=reason)


class ProbeKind(ABC):
    """One probe an experiment can switch on (``probes: {<name>: <settings>}``)."""

    registry_group: ClassVar[str] = "chaos.probes"
    name: ClassVar[str]
    """The key under ``probes:`` (and in metric definitions, ``Metric.probe``)."""
    settings_model: ClassVar[type[BaseModel]] = NoParams
    """The model of its settings (build it on ``chaos.experiment.params.Params``)."""
    default_on: ClassVar[bool] = False
    """Whether an experiment without a ``probes`` section runs it."""
    order: ClassVar[int] = 100
    """Where it sits among the probes (built-in ones: 10 to 70)."""
    metrics: ClassVar[tuple[Metric, ...]] = ()
    """A plugin probe's metrics, each with its ``compute`` (the built-in metrics live in
    ``chaos.experiment.metrics_catalog`` and are computed by ``chaos.analysis.metrics``)."""
    event_kinds: ClassVar[tuple[str, ...]] = ()
    """The journal kinds its metrics are computed from (each event carries ``router_id``);
    register their models with ``chaos.journal.register_event``."""

    @classmethod
    def spec_problems(cls, settings: Any, *, target: Any) -> list[tuple[Loc, str]]:
        """Problems of its section that no single field shows, each with its path under
        ``probes.<name>`` (``target`` is the validated target section, or None)."""
        return []

    @classmethod
    @abstractmethod
    def build(cls, settings: Any, run: ProbeRun) -> list[ProbeRunner]:
        """The runners of this probe for one run (none, after ``run.skipped``, when it cannot run)."""


def duplicate_directions(directions: Iterable[str]) -> list[tuple[Loc, str]]:
    directions = list(directions)
    return [(("directions",), "lists a direction twice")] if len(set(directions)) != len(directions) else []


class ProbeStats(BaseModel):
    """Live counters of one probe, for progress display only (the journal is the record)."""

    model_config = ConfigDict(frozen=True)

    probe: str
    sent: int = 0
    received: int = 0
    lost: int = 0
    failing: tuple[str, ...] = Field(default=(), description="targets failing right now")
    detail: dict[str, float] = Field(default_factory=dict, description="probe-specific counters")


class RunBound:
    """The end of a probe run: a monotonic deadline or the stop event, whichever comes first."""

    def __init__(self, stop: asyncio.Event, max_duration: float) -> None:
        if max_duration <= 0:
            raise ValueError(f"max_duration must be positive, not {max_duration}")
        self.stop = stop
        self.deadline = time.monotonic() + max_duration

    def over(self) -> bool:
        return self.stop.is_set() or time.monotonic() >= self.deadline

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    async def sleep(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` (never past the deadline); True when the run is over.

        Wakes early when the stop event is set, so a probe stops promptly whatever its interval.
        """
        seconds = min(seconds, self.remaining())
        if seconds > 0 and not self.stop.is_set():
            try:
                async with asyncio.timeout(seconds):
                    await self.stop.wait()
            except TimeoutError:
                pass
        return self.over()


def tcp_socket(netns: str | None) -> socket.socket:
    """A non-blocking TCP socket in ``netns`` (None: this process's namespace), tuned for probing.

    Nagle off, so each small numbered message leaves at once and its echo time is the path's,
    not the coalescing delay's. Keepalive off, so only the probe's own traffic decides whether
    a session is alive.
    """
    if netns is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    else:
        sock = socket_in_netns(netns, socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def open_tcp(
    netns: str | None, host: str, port: int, timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect from inside ``netns`` to ``host:port`` within ``timeout`` seconds.

    The socket is created in the namespace by a helper thread, but the connect itself runs on
    the event loop (non-blocking), so a cancelled or timed-out connect is abandoned at once and
    the socket closed, instead of a thread blocking on it.
    """
    loop = asyncio.get_running_loop()
    sock = await asyncio.to_thread(tcp_socket, netns)
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (host, port))
            return await asyncio.open_connection(sock=sock)
    except BaseException:
        sock.close()
        raise


async def close_writer(writer: asyncio.StreamWriter, timeout: float = 1.0) -> None:
    """Close a stream and wait (bounded) for it to be closed; errors of a dead peer are moot."""
    writer.close()
    try:
        async with asyncio.timeout(timeout):
            await writer.wait_closed()
    except (TimeoutError, OSError):
        pass


def error_name(exc: BaseException) -> str:
    """A short, stable name for a socket failure, for the journal (``ECONNRESET``, ``timeout``)."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno is not None:
        import errno

        return errno.errorcode.get(exc.errno, str(exc.errno))
    if isinstance(exc, asyncio.IncompleteReadError):
        return "EOF"
    return type(exc).__name__


# --------------------------------------------------------------------------- TCP paths
INBOUND = "inbound"
OUTBOUND = "outbound"
DIRECTIONS = (INBOUND, OUTBOUND)


class TcpPath(BaseModel):
    """Where a TCP probe connects from and to, for one router and one direction.

    Inbound: from the vantage point to a TCP port declared behind a floating IP (through the 1:1
    NAT). Outbound: from the VM behind the floating IP to the vantage point's echo service
    (through the router's SNAT); only the lab can open sockets inside a VM.
    """

    model_config = ConfigDict(frozen=True)

    router_id: str
    direction: str
    address: str = Field(description="the floating IP this path goes through")
    netns: str | None = Field(description="namespace the socket is opened in (None: this process's)")
    host: str
    port: int
    service: ProbeService = Field(default="echo", description="what answers at host:port (chaos.model.ProbeService)")


class SkippedPath(BaseModel):
    model_config = ConfigDict(frozen=True)

    router_id: str
    direction: str
    reason: str


ECHO_ONLY: tuple[ProbeService, ...] = ("echo",)
"""Held sessions need their bytes echoed: a stall is measured between a send and its echo."""
ANY_SERVICE: tuple[ProbeService, ...] = ("echo", "ssh", "listener")
"""New connections use any declared port, preferring the one that proves most: an echo (the data
path both ways), then an SSH banner (the VM's own sshd answered), then a bare accept."""


def tcp_paths(
    topology: Topology,
    router_ids: Iterable[str] | None = None,
    directions: Iterable[str] = DIRECTIONS,
    services: tuple[ProbeService, ...] = ECHO_ONLY,
) -> tuple[list[TcpPath], list[SkippedPath]]:
    """One path per router and direction, through the router's first floating IP that declares a
    TCP port of one of ``services`` (``FloatingIP.probe_ports``, in the order of ``services``).

    A path that cannot be probed is returned as skipped with the reason, so the probe can say
    so in the journal instead of silently measuring less; the hypothesis then reports the
    tolerances that needed it as skipped, not failed.
    """
    wanted = None if router_ids is None else set(router_ids)
    directions = tuple(directions)
    for d in directions:
        if d not in DIRECTIONS:
            raise ValueError(f"direction {d!r} is not one of {DIRECTIONS}")
    vantage = topology.vantage
    kinds = " or ".join(services)
    paths: list[TcpPath] = []
    skipped: list[SkippedPath] = []
    for router in topology.routers:
        if wanted is not None and router.id not in wanted:
            continue
        chosen = next(((f, p) for f in router.floating_ips if (p := f.probe_port(services)) is not None), None)
        for direction in directions:
            if not router.floating_ips:
                skipped.append(SkippedPath(router_id=router.id, direction=direction, reason="the router has no floating IP"))
            elif direction == INBOUND:
                if chosen is None:
                    skipped.append(SkippedPath(
                        router_id=router.id, direction=INBOUND,
                        reason=f"no floating IP of the router declares a TCP port with an {kinds} service "
                        "(probe_ports in the inventory, docs/real-cloud.md)",
                    ))
                    continue
                fip, port = chosen
                paths.append(
                    TcpPath(
                        router_id=router.id, direction=INBOUND, address=str(fip.address),
                        netns=vantage.netns, host=str(fip.address), port=port.port, service=port.service,
                    )
                )
            else:
                fip_vm = next((f for f in router.floating_ips if f.vm_netns is not None), None)
                if fip_vm is None:
                    skipped.append(
                        SkippedPath(
                            router_id=router.id, direction=OUTBOUND,
                            reason="outbound needs a socket inside the VM, which only the lab has",
                        )
                    )
                elif vantage.echo_address is None or vantage.echo_port is None:
                    skipped.append(
                        SkippedPath(router_id=router.id, direction=OUTBOUND, reason="the vantage point has no echo service")
                    )
                else:
                    paths.append(
                        TcpPath(
                            router_id=router.id, direction=OUTBOUND, address=str(fip_vm.address),
                            netns=fip_vm.vm_netns, host=vantage.echo_address, port=vantage.echo_port,
                        )
                    )
    return paths, skipped
