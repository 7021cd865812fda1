"""Who holds each router's addresses, streamed from the nodes as it changes.

Polling the ground truth (``chaos.probes.replicas``) costs a round trip per poll and sees a
change only at the next poll (0.5 s in the runner). Here every node gets ONE long-lived SSH
channel running ``node_commands.follow_replicas``: an ``ip -o monitor address`` per hosted
``qrouter-<id>`` namespace, an initial snapshot of each namespace's addresses, and the state
files (read by a shell builtin every 0.1 s, printed only when they change). A change reaches
us in one SSH hop. While a node's stream is live the runner leaves that node's replicas to it
and polls the node only as a cross-check (every 5 s, ``Scheduler._observe``); the streams have
an SSH connection of their own (``SshPool``), so they take no command's channel.

Resolution: ``t`` of an ``observe.replica`` event is ``time.time()`` when its line arrived
here, so it lags the kernel's address event by the SSH latency (a few milliseconds in the
lab; one network round trip plus sshd's buffering on a real cloud). State-file changes lag by
up to 0.1 s more (the read interval).

A channel that breaks or goes silent (no heartbeat for ``HEARTBEAT_TIMEOUT``) marks the node
unreachable: its replicas are journaled ``reachable: false, holds: false`` (a rebooting node
holds nothing; a node we cannot see is not counted as a holder), then the channel is reopened
with backoff and the command run again, which snapshots afresh and follows namespaces that
the node recreated after a boot.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from chaos.errors import InfrastructureError
from chaos.log import get_logger
from chaos.model import Router, Topology
from chaos.probes.base import ProbeKind, ProbeRun, ProbeRunner
from chaos.journal import Journal
from chaos.transport import node_commands as nc
from chaos.transport.ssh import SshPool

log = get_logger("primary")

HEARTBEAT = 1.0  # the node prints "H" this often
HEARTBEAT_TIMEOUT = 5.0  # silence this long means the channel (or the node) is gone (a loaded 2-core host stalls for seconds)
RECONNECT_BACKOFF = (0.2, 0.5, 1.0, 2.0)  # then every 2 s until the run ends
MAX_LAGS = 100_000  # heartbeat lags kept until the health sampler drains them (it does every second)
_STATE_RE = re.compile(r"^[A-Za-z]{1,20}$")


def router_addresses(router: Router) -> frozenset[str]:
    """The addresses whose presence means "this replica holds the router": gateway and floating IPs."""
    addrs = {str(f.address) for f in router.floating_ips}
    if router.gateway_ip:
        addrs.add(str(ipaddress.ip_address(router.gateway_ip)))
    return frozenset(addrs)


def parse_address_line(line: str) -> tuple[bool, str] | None:
    """``(added, address)`` of one ``ip -o addr`` / ``ip -o monitor address`` line, else None.

    ``ip monitor`` prefixes removals with ``Deleted``; the address is the token after
    ``inet``/``inet6``, without its prefix length.
    """
    fields = line.split()
    added = True
    if fields and fields[0] == "Deleted":
        added, fields = False, fields[1:]
    for i, token in enumerate(fields[:-1]):
        if token in ("inet", "inet6"):
            return added, fields[i + 1].split("/", 1)[0]
    return None


@dataclass
class _Replica:
    """What the stream has said about one replica."""

    router_id: str
    node: str
    wanted: frozenset[str]
    present: set[str] = field(default_factory=set)
    snapshot: set[str] | None = None  # addresses collected between B and E
    state: str | None = None
    reachable: bool = False
    known: bool = False  # a snapshot completed since the channel (re)opened
    journaled: tuple[str | None, bool, bool] | None = None

    @property
    def holds(self) -> bool:
        return self.reachable and self.known and bool(self.present & self.wanted)


class PrimaryObserver:
    """Streams each replica's addresses and state; journals ``observe.replica`` on every change."""

    def __init__(self, ssh: SshPool, topology: Topology, routers: Sequence[Router], journal: Journal) -> None:
        self.ssh = ssh
        self.topology = topology
        self.routers = list(routers)
        self.journal = journal
        self._replicas: dict[tuple[str, str], _Replica] = {}
        self._by_node: dict[str, list[str]] = {}
        for router in self.routers:
            wanted = router_addresses(router)
            for rep in router.replicas:
                self._replicas[(router.id, rep.node)] = _Replica(router.id, rep.node, wanted)
                self._by_node.setdefault(rep.node, []).append(router.id)
        self._reachable: dict[str, bool] = dict.fromkeys(self._by_node, False)
        self._snapshotted: dict[str, set[str]] = {n: set() for n in self._by_node}
        self.ready = asyncio.Event()  # every node's first snapshot is complete
        self.reconnects: dict[str, int] = dict.fromkeys(self._by_node, 0)
        self._lags: list[float] = []  # heartbeat arrival minus the node's stamp, until drained

    # ------------------------------------------------------------------ live state (safeguards)
    def holders(self, router_id: str) -> set[str]:
        """Nodes whose replica of the router holds its addresses now (as far as the stream says)."""
        return {node for (rid, node), rep in self._replicas.items() if rid == router_id and rep.holds}

    def reachable(self, node: str) -> bool:
        """Whether the node's stream is live (connected and its heartbeat recent)."""
        return self._reachable.get(node, False)

    def follows(self, router_id: str, node: str) -> bool:
        """Whether the stream says what the router's replica on ``node`` holds now: the node's
        stream is live and this router is one it follows (the runner's ground-truth poll leaves
        such a replica to the stream, see ``Scheduler._observe``)."""
        return (router_id, node) in self._replicas and self.reachable(node)

    def holds(self, router_id: str, node: str) -> bool:
        """Whether the router's replica on ``node`` holds its addresses (as far as the stream says)."""
        rep = self._replicas.get((router_id, node))
        return rep is not None and rep.holds

    def state(self, router_id: str, node: str) -> str | None:
        return self._replicas[(router_id, node)].state

    def drain_lags(self) -> list[float]:
        """How far behind the nodes the stream ran (seconds, one per heartbeat) since the last
        call: a heartbeat waits in the same SSH channel and event loop as the address events."""
        lags, self._lags = self._lags, []
        return lags

    # ------------------------------------------------------------------ run
    async def run(self, stop: asyncio.Event, max_duration: float) -> None:
        """Follow every node until ``stop`` is set or ``max_duration`` passes; channels closed on exit."""
        if not self._by_node:
            self.ready.set()
            return
        deadline = time.monotonic() + max_duration
        try:
            async with asyncio.timeout(max_duration):
                async with asyncio.TaskGroup() as tg:
                    for node in self._by_node:
                        tg.create_task(self._follow(node, stop, deadline))
        except TimeoutError:
            pass

    async def _follow(self, node: str, stop: asyncio.Event, deadline: float) -> None:
        failures = 0
        while not stop.is_set() and time.monotonic() < deadline:
            stopper = asyncio.ensure_future(stop.wait())
            streamer = asyncio.ensure_future(self._stream_once(node, deadline))
            try:
                await asyncio.wait({stopper, streamer}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (stopper, streamer):
                    task.cancel()
                for task in (stopper, streamer):
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task  # the stream's finally closes its channel
            if stop.is_set():
                return
            why = "stream ended"
            if streamer.done() and not streamer.cancelled() and streamer.exception() is not None:
                why = str(streamer.exception()) or type(streamer.exception()).__name__
            elif streamer.done() and not streamer.cancelled() and streamer.result():
                failures = 0  # it had been live: start the backoff over
            self._lost(node, why)
            delay = RECONNECT_BACKOFF[min(failures, len(RECONNECT_BACKOFF) - 1)]
            failures += 1
            self.reconnects[node] += 1
            await _sleep_until(stop, min(delay, max(0.0, deadline - time.monotonic())))

    async def _stream_once(self, node: str, deadline: float) -> bool:
        """One channel's life; True if it delivered a complete snapshot before it ended."""
        command = nc.follow_replicas(self.topology.node(node).agent, self._by_node[node], heartbeat=HEARTBEAT)
        remaining = max(0.1, deadline - time.monotonic())
        got_snapshot = False
        lines = self.ssh.stream(node, command, timeout=remaining)
        async with contextlib.aclosing(lines):
            while True:
                try:
                    async with asyncio.timeout(HEARTBEAT_TIMEOUT):
                        line = await _next(lines)
                except TimeoutError:
                    raise InfrastructureError(f"{node}: no heartbeat for {HEARTBEAT_TIMEOUT:g}s") from None
                if line is None:
                    return got_snapshot
                now = time.time()
                if not self._reachable[node]:
                    self._reachable[node] = True
                got_snapshot |= self._line(node, line, now)

    # ------------------------------------------------------------------ parsing
    def _line(self, node: str, line: str, now: float) -> bool:
        """Apply one line of the node's stream; True when it completed a router's snapshot."""
        tag, _, rest = line.partition(" ")
        if tag == "H":
            # "H <the node's clock>": how far behind the node this stream runs (run.health)
            with contextlib.suppress(ValueError):
                stamp = float(rest)
                if len(self._lags) < MAX_LAGS and math.isfinite(stamp):
                    self._lags.append(max(0.0, now - stamp))
            return False
        rid, _, payload = rest.partition(" ")
        rep = self._replicas.get((rid, node))
        if rep is None:
            return False
        rep.reachable = True
        if tag == "B":
            rep.snapshot = set()
        elif tag == "A":
            parsed = parse_address_line(payload)
            if parsed and rep.snapshot is not None:
                rep.snapshot.add(parsed[1])
        elif tag == "E":
            rep.present = rep.snapshot or set()
            rep.snapshot = None
            rep.known = True
            self._emit(rep, now)
            done = self._snapshotted[node]
            done.add(rid)
            if all(len(self._snapshotted[n]) == len(set(self._by_node[n])) for n in self._by_node):
                self.ready.set()
            return True
        elif tag == "M":
            parsed = parse_address_line(payload)
            if parsed:
                added, address = parsed
                (rep.present.add if added else rep.present.discard)(address)
                if rep.snapshot is not None:
                    (rep.snapshot.add if added else rep.snapshot.discard)(address)
                self._emit(rep, now)
        elif tag == "S":
            value = payload.strip()
            rep.state = value if _STATE_RE.match(value) and value != "-" else None
            self._emit(rep, now)
        elif tag == "X":
            # The monitor ended (namespace gone); the follower snapshots again when it is back.
            rep.present = set()
            rep.known = False
            self._emit(rep, now)
        return False

    def _emit(self, rep: _Replica, now: float) -> None:
        value = (rep.state, rep.holds, rep.reachable)
        if value == rep.journaled:
            return
        if not rep.known and rep.reachable and rep.journaled is None:
            return  # nothing to say until the first snapshot
        rep.journaled = value
        self.journal.write(
            "observe.replica", t=now, router_id=rep.router_id, node=rep.node, state=rep.state,
            holds=rep.holds, reachable=rep.reachable, source="monitor",
        )

    def _lost(self, node: str, why: str) -> None:
        now = time.time()
        log.warning("replica stream lost", node=node, reason=why)
        self._reachable[node] = False
        self._snapshotted[node].clear()
        for rid in self._by_node[node]:
            rep = self._replicas[(rid, node)]
            rep.reachable = False
            rep.known = False
            rep.present = set()
            rep.snapshot = None
            rep.state = None
            self._emit(rep, now)


async def _next(lines: AsyncIterator[str]) -> str | None:
    try:
        return await anext(lines)
    except StopAsyncIteration:
        return None


async def _sleep_until(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()


# --------------------------------------------------------------------------- the probe
class PrimaryKind(ProbeKind):
    """``probes.primary``: who holds each disturbed router's addresses, followed on every node
    (address events and state files); it also feeds the runtime safeguards. No settings."""

    name: ClassVar[str] = "primary"
    default_on: ClassVar[bool] = True
    order: ClassVar[int] = 40

    @classmethod
    def build(cls, settings: Any, run: ProbeRun) -> list[ProbeRunner]:
        return [PrimaryObserver(run.ssh, run.topology, run.routers, run.journal)]
