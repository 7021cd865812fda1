"""``chaos doctor``: check, node by node, that a run against a target could work.

The target is the lab (its inventory), a static inventory file, or a cloud (discovery through
its API, with an inventory for SSH). Exit 0 when nothing blocks a run (warnings are printed),
6 (prerequisites missing) when something does; the table says what to fix.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from chaos.commands._target import add_target_arguments, target_topology
from chaos.errors import ExitCode, InvalidInput
from chaos.model import Topology
from chaos.experiment.registry import registry
from chaos.runner.preflight import Check, failures, preflight, render
from chaos.settings import Settings
from chaos.transport.ssh import SshPool


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "doctor",
        help="check that every node has what a run needs (SSH, root, the agent's context, keepalived, ...)",
        description=(
            "Preflight of a target, node by node: SSH and the host key, root or passwordless sudo, the L3 agent's "
            "context (the node's profile), the programs faults and probes run, router namespaces, keepalived and "
            "the state file of every replica, the agent's respawn interval. Exit 6 when a run could not work."
        ),
    )
    add_target_arguments(
        parser,
        cloud_help="a cloud from clouds.yaml, discovered through its API (needs --inventory for SSH)",
        inventory_help="an inventory file (nodes and routers, or with --cloud the SSH mapping)",
    )
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    parser.set_defaults(handler=run_doctor)


async def check_target(topology: Topology) -> list[Check]:
    async with SshPool(topology.nodes) as ssh:
        return plugin_checks() + await preflight(ssh, topology, topology.routers)


def plugin_checks() -> list[Check]:
    """The faults and probes that plugins add (ok) and the plugins that could not be loaded
    (a warning: the built-in faults still run, an experiment that uses the plugin does not)."""
    reg = registry()
    checks = [
        Check(node="tool", check="plugin", status="ok", detail=f"{group.split('.')[-1][:-1]} {name}: {source}")
        for (group, name), source in reg.sources.items() if not source.startswith("built-in")
    ]
    checks += [
        Check(node="tool", check="plugin", status="warn", detail=problem.describe(),
              fix="fix or uninstall the plugin's distribution (docs/plugins.md says what a plugin must provide)")
        for problem in reg.problems
    ]
    return checks


def run_doctor(args: argparse.Namespace, settings: Settings) -> int:
    if args.cloud and not args.inventory:
        raise InvalidInput("--cloud needs --inventory: the cloud's API names the hosts, the inventory says how to reach them")
    topology = target_topology(args, settings, routers_required=True)
    checks = asyncio.run(check_target(topology))
    blocking = failures(checks)
    if args.json:
        print(json.dumps({"target": topology.source, "ok": not blocking, "checks": [c.model_dump() for c in checks]}, indent=2))
    else:
        print(f"target {topology.source}: {len(topology.nodes)} node(s), {len(topology.routers)} router(s)")
        print(render(checks))
        print(f"{len(blocking)} problem(s) block a run" if blocking else "nothing blocks a run")
    return int(ExitCode.PREREQUISITES if blocking else ExitCode.OK)
