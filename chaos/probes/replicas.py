"""Ground truth of HA routers, by polling the nodes: who is primary, who holds the addresses.

The API's ``ha_state`` lags keepalived; the truth is on the nodes: the state file the
state-change daemon writes, where the VIP and the router's addresses are configured, whether
keepalived runs. One command per node reads every replica it hosts, and all nodes are asked
at once, so a poll costs one round trip whatever the number of routers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence

from pydantic import BaseModel, ConfigDict

from chaos.errors import InfrastructureError
from chaos.model import Router, Topology
from chaos.transport import node_commands as nc
from chaos.transport.ssh import SshPool


class ReplicaObservation(BaseModel):
    model_config = ConfigDict(frozen=True)

    router_id: str
    node: str
    state: str | None  # the state file: "primary", "backup" ("master" before Neutron 17), None = none
    holds_addresses: bool  # the router's gateway or floating IPs are configured here
    vip: bool  # the router's HA VIP is on this replica's ha- device
    keepalived_alive: bool  # running and not stopped
    ha_link_up: bool | None  # None: no such device (or the node did not answer)
    reachable: bool  # the node answered
    detail: str = ""  # why the node did not answer


def _router_addresses(router: Router) -> set[str]:
    addrs = {str(f.address) for f in router.floating_ips}
    if router.gateway_ip:
        addrs.add(router.gateway_ip)
    return addrs


def _has_vip(router: Router, truth: nc.ReplicaTruth, ha_device: str) -> bool:
    if router.ha_vip:
        return truth.has_address(router.ha_vip)
    # Without a known VIP: any address of Neutron's VIP range on the ha- device.
    return any(dev == ha_device and cidr.startswith("169.254.0.") for dev, cidr in truth.addresses)


def observation(router: Router, node: str, ha_device: str, truth: nc.ReplicaTruth | None) -> ReplicaObservation:
    if truth is None:
        return ReplicaObservation(
            router_id=router.id, node=node, state=None, holds_addresses=False, vip=False,
            keepalived_alive=False, ha_link_up=None, reachable=True, detail="no output for this router",
        )
    wanted = _router_addresses(router)
    return ReplicaObservation(
        router_id=router.id,
        node=node,
        state=truth.state,
        holds_addresses=any(truth.has_address(a) for a in wanted),
        vip=_has_vip(router, truth, ha_device),
        keepalived_alive=truth.keepalived_alive,
        ha_link_up=truth.ha_link_up,
        reachable=True,
    )


async def observe_node(
    ssh: SshPool, topology: Topology, node: str, routers: Sequence[Router], *, timeout: float = 10.0
) -> list[ReplicaObservation]:
    """Observations of every replica of ``routers`` hosted on ``node``, in one command per chunk."""
    agent = topology.node(node).agent
    hosted = [(r, rep.ha_device) for r in routers for rep in r.replicas if rep.node == node]
    result: list[ReplicaObservation] = []
    for start in range(0, len(hosted), nc.GROUND_TRUTH_CHUNK):
        chunk = hosted[start : start + nc.GROUND_TRUTH_CHUNK]
        try:
            # The bound covers connecting too: a node without power must not stall a poll.
            async with asyncio.timeout(timeout):
                out = await ssh.run(node, nc.ground_truth(agent, [(r.id, ha) for r, ha in chunk]), timeout=timeout)
            truths = nc.parse_ground_truth(out.stdout)
        except (InfrastructureError, TimeoutError) as exc:
            reason = exc.message if isinstance(exc, InfrastructureError) else f"no answer within {timeout:g}s"
            result += [
                ReplicaObservation(
                    router_id=r.id, node=node, state=None, holds_addresses=False, vip=False,
                    keepalived_alive=False, ha_link_up=None, reachable=False, detail=reason,
                )
                for r, _ in chunk
            ]
            continue
        result += [observation(r, node, ha, truths.get(r.id)) for r, ha in chunk]
    return result


async def observe(
    ssh: SshPool,
    topology: Topology,
    routers: Sequence[Router],
    *,
    timeout: float = 10.0,
    nodes: Collection[str] | None = None,
) -> dict[str, list[ReplicaObservation]]:
    """Router id -> one observation per replica, every node asked concurrently.

    ``nodes`` restricts the poll to the replicas on those nodes (the runner polls only the
    nodes its streaming observer does not follow); a router gets no entry when none of its
    replicas is on them. A node that does not answer yields observations with
    ``reachable=False``; it never fails the whole poll.
    """
    hosting = {rep.node for r in routers for rep in r.replicas}
    nodes = sorted(hosting if nodes is None else hosting & set(nodes))
    routers = [r for r in routers if any(rep.node in nodes for rep in r.replicas)]
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(observe_node(ssh, topology, n, routers, timeout=timeout)) for n in nodes]
    by_router: dict[str, list[ReplicaObservation]] = {r.id: [] for r in routers}
    for task in tasks:
        for obs in task.result():
            by_router[obs.router_id].append(obs)
    return by_router


def primaries(observations: Sequence[ReplicaObservation]) -> list[str]:
    """Nodes whose replica says it is primary (``master`` counts, as Neutron before 17 wrote it)."""
    return [o.node for o in observations if o.reachable and o.state in ("primary", "master")]


def holders(observations: Sequence[ReplicaObservation]) -> list[str]:
    """Nodes where the router's addresses are configured: more than one is a data-plane split brain."""
    return [o.node for o in observations if o.reachable and o.holds_addresses]
