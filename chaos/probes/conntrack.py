"""Which of the probes' TCP flows each replica's connection tracking knows, before and after.

Without conntrackd a backup has no entry for a flow the primary forwards; with strict tracking
(``nf_conntrack_tcp_loose=0`` and INVALID dropped) the new primary then resets the session.
A snapshot lists the conntrack table inside every replica's ``qrouter-<id>`` namespace (one
command per node for all its routers, all nodes at once), keeps only the probes' own flows
(TCP to a floating IP's echo port, inbound, and to the vantage echo service, outbound through
SNAT), and journals one ``conntrack.snapshot`` per replica. The analysis compares flows by
protocol and original tuple (``chaos.analysis.metrics.flow_key``).

A node that does not answer gets no snapshot event (and a warning in the log): a missing
snapshot makes the conntrack metrics None, where an empty one would claim every flow lost.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any, Literal

from chaos.errors import InfrastructureError
from chaos.log import get_logger
from chaos.model import Router, Topology
from chaos.runner.journal import Journal
from chaos.transport import node_commands as nc
from chaos.transport.ssh import SshPool

log = get_logger("conntrack")

SNAPSHOT_TIMEOUT = 20.0
_KV_RE = re.compile(r"^(src|dst|sport|dport)=(\S+)$")


def parse_conntrack_line(line: str) -> dict[str, Any] | None:
    """One ``conntrack -L`` line as {proto, src, dst, sport, dport, state, reply_*, timeout, flags}.

    ``tcp      6 431999 ESTABLISHED src=A dst=B sport=1 dport=7 src=C dst=A sport=7 dport=1 [ASSURED] mark=0 use=1``:
    the first src/dst/sport/dport are the original direction, the second the reply direction.
    """
    fields = line.split()
    if len(fields) < 3 or not fields[1].isdigit():
        return None
    flow: dict[str, Any] = {"proto": fields[0]}
    if fields[2].isdigit():
        flow["timeout"] = int(fields[2])
    reply = False
    flags: list[str] = []
    for token in fields[3:]:
        match = _KV_RE.match(token)
        if match:
            key, value = match.groups()
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


def parse_conntrack_tables(output: str) -> dict[str, list[dict[str, Any]] | None]:
    """Router id -> flows, from ``node_commands.conntrack_tables`` output; None = no namespace."""
    tables: dict[str, list[dict[str, Any]] | None] = {}
    current: str | None = None
    for line in output.splitlines():
        tag, _, rest = line.partition(" ")
        if tag == "R":
            rid, _, present = rest.partition(" ")
            current = rid
            tables[rid] = [] if present.strip() == "1" else None
        elif tag == "E":
            current = None
        elif current is not None and tables.get(current) is not None:
            flow = parse_conntrack_line(line)
            if flow is not None:
                tables[current].append(flow)  # type: ignore[union-attr]
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
                out = await self.ssh.run(node, nc.conntrack_tables([r.id for r in hosted], self.ports), timeout=SNAPSHOT_TIMEOUT)
        except (InfrastructureError, TimeoutError) as exc:
            reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            self.failures.append(f"{node}: {reason}")
            log.warning("conntrack snapshot failed", node=node, phase=phase, error=reason)
            return
        tables = parse_conntrack_tables(out.stdout)
        for router in hosted:
            if router.id not in tables:
                self.failures.append(f"{node}: no output for router {router.id}")
                continue
            table = tables[router.id]
            flows = [f for f in table or [] if self.ours(router, f)]
            extra = {} if table is not None else {"detail": "no qrouter namespace on the node"}
            self.journal.write("conntrack.snapshot", router_id=router.id, node=node, phase=phase, flows=flows, **extra)
