"""gateway-reboot: a network node goes down hard and boots again.

``lab`` power-cycles the node through its BMC (Redfish ``ForceRestart``), the path a real
server's BMC takes too; ``ssh`` asks the node for a clean ``systemctl reboot``; ``sysrq``
makes its kernel reboot at once (no sync, no unmount). Every replica on the node vanishes at
once, so each router whose primary was there fails over after Master_Down_Interval. The node
is back when SSH answers with a new boot id and every replica it hosts has a state file and a
running keepalived again. The only undo is powering it on (a BMC ``On``), when there is a BMC.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar, Literal

from pydantic import BaseModel, Field

from chaos.errors import InfrastructureError
from chaos.experiment.params import Duration, Params
from chaos.faults.base import Fault, UndoStep, poll, run_undo_steps
from chaos.probes.replicas import holders, observe, observe_node
from chaos.transport import node_commands as nc

BMC_RESET = "ForceRestart"


class GatewayRebootParams(Params):
    method: Literal["lab", "ssh", "sysrq"] = "lab"
    boot_timeout: Duration = Field(default=300.0, le=3600, description="how long to wait for the node to come back")


class GatewayReboot(Fault):
    type: ClassVar[str] = "gateway-reboot"
    params_model: ClassVar[type[BaseModel]] = GatewayRebootParams
    scope = "node"
    duration_rule = "forbidden"
    duration_help: ClassVar[str] = "the node is down until it boots (see params.boot_timeout)"
    params: GatewayRebootParams
    took_timeout: ClassVar[float] = 30.0
    probe_timeout: ClassVar[float] = 3.0

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.old_boot_id: str | None = None

    @property
    def recovery_deadline(self) -> float:  # type: ignore[override]
        return self.params.boot_timeout

    def fault_commands(self) -> list[str]:
        if self.params.method == "ssh":
            return [nc.reboot_systemctl()]
        if self.params.method == "sysrq":
            return [nc.reboot_sysrq()]
        return []

    def revert_commands(self) -> list[str]:
        return []  # nothing on the node can undo its own reboot

    def inject_commands(self) -> list[str]:
        commands = [nc.boot_id(), *self.fault_commands()]
        if self.params.method == "lab":
            commands.append(f"redfish ComputerSystem.Reset {BMC_RESET} {self.node.name}")  # sent to the BMC, not the node
        return commands

    def undo_steps(self) -> list[UndoStep]:
        if self.params.method == "lab" or self.ctx.topology.bmc_url:
            return [UndoStep(via="bmc", node=self.node.name, command="On")]
        return []

    async def inject(self) -> str:
        self.old_boot_id = (await self.ctx.ssh.run(self.node.name, nc.boot_id())).stdout.strip()
        if self.params.method == "lab":
            async with self.ctx.redfish() as bmc:
                await bmc.reset(self.node.name, BMC_RESET)
            how = f"BMC {BMC_RESET}"
        else:
            await self.ctx.ssh.run(self.node.name, self.fault_commands()[0])
            how = "systemctl reboot" if self.params.method == "ssh" else "sysrq b"
        # The connection to the old boot is dead from now on; the next command reconnects.
        self.ctx.ssh.forget(self.node.name)
        return f"{self.node.name} rebooted ({how}); boot id was {self.old_boot_id}"

    async def _boot_id(self) -> str | None:
        """The node's boot id, or None when it does not answer within ``probe_timeout``.

        The bound covers the connect too: a powered-off node leaves half-open connections
        and unanswered ARP behind, which would otherwise take the pool's full retry budget.
        """
        try:
            async with asyncio.timeout(self.probe_timeout):
                out = await self.ctx.ssh.run(self.node.name, nc.boot_id(), timeout=self.probe_timeout)
        except (InfrastructureError, TimeoutError):
            self.ctx.ssh.forget(self.node.name)
            return None
        return out.stdout.strip()

    async def took(self) -> tuple[bool, str]:
        """The node stopped answering, or already answers with a new boot id."""

        async def check() -> tuple[bool, str]:
            current = await self._boot_id()
            if current is None:
                return True, f"{self.node.name} does not answer"
            if current != self.old_boot_id:
                return True, f"{self.node.name} already back with boot id {current}"
            return False, f"{self.node.name} still up with the same boot id"

        return await poll(check, self.took_timeout, interval=0.2)

    async def undo(self) -> str:
        return "; ".join(await run_undo_steps(self.ctx, self.undo_steps())) or "nothing to undo"

    async def recovered(self) -> tuple[bool, str]:
        """The node is back with its replicas running, and every router it hosts has exactly one
        primary again: the next wave must not take down a replica of a router that has not yet
        failed over (a backup that waits out Master_Down_Interval is its only replica left)."""
        routers = [r for r in self.ctx.topology.routers if any(rep.node == self.node.name for rep in r.replicas)]

        async def check() -> tuple[bool, str]:
            current = await self._boot_id()
            if current is None:
                return False, f"{self.node.name} does not answer yet"
            if self.old_boot_id is not None and current == self.old_boot_id:
                return False, f"{self.node.name} has not rebooted"
            obs = await observe_node(self.ctx.ssh, self.ctx.topology, self.node.name, routers, timeout=self.probe_timeout + 2)
            missing = [o.router_id for o in obs if not (o.state and o.keepalived_alive)]
            if missing:
                return False, f"{self.node.name} is back, {len(missing)} of {len(obs)} replica(s) not yet running"
            everywhere = await observe(self.ctx.ssh, self.ctx.topology, routers, timeout=self.probe_timeout + 2)
            unsettled = [rid for rid, o in everywhere.items() if len(holders(o)) != 1]
            if unsettled:
                return False, f"{self.node.name} is back; {len(unsettled)} of its routers without exactly one primary yet"
            return True, f"{self.node.name} is back (boot id {current}) with its {len(obs)} replica(s), one primary each"

        return await poll(check, self.params.boot_timeout, interval=0.5)

