"""The GARP observer at the vantage point, against a real failover in the lab."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from pathlib import Path

import pytest

from chaos.lab.replica import fabric_peer_name
from chaos.model import Topology
from chaos.probes.arp import ArpObserver, lab_port_lookup, parse_arp, parse_fdb, watched_addresses
from chaos.probes.primary import PrimaryObserver
from chaos.runner.journal import Journal, read_journal
from chaos.transport import node_commands as nc
from chaos.transport.ssh import SshPool
from tests.conftest import LabHandle, wait_lab_ready


def arp_frame(op: int, smac: bytes, sip: str, tmac: bytes, tip: str) -> bytes:
    eth = b"\xff" * 6 + smac + struct.pack("!H", 0x0806)
    return eth + struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + smac + socket.inet_aton(sip) + tmac + socket.inet_aton(tip)


def test_parse_arp_and_fdb() -> None:
    mac = bytes.fromhex("fa163e9f4caf")
    garp = parse_arp(arp_frame(1, mac, "100.64.1.1", b"\xff" * 6, "100.64.1.1"))
    assert garp is not None and garp.announces_itself and garp.sender_mac == "fa:16:3e:9f:4c:af"
    who = parse_arp(arp_frame(1, mac, "100.64.0.1", b"\0" * 6, "100.64.1.1"))
    assert who is not None and not who.announces_itself
    assert parse_arp(b"\0" * 41) is None
    fdb = parse_fdb("fa:16:3e:9f:4c:af dev g2-ef5e0db5 master br-ext \n33:33:00:00:00:01 dev g2-ef5e0db5 self permanent\n")
    assert fdb == {"fa:16:3e:9f:4c:af": "g2-ef5e0db5"}


@pytest.mark.lab
async def test_garps_follow_a_failover(lab: LabHandle, tmp_path: Path) -> None:
    wait_lab_ready(lab)
    topo = Topology.model_validate_json((lab.dir / "inventory.json").read_text())
    router = topo.routers[2]
    path = tmp_path / "journal.jsonl"
    stop = asyncio.Event()
    try:
        with Journal(path) as journal:
            async with SshPool(topo.nodes) as ssh:
                observer = PrimaryObserver(ssh, topo, [router], journal)
                arp = ArpObserver(topo, [router], journal, port_lookup=lab_port_lookup(topo))
                async with asyncio.TaskGroup() as tg:
                    tasks = [tg.create_task(observer.run(stop, 60)), tg.create_task(arp.run(stop, 60))]
                    try:
                        async with asyncio.timeout(20):
                            await observer.ready.wait()
                            await arp.ready.wait()
                        (old,) = observer.holders(router.id)
                        new = next(r.node for r in router.replicas if r.node != old)
                        ha = next(r.ha_device for r in router.replicas if r.node == old)
                        downed = time.time()
                        await ssh.run(old, nc.ha_link_set(router.id, ha, nc.LinkAction.DOWN))
                        async with asyncio.timeout(15):
                            while observer.holders(router.id) != {new}:
                                await asyncio.sleep(0.02)
                        await asyncio.sleep(1.5)  # the GARP burst
                        await ssh.run(old, nc.ha_link_set(router.id, ha, nc.LinkAction.UP))
                    finally:
                        stop.set()
                del tasks
        events = list(read_journal(path))
        took = next(e["t"] for e in events if e["kind"] == "observe.replica" and e["node"] == new and e["holds"] and e["t"] > downed)
        garps = [e for e in events if e["kind"] == "arp.garp" and e["t"] > downed]
        wanted = set(watched_addresses([router]))
        assert {g["address"] for g in garps} == wanted, garps  # gateway and every floating IP announced
        assert all(g["router_id"] == router.id for g in garps)
        delay = garps[0]["t"] - took
        assert -0.5 < delay < 1.0, delay  # announced as the addresses arrive (negative: before we saw them)
        ports = {g.get("port") for g in garps}
        spec = next(r for r in lab.spec.routers if r.id == router.id)
        new_node = next(n for n in lab.spec.nodes if n.name == new)
        assert ports == {fabric_peer_name("g", new_node, spec.gateway_port_id)}, ports  # the new primary's port
        print(f"{len(garps)} GARPs, first {delay:+.3f}s after the observer saw the takeover, learned on {ports}")
    finally:
        wait_lab_ready(lab, timeout=90)

