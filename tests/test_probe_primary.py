"""The streaming primary observer against the real lab: failover seen in tens of ms, reboots survived."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from chaos.model import Topology
from chaos.deployment import AgentContext
from chaos.probes.primary import PrimaryObserver, parse_address_line, router_addresses
from chaos.journal import Journal, read_journal
from chaos.transport import node_commands as nc
from chaos.transport.ssh import SshPool
from tests.conftest import LabHandle, wait_lab_ready

CHAOS = [sys.executable, "-m", "chaos.cli"]


def topology_of(lab: LabHandle) -> Topology:
    return Topology.model_validate_json((lab.dir / "inventory.json").read_text())


def observed(path: Path, router_id: str) -> list[dict[str, Any]]:
    return [e for e in read_journal(path) if e["kind"] == "observe.replica" and e["router_id"] == router_id]


# --------------------------------------------------------------------------- pure
def test_address_lines() -> None:
    assert parse_address_line("4: qg-ef5e0db5-37    inet 100.64.32.1/32 scope global qg-ef5e0db5-37\\  valid") == (True, "100.64.32.1")
    assert parse_address_line("Deleted 4: qg-ef5e0db5-37    inet 100.64.1.1/16 scope global qg") == (False, "100.64.1.1")
    assert parse_address_line("5: qg-x    inet6 2001:db8::1/64 scope global") == (True, "2001:db8::1")
    assert parse_address_line("garbage") is None


def test_follow_command_validates_ids() -> None:
    with pytest.raises(ValueError):
        nc.follow_replicas(AgentContext(), ["x; reboot"])
    with pytest.raises(ValueError):
        nc.follow_replicas(AgentContext(), [])


# --------------------------------------------------------------------------- lab
async def _start(ssh: SshPool, topo: Topology, journal: Journal, stop: asyncio.Event) -> tuple[PrimaryObserver, asyncio.Task[None]]:
    obs = PrimaryObserver(ssh, topo, topo.routers, journal)
    task = asyncio.create_task(obs.run(stop, 90))
    async with asyncio.timeout(20):
        await obs.ready.wait()
    return obs, task


@pytest.mark.lab
async def test_failover_is_seen_within_half_a_second_of_the_state_file(lab: LabHandle, tmp_path: Path) -> None:
    wait_lab_ready(lab)
    topo = topology_of(lab)
    router = topo.routers[0]
    path = tmp_path / "journal.jsonl"
    stop = asyncio.Event()
    try:
        with Journal(path) as journal:
            async with SshPool(topo.nodes) as ssh:
                obs, task = await _start(ssh, topo, journal, stop)
                try:
                    holders = obs.holders(router.id)
                    assert len(holders) == 1, holders
                    old = holders.pop()
                    new = next(r.node for r in router.replicas if r.node != old)
                    assert obs.state(router.id, old) == "primary" and obs.reachable(old)
                    ha = next(r.ha_device for r in router.replicas if r.node == old)
                    await ssh.run(old, nc.ha_link_set(topo.node(old).agent, router.id, ha, nc.LinkAction.DOWN))
                    downed = time.time()
                    async with asyncio.timeout(10):
                        while obs.holders(router.id) != {new} or obs.state(router.id, new) != "primary":
                            await asyncio.sleep(0.01)
                    state = str(topo.node(new).layout.state_file(router.id))
                    out = await ssh.run(new, f"date -r {nc.q(state)} +%s.%N")
                    state_changed = float(out.stdout)
                    await ssh.run(old, nc.ha_link_set(topo.node(old).agent, router.id, ha, nc.LinkAction.UP))
                finally:
                    stop.set()
                    await task
        events = observed(path, router.id)
        assert all(e["source"] == "monitor" for e in events)
        lost = [e for e in events if e["node"] == old and not e["holds"] and e["t"] >= downed]
        took = [e for e in events if e["node"] == new and e["holds"] and e["t"] >= downed]
        became = [e for e in events if e["node"] == new and e["state"] == "primary" and e["t"] >= downed]
        assert lost and took and became, events
        # The old primary drops its addresses at once (FAULT); the new one takes them after
        # Master_Down_Interval (3 x 1 + 0.8 s at most).
        assert lost[0]["t"] - downed < 0.5, (lost[0], downed)
        assert 1.5 < took[0]["t"] - downed < 5, (took[0], downed)
        assert abs(took[0]["t"] - state_changed) < 0.5, (took[0]["t"], state_changed)
        assert abs(became[0]["t"] - state_changed) < 0.5, (became[0]["t"], state_changed)
        print(f"address event seen {took[0]['t'] - state_changed:+.3f}s and state line {became[0]['t'] - state_changed:+.3f}s "
              "after the state file changed")
    finally:
        wait_lab_ready(lab, timeout=90)


@pytest.mark.lab
async def test_observer_survives_a_node_reboot(lab: LabHandle, tmp_path: Path) -> None:
    wait_lab_ready(lab)
    topo = topology_of(lab)
    node = topo.routers[0].replicas[0].node
    hosted = [r.id for r in topo.routers if any(rep.node == node for rep in r.replicas)]
    path = tmp_path / "journal.jsonl"
    stop = asyncio.Event()
    try:
        with Journal(path) as journal:
            async with SshPool(topo.nodes, connect_timeout=3, connect_retries=0) as ssh:
                obs, task = await _start(ssh, topo, journal, stop)
                try:
                    rebooted = time.time()
                    proc = await asyncio.create_subprocess_exec(
                        *CHAOS, "lab", "reboot", "--name", lab.name, node,
                        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                    )
                    async with asyncio.timeout(60):
                        _, err = await proc.communicate()
                    assert proc.returncode == 0, err.decode()
                    # `chaos lab reboot` returns once the node is back: the loss is in the journal.
                    async with asyncio.timeout(60):
                        while not obs.reachable(node) or any(obs.state(r, node) is None for r in hosted):
                            await asyncio.sleep(0.1)
                    await asyncio.to_thread(wait_lab_ready, lab, 90)
                    await asyncio.sleep(1.5)  # the stream catches the replicas' settled state
                    final = {r: obs.holders(r) for r in hosted}
                finally:
                    stop.set()
                    await task
        assert obs.reconnects[node] >= 1
        for rid in hosted:
            events = [e for e in observed(path, rid) if e["node"] == node]
            gone = [e for e in events if e["t"] >= rebooted and not e["reachable"]]
            assert gone and not gone[0]["holds"], events
            back = [e for e in events if e["t"] > gone[0]["t"] and e["reachable"]]
            assert back, events
            assert len(final[rid]) == 1, final  # the replicas came back and were followed again
        truth = {r["id"]: {rep["node"] for rep in r["replicas"] if rep["state"] == "primary"} for r in lab.status()["routers"]}
        for rid in hosted:
            assert final[rid] == truth[rid], (final, truth)
    finally:
        # A node that does not come back is a failure of the reboot path, not noise: it must fail
        # the test (if the body failed already, Python chains both and pytest shows both).
        wait_lab_ready(lab, timeout=120)


def test_router_addresses_are_gateway_and_floating_ips(lab: LabHandle) -> None:
    topo = topology_of(lab)
    router = topo.routers[0]
    addrs = router_addresses(router)
    assert router.gateway_ip in addrs and all(str(f.address) in addrs for f in router.floating_ips)
    assert router.ha_vip not in addrs
