"""The vantage point's observers (gratuitous ARPs, TCP resets), against the real lab."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from pathlib import Path

import pytest

from chaos.lab.replica import fabric_peer_name
from chaos.model import Topology
from chaos.probes.arp import ArpObserver, ResetObserver, lab_port_lookup, parse_arp, parse_fdb, parse_tcp_reset, watched_addresses
from chaos.transport.netns import open_socket
from chaos.probes.primary import PrimaryObserver
from chaos.journal import Journal, read_journal
from chaos.transport import node_commands as nc
from chaos.transport.ssh import SshPool
from tests.conftest import LabHandle, wait_lab_ready


def arp_frame(op: int, smac: bytes, sip: str, tmac: bytes, tip: str) -> bytes:
    eth = b"\xff" * 6 + smac + struct.pack("!H", 0x0806)
    return eth + struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + smac + socket.inet_aton(sip) + tmac + socket.inet_aton(tip)


def tcp_frame(flags: int, src: str, dst: str, sport: int, dport: int) -> bytes:
    eth = bytes.fromhex("02000000000a") + bytes.fromhex("fa163e000001") + struct.pack("!H", 0x0800)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0, 64, 6, 0, socket.inet_aton(src), socket.inet_aton(dst))
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 5 << 4, flags, 0, 0, 0)
    return eth + ip + tcp


def test_parse_tcp_reset() -> None:
    rst = parse_tcp_reset(tcp_frame(0x14, "100.64.32.1", "100.64.0.1", 7, 40000))
    assert rst is not None and (rst.src, rst.sport, rst.dst, rst.dport) == ("100.64.32.1", 7, "100.64.0.1", 40000)
    assert rst.mac == "fa:16:3e:00:00:01"
    assert parse_tcp_reset(tcp_frame(0x10, "100.64.32.1", "100.64.0.1", 7, 40000)) is None  # a plain ACK
    assert parse_tcp_reset(tcp_frame(0x04, "100.64.32.1", "100.64.0.1", 7, 1)[:40]) is None  # cut short


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
                        await ssh.run(old, nc.ha_link_set(topo.node(old).agent, router.id, ha, nc.LinkAction.DOWN))
                        async with asyncio.timeout(15):
                            while observer.holders(router.id) != {new}:
                                await asyncio.sleep(0.02)
                        await asyncio.sleep(1.5)  # the GARP burst
                        await ssh.run(old, nc.ha_link_set(topo.node(old).agent, router.id, ha, nc.LinkAction.UP))
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



@pytest.mark.lab
async def test_a_reset_is_traced_to_the_replica_that_forwarded_it(lab: LabHandle, tmp_path: Path) -> None:
    """Port 9 has no listener behind a floating IP: the VM answers a connect with a reset,
    which the primary translates to come from the floating IP. The observer, whose kernel
    filter passes TCP resets only, records it with the router's MAC and the fabric port that
    MAC was learned on: the primary's gateway port."""
    wait_lab_ready(lab)
    topo = Topology.model_validate_json((lab.dir / "inventory.json").read_text())
    router = topo.routers[1]
    fip = str(router.floating_ips[0].address)
    primary = next(r["node"] for r in lab.status()["routers"] if r["id"] == router.id
                   for r in r["replicas"] if r["state"] == "primary")
    path = tmp_path / "journal.jsonl"
    stop = asyncio.Event()
    with Journal(path) as journal:
        resets = ResetObserver(topo, [router], journal, port_lookup=lab_port_lookup(topo))
        async with asyncio.TaskGroup() as tg:
            tg.create_task(resets.run(stop, 30))
            async with asyncio.timeout(10):
                await resets.ready.wait()
            for _ in range(3):
                with pytest.raises(ConnectionRefusedError):
                    await open_socket(topo.vantage.netns, fip, 9, 5)
            await asyncio.sleep(0.3)
            stop.set()
    seen = [e for e in read_journal(path) if e["kind"] == "tcp.reset_seen"]
    assert len(seen) == 3 and resets.seen == 3, seen
    spec = next(r for r in lab.spec.routers if r.id == router.id)
    node = next(n for n in lab.spec.nodes if n.name == primary)
    for e in seen:
        assert (e["router_id"], e["src"], e["sport"]) == (router.id, fip, 9)
        assert e["mac"] == spec.gateway_mac and e["port"] == fabric_peer_name("g", node, spec.gateway_port_id)
