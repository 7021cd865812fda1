"""The blast radius, property-based: whatever the topology, the selection and the safeguards, a
plan never takes every replica of a router at once, never puts more nodes or routers in a wave
than the safeguards allow, and either plans every selected router or refuses the whole run.

Two levels: the planner's pure functions (select_routers, choose_replica, check_replica_count,
build_waves) on generated topologies, and ``make_plan`` itself on the fake network node (the
ground truth read over the fake SSH transport, as a run reads it).
"""

from __future__ import annotations

import asyncio
import math
import random
import uuid

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from chaos.errors import InvalidInput, SafeguardAbort
from chaos.experiment.schema import Experiment, RouterSelector, Safeguards
from chaos.experiment.registry import registry
from chaos.faults.base import FaultContext
from chaos.model import Node, Replica, Router, Topology
from chaos.runner.execute import make_plan
from chaos.runner.plan import (
    PlannedAction,
    affected_by_node,
    build_waves,
    check_replica_count,
    choose_replica,
    select_routers,
)
from tests.fakenode import FakeNetwork
from tests.conftest import budget

FAST = settings(max_examples=budget(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def topologies(draw: st.DrawFn, *, min_replicas: int = 1) -> Topology:
    """1-6 nodes, 1-12 routers, each with 1-3 replicas on distinct nodes (some routers may be
    single-replica: the planner must refuse those)."""
    n_nodes = draw(st.integers(1, 6))
    nodes = tuple(Node(name=f"net-{i}", address=f"198.51.100.{i + 1}") for i in range(n_nodes))
    routers = []
    for r in range(draw(st.integers(1, 12))):
        hosts = draw(st.lists(st.integers(0, n_nodes - 1), min_size=min(min_replicas, n_nodes),
                              max_size=min(3, n_nodes), unique=True))
        assume(hosts)
        rid = str(uuid.UUID(int=r + 1))
        routers.append(Router(
            id=rid, name=f"r{r}", vrid=r + 1, tags=tuple(draw(st.sets(st.sampled_from(["prod", "canary"])))),
            replicas=tuple(Replica(node=nodes[h].name, ha_device=f"ha-{rid[-8:]}{k}") for k, h in enumerate(hosts)),
            floating_ips=({"address": f"100.64.32.{r + 1}"},),  # type: ignore[arg-type]
        ))
    return Topology(source="generated", nodes=nodes, routers=tuple(routers))


safeguards = st.builds(
    Safeguards,
    max_concurrent_routers=st.integers(1, 12),
    max_nodes_at_once=st.integers(1, 4),
)
modes = st.sampled_from(["all", "one", "fixed", "fixed-percent", "random-max-percent"])


def value_for(mode: str, draw_value: float) -> float | None:
    return {"all": None, "one": None, "fixed": float(max(1, round(draw_value / 10))), }.get(mode, max(1.0, draw_value))


# --------------------------------------------------------------------------- selection
@FAST
@given(topologies(), modes, st.floats(1, 100), st.integers(0, 2**32), st.sampled_from([None, "prod"]))
def test_selection_takes_only_matching_routers_in_the_promised_number(
    topo: Topology, mode: str, raw: float, seed: int, tag: str | None
) -> None:
    selector = RouterSelector(tags=(tag,) if tag else None)
    candidates = [r for r in topo.routers if tag is None or tag in r.tags]
    value = value_for(mode, raw)
    try:
        chosen = select_routers(topo, selector, mode, value, seed)  # type: ignore[arg-type]
    except InvalidInput as exc:
        assert not candidates or (mode == "fixed" and value is not None and value > len(candidates)), exc
        return
    n = len(candidates)
    assert len({r.id for r in chosen}) == len(chosen) and {r.id for r in chosen} <= {r.id for r in candidates}
    expected = {
        "all": (n, n), "one": (1, 1), "fixed": (int(value or 0), int(value or 0)),
        "fixed-percent": (max(1, math.ceil(n * (value or 0) / 100)),) * 2,
        "random-max-percent": (1, max(1, math.floor(n * (value or 0) / 100))),
    }[mode]
    assert expected[0] <= len(chosen) <= min(expected[1], n)
    assert chosen == select_routers(topo, selector, mode, value, seed)  # type: ignore[arg-type]  # reproducible


# --------------------------------------------------------------------------- one replica per router
@FAST
@given(topologies(), st.sampled_from(["primary", "backup", "any"]), st.integers(0, 2**32), st.data())
def test_choose_replica_never_takes_a_lone_or_a_wrong_replica(topo: Topology, role: str, seed: int, data: st.DataObject) -> None:
    for router in topo.routers:
        nodes = [rep.node for rep in router.replicas]
        holders = data.draw(st.lists(st.sampled_from(nodes), unique=True, max_size=len(nodes)))
        try:
            check_replica_count(router)
        except SafeguardAbort:
            assert len(router.replicas) < 2
            continue
        assert len(router.replicas) >= 2
        try:
            chosen = choose_replica(router, holders, role, random.Random(seed))  # type: ignore[arg-type]
        except SafeguardAbort as exc:
            if role == "primary":
                assert len(holders) != 1, exc  # no primary, or a split brain: refused
            else:
                assert role == "backup" and set(holders) == set(nodes), exc
            continue
        assert chosen in router.replicas
        if role == "primary":
            assert holders == [chosen.node]
        elif role == "backup":
            assert chosen.node not in holders


# --------------------------------------------------------------------------- waves
def router_actions(topo: Topology, rng: random.Random) -> list[PlannedAction]:
    return [
        PlannedAction(action_id=f"a{i + 1}", fault="ha-link-down", node=rng.choice(r.replicas).node, router_id=r.id,
                      router_name=r.name, replica_role="any", affected_routers=[r.id], inject=[], undo=[])
        for i, r in enumerate(topo.routers) if len(r.replicas) >= 2
    ]


def node_actions(topo: Topology, nodes: list[str]) -> list[PlannedAction]:
    return [
        PlannedAction(action_id=f"a{i + 1}", fault="gateway-reboot", node=n, router_id=None, router_name=None,
                      replica_role="any", affected_routers=affected_by_node(topo, n), inject=[], undo=[])
        for i, n in enumerate(nodes)
    ]


def assert_waves_within_the_safeguards(topo: Topology, actions: list[PlannedAction], waves: list[list[str]], guards: Safeguards) -> None:
    by_id = {a.action_id: a for a in actions}
    flat = [a for wave in waves for a in wave]
    assert sorted(flat) == sorted(by_id) and len(flat) == len(set(flat))  # every action, exactly once
    replicas = {r.id: {rep.node for rep in r.replicas} for r in topo.routers}
    for wave in waves:
        acts = [by_id[a] for a in wave]
        nodes = {a.node for a in acts}
        routers = {rid for a in acts for rid in a.affected_routers}
        assert len(nodes) <= guards.max_nodes_at_once
        assert len(routers) <= guards.max_concurrent_routers
        for rid, reps in replicas.items():
            if any(a.scope == "node" for a in acts):
                hit = reps & nodes  # a node fault takes every replica on its node
            else:
                hit = {a.node for a in acts if a.router_id == rid}
            assert hit != reps, f"wave {wave} takes every replica of {rid}"


@FAST
@given(topologies(min_replicas=2), safeguards, st.integers(0, 2**32))
def test_router_fault_waves_stay_within_the_safeguards(topo: Topology, guards: Safeguards, seed: int) -> None:
    actions = router_actions(topo, random.Random(seed))
    waves = build_waves(actions, topo, guards)
    assert_waves_within_the_safeguards(topo, actions, waves, guards)


@FAST
@given(topologies(), safeguards, st.data())
def test_node_fault_waves_never_take_every_replica_or_exceed_the_safeguards(
    topo: Topology, guards: Safeguards, data: st.DataObject
) -> None:
    names = [n.name for n in topo.nodes]
    nodes = data.draw(st.lists(st.sampled_from(names), unique=True, min_size=1))
    actions = node_actions(topo, nodes)
    try:
        waves = build_waves(actions, topo, guards)
    except SafeguardAbort as exc:
        too_many = any(len(a.affected_routers) > guards.max_concurrent_routers for a in actions)
        alone = any({rep.node for rep in r.replicas} <= {n} for r in topo.routers for n in nodes)
        assert too_many or alone, exc
        return
    assert_waves_within_the_safeguards(topo, actions, waves, guards)


# --------------------------------------------------------------------------- the whole planner
EXPERIMENT = {
    "title": "p", "target": {"source": "inventory", "inventory": "x.yaml", "routers": {"name": "*"}},
    "probes": {"primary": {}, "warmup": 0, "settle": 0},
    "steady_state_hypothesis": {"title": "p", "tolerances": {"primaries_after": {"equals": 1}}},
}


@settings(max_examples=budget(60), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    topologies(),
    safeguards,
    modes,
    st.floats(1, 100),
    st.sampled_from([("ha-link-down", "primary"), ("vrrp-partition", "backup"), ("keepalived-kill", "any"),
                     ("gateway-reboot", "primary"), ("gateway-reboot", "backup")]),
    st.integers(0, 2**32),
)
def test_make_plan_on_the_fake_node_plans_all_or_refuses_and_stays_within_the_blast_radius(
    topo: Topology, guards: Safeguards, mode: str, raw: float, fault: tuple[str, str], seed: int
) -> None:
    kind, role = fault
    spec: dict[str, object] = {"type": kind, "replica": role}
    if kind != "gateway-reboot":
        spec["duration"] = 5
    value = value_for(mode, raw)
    target = {**EXPERIMENT["target"], "mode": mode, "seed": seed, **({"value": value} if value is not None else {})}  # type: ignore[dict-item]
    try:
        exp = Experiment.model_validate({**EXPERIMENT, "target": target, "fault": spec,
                                         "safeguards": guards.model_dump()})
    except ValueError:
        return  # a file the validator refuses never reaches the planner
    net = FakeNetwork(topo)

    async def plan():  # type: ignore[no-untyped-def]
        async with net.pool()(topo.nodes) as ssh:
            return await make_plan(exp, topo, ssh, FaultContext(topology=topo, ssh=ssh, run_id="prop"))

    try:
        made, faults, holders = asyncio.run(plan())
    except (SafeguardAbort, InvalidInput):
        assert net.injected() == []  # refused before anything was sent that changes a node
        return
    assert not net.unmodelled and net.injected() == []  # planning only reads
    selected = set(made.routers)
    assert selected and selected <= {r.id for r in topo.routers}
    by_router = {r.id: r for r in topo.routers}
    if registry().faults[kind].scope != "node":  # one action per selected router, on one of its replicas, of the asked role
        assert sorted(a.router_id or "" for a in made.actions) == sorted(selected)
        for a in made.actions:
            router = by_router[a.router_id or ""]
            assert len(router.replicas) >= 2 and a.node in {rep.node for rep in router.replicas}
            if role == "primary":
                assert holders[router.id] == [a.node]
            if role == "backup":
                assert a.node not in holders[router.id]
    else:  # every selected router loses a replica on a planned node, none loses them all
        planned = {a.node for a in made.actions}
        for rid in selected:
            assert {rep.node for rep in by_router[rid].replicas} & planned
    assert_waves_within_the_safeguards(topo, made.actions, made.waves, guards)
    assert set(faults) == {a.action_id for a in made.actions}
