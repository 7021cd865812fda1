"""``chaos discover`` against the shared lab: every router, where its primary is, and a split brain flagged."""

from __future__ import annotations

import asyncio
import json
import shlex
import time

import pytest

from chaos.commands.discover import build_report, router_flags
from chaos.targets.openstack import ApiAgent, ApiRouter
from chaos.commands.discover import ReplicaRow
from chaos.targets.lab import lab_topology
from chaos.transport.ssh import SshPool
from tests.conftest import CHAOS_CLI, LAB_ROOT, LabHandle, wait_lab_ready


async def chaos_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*CHAOS_CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def lab_ssh(lab: LabHandle, node: str, command: str) -> None:
    """One command on a lab node over SSH (asyncssh, host key checked), as the tool reaches nodes."""
    topology = lab_topology(LAB_ROOT, lab.name)
    async with SshPool(topology.nodes) as ssh:
        await ssh.run(node, command, timeout=15)


async def test_discover_lists_every_router(lab: LabHandle) -> None:
    wait_lab_ready(lab)
    code, out, err = await chaos_cli("discover", "--lab", lab.name, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert sorted(r["id"] for r in report["routers"]) == sorted(r.id for r in lab.spec.routers)
    for row in report["routers"]:
        spec = next(r for r in lab.spec.routers if r.id == row["id"])
        assert sorted(r["node"] for r in row["replicas"]) == sorted(rep.node for rep in spec.replicas)
        truth = [rep.node for rep in spec.replicas if lab.lab.replica_state(rep.node, spec) == "primary"]
        assert row["primary"] == truth and len(truth) == 1
        assert {r["vrid"] for r in row["replicas"]} == {spec.vrid}
    (project, use), = report["vrids"].items()
    assert use["used"] == len(lab.spec.routers) and use["free"] == 254 - len(lab.spec.routers) and not use["warn"]
    code, table, _ = await chaos_cli("discover", "--lab", lab.name)
    assert code == 0 and all(r.name in table for r in lab.spec.routers) and "primary:" in table


async def test_discover_flags_two_primaries_during_vrrp_partition(lab: LabHandle) -> None:
    wait_lab_ready(lab)
    router = lab.spec.routers[1]
    backup = next(rep for rep in router.replicas if lab.lab.replica_state(rep.node, router) == "backup")
    ns, dev = shlex.quote(router.namespace), shlex.quote(backup.ha_device)
    # Both directions: with INPUT alone the old primary still hears the isolated side and, at
    # equal priority, the higher HA address wins: a failover rather than a split brain.
    rules = [f"INPUT -i {dev} -p 112 -j DROP", f"OUTPUT -o {dev} -p 112 -j DROP"]
    await lab_ssh(lab, backup.node, " && ".join(f"ip netns exec {ns} iptables -w -I {r}" for r in rules))
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if all(lab.lab.replica_state(rep.node, router) == "primary" for rep in router.replicas):
                break
            await asyncio.sleep(0.2)
        report = await build_report(lab.name)
        row = next(r for r in report.routers if r.id == router.id)
        assert sorted(row.primary) == sorted(rep.node for rep in router.replicas)
        assert any(f.startswith("2 primaries") for f in row.flags), row.flags
        others = [r for r in report.routers if r.id != router.id]
        assert all(len(r.primary) == 1 for r in others)
    finally:
        await lab_ssh(lab, backup.node, "; ".join(f"ip netns exec {ns} iptables -w -D {r}" for r in rules) + "; true")
        wait_lab_ready(lab)


def test_router_flags() -> None:
    api = ApiRouter(id="r", name="r", project_id="p", agents=(
        ApiAgent(id="a1", host="n1", alive=False, admin_state_up=True, ha_state="active"),
        ApiAgent(id="a2", host="n2", alive=True, admin_state_up=True, ha_state="active"),
    ))

    def row(node: str, alive: bool, api_state: str, state: str | None) -> ReplicaRow:
        return ReplicaRow(node=node, agent_alive=alive, admin_state_up=True, api_ha_state=api_state, node_state=state,
                          holds_addresses=state == "primary", keepalived_alive=True, reachable=True)

    flags = router_flags(api, [row("n1", False, "active", "primary"), row("n2", True, "active", "backup")], expected=3)
    assert "dead agent on n1 with a primary replica" in flags
    assert "API active but n2 is backup" in flags
    assert "2 replica(s), expected 3" in flags
    assert router_flags(api, [row("n1", True, "standby", "backup"), row("n2", True, "standby", "backup")], 2) == ["no primary"]


pytestmark = pytest.mark.timeout(180)
