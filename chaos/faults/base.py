"""What every fault shares: its self-description, its undo record, its dead-man, its lifecycle.

A fault is one module (chaos/faults/<name>.py, or a plugin's): a ``Fault`` subclass that says
what experiment files call it (``type``), what parameters it takes (``params_model``), whether
it acts on one router's replica or on a whole node (``scope``), whether ``duration`` applies,
what must exist on the node for it to run and be undone (``programs``), and how to inject, how to
tell it took, how to undo and how to tell the replica (or node) is healthy again. The registry
(``chaos.experiment.registry``) finds it; the experiment schema, the planner, the preflight and
``chaos recover`` ask it. The rest lives here once:

- ``undo_steps()`` are plain data (``UndoStep``) that the runner journals *before* injecting,
  so ``chaos recover`` can replay them with ``run_undo_steps`` after a crash. Every step is
  idempotent: replaying it on a healthy node changes nothing. A live undo runs the same steps
  through the same function, so the two paths behave the same on failure.
- A fault schedules a dead-man on the node together with the injection: a detached
  ``sleep <deadline>; <undo>`` that survives the SSH session, the connection and the runner, so
  a runner that dies (or hangs) mid-fault cannot leave the fault in place. The deadline is
  ``deadman_after()``: the duration for a fault that holds one; a fault without a duration that
  still leaves something in place (keepalived-kill's TERM/KILL: keepalived stays dead) says a
  deadline of its own, later than its live undo would act. The step that cancels it is a
  ``disarm`` step: it runs only when every undo step before it succeeded, so a failed undo
  leaves the dead-man armed to finish the job.
- Markers (iptables comments, the dead-man's tag) are ``chaos-<run_id>-<action_id>``, unique to
  one action of one run, so an undo removes only what that action added.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from chaos.errors import InfrastructureError, InvalidInput
from chaos.experiment.durations import format_duration
from chaos.experiment.params import NoParams
from chaos.log import get_logger
from chaos.model import Node, Replica, Router, Topology
from chaos.transport import node_commands as nc

if TYPE_CHECKING:
    from chaos.transport.redfish import RedfishClient
    from chaos.transport.ssh import SshPool

Loc = tuple[str | int, ...]
Scope = Literal["router", "node"]
DurationRule = Literal["required", "optional", "forbidden"]

log = get_logger("faults")


class UndoStep(BaseModel):
    """One idempotent step that undoes (part of) a fault: a shell command or a BMC reset type."""

    model_config = ConfigDict(frozen=True)

    via: Literal["ssh", "bmc", "api"]
    node: str
    command: str  # a shell command (ssh), a Redfish ResetType (bmc) or a JSON API command (api)
    fault: str | None = None  # api: the fault type whose ``replay`` runs it (None: agent-evacuate, older journals)
    disarm: bool = False  # cancels a dead-man: runs only when every step before it succeeded


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
        from chaos.transport.redfish import RedfishClient

        return RedfishClient.from_file(self.topology.bmc_url, self.topology.bmc_credentials_file)


async def poll(
    check: Callable[[], Awaitable[tuple[bool, str]]], timeout: float, interval: float = 0.2
) -> tuple[bool, str]:
    """Call ``check`` until it says yes or ``timeout`` passes; the last answer is returned.

    A check that raises InfrastructureError counts as "not yet" with the error as detail. When
    the check never says yes, the answer also names the earlier, different answers and when each
    was first seen: a wait that ends on "no answer" after two minutes of "no primary yet" must
    say both, or the journal cannot tell what held recovery back.
    """
    started = time.monotonic()
    deadline = started + timeout
    detail = "not checked"
    seen: list[tuple[float, str]] = []
    while True:
        try:
            async with asyncio.timeout(max(0.5, deadline - time.monotonic())):
                ok, detail = await check()
        except InfrastructureError as exc:
            ok, detail = False, exc.message
        except TimeoutError:
            ok, detail = False, f"no answer within {timeout:g}s"
        if ok:
            return ok, detail
        if not seen or seen[-1][1] != detail:
            seen.append((time.monotonic() - started, detail))
        if time.monotonic() >= deadline:
            return False, _answers(seen)
        await asyncio.sleep(interval)


def _answers(seen: list[tuple[float, str]], keep: int = 4) -> str:
    """The last answer, then the ones before it (newest first, at most ``keep``) with the second
    each was first given."""
    last = seen[-1][1]
    earlier = [f"{detail} (from {at:.1f}s)" for at, detail in reversed(seen[:-1])][:keep]
    more = len(seen) - 1 - len(earlier)
    if not earlier:
        return last
    return f"{last} (from {seen[-1][0]:.1f}s); before: " + "; ".join(earlier) + (f"; {more} more" if more else "")


class Fault(ABC):
    """One fault on one node (and one router's replica there, for router faults).

    The class describes the fault (the ClassVars and classmethods below, read before anything
    runs: by the schema, the planner, the preflight); an instance is one planned action.
    """

    registry_group: ClassVar[str] = "chaos.faults"
    type: ClassVar[str]
    """The name experiment files use (``fault.type``)."""
    params_model: ClassVar[type[BaseModel]] = NoParams
    """The model of ``fault.params`` (build it on ``chaos.experiment.params.Params``)."""
    scope: ClassVar[Scope] = "router"
    """router: one action per chosen router, on one of its replicas; node: one action per node
    (the node of the chosen replica), which disturbs every router with a replica there; the
    blast radius counts node actions as nodes down and takes exclusive leases on them."""
    duration_rule: ClassVar[DurationRule] = "optional"
    """Whether ``fault.duration`` must, may or must not be given."""
    duration_help: ClassVar[str] = "how long the fault holds before it is undone"
    """What ``fault.duration`` means for this fault (or why it does not apply), for messages."""
    programs: ClassVar[frozenset[str]] = frozenset()
    """Programs the fault runs in the L3 agent's context; the preflight refuses a node without them."""
    took_timeout: ClassVar[float] = 5.0
    recover_timeout: ClassVar[float] = 30.0
    recovery_deadline: ClassVar[float] = 120.0
    """How long the runner waits, in all, for ``recovered()`` after the undo."""
    undo_timeout: ClassVar[float] = 60.0
    """How long the runner lets ``undo()`` run before it replays the journaled steps instead; a
    fault whose undo waits on purpose (for the L3 agent's respawn) says so by raising it."""

    # ------------------------------------------------------------------ what the class says
    @classmethod
    def spec_problems(cls, spec: Any) -> list[tuple[Loc, str]]:
        """Problems of this fault's section that no single field shows (``spec`` is the validated
        ``fault`` section: ``replica``, ``duration``, ``params``), each with its path under
        ``fault``. The default applies ``duration_rule``; override to add rules (and call it)."""
        if cls.duration_rule == "required" and spec.duration is None:
            return [(("duration",), f"required for {cls.type}: {cls.duration_help}")]
        if cls.duration_rule == "forbidden" and spec.duration is not None:
            return [(("duration",), f"does not apply to {cls.type}: {cls.duration_help}")]
        return []

    @classmethod
    def chosen_node(cls, params: BaseModel) -> str | None:
        """A node fault's node when the parameters name it (else it follows ``fault.replica``)."""
        return None

    @classmethod
    def describe_spec(cls, spec: Any) -> str:
        """One line for ``chaos validate`` and the plan: what is injected where, for how long."""
        params = ", ".join(f"{k} {_plain(v)}" for k, v in spec.params.model_dump().items() if v is not None)
        hold = f" for {format_duration(spec.duration)}" if spec.duration else ""
        replica = "any replica" if spec.replica == "any" else f"the {spec.replica} replica"
        where = f"the node of {replica}" if cls.scope == "node" else replica
        node = cls.chosen_node(spec.params)
        if node:
            where = f"node {node}"
        return f"{cls.type}{' (' + params + ')' if params else ''} on {where}{hold}"

    @classmethod
    async def replay(cls, ctx: FaultContext, step: UndoStep) -> str:
        """Replay one of this fault's ``via: "api"`` undo steps (faults that journal such steps
        override it; ``chaos recover`` calls it through the registry)."""
        raise InvalidInput(f"fault {cls.type} has no API undo steps, yet one was recorded: {step.command[:100]!r}")

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
        if self.scope == "router":
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
    def deadman_after(self) -> float | None:
        """Seconds from the injection until the node-side dead-man runs ``revert_commands`` by
        itself (None: no dead-man). The duration by default: the live undo acts then too, and the
        revert is idempotent, so whichever comes first is harmless to the other. A fault without
        a duration that leaves something in place overrides it with a deadline after the moment
        its live undo would act, so the dead-man only ever finishes what a dead runner left."""
        return self.duration

    def deadman_command(self) -> str | None:
        after = self.deadman_after()
        if after is None or not self.revert_commands():
            return None
        return nc.deadman_schedule(self.marker, after, self.revert_commands())

    def deadman_deadline(self) -> float | None:
        """The dead-man's deadline when this action arms one (for plans and messages)."""
        return self.deadman_after() if self.deadman_command() is not None else None

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
            steps.append(UndoStep(via="ssh", node=self.node.name, command=nc.deadman_cancel(self.marker), disarm=True))
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
            detail += f" (dead-man pid {self.deadman_pid} undoes it after {self.deadman_after():g}s)"
        log.info("fault injected", fault=self.type, node=self.node.name, router=self.router.id if self.router else None)
        return detail.strip()

    async def undo(self) -> str:
        """Run the journaled undo steps (the same function ``chaos recover`` runs): the revert,
        then, only if it succeeded, the dead-man's cancel (by its pid, known since the injection)."""
        steps = [
            s.model_copy(update={"command": nc.deadman_cancel(self.marker, self.deadman_pid)}) if s.disarm else s
            for s in self.undo_steps()
        ]
        details = await run_undo_steps(self.ctx, steps)
        if any(s.disarm for s in steps):
            self.deadman_pid = None
        return "; ".join(d for d in details if d) or "undone"

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
    """Run the steps in order; raise at the end if any failed. Shared by a live undo and by
    ``chaos recover``, so both behave the same way on failure.

    After a failed step the others still run (each is idempotent and undoes its own part),
    except ``disarm`` steps: a dead-man stays armed while anything before it failed, so it still
    undoes the fault on the node when its time comes. An ``api`` step is replayed by its fault's
    ``replay`` (found in the registry by ``UndoStep.fault``). A ``bmc`` step ``On`` makes sure the
    node is or is being powered on: nothing when it is on, a wait when a reset is in progress.
    """
    details: list[str] = []
    failures: list[str] = []
    for step in steps:
        if step.disarm and failures:
            details.append(f"{step.node}: dead-man left armed (the undo before it failed)")
            continue
        try:
            if step.via == "ssh":
                result = await ctx.ssh.run(step.node, step.command)
                details.append(result.stdout.strip())
            elif step.via == "api":
                details.append(await _replayer(step).replay(ctx, step))
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


def _replayer(step: UndoStep) -> type[Fault]:
    """The fault class that replays an API step (through the registry: no fault module is
    imported here, so this module stays below every fault)."""
    from chaos.experiment.registry import registry

    fault_type = step.fault or "agent-evacuate"  # journals written before steps named their fault
    try:
        return registry().fault(fault_type)  # type: ignore[no-any-return]
    except KeyError as exc:
        raise InvalidInput(f"API undo step of fault {fault_type!r}, which is not installed: {exc}") from None


def _plain(value: object) -> str:
    return format_duration(value) if isinstance(value, float) else str(value)
