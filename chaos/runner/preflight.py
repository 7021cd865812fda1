"""Preflight: does each node have what a run needs? (``chaos doctor``; ``chaos run`` before injecting)

A fault that cannot be undone is worse than no fault, and a probe that cannot run makes a
figure unknown: both are better found before anything is injected. One command per node asks
the host and the L3 agent's context (the node's profile: on the host, or inside the agent's
container) for the programs the faults and probes run, the router namespaces, keepalived and
the state files of every replica the run will touch, and the agent's respawn interval where its
configuration is readable. Every finding says what to fix.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Sequence
from typing import Literal

from pydantic import BaseModel

from chaos.errors import InfrastructureError
from chaos.model import Node, Router, Topology
from chaos.probes.replicas import observe_node
from chaos.transport import node_commands as nc
from chaos.transport.ssh import SshPool

Status = Literal["ok", "warn", "fail"]
PREFLIGHT_TIMEOUT = 20.0
_INTERVAL_RE = re.compile(r"check_child_processes_interval\s*=\s*(\d+(?:\.\d+)?)")


class Check(BaseModel):
    node: str
    check: str
    status: Status
    detail: str
    fix: str = ""


def _ok(node: str, check: str, detail: str) -> Check:
    return Check(node=node, check=check, status="ok", detail=detail)


def parse_preflight(node: Node, output: str, stderr: str, needed: set[str]) -> list[Check]:
    """Checks from ``node_commands.preflight`` output; ``needed``: programs whose absence is fatal."""
    name = node.name
    checks: list[Check] = []
    tags = {line.split(" ", 1)[0]: line for line in output.splitlines() if line}
    uid = tags.get("U", "U ?").split(" ", 1)[1].strip()
    if uid != "0":
        checks.append(Check(node=name, check="root", status="fail", detail=f"commands run as uid {uid}, not root",
                            fix="log in as root, or set sudo: true with passwordless sudo for the SSH user (docs/real-cloud.md)"))
    else:
        checks.append(_ok(name, "root", "commands run as root" + (" (sudo -n)" if node.sudo else "")))
    agent = tags.get("A", "A fail")
    if not agent.startswith("A ok"):
        where = " ".join(node.agent.exec_prefix) or "the host"
        checks.append(Check(node=name, check="agent context", status="fail",
                            detail=f"cannot run commands where the L3 agent runs ({where}): {stderr.strip()[-300:] or agent}",
                            fix=f"check the node's profile ({node.profile}), container name and engine in the inventory "
                                "(docs/deployments.md)"))
        return checks
    checks.append(_ok(name, "agent context", f"profile {node.profile}: " + (" ".join(node.agent.exec_prefix) or "on the host")))
    for line in output.splitlines():
        if line.startswith("P "):
            _, prog, state, *rest = line.split(" ", 3) + [""]
            detail = (rest[0] if rest else "").strip()
            if state == "ok":
                checks.append(_ok(name, prog, detail))
            else:
                fatal = prog in needed
                checks.append(Check(node=name, check=prog, status="fail" if fatal else "warn",
                                    detail=f"{prog} does not run: {detail or 'not found'}",
                                    fix=f"install {prog} where the L3 agent runs" + ("" if fatal else
                                        " (without it the measurements that use it are unknown)")))
    netns = tags.get("N", "N fail no answer")
    if netns.startswith("N ok"):
        checks.append(_ok(name, "ip netns", "router namespaces can be listed"))
    else:
        checks.append(Check(node=name, check="ip netns", status="fail", detail=netns[2:].strip(),
                            fix="the faults enter qrouter-<id> namespaces: /run/netns must be visible where commands run"))
    iptables = tags.get("I", "I ").split(" ", 1)[1].strip() if "I" in tags else ""
    if iptables:
        checks.append(_ok(name, "iptables backend", iptables))
    interval_line = tags.get("C", "C -").split(" ", 1)[1].strip()
    match = _INTERVAL_RE.search(interval_line)
    if match:
        seen = float(match.group(1))
        if seen != node.check_child_processes_interval:
            checks.append(Check(node=name, check="respawn interval", status="warn",
                                detail=f"the agent's check_child_processes_interval is {seen:g} s, the inventory says "
                                       f"{node.check_child_processes_interval:g} s",
                                fix=f"set check_child_processes_interval: {seen:g} for this node in the inventory"))
        else:
            checks.append(_ok(name, "respawn interval", f"check_child_processes_interval = {seen:g} s"))
    else:
        checks.append(Check(node=name, check="respawn interval", status="ok",
                            detail=f"not set in the agent's configuration: Neutron's default "
                                   f"({node.check_child_processes_interval:g} s assumed)"))
    return checks


async def preflight_node(
    ssh: SshPool, topology: Topology, node: Node, routers: Sequence[Router], needed: set[str]
) -> list[Check]:
    try:
        async with asyncio.timeout(PREFLIGHT_TIMEOUT):
            result = await ssh.run(node.name, nc.preflight(node.agent), timeout=PREFLIGHT_TIMEOUT, check=False)
    except (InfrastructureError, TimeoutError) as exc:
        detail = exc.message if isinstance(exc, InfrastructureError) else f"no answer within {PREFLIGHT_TIMEOUT:g}s"
        return [Check(node=node.name, check="ssh", status="fail", detail=detail,
                      fix=(exc.hint if isinstance(exc, InfrastructureError) and exc.hint else
                           "check the node's address, user, key and known_hosts in the inventory"))]
    if result.exit_status != 0 and "U " not in result.stdout:
        return [Check(node=node.name, check="ssh", status="fail",
                      detail=f"the command did not run (exit {result.exit_status}): {result.stderr.strip()[-300:]}",
                      fix="with sudo: true the SSH user needs passwordless sudo (docs/real-cloud.md lists the lines)")]
    checks = [_ok(node.name, "ssh", f"{node.user}@{node.address}:{node.port}, host key verified"), *parse_preflight(
        node, result.stdout, result.stderr, needed)]
    if any(c.status == "fail" and c.check in ("agent context", "root") for c in checks):
        return checks
    hosted = [r for r in routers if any(rep.node == node.name for rep in r.replicas)]
    if hosted:
        for o in await observe_node(ssh, topology, node.name, hosted, timeout=PREFLIGHT_TIMEOUT):
            problems = [what for what, bad in (
                ("no state file", o.state is None),
                ("keepalived not running", not o.keepalived_alive),
                ("no ha- device", o.ha_link_up is None),
            ) if bad]
            if not o.reachable:
                problems = [o.detail or "no answer"]
            if problems:
                checks.append(Check(node=node.name, check=f"replica {o.router_id[:8]}", status="fail",
                                    detail=f"router {o.router_id}: " + ", ".join(problems),
                                    fix="the replica is not as Neutron leaves it: check the L3 agent on this node"))
            else:
                checks.append(_ok(node.name, f"replica {o.router_id[:8]}", f"state {o.state}, keepalived running"))
    return checks


async def preflight(
    ssh: SshPool, topology: Topology, routers: Sequence[Router], *, nodes: Iterable[str] | None = None,
    needed: set[str] = frozenset({"ip", "keepalived"}),  # type: ignore[assignment]
) -> list[Check]:
    """Every check of every node (``nodes``, default all), nodes asked concurrently."""
    names = list(nodes) if nodes is not None else [n.name for n in topology.nodes]
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(preflight_node(ssh, topology, topology.node(n), routers, needed)) for n in names]
    return [c for t in tasks for c in t.result()]


def failures(checks: Sequence[Check]) -> list[Check]:
    return [c for c in checks if c.status == "fail"]


def render(checks: Sequence[Check]) -> str:
    """A table people read: one line per check, what to fix under each failure or warning."""
    width = max((len(c.node) for c in checks), default=4)
    lines = []
    for c in checks:
        mark = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}[c.status]
        lines.append(f"{mark}  {c.node:<{width}}  {c.check:<18} {c.detail}")
        if c.status != "ok" and c.fix:
            lines.append(f"{'':6}{'':<{width}}  {'':<18} fix: {c.fix}")
    return "\n".join(lines)
