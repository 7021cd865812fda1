"""Neutron's agents on the backend's hosts: their command lines, with the lab's config files.

A network node runs ``neutron-linuxbridge-agent`` (it plugs the L3 agent's ``tap`` ends into
``brq`` bridges: VXLAN for the HA and tenant networks, ``eth1`` for the flat external network)
and ``neutron-l3-agent`` (HA routers: ``qrouter-<id>``, keepalived, neutron-keepalived-state-
change, the state files, the process monitor). The node's init (``chaos.lab.node_init``) starts
them after sshd, as a booting server does, and restarts one that dies.
"""

from __future__ import annotations

from pathlib import Path

from chaos.lab.node import node_dir
from chaos.lab.real.config import controller_dir, etc_dir
from chaos.lab.spec import NodeSpec

LINUXBRIDGE_AGENT = "/usr/bin/neutron-linuxbridge-agent"
L3_AGENT = "/usr/bin/neutron-l3-agent"
NEUTRON_SERVER = "/usr/bin/neutron-server"
DB_MANAGE = "/usr/bin/neutron-db-manage"


def node_agents(lab_dir: Path, node: NodeSpec) -> list[tuple[str, list[str]]]:
    """(name, argv) of a network node's agents, in start order."""
    etc = etc_dir(node_dir(lab_dir, node.name))
    common = ["--config-file", str(etc / "neutron.conf")]
    return [
        ("linuxbridge-agent", [LINUXBRIDGE_AGENT, *common, "--config-file", str(etc / "linuxbridge_agent.ini")]),
        ("l3-agent", [L3_AGENT, *common, "--config-file", str(etc / "l3_agent.ini")]),
    ]


def server_argv(lab_dir: Path) -> list[str]:
    etc = etc_dir(controller_dir(lab_dir))
    return [NEUTRON_SERVER, "--config-file", str(etc / "neutron.conf"), "--config-file", str(etc / "ml2_conf.ini")]


def db_manage_argv(lab_dir: Path) -> list[str]:
    etc = etc_dir(controller_dir(lab_dir))
    return [DB_MANAGE, "--config-file", str(etc / "neutron.conf"), "--config-file", str(etc / "ml2_conf.ini"),
            "upgrade", "heads"]


def controller_agent_argv(lab_dir: Path) -> list[str]:
    """The controller's LinuxBridge agent: it plugs the VMs' ``tap`` devices (their ports are
    bound to the controller's host, as Nova binds a VM's port to its compute host)."""
    etc = etc_dir(controller_dir(lab_dir))
    return [LINUXBRIDGE_AGENT, "--config-file", str(etc / "agent.conf"), "--config-file", str(etc / "linuxbridge_agent.ini")]
