"""keepalived-kill: signal a replica's keepalived as a crash, a stop or a hang would.

TERM is an orderly stop (a priority-0 advert hands over after Skew_Time); KILL is a crash that
leaves the addresses configured (two replicas hold them until a new keepalived starts); STOP is
a hang (the process lives, so the agent's process monitor does not respawn it).

On a real cloud Neutron's process monitor respawns a dead keepalived at its next check
(``check_child_processes_interval``, 60 s by default), and that respawn is part of what the
experiment measures. So the undo waits that long (plus a margin) for the agent, and only then
starts keepalived itself, the way the agent would, and only if no keepalived runs the router's
config: never a second one beside the agent's. Who restarted it is journaled.

That undo runs in the runner. Should the runner die after the signal and nobody run ``chaos
recover``, nothing but the agent would ever bring keepalived back, and an agent whose process
monitor is off (``check_child_processes_interval`` 0) never does. So every signal arms a
node-side dead-man before it is sent: STOP's after the duration, TERM's and KILL's after
``respawn_wait`` plus ``DEADMAN_MARGIN``, which runs the same revert as the undo.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, Field

from chaos.experiment.durations import format_duration
from chaos.experiment.params import NonNegativeDuration, Params
from chaos.faults.base import Fault, Loc, poll
from chaos.transport import node_commands as nc

# Neutron's monitor sleeps the interval, then checks; keepalived's respawn is also throttled to
# 1.5 x advert_int after its last spawn. Real Zed respawned 17-50 s after a kill at 60 s.
RESPAWN_MARGIN = 15.0
# TERM/KILL: how much later than respawn_wait the dead-man fires. The live undo starts when
# took() returns (at most Fault.took_timeout, 5 s, after the injection), waits respawn_wait for
# the agent, then runs the revert (an SSH round, keepalived's start, DUPLICATE_SETTLE_S for the
# duplicate check) and the disarm (another round): REVERT_GRACE bounds those two rounds with room
# for a loaded node behind a bastion. Firing earlier would not break anything (the revert starts
# keepalived only when none runs and resolves a race with any other starter), but it would cut
# the agent's chance short and the journal would credit the agent with the dead-man's restart.
REVERT_GRACE = 10.0


def _signal(value: object) -> object:
    """`SIGKILL` and `kill` are what people type; the file format says KILL."""
    if isinstance(value, str):
        value = value.strip().upper()
        return value[3:] if value.startswith("SIG") else value
    return value


class KeepalivedKillParams(Params):
    signal: Annotated[Literal["TERM", "KILL", "STOP"], BeforeValidator(_signal)] = "KILL"
    respawn_wait: NonNegativeDuration | None = Field(
        default=None, le=3600,
        description="how long undo waits for the node's L3 agent to respawn keepalived before starting it itself "
        "(default: the node's check_child_processes_interval plus a margin; 0: start it at once)",
    )


class KeepalivedKill(Fault):
    type: ClassVar[str] = "keepalived-kill"
    params_model: ClassVar[type[BaseModel]] = KeepalivedKillParams
    params: KeepalivedKillParams
    programs: ClassVar[frozenset[str]] = frozenset({"keepalived"})

    @classmethod
    def spec_problems(cls, spec: Any) -> list[tuple[Loc, str]]:
        """``duration`` belongs to STOP (how long keepalived hangs) and to nothing else."""
        signal = spec.params.signal
        if signal == "STOP" and spec.duration is None:
            return [(("duration",), "required with signal STOP: how long keepalived stays stopped before CONT")]
        if signal != "STOP" and spec.duration is not None:
            return [(("duration",), f"applies only to signal STOP; {signal} ends keepalived and undo restarts it "
                                    "(see params.respawn_wait)")]
        return []

    @classmethod
    def describe_spec(cls, spec: Any) -> str:
        """The base line plus, for TERM/KILL, the dead-man's deadline (STOP's is its duration,
        which the base line says already)."""
        line = super().describe_spec(spec)
        if spec.params.signal == "STOP":
            return line
        wait, margin = spec.params.respawn_wait, format_duration(cls.deadman_margin())
        when = (f"{format_duration(wait + cls.deadman_margin())} (respawn_wait + {margin})" if wait is not None else
                f"respawn_wait + {margin} (respawn_wait: the node's check_child_processes_interval + "
                f"{format_duration(RESPAWN_MARGIN)}, 0 where it is 0)")
        return f"{line}; should the run die, a node-side dead-man restarts keepalived {when} after the kill"

    @classmethod
    def deadman_margin(cls) -> float:
        """How much later than ``respawn_wait`` a TERM/KILL dead-man fires (see REVERT_GRACE)."""
        return cls.took_timeout + REVERT_GRACE

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.signalled: list[int] = []

    @property
    def signal(self) -> nc.Signal:
        return nc.Signal(self.params.signal)

    @property
    def respawn_wait(self) -> float:
        """How long the agent gets to respawn keepalived: the parameter, else the node's monitor
        interval plus a margin (0 when the node's agent never respawns)."""
        if self.params.respawn_wait is not None:
            return self.params.respawn_wait
        interval = self.node.check_child_processes_interval
        return interval + RESPAWN_MARGIN if interval > 0 else 0.0

    def deadman_after(self) -> float | None:
        """STOP: the duration (CONT then). TERM/KILL: after the live undo would have restarted
        keepalived (``respawn_wait`` plus ``deadman_margin``), so the dead-man acts only when the
        runner died, and restarts it the way the undo does."""
        if self.signal == nc.Signal.STOP:
            return self.duration
        return self.respawn_wait + self.deadman_margin()

    @property
    def undo_timeout(self) -> float:  # type: ignore[override]
        """The agent's ``respawn_wait`` and then the restart's own time: with Neutron's default
        interval (60 s) the wait alone is 75 s, past the runner's usual 60 s bound, which cut the
        agent's chance short and lost who restarted keepalived."""
        return self.respawn_wait + Fault.undo_timeout

    def fault_commands(self) -> list[str]:
        # TERM goes to the main process only, as a service stop does; it stops its VRRP child.
        # KILL and STOP must reach the VRRP child itself, which is what holds the addresses.
        return [nc.keepalived_signal(self.node.agent, self.router_id, self.signal, vrrp_child=self.signal != nc.Signal.TERM)]

    def revert_commands(self) -> list[str]:
        return [nc.keepalived_ensure_running(self.node.agent, self.router_id)]

    def describe(self, detail: str) -> str:
        self.signalled = [int(p) for p in re.findall(r"signalled (\d+)", detail)]
        return f"SIG{self.signal.value} sent to keepalived pid(s) {', '.join(map(str, self.signalled))}"

    async def _signalled_state(self) -> dict[int, str]:
        out = await self.ctx.ssh.run(self.node.name, nc.pids_alive(self.node.agent, self.signalled))
        return {int(pid): st for pid, st in (line.split() for line in out.stdout.splitlines() if line.strip())}

    async def took(self) -> tuple[bool, str]:
        if not self.signalled:
            return False, "no keepalived process was signalled"

        async def check() -> tuple[bool, str]:
            alive = await self._signalled_state()
            if self.signal == nc.Signal.STOP:
                stopped = [p for p, st in alive.items() if st == "T"]
                return len(stopped) == len(self.signalled), f"stopped: {stopped} of {self.signalled}"
            return not alive, (f"still running: {sorted(alive)}" if alive else f"pid(s) {self.signalled} gone")

        # SIGTERM makes keepalived exit after a second or more.
        return await poll(check, self.took_timeout)

    async def undo(self) -> str:
        """Continue a stopped keepalived; for a dead one, give the agent ``respawn_wait`` first."""
        waited = ""
        if self.signal != nc.Signal.STOP and self.respawn_wait > 0:

            async def respawned() -> tuple[bool, str]:
                truth = await self.replica_truth()
                return truth.keepalived_alive, "respawned"

            ok, _ = await poll(respawned, self.respawn_wait, interval=0.5)
            if ok:
                self.outcome["restarted_by"] = "agent"
                waited = "the agent respawned keepalived"
            else:
                waited = f"the agent did not respawn keepalived within {self.respawn_wait:g}s"
        done = await super().undo()
        if "started keepalived" in done:
            self.outcome["restarted_by"] = "tool"
        elif self.signal != nc.Signal.STOP:
            self.outcome.setdefault("restarted_by", "agent")
        return "; ".join(x for x in (waited, done if done != "undone" else "") if x) or "keepalived already running"

    async def recovered(self) -> tuple[bool, str]:
        async def check() -> tuple[bool, str]:
            return await self.replica_healthy()

        return await poll(check, self.recover_timeout)
