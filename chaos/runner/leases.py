"""Leases: two runs never disturb the same router or node at once, whoever started them.

A run claims, after planning and before anything is injected, every router its plan disturbs
(exclusively) and every node it acts on: exclusively for a node fault (a reboot, an evacuation
disturbs everything on the node), shared for a fault on one router's replica (two runs may each
hit a different router's replica on one node, never the same router). The claims are released
after the rollback. ``chaos run`` and ``chaos serve`` both go through a ``LeaseProvider``
(``chaos.state.leases`` keeps them in the shared state database), so a terminal, an operator
and a second operator sharing the database all see each other's leases.

The runner only knows this protocol; where leases are stored is the caller's business.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict

from chaos.errors import Conflict
from chaos.model import Topology
from chaos.runner.plan import Plan

LeaseMode = Literal["shared", "exclusive"]


class LeaseClaim(BaseModel):
    """One thing a run needs for itself (exclusive) or alongside others of its kind (shared)."""

    model_config = ConfigDict(frozen=True)

    key: str  # router:<id> or node:<target>/<name>
    mode: LeaseMode
    label: str  # how people call it: "router r-1", "node network-2"


class LeaseConflict(Conflict):
    """A claim is held by another run: exit 7; the operator records the firing as skipped."""

    def __init__(self, message: str, *, holders: Sequence[str] = ()) -> None:
        super().__init__(message, hint="wait for that run to end, or use concurrency: queue (chaos run --wait-lease)")
        self.holders = list(holders)


class LeaseProvider(Protocol):
    def hold(
        self, run_id: str, claims: Sequence[LeaseClaim], *, experiment: str, wait: float
    ) -> AbstractAsyncContextManager[None]:
        """Take every claim at once or none (waiting up to ``wait`` seconds for them to free),
        keep them renewed while the body runs, release them when it ends; raises LeaseConflict."""
        ...


def claims_for(plan: Plan, topology: Topology) -> list[LeaseClaim]:
    """What a plan disturbs: its routers exclusively, its nodes shared or exclusive by fault."""
    names = {r.id: r.name or r.id for r in topology.routers}
    claims: dict[str, LeaseClaim] = {}
    for action in plan.actions:
        for router_id in {*action.affected_routers, *([action.router_id] if action.router_id else [])}:
            claims[f"router:{router_id}"] = LeaseClaim(
                key=f"router:{router_id}", mode="exclusive", label=f"router {names.get(router_id, router_id)}"
            )
        key = f"node:{topology.source}/{action.node}"
        mode: LeaseMode = "exclusive" if action.scope == "node" else "shared"
        if key not in claims or mode == "exclusive":
            claims[key] = LeaseClaim(key=key, mode=mode, label=f"node {action.node}")
    return sorted(claims.values(), key=lambda c: c.key)
