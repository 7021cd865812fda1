"""keepalived-kill: signal a replica's keepalived as a crash, a stop or a hang would.

TERM is an orderly stop (a priority-0 advert hands over after Skew_Time); KILL is a crash that
leaves the addresses configured (two replicas hold them until a new keepalived starts); STOP is
a hang (the process lives, so the agent's process monitor does not respawn it). The agent
respawns a dead keepalived; if it has not within ``respawn_wait``, the undo starts one with
Neutron's command line, as the agent would.
"""

from __future__ import annotations

import re
from typing import ClassVar

from pydantic import BaseModel

from chaos.experiment.schema import KeepalivedKillParams
from chaos.faults.base import Fault, poll
from chaos.transport import node_commands as nc


class KeepalivedKill(Fault):
    type: ClassVar[str] = "keepalived-kill"
    params_model: ClassVar[type[BaseModel]] = KeepalivedKillParams
    params: KeepalivedKillParams

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.signalled: list[int] = []

    @property
    def signal(self) -> nc.Signal:
        return nc.Signal(self.params.signal)

    def fault_commands(self) -> list[str]:
        # TERM goes to the main process only, as a service stop does; it stops its VRRP child.
        # KILL and STOP must reach the VRRP child itself, which is what holds the addresses.
        return [nc.keepalived_signal(self.node.state_path, self.router_id, self.signal, vrrp_child=self.signal != nc.Signal.TERM)]

    def revert_commands(self) -> list[str]:
        return [nc.keepalived_ensure_running(self.node.state_path, self.router_id)]

    def describe(self, detail: str) -> str:
        self.signalled = [int(p) for p in re.findall(r"signalled (\d+)", detail)]
        return f"SIG{self.signal.value} sent to keepalived pid(s) {', '.join(map(str, self.signalled))}"

    async def _signalled_state(self) -> dict[int, str]:
        out = await self.ctx.ssh.run(self.node.name, nc.pids_alive(self.signalled))
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
        if self.signal != nc.Signal.STOP and self.params.respawn_wait > 0:

            async def respawned() -> tuple[bool, str]:
                truth = await self.replica_truth()
                return truth.keepalived_alive, "respawned"

            ok, _ = await poll(respawned, self.params.respawn_wait, interval=0.5)
            waited = "the agent respawned keepalived" if ok else f"the agent did not respawn keepalived within {self.params.respawn_wait:g}s"
        done = await super().undo()
        return "; ".join(x for x in (waited, done if done != "undone" else "") if x) or "keepalived already running"

    async def recovered(self) -> tuple[bool, str]:
        async def check() -> tuple[bool, str]:
            return await self.replica_healthy()

        return await poll(check, self.params.respawn_wait + self.recover_timeout)
