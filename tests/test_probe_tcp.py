"""TCP probes through the lab's routers: held sessions and new connections.

Real sockets from the vantage namespace to the floating IPs (1:1 NAT in the qrouter
namespaces) and from the VMs' namespaces to the vantage echo service (SNAT). The strict
conntrack tests make the failover the field report complains about: without replicated
connection state an established floating-IP session is reset; with conntrackd it survives.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chaos.model import FloatingIP, Topology
from chaos.probes.base import INBOUND, OUTBOUND, tcp_paths
from chaos.probes.newconn import NewConnectionProbe
from chaos.probes.tcp import TcpSessionProbe
from chaos.journal import Journal, read_journal
from tests.conftest import LabHandle, wait_lab_ready
from tests.test_probe_icmp import lab_ssh, primary_of, primary_of_or_none, topology_of

END_EVENTS = {"reset", "timeout", "closed", "failed"}


def events(journal_path: Path, kind: str) -> list[dict[str, Any]]:
    return [e for e in read_journal(journal_path) if e["kind"] == kind]


def by_session(journal_path: Path) -> dict[str, list[dict[str, Any]]]:
    sessions: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events(journal_path, "probe.tcp"):
        if event["session"] is not None:
            sessions[event["session"]].append(event)
    return sessions


def without_vm_namespaces(topo: Topology) -> Topology:
    """The same topology as a real cloud would give it: no VM namespace to open sockets in."""
    routers = tuple(
        r.model_copy(update={"floating_ips": tuple(f.model_copy(update={"vm_netns": None}) for f in r.floating_ips)})
        for r in topo.routers
    )
    return topo.model_copy(update={"routers": routers})


# --------------------------------------------------------------------------- no traffic (the lab inventory only)
def test_paths_say_why_outbound_is_skipped(lab_inventory: Topology, tmp_path: Path) -> None:
    topo = without_vm_namespaces(lab_inventory)
    paths, skipped = tcp_paths(topo)
    assert {p.direction for p in paths} == {INBOUND}
    assert len(skipped) == len(topo.routers) and all(s.direction == OUTBOUND for s in skipped)
    assert all("VM" in s.reason for s in skipped)
    journal_path = tmp_path / "j.jsonl"
    with Journal(journal_path) as journal:
        probe = TcpSessionProbe(topo, journal, directions=[OUTBOUND])
        asyncio.run(probe.run(asyncio.Event(), 5.0))  # nothing to hold: returns at once
    notes = events(journal_path, "probe.tcp")
    assert [n["event"] for n in notes] == ["skipped"] * len(topo.routers)
    assert probe.ready.is_set()
    with pytest.raises(ValueError):
        tcp_paths(topo, directions=["sideways"])


def test_probes_refuse_unbounded_parameters(lab_inventory: Topology, tmp_path: Path) -> None:
    with Journal(tmp_path / "j") as journal:
        with pytest.raises(ValueError, match="timeout < interval"):
            NewConnectionProbe(lab_inventory, journal, interval=0.5, timeout=0.5)
        with pytest.raises(ValueError, match="stall"):
            TcpSessionProbe(lab_inventory, journal, interval=1.0, stall=0.5)


@pytest.fixture
def lab_inventory(lab: LabHandle) -> Topology:
    return topology_of(lab)


# --------------------------------------------------------------------------- shared lab
@pytest.mark.lab
async def test_sessions_survive_a_quiet_period_and_new_connections_succeed(lab: LabHandle, tmp_path: Path) -> None:
    wait_lab_ready(lab)
    topo = topology_of(lab)
    journal_path = tmp_path / "journal.jsonl"
    with Journal(journal_path) as journal:
        sessions = TcpSessionProbe(topo, journal, sessions=2, interval=0.1, stall=1.0)
        newconn = NewConnectionProbe(topo, journal, interval=0.5)
        stop = asyncio.Event()
        started = time.monotonic()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(sessions.run(stop, 3.0))
            tg.create_task(newconn.run(stop, 3.0))
            async with asyncio.timeout(10):
                await sessions.ready.wait()
            assert sessions.stats().detail["open"] == 2 * 2 * len(topo.routers)
        assert time.monotonic() - started < 3.0 + 1.5, "probes stop by themselves at the deadline"

    held = by_session(journal_path)
    assert len(held) == 2 * 2 * len(topo.routers), "two sessions per router and direction"
    directions = defaultdict(set)
    for sid, evs in held.items():
        kinds = [e["event"] for e in evs]
        assert kinds == ["opened", "closed"], f"{sid}: {kinds}"
        directions[evs[0]["router_id"]].add(evs[0]["direction"])
        end = evs[-1]
        assert end["sent"] >= 20, f"{sid}: a message every 0.1 s for 3 s, sent {end['sent']}"
        assert end["echoed"] >= end["sent"] - 1, f"{sid}: echoed {end['echoed']} of {end['sent']}"
    assert all(d == {INBOUND, OUTBOUND} for d in directions.values())
    assert directions.keys() == {r.id for r in topo.routers}

    attempts = events(journal_path, "probe.newconn")
    per_path: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for a in attempts:
        per_path[(a["router_id"], a["direction"])].append(a)
    assert len(per_path) == 2 * len(topo.routers)
    for key, tries in per_path.items():
        assert 5 <= len(tries) <= 7, f"{key}: {len(tries)} attempts in 3 s at 0.5 s"
        bad = [t for t in tries if not t["ok"]]
        assert not bad, f"{key}: {bad}"
        assert all(0 < t["latency"] < 0.4 for t in tries)
    stats = newconn.stats()
    assert stats.sent == len(attempts) and stats.lost == 0 and stats.failing == ()


# --------------------------------------------------------------------------- strict conntrack
async def hold_sessions_through_link_failover(lab: LabHandle, journal_path: Path) -> dict[str, list[dict[str, Any]]]:
    """Inbound sessions through router 1's floating IP while its primary's ha- link goes down."""
    await asyncio.to_thread(wait_lab_ready, lab)
    topo = topology_of(lab)
    router = lab.spec.routers[0]
    node = primary_of(lab, router.id)
    device = next(rep.ha_device for rep in router.replicas if rep.node == node)
    link = f"ip netns exec {shlex.quote(router.namespace)} ip link set {shlex.quote(device)} "
    stop = asyncio.Event()
    injected = False
    try:
        with Journal(journal_path) as journal:
            probe = TcpSessionProbe(
                topo, journal, router_ids=[router.id], directions=[INBOUND],
                sessions=2, interval=0.2, stall=1.0, session_timeout=12.0,
            )

            async def failover() -> None:
                nonlocal injected
                try:
                    async with asyncio.timeout(10):
                        await probe.ready.wait()
                    await asyncio.sleep(1.0)
                    injected = True
                    await lab_ssh(lab, node, link + "down")
                    deadline = time.monotonic() + 15
                    while time.monotonic() < deadline and primary_of_or_none(lab, router.id) in (None, node):
                        await asyncio.sleep(0.2)
                    # Long enough for stalled sessions to retransmit through the new primary
                    # (TCP backs off 0.2, 0.4, ... 3.2 s) and meet either a reset or their data.
                    deadline = time.monotonic() + 8
                    while time.monotonic() < deadline and probe.stats().detail["stalled"]:
                        await asyncio.sleep(0.2)
                    await asyncio.sleep(1.0)
                finally:
                    stop.set()

            async with asyncio.TaskGroup() as tg:
                tg.create_task(probe.run(stop, max_duration=40.0))
                tg.create_task(failover())
    finally:
        if injected:
            await lab_ssh(lab, node, link + "up")
    return by_session(journal_path)


@pytest.mark.lab
async def test_strict_conntrack_resets_sessions_unless_conntrackd_replicates(
    make_lab: Callable[..., LabHandle], tmp_path: Path
) -> None:
    strict = await asyncio.to_thread(make_lab, "s", strict_conntrack=True, advert_int=1, routers=1)
    synced = await asyncio.to_thread(make_lab, "c", conntrackd=True, strict_conntrack=True, advert_int=1, routers=1)
    try:
        async with asyncio.TaskGroup() as tg:
            broken = tg.create_task(hold_sessions_through_link_failover(strict, tmp_path / "strict.jsonl"))
            kept = tg.create_task(hold_sessions_through_link_failover(synced, tmp_path / "conntrackd.jsonl"))

        assert len(broken.result()) == 2
        for sid, evs in broken.result().items():
            kinds = [e["event"] for e in evs]
            assert kinds[0] == "opened" and kinds[-1] in ("reset", "timeout"), (
                f"strict conntrack without conntrackd: {sid} should not survive the failover: {kinds}"
            )

        assert len(kept.result()) == 2
        for sid, evs in kept.result().items():
            kinds = [e["event"] for e in evs]
            assert kinds[0] == "opened" and kinds[-1] == "closed", f"with conntrackd {sid} should survive: {evs}"
            assert "reset" not in kinds and "timeout" not in kinds
            end = evs[-1]
            assert end["echoed"] >= end["sent"] - 1, "every message made it through after the failover"
    finally:
        for handle in (strict, synced):
            await asyncio.to_thread(wait_lab_ready, handle)


@pytest.mark.lab
async def test_refused_connections_are_recorded_as_failures(lab: LabHandle, tmp_path: Path) -> None:
    """Port 9 (discard) has no listener behind the floating IPs: the VM answers with a reset."""
    topo = topology_of(lab)
    closed = topo.model_copy(update={"routers": tuple(
        r.model_copy(update={"floating_ips": tuple(
            FloatingIP(address=f.address, fixed_ip=f.fixed_ip, echo_port=9, vm_netns=f.vm_netns) for f in r.floating_ips
        )})
        for r in topo.routers[:1]
    )})
    journal_path = tmp_path / "journal.jsonl"
    with Journal(journal_path) as journal:
        sessions = TcpSessionProbe(closed, journal, directions=[INBOUND], sessions=1)
        newconn = NewConnectionProbe(closed, journal, directions=[INBOUND], interval=0.5)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(sessions.run(asyncio.Event(), 1.0))
            tg.create_task(newconn.run(asyncio.Event(), 1.0))
    held = by_session(journal_path)
    assert [[e["event"] for e in evs] for evs in held.values()] == [["failed"]]
    assert "ECONNREFUSED" in next(iter(held.values()))[0]["detail"]
    attempts = events(journal_path, "probe.newconn")
    assert len(attempts) == 2
    assert all(a["ok"] is False and a["error"] == "ECONNREFUSED" and a["phase"] == "connect" for a in attempts)
    assert all(a["latency"] is None for a in attempts)
    assert sessions.stats().lost == 1 and newconn.stats().lost == 2
