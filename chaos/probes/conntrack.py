"""Which of the probes' TCP flows each replica's connection tracking knows, before and after.

Without conntrackd a backup has no entry for a flow the primary forwards; with strict tracking
(``nf_conntrack_tcp_loose=0`` and INVALID dropped) the new primary then resets the session.
A snapshot lists the conntrack table inside every replica's ``qrouter-<id>`` namespace (one
command per node for all its routers, all nodes at once), keeps only the probes' own flows
(TCP to a floating IP's echo port, inbound, and to the vantage echo service, outbound through
SNAT), and journals one ``conntrack.snapshot`` per replica. The analysis compares flows by
protocol and original tuple (``chaos.analysis.metrics.flow_key``).

Where the router runs conntrackd (Neutron's ``ha_conntrackd_enabled``), the snapshot also lists
conntrackd's external cache (``conntrackd -C <conf> -e``): Neutron's conntrackd keeps the
flows replicated from the primary there, out of the backup's kernel table, until
neutron-keepalived-state-change commits them on promotion (``conntrackd -c``). So a flow
counts as replicated when the backup has it in its kernel table or its external cache.

A node that does not answer gets no snapshot event (and a warning in the log), and a listing
that fails (no ``conntrack`` binary, conntrackd not answering) is journaled as failed with its
reason (``flows``/``cache`` null): a missing snapshot makes the conntrack metrics None with
that reason, where an empty one would claim every flow lost.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import BaseModel

from chaos.errors import InfrastructureError
from chaos.log import get_logger
from chaos.model import Router, Topology
from chaos.probes.base import ProbeKind, ProbeRun
from chaos.journal import Journal
from chaos.transport import node_commands as nc
from chaos.transport.ssh import SshPool

log = get_logger("conntrack")

SNAPSHOT_TIMEOUT = 20.0
_KV_RE = re.compile(r"^(?:(src|dst)=(\S+)|(sport|dport)=(\d+))$")


def parse_conntrack_line(line: str) -> dict[str, Any] | None:
    """One ``conntrack -L`` (or ``conntrackd -e``/``-i``) line as {proto, src, dst, sport, dport,
    state, reply_*, timeout, flags}.

    ``tcp      6 431999 ESTABLISHED src=A dst=B sport=1 dport=7 src=C dst=A sport=7 dport=1 [ASSURED] mark=0 use=1``:
    the first src/dst/sport/dport are the original direction, the second the reply direction.
    conntrackd's caches print no timeout (``tcp 6 ESTABLISHED src=A ... [active since 3s]``) and
    its external cache only the original direction.
    """
    fields = line.split()
    if len(fields) < 3 or not fields[1].isdigit():
        return None
    flow: dict[str, Any] = {"proto": fields[0]}
    rest = fields[2:]
    if rest and rest[0].isdigit():
        flow["timeout"] = int(rest[0])
        rest = rest[1:]
    reply = False
    flags: list[str] = []
    for token in rest:
        match = _KV_RE.match(token)
        if match:
            key = match.group(1) or match.group(3)
            value = match.group(2) or match.group(4)
            if key in flow or (key == "src" and "dst" in flow and "dport" in flow):
                reply = True
            name = f"reply_{key}" if reply else key
            flow.setdefault(name, int(value) if key.endswith("port") else value)
        elif token.startswith("[") and token.endswith("]"):
            flags.append(token.strip("[]"))
        elif token.isupper() and "state" not in flow and "src" not in flow:
            flow["state"] = token
    if not {"src", "dst", "sport", "dport"} <= flow.keys():
        return None
    if flags:
        flow["flags"] = flags
    return flow


class ReplicaTable(BaseModel):
    """One replica's connection tracking as a snapshot reads it.

    ``kernel``: the kernel's table (None: the listing failed, see ``kernel_error``); ``cache``:
    conntrackd's external cache, the flows replicated from the primary that wait there until a
    promotion commits them (None: no conntrackd on this replica, or the listing failed)."""

    namespace: bool
    kernel: list[dict[str, Any]] | None = None
    kernel_error: str | None = None
    cache: list[dict[str, Any]] | None = None
    cache_error: str | None = None


def parse_conntrack_tables(output: str) -> dict[str, ReplicaTable]:
    """Router id -> its table, from ``node_commands.conntrack_tables`` output."""
    tables: dict[str, ReplicaTable] = {}
    current: ReplicaTable | None = None
    for line in output.splitlines():
        tag, _, rest = line.partition(" ")
        if tag == "R":
            rid, _, present = rest.partition(" ")
            current = ReplicaTable(namespace=present.strip() == "1")
            if current.namespace:
                current.kernel = []
            tables[rid] = current
        elif tag == "E" or current is None:
            current = None
        elif tag == "K" and current.kernel is not None:
            flow = parse_conntrack_line(rest)
            if flow is not None:
                current.kernel.append(flow)
        elif tag == "C":
            flow = parse_conntrack_line(rest)
            current.cache = current.cache if current.cache is not None else []
            if flow is not None:
                current.cache.append(flow)
        elif tag == "X":
            which, _, why = rest.partition(" ")
            code, _, message = why.partition(" ")
            reason = f"exit {code}: {message.strip() or 'no message'}"
            if which == "K":
                current.kernel, current.kernel_error = None, reason
            else:
                current.cache, current.cache_error = None, reason
    return tables


class ConntrackProbe:
    """Snapshots the probes' flows in every replica's conntrack table, on demand."""

    def __init__(self, ssh: SshPool, topology: Topology, routers: Sequence[Router], journal: Journal) -> None:
        self.ssh = ssh
        self.topology = topology
        self.routers = list(routers)
        self.journal = journal
        self.vantage_echo = (topology.vantage.echo_address, topology.vantage.echo_port)
        ports = {f.echo_port for r in self.routers for f in r.floating_ips if f.echo_port}
        if topology.vantage.echo_port:
            ports.add(topology.vantage.echo_port)
        self.ports = sorted(ports)
        self.failures: list[str] = []

    def ours(self, router: Router, flow: dict[str, Any]) -> bool:
        """The probes' flows: inbound to a floating IP's echo port, outbound to the vantage echo."""
        if flow.get("proto") != "tcp":
            return False
        for fip in router.floating_ips:
            if fip.echo_port and flow.get("dst") == str(fip.address) and flow.get("dport") == fip.echo_port:
                return True
        address, port = self.vantage_echo
        return bool(address) and flow.get("dst") == address and flow.get("dport") == port

    async def snapshot(self, phase: Literal["before", "after"]) -> None:
        """Journal one ``conntrack.snapshot`` per replica of the target routers (nodes in parallel)."""
        if phase not in ("before", "after"):
            raise ValueError(f"phase must be before or after, not {phase!r}")
        if not self.ports:
            log.warning("no echo port to match flows on: conntrack snapshot skipped")
            return
        nodes = sorted({rep.node for r in self.routers for rep in r.replicas})
        async with asyncio.TaskGroup() as tg:
            for node in nodes:
                tg.create_task(self._node(node, phase))

    async def _node(self, node: str, phase: str) -> None:
        hosted = [r for r in self.routers if any(rep.node == node for rep in r.replicas)]
        try:
            async with asyncio.timeout(SNAPSHOT_TIMEOUT):
                command = nc.conntrack_tables(self.topology.node(node).agent, [r.id for r in hosted], self.ports)
                out = await self.ssh.run(node, command, timeout=SNAPSHOT_TIMEOUT)
        except (InfrastructureError, TimeoutError) as exc:
            reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            self.failures.append(f"{node}: {reason}")
            log.warning("conntrack snapshot failed", node=node, phase=phase, error=reason)
            return
        tables = parse_conntrack_tables(out.stdout)
        for router in hosted:
            table = tables.get(router.id)
            if table is None:
                self.failures.append(f"{node}: no output for router {router.id}")
                continue
            fields: dict[str, Any] = {
                "flows": None if table.kernel is None else [f for f in table.kernel if self.ours(router, f)],
                "cache": None if table.cache is None else [f for f in table.cache if self.ours(router, f)],
            }
            if not table.namespace:
                fields["detail"] = "no qrouter namespace on the node"
            if table.kernel_error:
                fields["error"] = f"conntrack -L failed: {table.kernel_error}"
                log.warning("conntrack listing failed", node=node, router=router.id, error=table.kernel_error)
            if table.cache_error:
                fields["cache_error"] = f"conntrackd -e failed: {table.cache_error}"
            self.journal.write("conntrack.snapshot", router_id=router.id, node=node, phase=phase, **fields)


# --------------------------------------------------------------------------- the probe
class ConntrackKind(ProbeKind):
    """``probes.conntrack``: the held sessions' conntrack entries on every replica, before and
    after (the scheduler takes the two snapshots). No settings."""

    name: ClassVar[str] = "conntrack"
    order: ClassVar[int] = 50

    @classmethod
    def build(cls, settings: Any, run: ProbeRun) -> list[Any]:
        probe = ConntrackProbe(run.ssh, run.topology, run.routers, run.journal)
        if not probe.ports:
            run.skipped(cls.name, "no held TCP session to follow: no floating IP declares an echo port")
        return [probe]
