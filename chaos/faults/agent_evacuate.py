"""agent-evacuate: drain a network node through the Neutron API, as an operator does for maintenance.

Neutron does not move HA routers off a disabled L3 agent by itself: draining means, for every
router with a replica on the node, removing it from the node's agent and adding it to a spare
agent that does not host it yet, so the replica count stays. Optionally the agent is disabled
first (``admin_state_up: false``) so that nothing new is scheduled there.

- ``graceful``: first hand the primary role over: a graceful stop (SIGTERM) of keepalived on
  the node's primary replicas sends a priority-0 advertisement, a backup takes over after
  Skew_Time, and only then is the (now backup) replica removed. The outage is about
  Skew_Time.
- ``abrupt``: just remove. Neutron deletes the HA port before the L3 agent hears of the
  removal, so the primary's VRRP is cut before keepalived is stopped; the backups take over
  after Master_Down_Interval.

The undo restores the original placement (the original agents host the router again, the
spare replicas go, the spare's primary role handed back gracefully first) and the agent's
admin state. Its steps are API steps (``via: "api"``, a JSON command) so that ``chaos recover``
can replay them with ``replay_api_step``; each is idempotent (it makes the placement equal to
the recorded one, whatever it is now).

The original placement is read when the plan is made (``undo_steps`` is journaled before
the injection), with one blocking round of API calls.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from chaos.errors import InfrastructureError, InvalidInput
from chaos.experiment.params import Bool, Duration, Params
from chaos.faults.base import Fault, FaultContext, Loc, UndoStep, poll, run_undo_steps
from chaos.model import HostName
from chaos.log import get_logger
from chaos.targets.openstack import (
    ApiError,
    OpenStackClient,
    _run_sync,
    client_for_topology,
)
from chaos.transport import node_commands as nc

log = get_logger("faults.agent_evacuate")

HA_PORT_OWNER = "network:router_ha_interface"


class Placement(BaseModel):
    """The node's agent and, for every HA router it hosts, the agents hosting that router."""

    model_config = ConfigDict(frozen=True)

    cloud: str
    host: str
    agent_id: str
    admin_state_up: bool
    routers: dict[str, list[str]]  # router id -> agent ids hosting it (the node's included)


# --------------------------------------------------------------------------- node-side helpers
async def _ha_devices(client: OpenStackClient, router_id: str) -> dict[str, str]:
    ports = await client.list(
        f"HA ports of {router_id}", lambda c: c.network.ports(device_owner=HA_PORT_OWNER, device_id=router_id)
    )
    return {p.binding_host_id: f"ha-{p.id[:11]}" for p in ports}


async def _truth(ctx: FaultContext, host: str, router_id: str, ha_device: str) -> nc.ReplicaTruth | None:
    node = ctx.topology.node(host)
    out = await ctx.ssh.run(host, nc.ground_truth(node.agent, [(router_id, ha_device)]), timeout=10)
    return nc.parse_ground_truth(out.stdout).get(router_id)


async def _states(ctx: FaultContext, router_id: str, devices: dict[str, str], hosts: list[str]) -> dict[str, nc.ReplicaTruth | None]:
    async def one(h: str) -> nc.ReplicaTruth | None:
        if h not in devices:
            return None
        try:
            return await _truth(ctx, h, router_id, devices[h])
        except (InfrastructureError, KeyError):
            return None

    results = await asyncio.gather(*(one(h) for h in hosts))
    return dict(zip(hosts, results, strict=True))


def _is_primary(t: nc.ReplicaTruth | None) -> bool:
    return t is not None and t.state in ("primary", "master")


def _is_up(t: nc.ReplicaTruth | None) -> bool:
    return t is not None and t.namespace_exists and t.keepalived_alive and t.state is not None


async def hand_over(
    ctx: FaultContext, client: OpenStackClient, router_id: str, host: str, others: list[str], timeout: float
) -> tuple[bool, str]:
    """If ``host``'s replica is primary: SIGTERM its keepalived and wait until another replica is primary."""
    devices = await _ha_devices(client, router_id)
    states = await _states(ctx, router_id, devices, [host])
    if not _is_primary(states[host]):
        return True, f"{host} not primary"
    node = ctx.topology.node(host)
    await ctx.ssh.run(host, nc.keepalived_signal(node.agent, router_id, nc.Signal.TERM, vrrp_child=False))

    async def taken_over() -> tuple[bool, str]:
        now = await _states(ctx, router_id, devices, others)
        winners = [h for h, t in now.items() if _is_primary(t)]
        return bool(winners), f"primary now on {', '.join(winners) or 'none'}"

    return await poll(taken_over, timeout, interval=0.1)


async def wait_up(ctx: FaultContext, client: OpenStackClient, router_id: str, hosts: list[str], timeout: float) -> tuple[bool, str]:
    """Until the replicas on ``hosts`` exist with keepalived running and a state."""
    deadline = time.monotonic() + timeout

    async def check() -> tuple[bool, str]:
        devices = await _ha_devices(client, router_id)
        states = await _states(ctx, router_id, devices, hosts)
        down = [h for h, t in states.items() if not _is_up(t)]
        return not down, f"not up yet on {', '.join(down)}" if down else "up"

    return await poll(check, max(0.5, deadline - time.monotonic()), interval=0.3)


# --------------------------------------------------------------------------- API undo steps
def api_step(host: str, **command: Any) -> UndoStep:
    """An undo step replayed through the API (``via: "api"``) by ``AgentEvacuate.replay``."""
    return UndoStep(via="api", node=host, command=json.dumps(command, sort_keys=True), fault=AgentEvacuate.type)


async def _remove_quietly(client: OpenStackClient, agent_id: str, router_id: str) -> bool:
    try:
        await client.remove_router_from_agent(agent_id, router_id)
        return True
    except ApiError as exc:
        if exc.status in (404, 409):  # not hosted (any more): what we wanted
            return False
        raise


async def _add_quietly(client: OpenStackClient, agent_id: str, router_id: str) -> bool:
    try:
        await client.add_router_to_agent(agent_id, router_id)
        return True
    except ApiError as exc:
        if exc.status == 409:  # already hosted
            return False
        raise


async def restore_router(ctx: FaultContext, client: OpenStackClient, router_id: str, agent_ids: list[str], timeout: float = 60.0) -> str:
    """Make the router hosted by exactly ``agent_ids``: add what is missing, wait for it, hand over, remove extras."""
    agents = {a.id: a for a in await client.l3_agents()}
    current = [a.id for a in await client.hosting_agents(router_id)]
    missing = [a for a in agent_ids if a not in current]
    extra = [a for a in current if a not in agent_ids]
    done = []
    for agent_id in missing:
        if await _add_quietly(client, agent_id, router_id):
            done.append(f"added to {agents[agent_id].host if agent_id in agents else agent_id}")
    if missing:
        hosts = [agents[a].host for a in missing if a in agents and agents[a].alive]
        ok, why = await wait_up(ctx, client, router_id, hosts, timeout)
        if not ok:
            raise InfrastructureError(f"router {router_id}: restored replicas did not come up: {why}")
    for agent_id in extra:
        host = agents[agent_id].host if agent_id in agents else None
        if host is not None and agents[agent_id].alive:
            others = [agents[a].host for a in agent_ids if a in agents]
            ok, why = await hand_over(ctx, client, router_id, host, others, 15.0)
            if not ok:
                log.warning("hand-over before removal did not complete", router=router_id, host=host, detail=why)
        if await _remove_quietly(client, agent_id, router_id):
            done.append(f"removed from {host or agent_id}")
    done += await _restart_stopped_keepalived(ctx, client, router_id, [agents[a].host for a in agent_ids if a in agents])
    return f"router {router_id}: " + (", ".join(done) if done else "placement already as recorded")


async def _restart_stopped_keepalived(ctx: FaultContext, client: OpenStackClient, router_id: str, hosts: list[str]) -> list[str]:
    """Start keepalived, the agent's way, on a recorded host whose replica is in place (its
    namespace exists) but whose keepalived is not running.

    A graceful evacuation SIGTERMs the primary's keepalived before the router leaves the node: a
    run killed in between leaves the placement as recorded and that keepalived stopped, which an
    L3 agent that never respawns (check_child_processes_interval 0) leaves so for good. Restoring
    the placement is then not enough; the replica must run again. ``keepalived_ensure_running``
    starts none beside a running one (the agent's own respawn may race it)."""
    devices = await _ha_devices(client, router_id)
    states = await _states(ctx, router_id, devices, [h for h in hosts if h in devices])
    started = []
    for host, truth in states.items():
        if truth is not None and truth.namespace_exists and not truth.keepalived_alive:
            node = ctx.topology.node(host)
            out = await ctx.ssh.run(host, nc.keepalived_ensure_running(node.agent, router_id))
            started.append(f"keepalived started on {host}" if "started keepalived" in out.stdout else f"keepalived running on {host}")
    return started


async def replay_api_step(ctx: FaultContext, step: UndoStep) -> str:
    """Replay one ``via: "api"`` undo step (``AgentEvacuate.replay``: a live undo and ``chaos recover``)."""
    try:
        cmd = json.loads(step.command)
    except ValueError:
        raise InvalidInput(f"API undo step is not JSON: {step.command[:100]!r}") from None
    client = OpenStackClient(cmd["cloud"])
    try:
        if cmd["op"] == "agent_admin_state":
            await client.set_agent_admin_state(cmd["agent_id"], bool(cmd["admin_state_up"]))
            return f"agent {cmd['agent_id']} admin_state_up={cmd['admin_state_up']}"
        if cmd["op"] == "restore_router":
            return await restore_router(ctx, client, cmd["router_id"], list(cmd["agents"]))
        raise InvalidInput(f"unknown API undo step {cmd['op']!r}")
    finally:
        client.close()


# --------------------------------------------------------------------------- the fault
class AgentEvacuateParams(Params):
    mode: Literal["graceful", "abrupt"] = "graceful"
    disable_agent: Bool = True
    node: HostName | None = Field(default=None, description="evacuate this node instead of choosing by replica")
    handover_timeout: Duration = Field(default=15.0, le=300, description="how long a hand-over of the primary may take")
    sync_timeout: Duration = Field(default=60.0, le=600, description="how long a moved replica may take to come up")


class AgentEvacuate(Fault):
    type: ClassVar[str] = "agent-evacuate"
    params_model: ClassVar[type[BaseModel]] = AgentEvacuateParams
    params: AgentEvacuateParams
    scope = "node"
    duration_help: ClassVar[str] = "how long the node stays drained before the original placement is restored"
    programs: ClassVar[frozenset[str]] = frozenset({"keepalived"})
    took_timeout: ClassVar[float] = 60.0
    recover_timeout: ClassVar[float] = 90.0

    @classmethod
    def spec_problems(cls, spec: Any) -> list[tuple[Loc, str]]:
        problems = super().spec_problems(spec)
        if spec.params.node is not None and "replica" in spec.model_fields_set:
            problems.append((("replica",), "choose the node either by replica or by params.node, not both"))
        return problems

    @classmethod
    def chosen_node(cls, params: BaseModel) -> str | None:
        return params.node  # type: ignore[attr-defined, no-any-return]

    @classmethod
    async def replay(cls, ctx: FaultContext, step: UndoStep) -> str:
        return await replay_api_step(ctx, step)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client: OpenStackClient | None = None
        self.placement: Placement | None = None
        self.moves: list[tuple[str, str]] = []  # (router id, spare agent id)

    @property
    def client(self) -> OpenStackClient:
        if self._client is None:
            self._client = client_for_topology(self.ctx.topology)
        return self._client

    # ------------------------------------------------------------------ placement
    async def read_placement(self, client: OpenStackClient | None = None) -> Placement:
        client = client or self.client
        agents = await client.l3_agents(host=self.node.name)
        agent = next((a for a in agents if a.host == self.node.name), None)
        if agent is None:
            raise InvalidInput(f"no L3 agent on host {self.node.name} in cloud {client.cloud}")
        rids = await client.agent_router_ids(agent.id)
        hosting = await asyncio.gather(*(client.hosting_agents(r) for r in rids))
        return Placement(
            cloud=client.cloud, host=self.node.name, agent_id=agent.id, admin_state_up=agent.admin_state_up,
            routers={r: [a.id for a in h] for r, h in zip(rids, hosting, strict=True)},
        )

    def _placement_now(self) -> Placement:
        """The original placement; read synchronously the first time (``undo_steps`` is sync).

        A client of its own: the read may run on another event loop (in a worker thread).
        """
        if self.placement is None:

            async def read() -> Placement:
                client = client_for_topology(self.ctx.topology)
                try:
                    return await self.read_placement(client)
                finally:
                    client.close()

            self.placement = _run_sync(read)
        return self.placement

    # ------------------------------------------------------------------ what the base asks
    def fault_commands(self) -> list[str]:
        return []  # API calls, not shell commands

    def revert_commands(self) -> list[str]:
        return []

    def undo_steps(self) -> list[UndoStep]:
        p = self._placement_now()
        steps = [api_step(p.host, op="agent_admin_state", cloud=p.cloud, agent_id=p.agent_id, admin_state_up=p.admin_state_up)]
        steps += [api_step(p.host, op="restore_router", cloud=p.cloud, router_id=r, agents=a) for r, a in sorted(p.routers.items())]
        return steps

    async def inject(self) -> str:
        if self.placement is None:
            self.placement = await self.read_placement()
        p = self.placement
        agents = [a for a in await self.client.l3_agents() if a.host != p.host]
        node_names = {n.name for n in self.ctx.topology.nodes}
        spares = [a for a in agents if a.alive and a.admin_state_up and a.host in node_names]
        load: dict[str, int] = {a.id: 0 for a in spares}
        plan: list[tuple[str, str]] = []
        for rid, hosting in sorted(p.routers.items()):
            choices = [a for a in spares if a.id not in hosting]
            if not choices:
                raise InvalidInput(
                    f"router {rid} has no spare L3 agent to move to (hosted by {len(hosting)} of {len(agents) + 1} agents)",
                    hint="evacuating needs an alive, enabled agent that does not host the router yet",
                )
            spare = min(choices, key=lambda a: (load[a.id], a.host))
            load[spare.id] += 1
            plan.append((rid, spare.id))
        if self.params.disable_agent:
            await self.client.set_agent_admin_state(p.agent_id, False)
        host_of = {a.id: a.host for a in agents}
        handed: list[str] = []
        if self.params.mode == "graceful":
            async def one(rid: str) -> None:
                others = [host_of[a] for a in p.routers[rid] if a in host_of]
                ok, why = await hand_over(self.ctx, self.client, rid, p.host, others, self.params.handover_timeout)
                if not ok:
                    raise InfrastructureError(f"router {rid}: hand-over from {p.host} did not complete: {why}")
                if why != f"{p.host} not primary":
                    handed.append(rid)

            async with asyncio.TaskGroup() as tg:
                for rid in p.routers:
                    tg.create_task(one(rid))
        async with asyncio.TaskGroup() as tg:
            for rid, spare in plan:
                tg.create_task(self._move(rid, p.agent_id, spare))
        self.moves = plan
        log.info("node evacuated", node=p.host, routers=len(plan), mode=self.params.mode)
        return (
            f"{self.params.mode} evacuation of {p.host}: {len(plan)} router(s) moved "
            f"({', '.join(f'{r[:8]}->{host_of[s]}' for r, s in plan)})"
            + (f"; primary handed over first for {len(handed)}" if self.params.mode == "graceful" else "")
            + ("; agent disabled" if self.params.disable_agent else "")
        )

    async def _move(self, router_id: str, from_agent: str, to_agent: str) -> None:
        await self.client.remove_router_from_agent(from_agent, router_id)
        await self.client.add_router_to_agent(to_agent, router_id)

    async def took(self) -> tuple[bool, str]:
        p = self.placement
        if p is None or not self.moves:
            return (p is not None and not p.routers), "nothing to move"
        hosts = {a.id: a.host for a in await self.client.l3_agents()}

        async def check() -> tuple[bool, str]:
            wrong = []
            for rid, spare in self.moves:
                now = {a.id for a in await self.client.hosting_agents(rid)}
                if p.agent_id in now or spare not in now or len(now) != len(p.routers[rid]):
                    wrong.append(rid[:8])
            if wrong:
                return False, f"placement not yet changed for {', '.join(wrong)}"
            for rid, spare in self.moves:
                ok, why = await wait_up(self.ctx, self.client, rid, [hosts[spare]], 2.0)
                if not ok:
                    return False, f"router {rid[:8]}: {why}"
            return True, f"{len(self.moves)} router(s) off {p.host}, spare replicas up"

        return await poll(check, self.params.sync_timeout, interval=0.5)

    async def undo(self) -> str:
        p = self._placement_now()
        details = await run_undo_steps(self.ctx, self.undo_steps())
        log.info("evacuation undone", node=p.host)
        return "; ".join(details)

    async def recovered(self) -> tuple[bool, str]:
        p = self._placement_now()

        async def check() -> tuple[bool, str]:
            off = []
            for rid, agents in p.routers.items():
                now = sorted(a.id for a in await self.client.hosting_agents(rid))
                if now != sorted(agents):
                    off.append(rid[:8])
            if off:
                return False, f"placement differs from the original for {', '.join(off)}"
            agent = next(a for a in await self.client.l3_agents(host=p.host) if a.id == p.agent_id)
            if agent.admin_state_up != p.admin_state_up:
                return False, f"agent admin_state_up is {agent.admin_state_up}"
            for rid in p.routers:
                ok, why = await wait_up(self.ctx, self.client, rid, [p.host], 2.0)
                if not ok:
                    return False, f"router {rid[:8]}: {why}"
            return True, f"original placement of {len(p.routers)} router(s) restored on {p.host}"

        return await poll(check, self.recover_timeout, interval=0.5)
