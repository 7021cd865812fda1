"""ha-link-down: the replica's ha- device goes down, as a cut HA network port does.

keepalived tracks the ha- device (track_interface): the replica goes to FAULT and drops its
addresses at once, and a primary elsewhere takes over after Master_Down_Interval.
"""

from __future__ import annotations

from typing import ClassVar

from chaos.faults.base import Fault, poll
from chaos.transport import node_commands as nc


class HaLinkDown(Fault):
    type: ClassVar[str] = "ha-link-down"
    duration_rule = "required"
    duration_help: ClassVar[str] = "how long the ha- link stays down"
    programs: ClassVar[frozenset[str]] = frozenset({"ip"})

    def fault_commands(self) -> list[str]:
        return [nc.ha_link_set(self.node.agent, self.router_id, self.replica.ha_device, nc.LinkAction.DOWN)]

    def revert_commands(self) -> list[str]:
        return [nc.ha_link_set(self.node.agent, self.router_id, self.replica.ha_device, nc.LinkAction.UP)]

    def describe(self, detail: str) -> str:
        return f"{self.replica.ha_device} set down in {nc.namespace(self.router_id)}"

    async def took(self) -> tuple[bool, str]:
        async def check() -> tuple[bool, str]:
            truth = await self.replica_truth()
            return truth.ha_link_up is False, f"ha link {'up' if truth.ha_link_up else 'down' if truth.ha_link_up is False else 'missing'}"

        return await poll(check, self.took_timeout)

    async def recovered(self) -> tuple[bool, str]:
        return await poll(self.replica_healthy, self.recover_timeout)
