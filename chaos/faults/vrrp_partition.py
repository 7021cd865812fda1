"""vrrp-partition: VRRP (IP protocol 112) dropped in and out of one replica's ha- device.

The replica neither hears nor is heard: it and the others each believe they are alone, so
every side becomes primary and the router's addresses live in two places (split brain). The
rules carry the action's marker as an iptables comment, so the undo removes only its own.
"""

from __future__ import annotations

from typing import ClassVar

from chaos.faults.base import Fault, poll
from chaos.transport import node_commands as nc

RULES_PER_PARTITION = 2  # INPUT and OUTPUT


class VrrpPartition(Fault):
    type: ClassVar[str] = "vrrp-partition"
    duration_rule = "required"
    duration_help: ClassVar[str] = "how long VRRP stays blocked between replicas"
    programs: ClassVar[frozenset[str]] = frozenset({"iptables"})

    def fault_commands(self) -> list[str]:
        return [nc.vrrp_block(self.node.agent, self.router_id, self.replica.ha_device, self.marker)]

    def revert_commands(self) -> list[str]:
        return [nc.vrrp_unblock(self.node.agent, self.router_id, self.replica.ha_device, self.marker)]

    def describe(self, detail: str) -> str:
        return f"VRRP dropped on {self.replica.ha_device} in {nc.namespace(self.router_id)} (rules marked {self.marker})"

    async def _rules(self) -> int:
        out = await self.ctx.ssh.run(self.node.name, nc.vrrp_rules_count(self.node.agent, self.router_id, self.marker))
        text = out.stdout.strip()
        return int(text) if text.isdigit() else 0

    async def took(self) -> tuple[bool, str]:
        async def check() -> tuple[bool, str]:
            n = await self._rules()
            return n == RULES_PER_PARTITION, f"{n} rule(s) marked {self.marker}"

        return await poll(check, self.took_timeout)

    async def recovered(self) -> tuple[bool, str]:
        async def check() -> tuple[bool, str]:
            n = await self._rules()
            if n:
                return False, f"{n} rule(s) marked {self.marker} remain"
            return await self.replica_healthy()

        return await poll(check, self.recover_timeout)
