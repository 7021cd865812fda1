"""floating-ip-drop: the primary replica drops every packet sent to the router's floating IPs.

What a broken NAT rule or a wedged datapath on the primary does: keepalived sees nothing wrong
(VRRP runs on the ha- link, which is fine), so no replica takes over and the floating IPs stay
dark for as long as the fault holds. An experiment with it measures the outage that L3 HA does
*not* protect against: outage_s close to the duration, no failover.

The rules go into the raw table's PREROUTING chain of the router's namespace (before any NAT),
one per floating IP, each carrying the action's marker as a comment, so the undo removes only
its own rules, and the dead-man the base schedules (the fault has a duration) removes them too
if the runner dies.
"""

from __future__ import annotations

import shlex
from typing import ClassVar

from chaos.faults.base import Fault, poll
from chaos.transport import node_commands as nc


class FloatingIpDrop(Fault):
    type: ClassVar[str] = "floating-ip-drop"
    duration_rule = "required"
    duration_help: ClassVar[str] = "how long the floating IPs stay dark"
    programs: ClassVar[frozenset[str]] = frozenset({"iptables"})

    def _rule(self, address: str) -> list[str]:
        return ["PREROUTING", "-d", address, "-m", "comment", "--comment", self.marker, "-j", "DROP"]

    def _iptables(self, *args: str) -> str:
        # The router id is validated by nc.namespace, every word is quoted by shlex.join.
        return shlex.join(["ip", "netns", "exec", nc.namespace(self.router_id), "iptables", "-w", "-t", "raw", *args])

    @property
    def addresses(self) -> list[str]:
        return [str(f.address) for f in self.router.floating_ips] if self.router else []

    def fault_commands(self) -> list[str]:
        if not self.addresses:
            return []
        inserts = " && ".join(self._iptables("-I", *self._rule(a)) for a in self.addresses)
        return [self.node.agent.wrap(inserts + " && echo " + shlex.quote(f"{len(self.addresses)} rule(s) added"))]

    def revert_commands(self) -> list[str]:
        deletes = "; ".join(f"while {self._iptables('-D', *self._rule(a))} 2>/dev/null; do :; done" for a in self.addresses)
        return [self.node.agent.wrap(deletes + "; true")] if self.addresses else []

    def describe(self, detail: str) -> str:
        return f"packets to {', '.join(self.addresses)} dropped in {nc.namespace(self.router_id)} on {self.node.name}"

    async def _rules(self) -> int:
        count = f"{self._iptables('-S', 'PREROUTING')} | grep -cF -- {shlex.quote(self.marker)} || true"
        out = await self.ctx.ssh.run(self.node.name, self.node.agent.wrap(count))
        text = out.stdout.strip()
        return int(text) if text.isdigit() else 0

    async def took(self) -> tuple[bool, str]:
        if not self.addresses:
            return False, f"router {self.router_id} has no floating IP to drop"

        async def check() -> tuple[bool, str]:
            n = await self._rules()
            return n == len(self.addresses), f"{n} of {len(self.addresses)} rule(s) in place"

        return await poll(check, self.took_timeout)

    async def recovered(self) -> tuple[bool, str]:
        async def check() -> tuple[bool, str]:
            n = await self._rules()
            if n:
                return False, f"{n} rule(s) marked {self.marker} remain"
            return await self.replica_healthy()

        return await poll(check, self.recover_timeout)
