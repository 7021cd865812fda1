"""Conntrack snapshots in the real lab: the primary tracks a held session; conntrackd replicates it."""

from __future__ import annotations

import asyncio
import subprocess
import socket
from pathlib import Path
from typing import Any

import pytest

from chaos.analysis.metrics import flow_key
from chaos.model import Topology
from chaos.probes.conntrack import ConntrackProbe, parse_conntrack_line, parse_conntrack_tables
from chaos.journal import Journal, read_journal
from chaos.deployment import AgentContext
from chaos.transport import node_commands as nc
from chaos.transport.netns import open_socket
from chaos.transport.ssh import SshPool
from tests.conftest import LabHandle, wait_lab_ready

LINE = ("tcp      6 431999 ESTABLISHED src=100.64.0.1 dst=100.64.32.1 sport=40246 dport=7 src=100.96.0.10 "
        "dst=100.64.0.1 sport=7 dport=40246 [ASSURED] mark=0 use=1")


def test_parse_line_and_tables() -> None:
    flow = parse_conntrack_line(LINE)
    assert flow is not None
    assert (flow["proto"], flow["src"], flow["dst"], flow["sport"], flow["dport"]) == ("tcp", "100.64.0.1", "100.64.32.1", 40246, 7)
    assert flow["state"] == "ESTABLISHED" and flow["reply_src"] == "100.96.0.10" and flow["flags"] == ["ASSURED"]
    assert flow_key(flow) == flow_key(LINE)  # the analysis identifies a dict flow as it does the raw line
    assert parse_conntrack_line("conntrack v1.4.7 (conntrack-tools): 1 flow entries have been shown.") is None
    rid = "d866b64e-0010-591c-b3e2-b9a8c9e9184b"
    other = rid[:-1] + "c"
    tables = parse_conntrack_tables(
        f"R {rid} 1\nK {LINE}\nC {LINE}\nE {rid}\nR {other} 1\nX K 255 exec of \"conntrack\" failed\n"
        f"X C 1 [ERROR] can't connect: is conntrackd running?\nE {other}\nR {rid[:-1]}d 0\nE {rid[:-1]}d\n"
    )
    assert len(tables[rid].kernel or []) == 1 and len(tables[rid].cache or []) == 1
    assert tables[other].kernel is None and "exec of" in (tables[other].kernel_error or "")
    assert tables[other].cache is None and "conntrackd running" in (tables[other].cache_error or "")
    assert not tables[rid[:-1] + "d"].namespace and tables[rid[:-1] + "d"].kernel is None
    with pytest.raises(ValueError):
        nc.conntrack_tables(AgentContext(), ["not-a-uuid"], [7])
    with pytest.raises(ValueError):
        nc.conntrack_tables(AgentContext(), [rid], [0])


def test_a_failing_listing_is_reported_with_its_reason() -> None:
    """The node-side wrapper, run by a real shell: flow lines are tagged, a failure says why."""
    fake = f"sh -c 'echo \"{LINE}\"; echo boom >&2; exit 3'"
    out = subprocess.run(["sh", "-c", nc._CONNTRACK_FN + "\nct K " + fake + "\nct C true"],
                         capture_output=True, text=True, timeout=10).stdout.splitlines()
    assert out == [f"K {LINE}", "X K 3 boom"]


def topology_of(lab: LabHandle) -> Topology:
    return Topology.model_validate_json((lab.dir / "inventory.json").read_text())


def primaries_of(lab: LabHandle, router_id: str) -> list[str]:
    router = next(r for r in lab.status()["routers"] if r["id"] == router_id)
    return [rep["node"] for rep in router["replicas"] if rep["state"] == "primary"]


def primary_of(lab: LabHandle, router_id: str) -> str:
    primaries = primaries_of(lab, router_id)
    assert len(primaries) == 1, primaries
    return primaries[0]


async def echo(sock: socket.socket, text: bytes = b"ping\n", timeout: float = 15.0) -> bytes:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        await loop.sock_sendall(sock, text)
        return await loop.sock_recv(sock, 100)


def snapshots(path: Path, phase: str, table: str = "flows") -> dict[str, list[dict[str, Any]]]:
    """Node -> the probe flows of one table: ``flows`` (the kernel's) or ``cache`` (conntrackd's external cache)."""
    return {e["node"]: e[table] for e in read_journal(path) if e["kind"] == "conntrack.snapshot" and e["phase"] == phase}


def has_flow(flows: list[dict[str, Any]], sport: int, fip: str) -> bool:
    return any(f["sport"] == sport and f["dst"] == fip and f["state"] == "ESTABLISHED" for f in flows)


@pytest.mark.lab
async def test_primary_tracks_the_held_session_and_the_backup_does_not(lab: LabHandle, tmp_path: Path) -> None:
    wait_lab_ready(lab)
    topo = topology_of(lab)
    router = topo.routers[1]
    fip = router.floating_ips[0]
    primary = primary_of(lab, router.id)
    path = tmp_path / "journal.jsonl"
    with Journal(path) as journal:
        async with SshPool(topo.nodes) as ssh:
            sock = await open_socket(topo.vantage.netns, str(fip.address), fip.echo_port or 7, 5)
            try:
                assert await echo(sock) == b"ping\n"
                sport = sock.getsockname()[1]
                await ConntrackProbe(ssh, topo, [router], journal).snapshot("before")
            finally:
                sock.close()
    snaps = snapshots(path, "before")
    assert set(snaps) == {rep.node for rep in router.replicas}
    assert has_flow(snaps[primary], sport, str(fip.address)), snaps
    for node, flows in snaps.items():
        if node != primary:
            assert not has_flow(flows, sport, str(fip.address)), (node, flows)  # no conntrackd here
        assert all(f["proto"] == "tcp" and f["dport"] in (7, topo.vantage.echo_port) for f in flows)


@pytest.mark.lab
async def test_conntrackd_replicates_to_the_backup_and_the_session_survives(make_lab: Any, tmp_path: Path) -> None:
    clab = make_lab("c", conntrackd=True, strict_conntrack=True, routers=1, nodes=2, advert_int=1, boot_delay=2.0)
    wait_lab_ready(clab)
    topo = topology_of(clab)
    router = topo.routers[0]
    fip = router.floating_ips[0]
    old = primary_of(clab, router.id)
    new = next(rep.node for rep in router.replicas if rep.node != old)
    ha = next(rep.ha_device for rep in router.replicas if rep.node == old)
    path = tmp_path / "journal.jsonl"
    with Journal(path) as journal:
        async with SshPool(topo.nodes) as ssh:
            probe = ConntrackProbe(ssh, topo, [router], journal)
            sock = await open_socket(topo.vantage.netns, str(fip.address), fip.echo_port or 7, 5)
            try:
                assert await echo(sock) == b"ping\n"
                sport = sock.getsockname()[1]
                await asyncio.sleep(2)  # conntrackd's FTFW sync
                await probe.snapshot("before")
                await ssh.run(old, nc.ha_link_set(topo.node(old).agent, router.id, ha, nc.LinkAction.DOWN))
                try:
                    async with asyncio.timeout(15):
                        while primaries_of(clab, router.id) != [new]:
                            await asyncio.sleep(0.1)
                    assert await echo(sock, b"after\n") == b"after\n"  # strict tracking, yet it survives
                    await probe.snapshot("after")
                finally:
                    await ssh.run(old, nc.ha_link_set(topo.node(old).agent, router.id, ha, nc.LinkAction.UP))
            finally:
                sock.close()
    before, after = snapshots(path, "before"), snapshots(path, "after")
    cache = snapshots(path, "before", "cache")
    assert has_flow(before[old], sport, str(fip.address)), before
    # Neutron's conntrackd keeps what the primary sends in the backup's external cache, out of
    # its kernel table, until neutron-keepalived-state-change commits it on promotion.
    assert has_flow(cache[new], sport, str(fip.address)), cache  # replicated before the fault
    assert not has_flow(before[new], sport, str(fip.address)), before
    assert has_flow(after[new], sport, str(fip.address)), after  # committed: the new primary has it
    wait_lab_ready(clab, timeout=90)
