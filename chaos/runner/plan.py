"""From a target selection and the ground truth to a plan of fault actions, inside the safeguards.

The plan is computed before anything is touched and is complete: which routers, which replica
of each, which node, the exact commands that inject and undo, and in which waves the actions
run. ``--dry-run`` prints it; a plan that would break a safeguard is refused here, so nothing
runs at all.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel

from chaos.errors import InvalidInput, SafeguardAbort
from chaos.experiment.schema import ReplicaRole, RouterSelector, Safeguards, TargetMode
from chaos.model import Replica, Router, Topology



class PlannedAction(BaseModel):
    """One fault on one router's replica (or on one node), with its exact commands."""

    action_id: str
    fault: str
    scope: Literal["router", "node"] = "router"  # the fault's (Fault.scope): node actions take the whole node
    node: str
    router_id: str | None
    router_name: str | None
    replica_role: str
    affected_routers: list[str]
    inject: list[str]
    undo: list[dict[str, Any]]


class Plan(BaseModel):
    fault: str
    routers: list[str]
    actions: list[PlannedAction]
    waves: list[list[str]]  # action ids that run together, wave after wave

    def action(self, action_id: str) -> PlannedAction:
        return next(a for a in self.actions if a.action_id == action_id)


def select_routers(
    topology: Topology,
    selector: RouterSelector,
    mode: TargetMode,
    value: float | None,
    seed: int | None,
) -> list[Router]:
    """The routers an experiment targets, sampled reproducibly with ``seed``."""
    candidates = [
        r for r in topology.routers
        if selector.matches(name=r.name, router_id=r.id, project_id=r.project_id, tags=r.tags)
    ]
    if not candidates:
        raise InvalidInput(
            f"no router of {topology.source} matches the target selector {selector.model_dump(exclude_none=True)}",
            hint="`chaos lab status` (or `chaos discover`) lists the routers",
        )
    rng = random.Random(seed)
    n = len(candidates)
    if mode == "all":
        count = n
    elif mode == "one":
        count = 1
    elif mode == "fixed":
        count = int(value or 0)
        if count > n:
            raise InvalidInput(f"target.value {count} asks for more routers than match ({n})")
    elif mode == "fixed-percent":
        count = max(1, math.ceil(n * float(value or 0) / 100))
    else:  # random-max-percent: between one and value percent
        count = rng.randint(1, max(1, math.floor(n * float(value or 0) / 100)))
    chosen = rng.sample(candidates, count) if count < n else list(candidates)
    return sorted(chosen, key=lambda r: (r.name, r.id))


def choose_replica(router: Router, holders: Sequence[str], role: ReplicaRole, rng: random.Random) -> Replica:
    """The replica a fault hits: the one holding the addresses, one that does not, or any."""
    if role == "primary":
        pool = [rep for rep in router.replicas if rep.node in holders]
        if len(pool) != 1:
            raise SafeguardAbort(
                f"router {router.name or router.id} has {len(pool)} primaries ({', '.join(holders) or 'none'}): "
                "the steady state is broken before injection",
                hint="fix the router first (`chaos lab status` / `chaos discover` shows it)",
            )
    elif role == "backup":
        pool = [rep for rep in router.replicas if rep.node not in holders]
    else:
        pool = list(router.replicas)
    if not pool:
        raise SafeguardAbort(f"router {router.name or router.id} has no {role} replica to target")
    return rng.choice(sorted(pool, key=lambda r: r.node))


def check_replica_count(router: Router) -> None:
    if len(router.replicas) < 2:
        raise SafeguardAbort(
            f"router {router.name or router.id} has a single replica: any fault on it takes all its replicas at once",
            hint="exclude it from the target selection",
        )


def build_waves(
    actions: Sequence[PlannedAction],
    topology: Topology,
    safeguards: Safeguards,
) -> list[list[str]]:
    """Group actions so no wave exceeds the node and router limits or takes every replica of a router."""
    replicas_of = {r.id: {rep.node for rep in r.replicas} for r in topology.routers}
    waves: list[list[PlannedAction]] = []
    for action in actions:
        if len(action.affected_routers) > safeguards.max_concurrent_routers:
            raise SafeguardAbort(
                f"{action.fault} on {action.node} disturbs {len(action.affected_routers)} routers at once, "
                f"more than safeguards.max_concurrent_routers ({safeguards.max_concurrent_routers})",
                hint="raise max_concurrent_routers if that is intended",
            )
        placed = False
        for wave in waves:
            nodes = {a.node for a in wave} | {action.node}
            routers = {rid for a in wave for rid in a.affected_routers} | set(action.affected_routers)
            if len(nodes) > safeguards.max_nodes_at_once or len(routers) > safeguards.max_concurrent_routers:
                continue
            down_nodes = nodes if action.scope == "node" else set()
            if down_nodes and any(reps <= down_nodes for reps in replicas_of.values()):
                continue
            wave.append(action)
            placed = True
            break
        if not placed:
            if action.scope == "node":
                for rid, reps in replicas_of.items():
                    if reps <= {action.node}:
                        raise SafeguardAbort(f"every replica of router {rid} is on {action.node}: rebooting it takes them all")
            waves.append([action])
    return [[a.action_id for a in wave] for wave in waves]


def affected_by_node(topology: Topology, node: str) -> list[str]:
    return sorted(r.id for r in topology.routers if any(rep.node == node for rep in r.replicas))


def describe(plan: Plan, topology: Topology, deadlines: Mapping[str, float] | None = None) -> str:
    """The plan as a person reads it, with the exact commands per node (for --dry-run), and per
    action with a dead-man (``deadlines``: action id to seconds) when it would undo the action by
    itself: the one figure the commands hold that a reader needs without parsing them."""
    deadlines = deadlines or {}
    names = {r.id: r.name or r.id for r in topology.routers}
    lines = [f"fault {plan.fault} on {len(plan.routers)} router(s), {len(plan.actions)} action(s) in {len(plan.waves)} wave(s)"]
    for i, wave in enumerate(plan.waves, start=1):
        lines.append(f"wave {i}:")
        for action_id in wave:
            a = plan.action(action_id)
            target = f"router {names.get(a.router_id or '', a.router_id)} ({a.replica_role} replica)" if a.router_id else "node"
            lines.append(f"  {a.action_id}: {a.fault} on {a.node}: {target}; disturbs {len(a.affected_routers)} router(s)")
            lines += [f"    inject  [{a.node}]$ {cmd}" for cmd in a.inject]
            lines += [f"    undo    [{s['node']} via {s['via']}]$ {s['command']}" for s in a.undo]
            if a.action_id in deadlines:
                lines.append(f"    dead-man on {a.node}: undoes it by itself {deadlines[a.action_id]:g}s after the "
                             "injection unless the undo has cancelled it")
    return "\n".join(lines)


def holders_by_router(observations: Mapping[str, Sequence[Any]]) -> dict[str, list[str]]:
    """Nodes whose replica holds the router's addresses, from ground-truth observations."""
    return {rid: sorted(o.node for o in obs if o.holds_addresses) for rid, obs in observations.items()}
