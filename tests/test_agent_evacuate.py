"""agent-evacuate against a lab of its own, through the lab's Neutron API (openstacksdk).

Evacuation gives the moved replicas new HA ports (new ha- devices), so it runs on its own lab
rather than the shared one, whose plan other tests read. The outage is measured from the
vantage namespace with a bounded ping loop at the floating IPs of the routers whose primary
was on the drained node.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable

import pytest

from chaos.faults.agent_evacuate import AgentEvacuate
from chaos.faults.base import FaultContext
from chaos.lab.spec import LabSpec, RouterSpec
from chaos.targets.lab import lab_topology
from chaos.transport.ssh import SshPool
from tests.conftest import LAB_ROOT, LabHandle, wait_lab_ready

PING_INTERVAL = 0.05
PING_COUNT = 200  # 10 s, bounded


@pytest.fixture(scope="module")
def evac_lab(make_lab: Callable[..., LabHandle]) -> LabHandle:
    return make_lab("e", nodes=3, routers=3, replicas=2, advert_int=1, respawn_interval=2.0, boot_delay=2.0)


def placement(handle: LabHandle) -> dict[str, list[str]]:
    spec = LabSpec.load(handle.dir / "lab.json")
    return {r.id: sorted(rep.node for rep in r.replicas) for r in spec.routers}


async def ping_gaps(netns: str, addresses: list[str]) -> dict[str, float]:
    """Longest gap between two answered pings per address (bounded: PING_COUNT at PING_INTERVAL)."""

    async def one(addr: str) -> float:
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", netns, "ping", "-n", "-D", "-i", str(PING_INTERVAL), "-W", "0.2",
            "-c", str(PING_COUNT), addr, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )
        async with asyncio.timeout(PING_COUNT * PING_INTERVAL + 15):
            out, _ = await proc.communicate()
        stamps = [float(m) for m in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", out.decode(), re.M)]
        assert len(stamps) > 10, f"{addr}: almost no replies"
        return max(b - a for a, b in zip(stamps, stamps[1:], strict=False))

    results = await asyncio.gather(*(one(a) for a in addresses))
    return dict(zip(addresses, results, strict=True))


async def takeover_delay(handle: LabHandle, routers: list[RouterSpec], node: str, started: float) -> float:
    """Seconds from ``started`` until every router in ``routers`` has its addresses on a node
    other than ``node`` (read from the replicas' namespaces every 50 ms, bounded)."""
    deadline = time.monotonic() + 20

    def moved(router: RouterSpec) -> bool:
        wanted = {router.gateway_ip, *(f.address for f in router.floating_ips)}
        return any(wanted & set(handle.lab.replica_addresses(rep.node, router) or ())
                   for rep in router.replicas if rep.node != node)

    while time.monotonic() < deadline:
        if all(await asyncio.to_thread(lambda: [moved(r) for r in routers])):
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"no other replica took over within 20 s of draining {node}")


async def evacuate(handle: LabHandle, mode: str) -> tuple[float, float, str]:
    """Drain the node holding router-1's primary; returns the worst ping gap of its primaries
    and how long after the drain began another replica held their addresses."""
    wait_lab_ready(handle)
    before = placement(handle)
    status = handle.status()
    node = next(rep["node"] for rep in status["routers"][0]["replicas"] if rep["state"] == "primary")
    primaries_there = [r for r in status["routers"] if any(rep["node"] == node and rep["state"] == "primary" for rep in r["replicas"])]
    fips = [f["address"] for r in primaries_there for f in r["floating_ips"]]
    topology = lab_topology(LAB_ROOT, handle.name)
    async with SshPool(topology.nodes) as ssh:
        ctx = FaultContext(topology=topology, ssh=ssh, run_id=f"evac-{mode}")
        fault = AgentEvacuate(ctx, router=None, node=topology.node(node), params={"mode": mode}, duration=None,
                              action_id="a1")
        steps = fault.undo_steps()  # read before the injection, as the runner journals it
        assert [json.loads(s.command)["op"] for s in steps][0] == "agent_admin_state"
        spec = LabSpec.load(handle.dir / "lab.json")
        watched = [r for r in spec.routers if r.id in {p["id"] for p in primaries_there}]
        pinger = asyncio.create_task(ping_gaps(topology.vantage.netns or "", fips))
        try:
            await asyncio.sleep(1.0)
            takeover = asyncio.create_task(takeover_delay(handle, watched, node, time.monotonic()))
            detail = await fault.inject()
            took, why = await fault.took()
            assert took, why
            moved = placement(handle)
            assert all(node not in nodes and len(nodes) == 2 for rid, nodes in moved.items() if node in before[rid]), moved
            agent = next(a for a in await fault.client.l3_agents(host=node))
            assert agent.admin_state_up is False
            taken_over = await takeover
        finally:
            await fault.undo()
            gaps = await pinger
        ok, why = await fault.recovered()
        assert ok, why
    assert placement(handle) == before
    wait_lab_ready(handle)
    return max(gaps.values()), taken_over, detail


async def test_graceful_hands_over_at_once_and_abrupt_waits_master_down_interval(evac_lab: LabHandle) -> None:
    graceful, g_takeover, g_detail = await evacuate(evac_lab, "graceful")
    abrupt, a_takeover, a_detail = await evacuate(evac_lab, "abrupt")
    print(f"graceful: takeover {g_takeover:.2f}s, worst ping gap {graceful:.2f}s ({g_detail}); "
          f"abrupt: takeover {a_takeover:.2f}s, worst ping gap {abrupt:.2f}s ({a_detail})")
    # advert_int 1. Abrupt: the HA port goes first, so the backup takes over only after
    # Master_Down_Interval from the last advert it heard: 3 x 1 + skew, at least 2.8 s after
    # the unplug (load can only delay it). Meanwhile the old primary forwards until its agent
    # stops keepalived, so the ping gap itself shrinks under load and is not bounded below.
    assert a_takeover >= 2.8, a_takeover
    # Graceful: the primary's keepalived is stopped with SIGTERM first; its priority-0 advert
    # hands over within Skew_Time (about 0.8 s), and the floating IPs follow at once.
    assert graceful < 2.5, graceful
    assert graceful < a_takeover, (graceful, a_takeover)


async def test_a_run_killed_after_the_hand_over_leaves_no_keepalived_stopped(still_lab: LabHandle) -> None:
    """A graceful evacuation SIGTERMs the primary's keepalived before the router leaves the
    node. Killed right after that hand-over, the run leaves the placement as recorded; on a lab
    whose agents never respawn keepalived, replaying the recorded undo (what ``chaos recover``
    does) must start it again, the agent's way, one instance."""
    from chaos.faults.agent_evacuate import hand_over, replay_api_step

    wait_lab_ready(still_lab)
    status = still_lab.status()
    router = status["routers"][0]
    node = next(rep["node"] for rep in router["replicas"] if rep["state"] == "primary")
    other = next(rep["node"] for rep in router["replicas"] if rep["node"] != node)
    topology = lab_topology(LAB_ROOT, still_lab.name)
    async with SshPool(topology.nodes) as ssh:
        ctx = FaultContext(topology=topology, ssh=ssh, run_id="evac-killed")
        fault = AgentEvacuate(ctx, router=None, node=topology.node(node), params={"mode": "graceful"}, duration=None,
                              action_id="a1")
        steps = fault.undo_steps()  # journaled before the injection
        ok, why = await hand_over(ctx, fault.client, router["id"], node, [other], 15.0)  # ... and here the run dies
        assert ok, why
        spec = LabSpec.load(still_lab.dir / "lab.json")
        lab_router = next(r for r in spec.routers if r.id == router["id"])
        assert await wait_gone_keepalived(still_lab, node, lab_router), "the hand-over's SIGTERM did not stop keepalived"
        details = [await replay_api_step(ctx, s) for s in steps]
    assert any(f"keepalived started on {node}" in d for d in details), details
    assert len(still_lab.lab.keepalived_pids(node, lab_router)) == 2, "one keepalived (its main process and VRRP child) again"
    wait_lab_ready(still_lab)


async def wait_gone_keepalived(handle: LabHandle, node: str, router: RouterSpec, timeout: float = 10.0) -> bool:
    lab = handle.lab
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not lab.keepalived_pids(node, router):
            return True
        await asyncio.sleep(0.1)
    return False
