"""The target of a command that works on nodes (``chaos doctor``, ``chaos known-hosts add``):
a running lab, a cloud discovered through its API (SSH settings from an inventory), or an
inventory file. One place, so that every such command reads ``--lab``, ``--cloud`` and
``--inventory`` the same way."""

from __future__ import annotations

import argparse
from pathlib import Path

from chaos.errors import InvalidInput
from chaos.model import Topology
from chaos.settings import Settings


def add_target_arguments(parser: argparse.ArgumentParser, *, cloud_help: str, inventory_help: str) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--lab", metavar="NAME", help="a running lab (default: CHAOS_LAB_NAME or chaoslab)")
    where.add_argument("--cloud", help=cloud_help)
    parser.add_argument("--inventory", type=Path, help=inventory_help)


def target_topology(args: argparse.Namespace, settings: Settings, *, routers_required: bool) -> Topology:
    """The target's topology: discovery's (with ``--cloud``), an inventory's, or the lab's.

    ``routers_required``: whether an inventory must list routers (a command about nodes only
    does not need them, but then the inventory must name its nodes: patterns alone match
    nothing without discovery)."""
    if args.cloud:
        from chaos.targets.openstack import SshInventory, discover_topology

        inventory = SshInventory.load(args.inventory) if args.inventory else None
        return discover_topology(args.cloud, inventory=inventory)
    if args.inventory:
        from chaos.targets.inventory import read_inventory, to_topology

        topology = to_topology(read_inventory(args.inventory, routers_required=routers_required))
        if not topology.nodes:
            raise InvalidInput(
                f"{args.inventory}: names no node (only patterns): give --cloud NAME so that discovery names the hosts"
            )
        return topology
    from chaos.targets.lab import lab_topology

    return lab_topology(settings.lab_root, args.lab or settings.lab_name)
