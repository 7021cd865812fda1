"""Faults: what can be done to an HA router's replicas and nodes, one module each.

``FAULTS`` maps the name an experiment uses to the class that injects it.
"""

from __future__ import annotations

from chaos.faults.agent_evacuate import AgentEvacuate
from chaos.faults.base import Fault, FaultContext, UndoStep, run_undo_steps
from chaos.faults.gateway_reboot import GatewayReboot
from chaos.faults.ha_link_down import HaLinkDown
from chaos.faults.keepalived_kill import KeepalivedKill
from chaos.faults.vrrp_partition import VrrpPartition

FAULTS: dict[str, type[Fault]] = {
    f.type: f for f in (KeepalivedKill, HaLinkDown, GatewayReboot, VrrpPartition, AgentEvacuate)
}

__all__ = ["FAULTS", "Fault", "FaultContext", "UndoStep", "run_undo_steps"]
