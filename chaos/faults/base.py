"""What every fault shares: its undo record, its dead-man, its lifecycle.

A fault only says how to inject, how to undo and how to tell that it took. The rest lives
here once:

- ``undo_steps()`` are plain data (``UndoStep``) that the runner journals *before* injecting,
  so ``chaos recover`` can replay them with ``run_undo_steps`` after a crash. Every step is
  idempotent: replaying it on a healthy node changes nothing.
- A fault with a duration schedules a dead-man on the node together with the injection: a
  detached ``sleep <duration>; <undo>`` that survives the SSH session, the connection and the
  runner, so a runner that dies (or hangs) mid-fault cannot leave the fault in place. A normal
  undo cancels it by pid; recovery cancels it by its marker.
- Markers (iptables comments, the dead-man's tag) are ``chaos-<run_id>-<action_id>``, unique to
  one action of one run, so an undo removes only what that action added.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from chaos.errors import InfrastructureError, InvalidInput
from chaos.experiment.schema import NoParams
from chaos.log import get_logger
from chaos.model import Node, Replica, Router, Topology
from chaos.transport import node_commands as nc
from chaos.transport.redfish import RedfishClient
from chaos.transport.ssh import SshPool

log = get_logger("faults")


class UndoStep(BaseModel):
    """One idempotent step that undoes (part of) a fault: a shell command or a BMC reset type."""

    model_config = ConfigDict(frozen=True)

    via: Literal["ssh", "bmc", "api"]
    node: str
    command: str  # a shell command (ssh), a Redfish ResetType (bmc) or a JSON API command (api)


class FaultContext:
    """What a fault needs from the run: the topology, the SSH pool, the run id, the BMC."""

    def __init__(
        self,
        topology: Topology,
        ssh: SshPool,
        run_id: str,
        *,
        redfish: Callable[[], RedfishClient] | None = None,
    ) -> None:
        self.topology = topology
        self.ssh = ssh
        self.run_id = nc.marker(run_id)
        self._redfish = redfish

    def redfish(self) -> RedfishClient:
        """A Redfish client for the topology's BMC (use it as ``async with``)."""
        if self._redfish is not None:
            return self._redfish()
        if not self.topology.bmc_url or not self.topology.bmc_credentials_file:
            raise InvalidInput("this target has no BMC (bmc_url and bmc_credentials_file) to power-cycle nodes with")
        return RedfishClient.from_file(self.topology.bmc_url, self.topology.bmc_credentials_file)


async def poll(
    check: Callable[[], Awaitable[tuple[bool, str]]], timeout: float, interval: float = 0.2
) -> tuple[bool, str]:
    """Call ``check`` until it says yes or ``timeout`` passes; the last answer is returned.

    A check that raises InfrastructureError counts as "not yet" with the error as detail.
    """
    deadline = time.monotonic() + timeout
    detail = "not checked"
    while True:
        try:
            async with asyncio.timeout(max(0.5, deadline - time.monotonic())):
                ok, detail = await check()
        except InfrastructureError as exc:
            ok, detail = False, exc.message
        except TimeoutError:
            ok, detail = False, f"no answer within {timeout:g}s"
        if ok or time.monotonic() >= deadline:
            return ok, detail
        await asyncio.sleep(interval)


class Fault(ABC):
    """One fault on one node (and one router's replica there, for router faults)."""

    type: ClassVar[str]
    params_model: ClassVar[type[BaseModel]] = NoParams
    needs_router: ClassVar[bool] = True
    took_timeout: ClassVar[float] = 5.0
    recover_timeout: ClassVar[float] = 30.0

    def __init__(
        self,
        ctx: FaultContext,
        *,
        router: Router | None,
        node: Node,
        params: Mapping[str, Any] | BaseModel | None = None,
        duration: float | None,
        action_id: str,
    ) -> None:
        self.ctx = ctx
        self.router = router
        self.node = node
        self.duration = duration
        self.action_id = nc.marker(action_id)
        raw = params.model_dump() if isinstance(params, BaseModel) else dict(params or {})
        try:
            self.params = self.params_model.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(x) for x in err["loc"]) or "params"
            raise InvalidInput(f"fault {self.type}: {where}: {err['msg']}") from None
        if duration is not None and not (0 < duration < 10**6):
            raise InvalidInput(f"fault {self.type}: duration must be a positive number of seconds, not {duration!r}")
        if self.needs_router:
            if router is None:
                raise InvalidInput(f"fault {self.type} needs a router")
            if not any(r.node == node.name for r in router.replicas):
                raise InvalidInput(f"router {router.id} has no replica on {node.name}")
        self.deadman_pid: int | None = None
        # Facts an undo learned that the journal should keep (e.g. who restarted keepalived).
        self.outcome: dict[str, Any] = {}

    # ------------------------------------------------------------------ identity
    @property
    def marker(self) -> str:
        return nc.marker(f"chaos-{self.ctx.run_id}-{self.action_id}")

    @property
    def replica(self) -> Replica:
        assert self.router is not None
        return next(r for r in self.router.replicas if r.node == self.node.name)

    @property
    def router_id(self) -> str:
        assert self.router is not None
        return self.router.id

    # ------------------------------------------------------------------ what each fault says
    @abstractmethod
    def fault_commands(self) -> list[str]:
        """The shell commands that inject the fault on the node."""

    @abstractmethod
    def revert_commands(self) -> list[str]:
        """Idempotent shell commands that undo the fault on the node (also run by the dead-man)."""

    @abstractmethod
    async def took(self) -> tuple[bool, str]:
        """Did the fault take? Waits at most ``took_timeout``."""

    @abstractmethod
    async def recovered(self) -> tuple[bool, str]:
        """Is the replica (or node) healthy again after the undo? Waits a bounded time."""

    def describe(self, detail: str) -> str:
        """Detail for the journal after a successful injection."""
        return detail

    # ------------------------------------------------------------------ lifecycle
    def deadman_command(self) -> str | None:
        if self.duration is None or not self.revert_commands():
            return None
        return nc.deadman_schedule(self.marker, self.duration, self.revert_commands())

    def inject_commands(self) -> list[str]:
        """Exactly what ``inject`` runs on the node, in order: the dead-man first, then the fault.

        The dead-man goes first so that no instant exists where the fault is in place and
        nothing will undo it; its undo is idempotent, so firing before the fault is harmless.
        """
        deadman = self.deadman_command()
        return ([deadman] if deadman else []) + self.fault_commands()

    def undo_steps(self) -> list[UndoStep]:
        steps = [UndoStep(via="ssh", node=self.node.name, command=c) for c in self.revert_commands()]
        if self.deadman_command() is not None:
            steps.append(UndoStep(via="ssh", node=self.node.name, command=nc.deadman_cancel(self.marker)))
        return steps

    async def inject(self) -> str:
        outputs = []
        deadman = self.deadman_command()
        for command in self.inject_commands():
            result = await self.ctx.ssh.run(self.node.name, command)
            if command == deadman:
                self.deadman_pid = nc.parse_deadman_pid(result.stdout)
                if self.deadman_pid is None:
                    raise InfrastructureError(f"{self.node.name}: the dead-man did not report its pid: {result.stdout!r}")
            else:
                outputs.append(result.stdout.strip())
        detail = self.describe("; ".join(o for o in outputs if o))
        if self.deadman_pid is not None:
            detail += f" (dead-man pid {self.deadman_pid} undoes it after {self.duration:g}s)"
        log.info("fault injected", fault=self.type, node=self.node.name, router=self.router.id if self.router else None)
        return detail.strip()

    async def undo(self) -> str:
        """Undo (idempotent), then cancel the dead-man: it stays armed until the undo succeeded."""
        details = await run_undo_steps(self.ctx, [UndoStep(via="ssh", node=self.node.name, command=c) for c in self.revert_commands()])
        await self.cancel_deadman()
        return "; ".join(d for d in details if d) or "undone"

    async def cancel_deadman(self) -> None:
        if self.deadman_command() is None:
            return
        await self.ctx.ssh.run(self.node.name, nc.deadman_cancel(self.marker, self.deadman_pid))
        self.deadman_pid = None

    # ------------------------------------------------------------------ helpers for faults
    async def replica_truth(self) -> nc.ReplicaTruth:
        out = await self.ctx.ssh.run(
            self.node.name, nc.ground_truth(self.node.agent, [(self.router_id, self.replica.ha_device)]), timeout=10
        )
        truth = nc.parse_ground_truth(out.stdout).get(self.router_id)
        if truth is None:
            raise InfrastructureError(f"{self.node.name}: no ground truth for router {self.router_id}")
        return truth

    async def replica_healthy(self) -> tuple[bool, str]:
        truth = await self.replica_truth()
        ok = truth.keepalived_alive and truth.state is not None and truth.ha_link_up is True
        return ok, (
            f"keepalived {'running' if truth.keepalived_alive else 'not running'}, state {truth.state or 'none'}, "
            f"ha link {'up' if truth.ha_link_up else 'down' if truth.ha_link_up is False else 'missing'}"
        )


async def run_undo_steps(ctx: FaultContext, steps: Sequence[UndoStep]) -> list[str]:
    """Run every step in order, even after one fails; raise at the end if any failed.

    Shared by a live undo and by ``chaos recover``. An ``api`` step is replayed by
    ``chaos.faults.agent_evacuate.replay_api_step``. A ``bmc`` step ``On`` makes sure the node is
    or is being powered on: nothing when it is on, a wait when a reset is still in progress.
    """
    details: list[str] = []
    failures: list[str] = []
    for step in steps:
        try:
            if step.via == "ssh":
                result = await ctx.ssh.run(step.node, step.command)
                details.append(result.stdout.strip())
            elif step.via == "api":
                # Neutron API steps (agent-evacuate) know how to replay themselves.
                from chaos.faults.agent_evacuate import replay_api_step

                details.append(await replay_api_step(ctx, step))
            else:
                async with ctx.redfish() as bmc:
                    if step.command == "On":
                        details.append(await bmc.ensure_on(step.node))
                        continue
                    await bmc.reset(step.node, step.command)
                    details.append(f"{step.node}: BMC {step.command}")
        except InfrastructureError as exc:
            failures.append(exc.message)
    if failures:
        raise InfrastructureError("undo incomplete: " + "; ".join(failures))
    return details
