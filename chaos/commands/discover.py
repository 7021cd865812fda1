"""``chaos discover``: where is each HA router's primary, by the API and by the nodes themselves.

The API (openstacksdk) says which L3 agents host each HA router and what ``ha_state`` they
last reported; the nodes (over SSH) say what is true now: the state file and whether the
router's addresses are configured. The table puts both side by side and flags every
disagreement: no primary, two primaries, the API showing active where the node is backup (or
standby where it is primary), a dead agent whose replica is primary, a router hosted by fewer
agents than its peers. It also counts VRIDs per project HA network (read from each replica's
keepalived.conf, ``virtual_router_id N``) and warns as a project nears Neutron's 254.

Routers the tool's faults cannot act on are listed apart with the reason (DVR+HA: keepalived
in ``snat-<id>``), never silently dropped.

Exit codes: 0 (whatever the flags say: they are findings, not failures); 3 for no cloud
configured, a bad cloud name or inventory, a token without the admin role discovery needs,
an ML2/OVN cloud; 5 when the API or every node is unreachable, or the credentials are refused
(401).
"""

from __future__ import annotations

import argparse
import asyncio
import re
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from chaos.errors import ExitCode
from chaos.model import Router, Topology
from chaos.probes.replicas import ReplicaObservation, observe
from chaos.settings import Settings
from chaos.targets.openstack import (
    MAX_VRID,
    ApiRouter,
    Discovery,
    OpenStackClient,
    RefusedRouter,
    SshInventory,
    discover,
    first_error,
)
from chaos.transport import node_commands as nc
from chaos.transport.ssh import SshPool

VRID_WARN_FRACTION = 0.9


class ReplicaRow(BaseModel):
    node: str
    agent_alive: bool | None
    admin_state_up: bool | None
    api_ha_state: str | None
    node_state: str | None
    holds_addresses: bool
    keepalived_alive: bool
    reachable: bool
    vrid: int | None = None


class RouterRow(BaseModel):
    id: str
    name: str
    project_id: str
    replicas: list[ReplicaRow]
    primary: list[str]  # nodes whose state file says primary
    api_active: list[str]
    flags: list[str]


class DiscoverReport(BaseModel):
    cloud: str
    routers: list[RouterRow]
    skipped_non_ha: list[str]
    refused: list[RefusedRouter] = []  # HA routers the faults cannot act on, with the reason
    vrids: dict[str, dict[str, Any]]  # project -> {ha_network, used, free, warn}
    warnings: list[str]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "discover",
        help="list HA routers and where their primary is, by the API and by the nodes",
        description=(
            "Discover HA routers through the OpenStack API and check each replica on its node over SSH. "
            "Flags: no primary, two primaries, API/node disagreement, dead agent with a primary, "
            "a router below its replica count; counts VRIDs per project."
        ),
    )
    parser.add_argument("--cloud", help="clouds.yaml entry (default: OS_CLOUD)")
    parser.add_argument("--lab", metavar="NAME", help="the lab's own cloud (its clouds.yaml in the lab folder)")
    parser.add_argument("--inventory", type=Path, help="SSH inventory: agent host -> address, user, key, jump host")
    parser.add_argument("--name", help="only routers whose name matches this glob")
    parser.add_argument("--project", help="only routers of this project id")
    parser.add_argument("--tag", action="append", default=[], help="only routers with this tag (repeatable)")
    parser.add_argument("--replicas", type=int, help="expected replicas per router (default: the most common count)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(handler=run_discover)


def run_discover(args: argparse.Namespace, settings: Settings) -> int:
    cloud = args.lab or args.cloud
    if args.lab:
        lab_clouds = settings.lab_root / args.lab / "clouds.yaml"
        if not lab_clouds.exists():
            from chaos.errors import Conflict

            raise Conflict(f"no lab named {args.lab!r} with a clouds.yaml ({lab_clouds})",
                           hint=f"start one with: chaos lab up --name {args.lab}")
    inventory = SshInventory.load(args.inventory) if args.inventory else None
    report = asyncio.run(
        build_report(cloud, inventory=inventory, name=args.name, project=args.project, tags=args.tag,
                     replicas=args.replicas)
    )
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        print(render(report))
    return int(ExitCode.OK)


async def read_vrids(ssh: SshPool, topology: Topology) -> dict[tuple[str, str], int | None]:
    """(router id, node) -> ``virtual_router_id`` of the replica's keepalived.conf, one command per node."""
    out: dict[tuple[str, str], int | None] = {}

    async def node_vrids(node: str, routers: list[Router]) -> None:
        try:
            result = await ssh.run(node, nc.keepalived_vrids(topology.node(node).agent, [r.id for r in routers]), timeout=15, check=False)
        except Exception:  # noqa: BLE001 - a node that does not answer has no VRIDs to show
            return
        for line in result.stdout.splitlines():
            m = re.match(r"^(\S+) virtual_router_id (\d+)", line.strip())
            if m:
                out[(m.group(1), node)] = int(m.group(2))

    hosted: dict[str, list[Router]] = {}
    for r in topology.routers:
        for rep in r.replicas:
            hosted.setdefault(rep.node, []).append(r)
    async with asyncio.TaskGroup() as tg:
        for node, routers in hosted.items():
            tg.create_task(node_vrids(node, routers))
    return out


def router_flags(api: ApiRouter, rows: list[ReplicaRow], expected: int) -> list[str]:
    flags = []
    primaries = [r.node for r in rows if r.node_state in ("primary", "master")]
    if not primaries:
        flags.append("no primary")
    if len(primaries) > 1:
        flags.append(f"{len(primaries)} primaries ({', '.join(primaries)})")
    for r in rows:
        if r.api_ha_state == "active" and r.node_state == "backup":
            flags.append(f"API active but {r.node} is backup")
        if r.api_ha_state == "standby" and r.node_state in ("primary", "master"):
            flags.append(f"API standby but {r.node} is primary")
        if r.agent_alive is False and (r.node_state in ("primary", "master") or r.api_ha_state == "active"):
            flags.append(f"dead agent on {r.node} with a primary replica")
        if not r.reachable:
            flags.append(f"{r.node} unreachable over SSH")
    if len(api.agents) < expected:
        flags.append(f"{len(api.agents)} replica(s), expected {expected}")
    return flags


async def build_report(
    cloud: str | None,
    *,
    inventory: SshInventory | None = None,
    name: str | None = None,
    project: str | None = None,
    tags: list[str] | None = None,
    replicas: int | None = None,
) -> DiscoverReport:
    client = OpenStackClient(cloud)
    try:
        found: Discovery = await discover(client, inventory=inventory, name=name, project=project, tags=tags or [])
    finally:
        client.close()
    topology = found.topology
    try:
        async with SshPool(topology.nodes) as ssh:
            observations, vrids = await asyncio.gather(observe(ssh, topology, topology.routers), read_vrids(ssh, topology))
    except BaseExceptionGroup as group:  # a sentence and its exit code, never an internal error
        raise first_error(group) from None
    counts = Counter(len(r.agents) for r in found.routers)
    expected = replicas or (counts.most_common(1)[0][0] if counts else 0)
    rows: list[RouterRow] = []
    for api in found.routers:
        obs: dict[str, ReplicaObservation] = {o.node: o for o in observations.get(api.id, [])}
        replica_rows = []
        for agent in api.agents:
            o = obs.get(agent.host)
            replica_rows.append(
                ReplicaRow(
                    node=agent.host, agent_alive=agent.alive, admin_state_up=agent.admin_state_up,
                    api_ha_state=agent.ha_state, node_state=o.state if o else None,
                    holds_addresses=bool(o and o.holds_addresses), keepalived_alive=bool(o and o.keepalived_alive),
                    reachable=bool(o and o.reachable), vrid=vrids.get((api.id, agent.host)),
                )
            )
        rows.append(
            RouterRow(
                id=api.id, name=api.name, project_id=api.project_id, replicas=replica_rows,
                primary=[r.node for r in replica_rows if r.node_state in ("primary", "master")],
                api_active=[r.node for r in replica_rows if r.api_ha_state == "active"],
                flags=router_flags(api, replica_rows, expected),
            )
        )
    vrid_use: dict[str, dict[str, Any]] = {}
    warnings = []
    for row in rows:
        v = next((r.vrid for r in row.replicas if r.vrid is not None), None)
        entry = vrid_use.setdefault(row.project_id, {"ha_network": found.ha_networks.get(row.project_id), "vrids": set()})
        if v is not None:
            entry["vrids"].add(v)
    for project_id, entry in vrid_use.items():
        used = len(entry.pop("vrids"))
        entry.update(used=used, free=MAX_VRID - used, warn=used >= VRID_WARN_FRACTION * MAX_VRID)
        if entry["warn"]:
            warnings.append(f"project {project_id}: {used} of {MAX_VRID} VRIDs used on its HA network; "
                            f"the {MAX_VRID + 1}th HA router of this project cannot be created")
    return DiscoverReport(cloud=found.cloud, routers=rows, skipped_non_ha=found.skipped, refused=found.refused,
                          vrids=vrid_use, warnings=warnings)


def render(report: DiscoverReport) -> str:
    lines = [f"cloud {report.cloud}: {len(report.routers)} HA router(s)"]
    header = f"{'ROUTER':<14} {'ID':<9} {'NODE':<14} {'AGENT':<9} {'API':<8} {'NODE STATE':<11} {'ADDRS':<6} {'VRID':<5}"
    lines.append(header)
    for row in report.routers:
        for i, r in enumerate(row.replicas):
            agent = "dead" if r.agent_alive is False else ("disabled" if r.admin_state_up is False else "ok")
            lines.append(
                f"{(row.name if i == 0 else ''):<14} {(row.id[:8] if i == 0 else ''):<9} {r.node:<14} {agent:<9} "
                f"{r.api_ha_state or '-':<8} {(r.node_state or ('?' if not r.reachable else '-')):<11} "
                f"{('yes' if r.holds_addresses else 'no'):<6} {r.vrid if r.vrid is not None else '-':<5}"
            )
        where = ", ".join(row.primary) or "nowhere"
        lines.append(f"{'':<14} primary: {where}" + ("" if not row.flags else "   !! " + "; ".join(row.flags)))
    flagged = [r for r in report.routers if r.flags]
    lines.append(f"{len(flagged)} router(s) flagged")
    for project, use in report.vrids.items():
        lines.append(f"project {project}: {use['used']} VRID(s) used, {use['free']} free (HA network {use['ha_network']})")
    for w in report.warnings:
        lines.append(f"WARNING: {w}")
    if report.skipped_non_ha:
        lines.append(f"skipped {len(report.skipped_non_ha)} non-HA router(s): {', '.join(report.skipped_non_ha)}")
    if report.refused:
        lines.append(f"refused {len(report.refused)} HA router(s) that this tool's faults cannot act on:")
        lines += [f"  {r.describe()}" for r in report.refused]
    return "\n".join(lines)


__all__ = ["DiscoverReport", "build_report", "register", "render", "router_flags"]
