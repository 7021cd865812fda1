"""A fake network node: the SSH transport's interface answered from a modelled node, in memory.

Why: the parts that matter most for safety (the blast radius, the scheduler's rollback on every
error path, the runtime safeguards, ``chaos recover``, the CLI's errors) talk to nodes only
through ``chaos.transport.ssh.SshPool`` and the commands of ``chaos.transport.node_commands``.
Standing in for both, with a model of what a network node holds, lets those parts run in the
quick tier (no root, no namespaces, no lab) while still going through the real faults, probes,
parsers and runner.

How it answers: every builder of ``node_commands`` returns a ``NodeCommand`` that carries its
``intent`` (which builder, which validated arguments, which agent context); the fake answers
from that, never by parsing shell. Text that lost its type on the way (an ``UndoStep`` is a
pydantic model whose ``command`` is a plain ``str``, and ``chaos recover`` reads commands back
from the journal) is recognised by regeneration: the fake calls the real builders with the
parameters its model makes plausible (its replicas, the node's agent contexts, the marker-like
words of the text) and takes the one whose text is byte-for-byte the same. A command it cannot
recognise is recorded in ``FakeNetwork.unmodelled`` and fails loudly (``UnmodelledCommand``);
the fixtures assert that list is empty, so the fake never answers what it does not understand.

What is modelled, per node: its replicas (the ``qrouter-<id>`` namespace, the ha- device up or
down, the addresses a primary holds, the state file), keepalived processes found through
Neutron's pid files (main and VRRP child: running, stopped, killed with stale pid files, ended
by SIGTERM after ``Timing.term_exit`` with a priority-0 handover), the L3 agent's process
monitor (every ``check_child_processes_interval``, Neutron's rule: respawn when the pid in the
pid file does not run this router's keepalived.conf, so a keepalived started with other pid
files gets a second one beside it), iptables rules with their comment markers, the dead-man
timers (detached processes whose undo runs when they fire), conntrack tables and conntrackd's
external cache, the preflight facts, the boot id and reboots. VRRP between the replicas of a
router is a small election: a backup that hears no primary for ``Timing.master_down`` (or
``Timing.skew`` after a priority-0 advertisement) takes over; two primaries that hear each
other keep the one with the higher HA address; a replica behind a VRRP partition hears no one
and is heard by no one (split brain); a killed or stopped keepalived leaves its addresses.
Time is the real monotonic clock (tests choose short ``Timing``), and the model is advanced
lazily, event by event, whenever a command or a stream looks at it: no background task.

Failures on demand (``FakeNetwork.fail``): a node unreachable, a command that times out, a
command that exits non-zero with a message, an SSH channel lost mid-command, an arbitrary
exception; each matched by node and intent type, for a number of times. The errors are
``InfrastructureError`` with ``SshPool``'s own messages (built with its own helpers).

Not modelled: the data plane (no packets: ICMP and TCP probes need the lab), ``fetch_host_key``,
OpenStack's API. ``tests/test_fakenode_contract.py`` runs the same commands against a lab node
and against a fake in the same state and compares what the parsers make of both.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from chaos.deployment import AgentContext
from chaos.errors import InfrastructureError
from chaos.model import Node, Replica, Router, Topology
from chaos.transport import node_commands as nc
from chaos.transport.ssh import CommandResult, _short, _tail

Clock = Callable[[], float]


class UnmodelledCommand(AssertionError):
    """The fake was sent a command it does not model: a test must fail, not get an answer."""


@dataclass
class Timing:
    """How fast the modelled node reacts (seconds). The defaults keep tests quick; the real
    figures are Neutron's (advert_int 2: Master_Down_Interval 7.6 s, Skew_Time 1.6 s)."""

    master_down: float = 0.3  # a backup that hears no primary this long takes over
    skew: float = 0.05  # ... this long after a priority-0 advertisement (a SIGTERMed primary)
    term_exit: float = 0.05  # keepalived exits this long after SIGTERM
    boot: float = 0.3  # a rebooted node answers again after this
    agent_resync: float = 0.05  # after boot, the agent recreates its replicas this much later


# --------------------------------------------------------------------------- the model
@dataclass
class Proc:
    """A process on the node that commands can find (keepalived, a dead-man timer)."""

    pid: int
    kind: Literal["keepalived", "keepalived-vrrp", "deadman"]
    conf: str | None = None  # keepalived.conf on its command line
    router_id: str | None = None
    parent: int | None = None
    stopped: bool = False
    exits_at: float | None = None  # SIGTERM received: ends then
    marker: str | None = None  # dead-man: its marker
    fires_at: float | None = None  # dead-man: when its undo runs
    undo: tuple[str, ...] = ()  # dead-man: its undo commands (text)
    undo_intents: tuple[Any, ...] = ()  # ... and their intents


@dataclass
class Rule:
    """An iptables rule the tool inserts (VRRP dropped on the ha- device), with its comment."""

    chain: str
    device: str
    marker: str


@dataclass
class FakeReplica:
    """One router's replica on one node, as the node holds it."""

    router: Router
    node: FakeNode
    ha_device: str
    ha_ip: str
    index: int  # for the fake MAC and the link's peer index
    namespace: bool = True
    link_up: bool = True
    vrrp: Literal["primary", "backup", "fault"] | None = None  # keepalived's own state (None: not running)
    holds: bool = False  # the router's addresses are configured here
    rules: list[Rule] = field(default_factory=list)
    flows: list[dict[str, Any]] = field(default_factory=list)  # the kernel's conntrack table
    cache: list[dict[str, Any]] | None = None  # conntrackd's external cache (None: no conntrackd)
    conntrack_error: str | None = None  # `conntrack -L` fails with this message
    no_primary_since: float | None = None
    handover: bool = False  # a priority-0 advertisement was heard: take over after skew

    @property
    def router_id(self) -> str:
        return self.router.id

    @property
    def vrid(self) -> int:
        return self.router.vrid or 1

    @property
    def blocked(self) -> bool:
        """VRRP dropped in or out of the ha- device (the tool's partition rules)."""
        return any(r.device == self.ha_device for r in self.rules)

    # addresses as `ip -o -4 addr` prints them, device index first
    def address_lines(self, family: Literal["4", "any"] = "4") -> list[str]:
        if not self.namespace:
            return []
        ha, qr, qg = self.ha_device, _dev("qr", self.router_id), _dev("qg", self.router_id)
        lines = [_addr_line(1, "lo", "127.0.0.1/8", "host")]
        if family == "any":
            lines.append("1: lo    inet6 ::1/128 scope host \\       valid_lft forever preferred_lft forever")
        lines.append(_addr_line(2, ha, f"{self.ha_ip}/18"))
        if self.holds:
            vip = self.router.ha_vip or f"169.254.0.{self.vrid}"
            lines.append(_addr_line(2, ha, f"{vip}/24"))
            if self.router.internal_ip:
                lines.append(_addr_line(3, qr, f"{self.router.internal_ip}/24"))
            if self.router.gateway_ip:
                lines.append(_addr_line(4, qg, f"{self.router.gateway_ip}/16"))
            lines += [_addr_line(4, qg, f"{f.address}/32") for f in self.router.floating_ips]
        return lines

    def link_line(self) -> str:
        flags, state = ("BROADCAST,MULTICAST,UP,LOWER_UP", "UP") if self.link_up else ("BROADCAST,MULTICAST", "DOWN")
        return (f"2: {self.ha_device}@if{10 + self.index}: <{flags}> mtu 1500 qdisc noqueue state {state} mode DEFAULT "
                f"group default qlen 1000\\    link/ether fa:16:3e:00:{self.index // 256:02x}:{self.index % 256:02x} "
                "brd ff:ff:ff:ff:ff:ff link-netnsid 0")


def _dev(prefix: str, router_id: str) -> str:
    return f"{prefix}-{router_id[:11]}"


def _addr_line(index: int, dev: str, cidr: str, scope: str = "global") -> str:
    label = f" {dev}" if scope == "global" or dev == "lo" else ""
    return f"{index}: {dev}    inet {cidr} scope {scope}{label}\\       valid_lft forever preferred_lft forever"


def _flow_line(flow: dict[str, Any], *, cache: bool = False) -> str:
    """A flow as ``conntrack -L`` prints it (conntrackd's cache: no timeout, original direction only)."""
    orig = f"src={flow['src']} dst={flow['dst']} sport={flow['sport']} dport={flow['dport']}"
    if cache:
        return f"tcp      6 {flow.get('state', 'ESTABLISHED')} {orig} [active since 3s]"
    reply = (f"src={flow.get('reply_src', flow['dst'])} dst={flow.get('reply_dst', flow['src'])} "
             f"sport={flow['dport']} dport={flow['sport']}")
    return f"tcp      6 {flow.get('timeout', 431999)} {flow.get('state', 'ESTABLISHED')} {orig} {reply} [ASSURED] mark=0 use=1"


@dataclass
class Answer:
    status: int = 0
    stdout: str = ""
    stderr: str = ""


def _no_netns(rid: str) -> str:
    return f'Cannot open network namespace "qrouter-{rid}": No such file or directory\n'


PROGRAMS = {
    "ip": "ip utility, iproute2-6.1.0, libbpf 1.1.2",
    "conntrack": "conntrack v1.4.7 (conntrack-tools)",
    "iptables": "iptables v1.8.9 (nf_tables)",
    "keepalived": "Keepalived v2.2.7 (01/16,2022)",
    "conntrackd": "Connection tracking userspace daemon v1.4.7",
}


class FakeNode:
    """One network node: its processes, files, replicas, agent and power."""

    def __init__(self, net: FakeNetwork, node: Node) -> None:
        self.net = net
        self.spec = node
        self.name = node.name
        self.agent: AgentContext = node.agent  # where the L3 agent really runs (the truth)
        self.layout = self.agent.layout
        self.check_interval = node.check_child_processes_interval
        self.interval_line: str | None = None  # the agent's check_child_processes_interval line, if readable
        self.uid = 0
        self.programs: dict[str, str | None] = dict(PROGRAMS)
        self.reachable = True  # the network path to the node (False: connects time out)
        self.powered = True
        self.power_off_at: float | None = None  # a reboot asked over SSH: the node goes then
        self.boots_at: float | None = None
        self.resync_at: float | None = None
        self.boot_id = str(uuid.uuid4())
        self.procs: dict[int, Proc] = {}
        self.files: dict[str, str] = {}
        self.replicas: dict[str, FakeReplica] = {}
        self.agent_epoch = net.clock()
        self.agent_ticks = 0
        self._pid = 100

    # ------------------------------------------------------------------ processes and files
    def new_pid(self) -> int:
        self._pid += 1
        return self._pid

    def conf(self, rid: str) -> str:
        return str(self.layout.keepalived_conf(rid))

    def keepalived_of(self, rid: str) -> list[Proc]:
        """Every keepalived process running this router's keepalived.conf, whatever its pid files."""
        conf = self.conf(rid)
        return [p for p in self.procs.values() if p.kind != "deadman" and p.conf == conf]

    def trusted(self, rid: str, which: Literal["main", "vrrp"]) -> tuple[str, Proc | None]:
        """(first pid found in the pid files or "-", the process if it runs this router's conf):
        the pid files in Neutron's order (current names, then pre-Train), as the commands look."""
        first = "-"
        for main, vrrp in self.layout.keepalived_pid_candidates(rid):
            content = self.files.get(str(main if which == "main" else vrrp))
            digits = "".join(ch for ch in (content or "").split("\n", 1)[0] if ch.isdigit())
            if not digits:
                continue
            if first == "-":
                first = digits
            proc = self.procs.get(int(digits))
            if proc is not None and proc.conf == self.conf(rid):
                return digits, proc
        return first, None

    def agent_active(self, rid: str) -> bool:
        """Neutron's rule: the pid in the keepalived pid file (the agent's own naming) runs with the router id."""
        proc = self.procs.get(int(self.files.get(str(self.layout.keepalived_pid(rid)), "0") or 0))
        return proc is not None and proc.router_id == rid

    def start_keepalived(self, rid: str, now: float) -> list[int]:
        """keepalived as Neutron starts it: a main process and its VRRP child, with Neutron's pid
        files; it starts as BACKUP and clears the addresses a crashed predecessor left."""
        rep = self.replicas[rid]
        main = Proc(self.new_pid(), "keepalived", conf=self.conf(rid), router_id=rid)
        child = Proc(self.new_pid(), "keepalived-vrrp", conf=self.conf(rid), router_id=rid, parent=main.pid)
        self.procs[main.pid], self.procs[child.pid] = main, child
        self.files[str(self.layout.keepalived_pid(rid))] = str(main.pid)
        self.files[str(self.layout.keepalived_vrrp_pid(rid))] = str(child.pid)
        if rep.holds or rep.vrrp is None:
            self.net.release(rep)
        rep.vrrp = "backup" if rep.link_up else "fault"
        rep.no_primary_since = None
        rep.handover = False
        self.net.settle(now)
        return [main.pid, child.pid]

    def end(self, proc: Proc) -> None:
        self.procs.pop(proc.pid, None)

    # ------------------------------------------------------------------ replicas
    def add_replica(self, router: Router, replica: Replica, index: int, *, start: bool = True) -> FakeReplica:
        ha_ip = replica.ha_ip or f"169.254.192.{index + 1}"
        rep = FakeReplica(router=router, node=self, ha_device=replica.ha_device, ha_ip=ha_ip.split("/")[0], index=index)
        self.replicas[router.id] = rep
        self.files[self.conf(router.id)] = f"vrrp_instance VR_{rep.vrid} {{\n    virtual_router_id {rep.vrid}\n}}"
        self.files[str(self.layout.state_file(router.id))] = "backup"
        if start:
            self.start_keepalived(router.id, self.net.clock())
        return rep

    def state(self, rid: str) -> str | None:
        text = self.files.get(str(self.layout.state_file(rid)))
        letters = "".join(ch for ch in (text or "").split("\n", 1)[0] if ch.isalpha())
        return letters or None


class FakeNetwork:
    """Every node of a topology, modelled; ``pool`` gives ``SshPool`` stand-ins that reach them."""

    def __init__(
        self,
        topology: Topology,
        *,
        timing: Timing | None = None,
        primaries: dict[str, str] | None = None,
    ) -> None:
        self.topology = topology
        self.timing = timing or Timing()
        self.clock: Clock = time.monotonic  # streams sleep in real time, so the model's clock is the real one
        self.nodes = {n.name: FakeNode(self, n) for n in topology.nodes}
        self.log: list[tuple[str, str, nc.Intent]] = []  # (node, command text, intent) of every command answered
        self.unmodelled: list[tuple[str, str]] = []
        self.failures: list[Failure] = []
        self._recognised: dict[tuple[str, str], nc.Intent] = {}
        index = 0
        for router in topology.routers:
            for replica in router.replicas:
                self.nodes[replica.node].add_replica(router, replica, index)
                index += 1
        now = self.clock()
        for router in topology.routers:
            wanted = (primaries or {}).get(router.id, router.replicas[0].node)
            self.promote(self.replica(router.id, wanted), now)

    # ------------------------------------------------------------------ looking at the model
    def node(self, name: str) -> FakeNode:
        return self.nodes[name]

    def replica(self, router_id: str, node: str) -> FakeReplica:
        return self.nodes[node].replicas[router_id]

    def replicas_of(self, router_id: str) -> list[FakeReplica]:
        return [n.replicas[router_id] for n in self.nodes.values() if router_id in n.replicas]

    def holders(self, router_id: str) -> list[str]:
        self.advance()
        return sorted(r.node.name for r in self.replicas_of(router_id) if r.holds and r.node.powered)

    def injected(self) -> list[str]:
        """Everything a fault leaves behind that is still in place (empty: the model is clean):
        a keepalived not running or stopped, an ha- link down, a tool's iptables rule, an armed
        dead-man, a node without power or its replicas."""
        self.advance()
        left: list[str] = []
        for node in self.nodes.values():
            if not node.powered:
                left.append(f"{node.name}: powered off")
                continue
            for proc in node.procs.values():
                if proc.kind == "deadman":
                    left.append(f"{node.name}: dead-man {proc.pid} ({proc.marker}) armed")
            for rid, rep in node.replicas.items():
                if not rep.namespace:
                    left.append(f"{node.name}: no namespace for {rid}")
                    continue
                running = node.keepalived_of(rid)
                if not running or any(p.exits_at is not None for p in running):
                    left.append(f"{node.name}: keepalived of {rid} not running")
                elif any(p.stopped for p in running):
                    left.append(f"{node.name}: keepalived of {rid} stopped")
                elif len([p for p in running if p.kind == "keepalived"]) > 1:
                    left.append(f"{node.name}: {len(running)} keepalived processes for {rid}")
                if not rep.link_up:
                    left.append(f"{node.name}: {rep.ha_device} of {rid} down")
                left += [f"{node.name}: iptables rule {r.chain} {r.device} {r.marker} in qrouter-{rid}" for r in rep.rules]
        return left

    # ------------------------------------------------------------------ failures on demand
    def fail(
        self,
        *,
        node: str | None = None,
        intent: type[nc.Intent] | tuple[type[nc.Intent], ...] | None = None,
        when: Callable[[nc.Intent], bool] | None = None,
        times: int | None = 1,
        how: Literal["exit", "timeout", "lost", "unreachable", "raise"] = "exit",
        status: int = 1,
        stderr: str = "",
        exc: BaseException | None = None,
    ) -> Failure:
        """The next ``times`` commands (None: all) matching ``node`` and ``intent`` fail ``how``."""
        failure = Failure(node=node, intent=intent, when=when, times=times, how=how, status=status, stderr=stderr, exc=exc)
        self.failures.append(failure)
        return failure

    def _failure_for(self, node: str, intent: nc.Intent | None) -> Failure | None:
        for failure in self.failures:
            if failure.matches(node, intent):
                if failure.times is not None:
                    failure.times -= 1
                    if failure.times <= 0:
                        self.failures.remove(failure)
                failure.hits += 1
                return failure
        return None

    # ------------------------------------------------------------------ time
    def advance(self, until: float | None = None) -> None:
        """Bring the model to ``until`` (now), event after event in time order."""
        now = self.clock() if until is None else until
        for _ in range(10_000):
            t = self._next_event()
            if t is None or t > now:
                break
            self._step(t)
        self.settle(now)

    def _next_event(self) -> float | None:
        times: list[float] = []
        for node in self.nodes.values():
            times += [t for t in (node.power_off_at, node.boots_at, node.resync_at) if t is not None]
            times += [p.exits_at for p in node.procs.values() if p.exits_at is not None]
            times += [p.fires_at for p in node.procs.values() if p.fires_at is not None]
            if node.powered and node.check_interval > 0:
                times.append(node.agent_epoch + (node.agent_ticks + 1) * node.check_interval)
            for rep in node.replicas.values():
                if rep.no_primary_since is not None and rep.vrrp == "backup" and rep.link_up and self.running(rep):
                    times.append(rep.no_primary_since + (self.timing.skew if rep.handover else self.timing.master_down))
        return min(times) if times else None

    def _step(self, t: float) -> None:
        for node in self.nodes.values():
            if node.power_off_at is not None and node.power_off_at <= t:
                self.power_off(node, t)
            if node.boots_at is not None and node.boots_at <= t:
                node.boots_at = None
                node.powered = True
                node.boot_id = str(uuid.uuid4())
                node.agent_epoch, node.agent_ticks = t, 0
                node.resync_at = t + self.timing.agent_resync
            if node.resync_at is not None and node.resync_at <= t:
                node.resync_at = None
                for rid, rep in node.replicas.items():  # the agent recreates its replicas, as backups
                    rep.namespace, rep.link_up, rep.holds = True, True, False
                    node.files[str(node.layout.state_file(rid))] = "backup"
                    node.start_keepalived(rid, t)
            for proc in list(node.procs.values()):
                if proc.exits_at is not None and proc.exits_at <= t:
                    self._terminated(node, proc, t)
                elif proc.fires_at is not None and proc.fires_at <= t and proc.pid in node.procs:
                    node.end(proc)
                    for text, intent in zip(proc.undo, proc.undo_intents, strict=True):
                        self.execute(node, intent or self.recognise(node.name, text), t)
            if node.powered and node.check_interval > 0:
                tick = node.agent_epoch + (node.agent_ticks + 1) * node.check_interval
                if tick <= t:
                    node.agent_ticks += 1
                    for rid, rep in node.replicas.items():
                        if rep.namespace and not node.agent_active(rid):
                            node.start_keepalived(rid, t)
        self.settle(t)

    def _terminated(self, node: FakeNode, proc: Proc, t: float) -> None:
        """keepalived's orderly exit after SIGTERM: its child goes with it, its pid files are
        removed, its addresses released with a priority-0 advertisement (a handover after skew)."""
        rid = proc.router_id
        assert rid is not None
        ended = [q for q in node.procs.values() if q.pid == proc.pid or q.parent == proc.pid]
        for p in ended:
            node.end(p)
        for pair in node.layout.keepalived_pid_candidates(rid):
            for path in pair:
                if node.files.get(str(path)) in {str(p.pid) for p in ended}:
                    node.files.pop(str(path))
        rep = node.replicas[rid]
        if rep.vrrp == "primary":
            for other in self.replicas_of(rid):
                if other is not rep and self.hear(other, rep):
                    other.handover = True
                    other.no_primary_since = t
        if rep.holds:
            self.release(rep)
        rep.vrrp = None

    def power_cycle(self, name: str) -> None:
        """Cut a node's power now (a BMC's ForceRestart); it boots after ``Timing.boot``."""
        self.advance()
        self.power_off(self.nodes[name], self.clock())

    def power_off(self, node: FakeNode, t: float) -> None:
        """Power cut: every process ends at once, namespaces and their addresses and rules go."""
        node.power_off_at = None
        node.powered = False
        node.procs.clear()
        for rep in node.replicas.values():
            if rep.vrrp == "primary" or rep.holds:
                for other in self.replicas_of(rep.router_id):
                    if other is not rep and other.no_primary_since is None:
                        other.no_primary_since = t
            rep.namespace, rep.holds, rep.vrrp = False, False, None
            rep.rules.clear()
            rep.flows.clear()
        node.boots_at = t + self.timing.boot

    # ------------------------------------------------------------------ VRRP
    def hear(self, listener: FakeReplica, speaker: FakeReplica) -> bool:
        """Whether ``listener`` receives ``speaker``'s advertisements."""
        for rep in (listener, speaker):
            if not (rep.node.powered and rep.namespace and rep.link_up) or rep.blocked:
                return False
        return True

    def advertising(self, rep: FakeReplica) -> bool:
        procs = rep.node.keepalived_of(rep.router_id)
        return rep.vrrp == "primary" and any(p.kind == "keepalived-vrrp" and not p.stopped and p.exits_at is None for p in procs)

    def running(self, rep: FakeReplica) -> bool:
        procs = rep.node.keepalived_of(rep.router_id)
        return rep.node.powered and any(p.kind == "keepalived-vrrp" and not p.stopped and p.exits_at is None for p in procs)

    def promote(self, rep: FakeReplica, t: float) -> None:
        rep.vrrp = "primary"
        rep.holds = True
        rep.no_primary_since = None
        rep.handover = False
        rep.node.files[str(rep.node.layout.state_file(rep.router_id))] = "primary"
        for other in self.replicas_of(rep.router_id):
            if other is not rep and self.hear(other, rep):
                other.no_primary_since = None
                other.handover = False

    def release(self, rep: FakeReplica) -> None:
        """The replica's addresses go; neutron-keepalived-state-change writes backup."""
        rep.holds = False
        if rep.namespace:
            rep.node.files[str(rep.node.layout.state_file(rep.router_id))] = "backup"

    def settle(self, t: float) -> None:
        """VRRP's decisions at ``t``: faults, demotions of a primary that hears a better one,
        promotions of backups whose wait for a primary is over."""
        for router in self.topology.routers:
            reps = self.replicas_of(router.id)
            for rep in reps:
                if not self.running(rep):
                    continue
                if not rep.link_up:
                    if rep.vrrp != "fault":
                        rep.vrrp = "fault"
                        if rep.holds:
                            self.release(rep)
                            for other in reps:
                                if other is not rep and other.no_primary_since is None:
                                    other.no_primary_since = t
                    continue
                if rep.vrrp == "fault":
                    rep.vrrp = "backup"
                heard = [m for m in reps if m is not rep and self.advertising(m) and self.hear(rep, m)]
                if rep.vrrp == "primary":
                    if any(_address(m.ha_ip) > _address(rep.ha_ip) for m in heard):
                        rep.vrrp = "backup"
                        self.release(rep)
                        rep.no_primary_since = None
                    continue
                if heard:
                    rep.no_primary_since, rep.handover = None, False
                    continue
                if rep.no_primary_since is None:
                    rep.no_primary_since = t
                wait = self.timing.skew if rep.handover else self.timing.master_down
                if t >= rep.no_primary_since + wait - 1e-9:
                    self.promote(rep, t)

    # ------------------------------------------------------------------ commands
    def recognise(self, node: str, text: str) -> nc.Intent:
        """The intent of a command that arrives as plain text, by regeneration (see the module
        docstring); raises UnmodelledCommand when no builder makes exactly this text."""
        key = (node, text)
        if key in self._recognised:
            return self._recognised[key]
        fake = self.nodes[node]
        agents = {fake.agent, fake.spec.agent}
        words = set(re.findall(r"[A-Za-z0-9][A-Za-z0-9_.:-]*", text))
        markers = [w for w in words if _is_marker(w)]
        pids = [int(w) for w in words if w.isdigit() and 1 < int(w) <= nc.PID_MAX]  # what deadman_cancel accepts
        candidates: list[nc.NodeCommand] = [nc.boot_id()]
        for m in markers:
            candidates.append(nc.deadman_cancel(m))
            candidates += [nc.deadman_cancel(m, p) for p in pids]
        for agent in agents:
            for rid, rep in fake.replicas.items():
                candidates += [nc.keepalived_ensure_running(agent, rid), nc.keepalived_start(agent, rid)]
                candidates += [nc.ha_link_set(agent, rid, rep.ha_device, a) for a in nc.LinkAction]
                for sig in nc.Signal:
                    candidates += [nc.keepalived_signal(agent, rid, sig, vrrp_child=c) for c in (True, False)]
                for m in markers:
                    candidates += [nc.vrrp_unblock(agent, rid, rep.ha_device, m), nc.vrrp_block(agent, rid, rep.ha_device, m)]
        for candidate in candidates:
            if candidate == text:
                self._recognised[key] = candidate.intent
                return candidate.intent
        self.unmodelled.append((node, text))
        raise UnmodelledCommand(f"{node}: the fake network node does not model this command: {_short(text)}")

    def answer(self, node_name: str, command: str) -> Answer:
        """What the node prints for ``command`` now (the model advanced first)."""
        intent = nc.intent_of(command) or self.recognise(node_name, command)
        self.advance()
        node = self.nodes[node_name]
        self.log.append((node_name, str(command), intent))
        return self.execute(node, intent, self.clock())

    def execute(self, node: FakeNode, intent: nc.Intent, now: float) -> Answer:
        if isinstance(intent, nc.AgentIntent) and intent.agent.exec_prefix != node.agent.exec_prefix:
            name = intent.agent.exec_prefix[-1] if intent.agent.exec_prefix else "sh"
            return Answer(1, "", f"Error: No such container: {name}\n")
        handler = getattr(self, f"_do_{type(intent).__name__}", None)
        if handler is None:
            self.unmodelled.append((node.name, repr(intent)))
            raise UnmodelledCommand(f"{node.name}: the fake network node has no answer for {type(intent).__name__}")
        answer: Answer = handler(node, intent, now)
        self.settle(now)
        return answer

    # one method per intent -------------------------------------------------------------
    def _do_GroundTruth(self, node: FakeNode, i: nc.GroundTruth, now: float) -> Answer:
        out: list[str] = []
        for rid, ha in i.replicas:
            rep = node.replicas.get(rid) if i.agent.layout == node.layout else None
            out.append(f"R {rid}")
            ns = rep is not None and rep.namespace
            out.append(f"N {1 if ns else 0}")
            out.append(f"S {(node.state(rid) if i.agent.layout == node.layout else None) or '-'}")
            if rep is not None and ns:
                out += [f"A {line}" for line in rep.address_lines()]
            for which in ("main", "vrrp"):
                first, proc = node.trusted(rid, which) if i.agent.layout == node.layout else ("-", None)  # type: ignore[arg-type]
                out.append(f"K {which} {proc.pid} {'T' if proc.stopped else 'S'}" if proc else f"K {which} {first} -")
            if rep is not None and ns and ha == rep.ha_device:
                out.append(f"L {rep.link_line()}")
            out.append("E")
        return Answer(0, "".join(line + "\n" for line in out))

    def _running_pids(self, node: FakeNode, rid: str) -> str:
        pids = sorted((str(p.pid) for p in node.keepalived_of(rid)))  # /proc/[0-9]* in glob (text) order
        return "".join(p + " " for p in pids)

    def _do_KeepalivedInstances(self, node: FakeNode, i: nc.KeepalivedInstances, now: float) -> Answer:
        return Answer(0, f"keepalived: {self._running_pids(node, i.router_id) or 'none'}\n")

    def _do_KeepalivedPids(self, node: FakeNode, i: nc.KeepalivedPids, now: float) -> Answer:
        lines = []
        for which in ("main", "vrrp"):
            _, proc = node.trusted(i.router_id, which)  # type: ignore[arg-type]
            if proc is not None:
                lines.append(f"{proc.pid} {'T' if proc.stopped else 'S'}")
        return Answer(0, "".join(line + "\n" for line in lines))

    def _do_KeepalivedSignal(self, node: FakeNode, i: nc.KeepalivedSignal, now: float) -> Answer:
        rid = i.router_id
        out: list[str] = []
        if i.signal == nc.Signal.KILL and i.vrrp_child:
            _, main = node.trusted(rid, "main")
            if main is not None:
                main.stopped = True
        for which in (("vrrp", "main") if i.vrrp_child else ("main",)):
            _, proc = node.trusted(rid, which)  # type: ignore[arg-type]
            if proc is None:
                continue
            self._signal(node, proc, i.signal, now)
            out.append(f"signalled {proc.pid}")
        if not out:
            return Answer(3, "", f"no running keepalived for router {rid}\n")
        return Answer(0, "".join(line + "\n" for line in out))

    def _signal(self, node: FakeNode, proc: Proc, sig: nc.Signal, now: float) -> None:
        rep = node.replicas.get(proc.router_id or "")
        if sig == nc.Signal.KILL:
            node.end(proc)  # pid files stay, addresses stay: a crash
            if rep is not None and not [p for p in node.keepalived_of(rep.router_id) if p.kind == "keepalived-vrrp"]:
                if rep.vrrp == "primary":
                    for other in self.replicas_of(rep.router_id):
                        if other is not rep and other.no_primary_since is None:
                            other.no_primary_since = now
                rep.vrrp = None
        elif sig == nc.Signal.STOP:
            for p in [proc, *(q for q in node.procs.values() if q.parent == proc.pid)]:
                p.stopped = True
            if rep is not None and rep.vrrp == "primary":
                for other in self.replicas_of(rep.router_id):
                    if other is not rep and other.no_primary_since is None:
                        other.no_primary_since = now
        elif sig == nc.Signal.CONT:
            for p in [proc, *(q for q in node.procs.values() if q.parent == proc.pid)]:
                p.stopped = False
        elif sig == nc.Signal.TERM:
            if proc.kind == "keepalived":
                proc.exits_at = now + self.timing.term_exit
            else:  # the parent restarts a child that ends
                node.end(proc)
                child = Proc(node.new_pid(), "keepalived-vrrp", conf=proc.conf, router_id=proc.router_id, parent=proc.parent)
                node.procs[child.pid] = child
                node.files[str(node.layout.keepalived_vrrp_pid(proc.router_id or ""))] = str(child.pid)

    def _start(self, node: FakeNode, rid: str, now: float) -> Answer:
        running = self._running_pids(node, rid)
        if running:
            return Answer(0, f"keepalived already running: {running}\n")
        rep = node.replicas.get(rid)
        if rep is None or not rep.namespace:
            return Answer(255, "", _no_netns(rid))
        for main, vrrp in node.layout.keepalived_pid_candidates(rid)[:1]:
            node.files.pop(str(main), None)
            node.files.pop(str(vrrp), None)
        node.start_keepalived(rid, now)
        return Answer(0, "started keepalived\n")

    def _do_KeepalivedStart(self, node: FakeNode, i: nc.KeepalivedStart, now: float) -> Answer:
        return self._start(node, i.router_id, now)

    def _do_KeepalivedEnsureRunning(self, node: FakeNode, i: nc.KeepalivedEnsureRunning, now: float) -> Answer:
        out = ""
        for which in ("main", "vrrp"):
            _, proc = node.trusted(i.router_id, which)  # type: ignore[arg-type]
            if proc is not None and proc.stopped:
                proc.stopped = False
                out += f"continued {proc.pid}\n"
        started = self._start(node, i.router_id, now)
        return Answer(started.status, out + started.stdout, started.stderr)

    def _do_KeepalivedVrids(self, node: FakeNode, i: nc.KeepalivedVrids, now: float) -> Answer:
        out = ""
        for rid in i.router_ids:
            conf = node.files.get(str(i.agent.layout.keepalived_conf(rid)))
            found = re.search(r"virtual_router_id [0-9]*", conf or "")
            out += f"{rid} {found.group(0) if found else '-'}\n\n"
        return Answer(0, out)

    def _do_PidsAlive(self, node: FakeNode, i: nc.PidsAlive, now: float) -> Answer:
        lines = [f"{p} {'T' if node.procs[p].stopped else 'S'}" for p in i.pids if p in node.procs]
        return Answer(0, "".join(line + "\n" for line in lines))

    def _do_HaLinkSet(self, node: FakeNode, i: nc.HaLinkSet, now: float) -> Answer:
        rep = node.replicas.get(i.router_id)
        if rep is None or not rep.namespace:
            return Answer(255, "", _no_netns(i.router_id))
        if rep.ha_device != i.ha_device:
            return Answer(1, "", f'Cannot find device "{i.ha_device}"\n')
        rep.link_up = i.action == nc.LinkAction.UP
        return Answer()

    def _do_VrrpBlock(self, node: FakeNode, i: nc.VrrpBlock, now: float) -> Answer:
        rep = node.replicas.get(i.router_id)
        if rep is None or not rep.namespace:
            return Answer(255, "", _no_netns(i.router_id))
        rep.rules += [Rule("INPUT", i.ha_device, i.marker), Rule("OUTPUT", i.ha_device, i.marker)]
        for other in self.replicas_of(rep.router_id):  # nobody hears across the partition from now on
            if other.vrrp == "backup" and other.no_primary_since is None:
                other.no_primary_since = now
        return Answer()

    def _do_VrrpUnblock(self, node: FakeNode, i: nc.VrrpUnblock, now: float) -> Answer:
        rep = node.replicas.get(i.router_id)
        if rep is None or not rep.namespace:
            return Answer(0, "", _no_netns(i.router_id) * 2)
        rep.rules = [r for r in rep.rules if not (r.marker == i.marker and r.device == i.ha_device)]
        return Answer()

    def _do_VrrpRulesCount(self, node: FakeNode, i: nc.VrrpRulesCount, now: float) -> Answer:
        rep = node.replicas.get(i.router_id)
        if rep is None or not rep.namespace:
            return Answer(0, "0\n", _no_netns(i.router_id))
        return Answer(0, f"{sum(1 for r in rep.rules if i.marker in r.marker)}\n")  # grep -cF: a substring

    def _do_DeadmanSchedule(self, node: FakeNode, i: nc.DeadmanSchedule, now: float) -> Answer:
        proc = Proc(node.new_pid(), "deadman", marker=i.marker, fires_at=now + i.after, undo=i.undo, undo_intents=i.undo_intents)
        node.procs[proc.pid] = proc
        return Answer(0, f"deadman {proc.pid}\n")

    def _do_DeadmanCancel(self, node: FakeNode, i: nc.DeadmanCancel, now: float) -> Answer:
        ours = [p for p in node.procs.values() if p.kind == "deadman" and p.marker == i.marker]
        if i.pid is not None:
            ours = [p for p in ours if p.pid == i.pid]
        for p in ours:
            node.end(p)
        return Answer(0, "".join(f"cancelled {p.pid}\n" for p in sorted(ours, key=lambda p: str(p.pid))))

    def _do_BootId(self, node: FakeNode, i: nc.BootId, now: float) -> Answer:
        return Answer(0, node.boot_id + "\n")

    def _do_Reboot(self, node: FakeNode, i: nc.Reboot, now: float) -> Answer:
        node.power_off_at = now + i.delay
        return Answer()

    def _do_ConntrackTables(self, node: FakeNode, i: nc.ConntrackTables, now: float) -> Answer:
        out: list[str] = []
        for rid in i.router_ids:
            rep = node.replicas.get(rid)
            if rep is None or not rep.namespace:
                out += [f"R {rid} 0", f"E {rid}"]
                continue
            out.append(f"R {rid} 1")
            for port in i.ports:
                if rep.conntrack_error is not None:
                    out.append(f"X K 1 {rep.conntrack_error}")
                    continue
                out += [f"K {_flow_line(f)}" for f in rep.flows if f["dport"] == port]
            if rep.cache is not None:
                out += [f"C {_flow_line(f, cache=True)}" for f in rep.cache]
            out.append(f"E {rid}")
        return Answer(0, "".join(line + "\n" for line in out))

    def _do_Preflight(self, node: FakeNode, i: nc.Preflight, now: float) -> Answer:
        out = [f"U {node.uid}", "A ok"]
        for prog in ("ip", "conntrack", "iptables", "keepalived"):
            version = node.programs.get(prog)
            out.append(f"P {prog} ok {version}" if version else f"P {prog} missing not found")
        if any(r.cache is not None for r in node.replicas.values()):
            version = node.programs.get("conntrackd")
            out.append(f"P conntrackd ok {version}" if version else "P conntrackd missing not found")
        out += ["N ok", f"I {node.programs.get('iptables') or ''}", f"C {node.interval_line or '-'}"]
        stdout = "".join(line + "\n" for line in out)
        if not i.agent.exec_prefix:
            # The real command ends in a syntax error on the host (its last line starts with
            # `||`): every line is printed, then sh exits 2. Modelled as it is.
            line = 24
            return Answer(2, stdout, f"bash: -c: line {line}: syntax error near unexpected token `||'\n"
                                     f"bash: -c: line {line}: ` || echo \"A fail exit $?\"'\n")
        return Answer(0, stdout)

    # ------------------------------------------------------------------ streams
    async def follow(self, node_name: str, intent: nc.FollowReplicas, deadline: float) -> AsyncIterator[str]:
        """The lines ``follow_replicas`` prints: state changes, snapshots, address events, heartbeats."""
        node = self.nodes[node_name]
        boot = node.boot_id
        states: dict[str, str] = {}
        present: dict[str, list[str] | None] = dict.fromkeys(intent.router_ids)
        beat = time.monotonic()
        while time.monotonic() < deadline:
            self.advance()
            if not node.powered or node.boot_id != boot:
                await asyncio.sleep(intent.state_every)  # a powered-off node says nothing; the channel is dead
                continue
            lines: list[str] = []
            for rid in intent.router_ids:
                state = node.state(rid) if node.layout == intent.agent.layout else None
                value = state or "-"
                if states.get(rid) != value:
                    states[rid] = value
                    lines.append(f"S {rid} {value}")
            for rid in intent.router_ids:
                rep = node.replicas.get(rid)
                now_lines = rep.address_lines("any") if rep is not None and rep.namespace else None
                before = present[rid]
                if now_lines is None:
                    if before is not None:
                        lines.append(f"X {rid}")
                        present[rid] = None
                    continue
                if before is None:
                    lines += [f"B {rid}", *(f"A {rid} {line}" for line in now_lines), f"E {rid}"]
                else:
                    lines += [f"M {rid} Deleted {line}" for line in before if line not in now_lines]
                    lines += [f"M {rid} {line}" for line in now_lines if line not in before]
                present[rid] = now_lines
            if time.monotonic() - beat >= intent.heartbeat:
                beat = time.monotonic()
                lines.append(f"H {time.time():.6f}")  # the node stamps its heartbeat with its clock
            for line in lines:
                yield line
            await asyncio.sleep(intent.state_every)

    # ------------------------------------------------------------------ transport
    def pool(self) -> Callable[..., FakeSshPool]:
        """A stand-in for the ``SshPool`` class (same constructor), bound to this network."""

        def make(nodes: Sequence[Node], **options: Any) -> FakeSshPool:
            return FakeSshPool(self, nodes, **options)

        return make


def _address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(ip)


def _is_marker(word: str) -> bool:
    try:
        nc.marker(word)
    except ValueError:
        return False
    return True


@dataclass
class Failure:
    """A failure on demand (see ``FakeNetwork.fail``)."""

    node: str | None
    intent: type[nc.Intent] | tuple[type[nc.Intent], ...] | None
    when: Callable[[nc.Intent], bool] | None
    times: int | None
    how: str
    status: int
    stderr: str
    exc: BaseException | None
    hits: int = 0

    def matches(self, node: str, intent: nc.Intent | None) -> bool:
        if self.node is not None and node != self.node:
            return False
        if self.intent is not None and not isinstance(intent, self.intent):
            return False
        return self.when is None or (intent is not None and self.when(intent))


class FakeSshPool:
    """``SshPool``'s interface (``run``, ``stream``, ``prepare``, ``forget``, ``node``, ``close``,
    async context manager) over a ``FakeNetwork``, raising ``InfrastructureError`` with its
    messages. Channels are not limited (the real pool's limits are tested against the lab)."""

    def __init__(
        self,
        net: FakeNetwork,
        nodes: Sequence[Node],
        *,
        max_channels: int = 8,
        max_connections: int = 3,
        connect_timeout: float = 10,
        command_timeout: float = 30,
        connect_retries: int = 3,
        retry_backoff: float = 0.5,
        insecure_no_host_key_check: bool = False,
    ) -> None:
        if not 1 <= max_channels <= 9:
            raise ValueError("max_channels must be 1..9: OpenSSH refuses the 10th channel (MaxSessions 10)")
        if not 1 <= max_connections <= 8:
            raise ValueError("max_connections must be 1..8: sshd's MaxStartups (10) bounds the logins in progress")
        self.net = net
        self.prepared: list[tuple[str, int]] = []  # (node, channels) of every prepare()
        self.nodes = {n.name: n for n in nodes}
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.connect_retries = connect_retries
        self.forgotten: list[str] = []
        self.closed = False

    async def __aenter__(self) -> FakeSshPool:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        self.closed = True

    def node(self, name: str) -> Node:
        try:
            return self.nodes[name]
        except KeyError:
            raise InfrastructureError(f"no node named {name!r} in this run's topology") from None

    def forget(self, name: str) -> None:
        self.forgotten.append(name)

    async def prepare(self, name: str, channels: int) -> None:
        await asyncio.sleep(0)
        self._connect(name)
        self.prepared.append((name, channels))

    def _connect(self, name: str) -> None:
        node = self.node(name)
        self.net.advance()
        fake = self.net.nodes.get(name)
        if fake is None or not fake.reachable or not fake.powered:
            raise InfrastructureError(
                f"{name}: cannot reach {node.address}:{node.port} over SSH after {self.connect_retries + 1} attempts: timed out"
            )

    async def run(
        self, node: str, command: str, *, timeout: float | None = None, check: bool = True, input: str | None = None
    ) -> CommandResult:
        limit = self.command_timeout if timeout is None else timeout
        started = time.monotonic()
        await asyncio.sleep(0)  # a command is an await: let the others run, let cancellation in
        self._connect(node)
        intent = nc.intent_of(command) or self.net.recognise(node, command)
        failure = self.net._failure_for(node, intent)
        if failure is not None:
            if failure.how == "unreachable":
                n = self.nodes[node]
                raise InfrastructureError(
                    f"{node}: cannot reach {n.address}:{n.port} over SSH after {self.connect_retries + 1} attempts: timed out"
                )
            if failure.how == "timeout":
                raise InfrastructureError(f"{node}: command timed out after {limit:g}s: {_short(command)}")
            if failure.how == "lost":
                raise InfrastructureError(f"{node}: SSH failed while running {_short(command)}: Connection lost")
            if failure.how == "raise":
                assert failure.exc is not None
                raise failure.exc
            answer = Answer(failure.status, "", failure.stderr)
        else:
            answer = self.net.answer(node, command)
        result = CommandResult(
            node=node, command=command, exit_status=answer.status, stdout=answer.stdout, stderr=answer.stderr,
            duration_s=time.monotonic() - started,
        )
        if check and answer.status != 0:
            raise InfrastructureError(f"{node}: command exited {answer.status}: {_short(command)}: {_tail(result.stderr) or _tail(result.stdout)}")
        return result

    async def stream(self, node: str, command: str, *, timeout: float | None = None) -> AsyncIterator[str]:
        limit = self.command_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        await asyncio.sleep(0)
        self._connect(node)
        intent = nc.intent_of(command)
        if not isinstance(intent, nc.FollowReplicas):
            self.net.unmodelled.append((node, str(command)))
            raise UnmodelledCommand(f"{node}: the fake streams follow_replicas only, not {_short(command)}")
        failure = self.net._failure_for(node, intent)
        if failure is not None:
            if failure.how == "raise":
                assert failure.exc is not None
                raise failure.exc
            raise InfrastructureError(f"{node}: SSH failed while streaming {_short(command)}: Connection lost")
        self.net.log.append((node, str(command), intent))
        async for line in self.net.follow(node, intent, deadline):
            yield line


def topology(
    *,
    nodes: int = 3,
    routers: int = 4,
    replicas: int = 2,
    check_interval: float = 60.0,
    layout: Iterable[tuple[int, ...]] | None = None,
    source: str = "fake",
) -> Topology:
    """A topology for the fake: ``network-1..N``, routers with ``replicas`` each spread round
    robin (or on the node indexes of ``layout``), a floating IP and a gateway each."""
    node_list = [
        Node(name=f"network-{i}", address=f"198.51.100.{10 + i}", check_child_processes_interval=check_interval)
        for i in range(1, nodes + 1)
    ]
    placements = list(layout) if layout is not None else [
        tuple((r + k) % nodes for k in range(replicas)) for r in range(routers)
    ]
    router_list = []
    for r, placed in enumerate(placements):
        rid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"fake-router-{r + 1}"))
        router_list.append(Router(
            id=rid, name=f"router-{r + 1}", project_id="p1", vrid=r + 1,
            replicas=tuple(Replica(node=node_list[n].name, ha_device=f"ha-{rid[:8]}{k:02d}{n}"[:14], ha_ip=f"169.254.192.{10 + r * 8 + k}")
                           for k, n in enumerate(placed)),
            floating_ips=({"address": f"100.64.32.{r + 1}", "echo_port": 7},),  # type: ignore[arg-type]
            gateway_ip=f"100.64.1.{r + 1}", internal_ip=f"100.96.{r}.1",
        ))
    return Topology(source=source, nodes=tuple(node_list), routers=tuple(router_list))


# --------------------------------------------------------------------------- wiring for tests
POOL_USERS = (
    "chaos.runner.execute", "chaos.runner.recover", "chaos.commands.doctor", "chaos.commands.discover",
)
"""Modules that open an ``SshPool`` themselves: ``install`` imports them first, then replaces the
name in every loaded ``chaos`` module that holds the real class."""


def install(monkeypatch: Any, net: FakeNetwork) -> None:
    """Every ``SshPool(...)`` the tool opens from now on (this test) reaches ``net``."""
    import importlib
    import sys

    from chaos.transport.ssh import SshPool

    for name in POOL_USERS:
        importlib.import_module(name)
    for name, module in list(sys.modules.items()):
        if (name == "chaos" or name.startswith("chaos.")) and getattr(module, "SshPool", None) is SshPool:
            monkeypatch.setattr(module, "SshPool", net.pool())


def inventory_yaml(topo: Topology) -> str:
    """The topology as an inventory file (``source: inventory``), so the CLI resolves it itself."""
    import json

    nodes = [{"name": n.name, "address": n.address, "check_child_processes_interval": n.check_child_processes_interval}
             for n in topo.nodes]
    routers = [json.loads(r.model_dump_json(exclude_none=True)) for r in topo.routers]
    for r in routers:
        for f in r.get("floating_ips", []):
            f.pop("probe_ports", None)
    doc = {"defaults": {"ssh_config": False}, "nodes": nodes, "routers": routers}
    return json.dumps(doc, indent=1)  # JSON is YAML


def experiment_yaml(
    inventory: str,
    fault: str,
    *,
    mode: str = "all",
    value: float | None = None,
    safeguards: str = "",
    probes: str = "primary: {}",
    tolerances: str = "primaries_after: {equals: 1}",
    seed: int = 1,
    warmup: str = "0s",
) -> str:
    """An experiment on the fake's inventory; ``fault`` is the YAML body of ``fault:`` (indented 2)."""
    return (
        "title: fake\n"
        f"target:\n  source: inventory\n  inventory: {inventory}\n  routers: {{name: \"*\"}}\n  mode: {mode}\n"
        + (f"  value: {value}\n" if value is not None else "")
        + f"  seed: {seed}\n"
        f"fault:\n{fault}\n"
        f"safeguards:\n  max_nodes_at_once: 3\n  max_run_duration: 2m\n{safeguards}\n"
        f"probes:\n  {probes}\n  warmup: {warmup}\n  settle: 0s\n"
        f"steady_state_hypothesis:\n  title: fake\n  tolerances:\n    {tolerances}\n"
    )


def crashed_run(net: FakeNetwork, experiment: Path, reports: Path) -> Path:
    """A run folder as a run killed with kill -9 mid-fault leaves it: the plan made by the real
    planner, each undo journaled before its injection (with its digest, as the scheduler does),
    the faults injected by the real fault code, nothing undone. Returns the folder."""
    from chaos.experiment.load import load_experiment
    from chaos.faults.base import FaultContext
    from chaos.journal import Journal
    from chaos.journal.events import undo_digest
    from chaos.runner.execute import make_plan

    async def crash() -> Path:
        exp = load_experiment(experiment)
        run_dir = reports / "20270101T000000Z-crash-000000"
        run_dir.mkdir(parents=True)
        (run_dir / "topology.json").write_text(net.topology.model_dump_json())
        with Journal(run_dir / "journal.jsonl") as journal:
            async with net.pool()(net.topology.nodes) as ssh:
                ctx = FaultContext(topology=net.topology, ssh=ssh, run_id=run_dir.name)
                plan, faults, _ = await make_plan(exp, net.topology, ssh, ctx)
                for action in plan.actions:
                    fault = faults[action.action_id]
                    undo = [s.model_dump() for s in fault.undo_steps()]
                    journal.write("fault.undo_recorded", action_id=action.action_id, fault=action.fault,
                                  router_id=action.router_id, node=action.node, undo=undo, undo_sha256=undo_digest(undo))
                    journal.write("fault.injected", action_id=action.action_id, fault=action.fault,
                                  router_id=action.router_id, node=action.node, detail=await fault.inject(), inject_s=0.0)
        return run_dir

    return asyncio.run(crash())
