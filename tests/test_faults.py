"""Faults and ground truth against the shared lab (advert_int 1, respawn_interval 2, boot_delay 2).

Every test that injects leaves the lab healthy (``wait_lab_ready`` in a finally).
At advert_int 1 and priority 50, Master_Down_Interval = 3 + 206/256 = 3.8 s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from chaos.errors import InvalidInput
from chaos.experiment.registry import registry
from chaos.faults.base import FaultContext, UndoStep, run_undo_steps

FAULTS = registry().faults
from chaos.model import Router, Topology
from chaos.probes.replicas import holders, observe, primaries
from chaos.transport.ssh import SshPool
from tests.conftest import wait_lab_ready

pytestmark = pytest.mark.lab

MASTER_DOWN = 3 * 1 + (256 - 50) / 256 * 1


def topology(lab) -> Topology:  # type: ignore[no-untyped-def]
    return Topology.model_validate_json((lab.dir / "inventory.json").read_text())


@pytest_asyncio.fixture(loop_scope="session")
async def ctx(lab) -> AsyncIterator[FaultContext]:  # type: ignore[no-untyped-def]
    await asyncio.to_thread(wait_lab_ready, lab)
    topo = topology(lab)
    async with SshPool(topo.nodes, command_timeout=15) as pool:
        yield FaultContext(topo, pool, f"t{int(time.time())}")


async def primary_of(ctx: FaultContext, router: Router) -> str:
    obs = await observe(ctx.ssh, ctx.topology, [router])
    found = primaries(obs[router.id])
    assert len(found) == 1, f"router {router.id} has primaries {found}"
    return found[0]


async def wait_for(check, timeout: float, interval: float = 0.1):  # type: ignore[no-untyped-def]
    """Poll an async predicate; returns (ok, seconds waited)."""
    started = time.monotonic()
    while True:
        if await check():
            return True, time.monotonic() - started
        if time.monotonic() - started > timeout:
            return False, time.monotonic() - started
        await asyncio.sleep(interval)


async def healthy_again(lab) -> None:  # type: ignore[no-untyped-def]
    await asyncio.to_thread(wait_lab_ready, lab, 90.0)


async def test_ground_truth_finds_exactly_one_primary_per_router(ctx: FaultContext) -> None:
    obs = await observe(ctx.ssh, ctx.topology, ctx.topology.routers)
    assert set(obs) == {r.id for r in ctx.topology.routers}
    for router in ctx.topology.routers:
        replicas = obs[router.id]
        assert sorted(o.node for o in replicas) == sorted(r.node for r in router.replicas)
        assert all(o.reachable and o.keepalived_alive and o.ha_link_up for o in replicas)
        assert len(primaries(replicas)) == 1
        assert holders(replicas) == primaries(replicas)
        primary = next(o for o in replicas if o.state == "primary")
        assert primary.vip and primary.holds_addresses
        assert all(o.state == "backup" and not o.vip for o in replicas if o is not primary)


async def test_params_are_validated(ctx: FaultContext) -> None:
    router = ctx.topology.routers[0]
    node = ctx.topology.node(router.replicas[0].node)
    with pytest.raises(InvalidInput, match="signal"):
        FAULTS["keepalived-kill"](ctx, router=router, node=node, params={"signal": "HUP"}, duration=None, action_id="a")
    with pytest.raises(InvalidInput, match="bogus: Extra"):
        FAULTS["ha-link-down"](ctx, router=router, node=node, params={"bogus": 1}, duration=None, action_id="a")
    with pytest.raises(InvalidInput, match="method"):
        FAULTS["gateway-reboot"](ctx, router=None, node=node, params={"method": "ipmi"}, duration=None, action_id="a")
    with pytest.raises(InvalidInput, match="needs a router"):
        FAULTS["vrrp-partition"](ctx, router=None, node=node, params={}, duration=None, action_id="a")
    with pytest.raises(ValueError):
        FAULTS["vrrp-partition"](ctx, router=router, node=node, params={}, duration=None, action_id="a; reboot")
    other = next(n for n in ctx.topology.nodes if all(r.node != n.name for r in router.replicas))
    with pytest.raises(InvalidInput, match="no replica"):
        FAULTS["ha-link-down"](ctx, router=router, node=other, params={}, duration=None, action_id="a")


async def test_keepalived_kill_fails_over_within_master_down_interval(ctx: FaultContext, lab) -> None:  # type: ignore[no-untyped-def]
    router = ctx.topology.routers[0]
    node = await primary_of(ctx, router)
    fault = FAULTS["keepalived-kill"](
        ctx, router=router, node=ctx.topology.node(node), params={"signal": "KILL", "respawn_wait": 5}, duration=None, action_id="kill"
    )
    assert fault.undo_steps() and "keepalived -P -f" in fault.undo_steps()[0].command
    try:
        started = time.monotonic()
        detail = await fault.inject()
        assert "SIGKILL" in detail
        took, why = await fault.took()
        assert took, why

        async def other_is_primary() -> bool:
            obs = await observe(ctx.ssh, ctx.topology, [router], timeout=3)
            return any(p != node for p in primaries(obs[router.id]))

        ok, _ = await wait_for(other_is_primary, MASTER_DOWN + 1 - (time.monotonic() - started))
        elapsed = time.monotonic() - started
        assert ok, f"no other primary {elapsed:.1f}s after the kill (Master_Down_Interval {MASTER_DOWN:.1f}s)"
        await fault.undo()
        ok, why = await fault.recovered()
        assert ok, why
    finally:
        await fault.undo()
        await healthy_again(lab)


async def test_ha_link_down_drops_the_replicas_addresses(ctx: FaultContext, lab) -> None:  # type: ignore[no-untyped-def]
    router = ctx.topology.routers[1]
    node = await primary_of(ctx, router)
    fault = FAULTS["ha-link-down"](ctx, router=router, node=ctx.topology.node(node), params={}, duration=None, action_id="link")
    try:
        await fault.inject()
        took, why = await fault.took()
        assert took, why

        async def dropped() -> bool:
            obs = {o.node: o for o in (await observe(ctx.ssh, ctx.topology, [router]))[router.id]}
            return not obs[node].holds_addresses and obs[node].ha_link_up is False

        ok, waited = await wait_for(dropped, 3)
        assert ok, f"the replica on {node} still holds the addresses {waited:.1f}s after link down"
        await fault.undo()
        ok, why = await fault.recovered()
        assert ok, why
    finally:
        await fault.undo()
        await healthy_again(lab)


async def test_vrrp_partition_makes_two_primaries_and_undo_removes_only_its_rules(ctx: FaultContext, lab) -> None:  # type: ignore[no-untyped-def]
    router = ctx.topology.routers[2]
    primary = await primary_of(ctx, router)
    backup = next(r.node for r in router.replicas if r.node != primary)
    node = ctx.topology.node(backup)
    fault = FAULTS["vrrp-partition"](ctx, router=router, node=node, params={}, duration=None, action_id="part")
    neighbour = FAULTS["vrrp-partition"](ctx, router=router, node=node, params={}, duration=None, action_id="other")
    try:
        await fault.inject()
        await neighbour.inject()  # a rule of another action on the same device
        took, why = await fault.took()
        assert took, why

        async def split_brain() -> bool:
            obs = await observe(ctx.ssh, ctx.topology, [router], timeout=3)
            return len(primaries(obs[router.id])) == 2

        ok, waited = await wait_for(split_brain, MASTER_DOWN + 2)
        assert ok, f"no second primary {waited:.1f}s after the partition"
        await fault.undo()
        assert (await neighbour.took())[0], "undo removed another action's rules"
        await neighbour.undo()
        ok, why = await fault.recovered()
        assert ok, why

        async def one_primary() -> bool:
            obs = await observe(ctx.ssh, ctx.topology, [router], timeout=3)
            return len(primaries(obs[router.id])) == 1

        ok, waited = await wait_for(one_primary, 5)
        assert ok, "still two primaries after the partition was undone"
    finally:
        await fault.undo()
        await neighbour.undo()
        await healthy_again(lab)


async def test_deadman_undoes_a_fault_when_the_runner_never_does(ctx: FaultContext, lab) -> None:  # type: ignore[no-untyped-def]
    router = ctx.topology.routers[3]
    node = await primary_of(ctx, router)
    fault = FAULTS["ha-link-down"](ctx, router=router, node=ctx.topology.node(node), params={}, duration=2, action_id="deadman")
    assert "sleep 2" in fault.inject_commands()[0]
    try:
        started = time.monotonic()
        await fault.inject()
        assert fault.deadman_pid is not None
        took, why = await fault.took()
        assert took, why
        ctx.ssh.forget(node)  # as if the runner's connection died with it

        async def link_up() -> bool:
            obs = {o.node: o for o in (await observe(ctx.ssh, ctx.topology, [router], timeout=3))[router.id]}
            return obs[node].ha_link_up is True

        ok, _ = await wait_for(link_up, 4)
        elapsed = time.monotonic() - started
        assert ok and elapsed >= 2, f"link up after {elapsed:.1f}s: the dead-man should fire at 2s"
        assert elapsed <= 4, f"the dead-man took {elapsed:.1f}s"
    finally:
        await fault.undo()
        await healthy_again(lab)


async def test_recover_replays_the_journaled_undo_steps(ctx: FaultContext, lab) -> None:  # type: ignore[no-untyped-def]
    """A runner that died after injecting: a fresh fault object replays the undo steps alone."""
    router = ctx.topology.routers[0]
    node = ctx.topology.node(router.replicas[1].node)
    fault = FAULTS["keepalived-kill"](
        ctx, router=router, node=node, params={"signal": "STOP"}, duration=60, action_id="crash"
    )
    steps = [s.model_dump() for s in fault.undo_steps()]  # what the journal holds
    try:
        await fault.inject()
        assert (await fault.took())[0]

        await run_undo_steps(ctx, [UndoStep.model_validate(s) for s in steps])
        ok, why = await fault.recovered()
        assert ok, why
        leftover = await ctx.ssh.run(node.name, f"ps -eo args | grep -c '[c]haos-deadman chaos-{ctx.run_id}-crash' || true")
        assert leftover.stdout.strip() == "0", "recovery must cancel the dead-man"
    finally:
        await fault.undo()
        await healthy_again(lab)


async def test_gateway_reboot_through_the_lab_bmc(ctx: FaultContext, lab) -> None:  # type: ignore[no-untyped-def]
    node = ctx.topology.nodes[2]
    fault = FAULTS["gateway-reboot"](ctx, router=None, node=node, params={"method": "lab", "boot_timeout": 60}, duration=None, action_id="boot")
    assert [s.via for s in fault.undo_steps()] == ["bmc"]
    try:
        old = (await ctx.ssh.run(node.name, "cat /proc/sys/kernel/random/boot_id")).stdout.strip()
        await fault.inject()
        took, why = await fault.took()
        assert took, why
        ok, why = await fault.recovered()
        assert ok, why
        new = (await ctx.ssh.run(node.name, "cat /proc/sys/kernel/random/boot_id")).stdout.strip()
        assert new != old
        await fault.undo()  # idempotent: the node is on already
    finally:
        await healthy_again(lab)


async def test_redfish_client_reads_power_and_reports_clear_errors(ctx: FaultContext, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from chaos.errors import InfrastructureError
    from chaos.transport.redfish import BmcCredentials, RedfishClient

    node = ctx.topology.nodes[0].name
    async with ctx.redfish() as bmc:
        assert await bmc.power_state(node) == "On"
        with pytest.raises(InfrastructureError, match="404"):
            await bmc.power_state("no-such-node")
        with pytest.raises(InvalidInput, match="ResetType"):
            await bmc.reset(node, "Explode")
    assert ctx.topology.bmc_url
    wrong = BmcCredentials(user="admin", password="not-the-password")
    assert "not-the-password" not in repr(wrong)
    async with RedfishClient(ctx.topology.bmc_url, wrong, timeout=5) as bmc:
        with pytest.raises(InfrastructureError, match="refused the credentials"):
            await bmc.power_state(node)
    async with RedfishClient("http://127.0.0.1:9", wrong, timeout=2) as bmc:
        with pytest.raises(InfrastructureError, match="cannot reach"):
            await bmc.power_state(node)
