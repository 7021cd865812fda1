"""ICMP probe: the wire format (pure), then real pings through the lab's routers.

The lab tests ping every floating IP of the shared lab through the real qrouter namespaces
(DNAT to the VM and back) from the vantage namespace, and one failover made by SIGKILLing a
primary's keepalived over SSH, as a fault would.
"""

from __future__ import annotations

import asyncio
import shlex
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from chaos.errors import InfrastructureError
from chaos.model import Topology
from chaos.probes.icmp import (
    SEQ_MODULO,
    IcmpProbe,
    IcmpTarget,
    echo_request,
    fold_checksum,
    icmp_targets,
    ones_complement_sum,
    parse_echo_reply,
    seq_distance,
)
from chaos.journal import Journal, read_journal
from chaos.lab.router import LAYOUT
from tests.conftest import CHAOS_CLI, LabHandle, wait_lab_ready

UNUSED_FIP = "100.64.63.250"  # inside the floating-IP range, never allocated by a small lab


# --------------------------------------------------------------------------- pure
def test_echo_request_checksum_verifies() -> None:
    for seq in (0, 1, 0x7FFF, 0xFFFF):
        packet = echo_request(0xBEEF, seq, b"\x00\x00\x00\x05chaos-l3ha!!")
        # A correct Internet checksum makes the whole message sum to 0xFFFF (folds to 0).
        assert fold_checksum(ones_complement_sum(packet)) == 0
        assert struct.unpack_from("!HH", packet, 4) == (0xBEEF, seq)


def test_incremental_checksum_matches_reference() -> None:
    payload = struct.pack("!I", 7) + b"chaos-l3ha!!"
    base = (8 << 8) + 0x1234 + ones_complement_sum(payload)
    for seq in (0, 1, 255, 256, 0xFFFE, 0xFFFF):
        reference = struct.unpack_from("!H", echo_request(0x1234, seq, payload), 2)[0]
        assert fold_checksum(base + seq) == reference


def test_parse_echo_reply_reads_header_length() -> None:
    icmp = struct.pack("!BBHHHI", 0, 0, 0, 0xABCD, 513, 42) + b"chaos-l3ha!!"
    source = bytes([100, 64, 32, 9])
    for options in (b"", b"\x01\x01\x01\x00"):  # no options, then one 4-byte option word
        ihl = 5 + len(options) // 4
        ip = bytes([0x40 | ihl]) + bytes(11) + source + bytes([100, 64, 0, 1]) + options
        assert parse_echo_reply(ip + icmp) == (source, 0xABCD, 513, 42)
    request = struct.pack("!BBHHHI", 8, 0, 0, 0xABCD, 1, 0)
    assert parse_echo_reply(bytes([0x45]) + bytes(19) + request) is None  # not a reply
    assert parse_echo_reply(b"\x45\x00") is None  # truncated


def test_sequence_distance_wraps() -> None:
    assert seq_distance(0, 0xFFFF) == 1
    assert seq_distance(5, 0xFFFE) == 7
    assert seq_distance(10, 10) == 0


def test_probe_refuses_unsafe_parameters(tmp_path: Path) -> None:
    target = [IcmpTarget(router_id="9f10fcc9-354f-5b2a-bde6-ebff76dfd445", address="100.64.32.1")]
    with Journal(tmp_path / "j") as journal:
        with pytest.raises(ValueError, match="minimum"):
            IcmpProbe(target, journal, interval=0.001)
        with pytest.raises(ValueError, match="sequence number"):
            IcmpProbe(target, journal, interval=0.01, timeout=400)
        with pytest.raises(ValueError):
            IcmpProbe([], journal)
    with pytest.raises(ValueError):
        IcmpTarget(router_id="not-a-uuid", address="100.64.32.1")
    with pytest.raises(ValueError):
        IcmpTarget(router_id="9f10fcc9-354f-5b2a-bde6-ebff76dfd445", address="2001:db8::1")


async def test_missing_vantage_namespace_is_an_infrastructure_error(tmp_path: Path) -> None:
    target = [IcmpTarget(router_id="9f10fcc9-354f-5b2a-bde6-ebff76dfd445", address="100.64.32.1")]
    with Journal(tmp_path / "j") as journal:
        probe = IcmpProbe(target, journal, netns="chaos-no-such-namespace")
        with pytest.raises(InfrastructureError, match="chaos-no-such-namespace"):
            await probe.run(asyncio.Event(), 1.0)
    recorded = [event["kind"] for event in read_journal(tmp_path / "j")]
    assert recorded == [], f"nothing was sent, so nothing may be recorded beyond the header: {recorded}"


# --------------------------------------------------------------------------- helpers
def topology_of(lab: LabHandle) -> Topology:
    return Topology.model_validate_json((lab.dir / "inventory.json").read_text())


def samples(journal_path: Path) -> dict[str, list[dict[str, Any]]]:
    """The ``probe.icmp`` batches of a journal, per address, in journal order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for event in read_journal(journal_path):
        if event["kind"] == "probe.icmp":
            out.setdefault(event["address"], []).append(event)
    return out


def flatten(batches: list[dict[str, Any]]) -> tuple[list[float], list[float | None]]:
    sent: list[float] = []
    rtt: list[float | None] = []
    for batch in batches:
        sent += batch["sent"]
        rtt += batch["rtt"]
    return sent, rtt


def longest_loss(sent: list[float], rtt: list[float | None]) -> tuple[int, float]:
    """(requests, seconds) of the longest run of consecutive losses; seconds from the first lost
    request to the first answered one after it."""
    best = (0, 0.0)
    i = 0
    while i < len(rtt):
        if rtt[i] is not None:
            i += 1
            continue
        j = i
        while j < len(rtt) and rtt[j] is None:
            j += 1
        end = sent[j] if j < len(sent) else sent[-1]
        if j - i > best[0]:
            best = (j - i, end - sent[i])
        i = j
    return best


async def lab_ssh(lab: LabHandle, node: str, command: str, timeout: float = 20.0) -> str:
    proc = await asyncio.create_subprocess_exec(
        *CHAOS_CLI, "lab", "ssh", "--name", lab.name, node, "--", command,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, f"{command!r} on {node}: {err.decode()}"
    return out.decode()


def primary_of(lab: LabHandle, router_id: str) -> str:
    router = next(r for r in lab.status()["routers"] if r["id"] == router_id)
    primaries = [rep["node"] for rep in router["replicas"] if rep["state"] == "primary"]
    assert len(primaries) == 1, router["replicas"]
    return primaries[0]


# --------------------------------------------------------------------------- lab
@pytest.mark.lab
async def test_every_floating_ip_answers_and_unused_one_is_lost(lab: LabHandle, tmp_path: Path) -> None:
    wait_lab_ready(lab)
    topo = topology_of(lab)
    targets = icmp_targets(topo)
    assert len(targets) == len(lab.spec.routers)
    bogus = IcmpTarget(router_id=targets[0].router_id, address=UNUSED_FIP)
    journal_path = tmp_path / "journal.jsonl"
    with Journal(journal_path) as journal:
        # first_seq near the top so every target's sequence number wraps during the run.
        probe = IcmpProbe([*targets, bogus], journal, interval=0.02, timeout=0.5, netns=topo.vantage.netns, first_seq=0xFFD0)
        started = time.monotonic()
        await probe.run(asyncio.Event(), max_duration=2.0)
        took = time.monotonic() - started
    assert took < 2.0 + 0.5 + 0.5, "the probe must stop by itself at its deadline (plus one timeout)"

    stats = probe.stats()
    by_address = samples(journal_path)
    assert set(by_address) == {t.address for t in targets} | {UNUSED_FIP}
    total = 0
    for target in [*targets, bogus]:
        batches = by_address[target.address]
        assert 2 <= len(batches) <= 4, "batches are flushed about once a second"
        expected_seq = 0xFFD0
        for batch in batches:
            assert batch["router_id"] == target.router_id
            assert len(batch["sent"]) == len(batch["rtt"]) > 0
            assert batch["seq"] == expected_seq, "sequence numbers continue across batches, wrapping at 2**16"
            assert batch["ident"] == probe.ident
            expected_seq = (expected_seq + len(batch["sent"])) % SEQ_MODULO
        sent, rtt = flatten(batches)
        total += len(sent)
        assert sent == sorted(sent) and len(set(sent)) == len(sent)
        assert 90 <= len(sent) <= 101, f"{target.address}: {len(sent)} requests in 2 s at 20 ms"
        assert expected_seq < 0xFFD0, "the run went through the wrap-around"
        gaps = [b - a for a, b in zip(sent, sent[1:])]
        assert sorted(gaps)[len(gaps) // 2] == pytest.approx(0.02, abs=0.004), "sends keep the interval"
        if target is bogus:
            assert all(r is None for r in rtt), "an address nobody holds must be recorded as lost"
        else:
            assert all(r is not None for r in rtt), f"{target.address} lost {rtt.count(None)} of {len(rtt)}"
            assert max(rtt) < 0.05 and min(rtt) > 0  # type: ignore[type-var]
    assert stats.sent == total
    assert stats.received == total - len(flatten(by_address[UNUSED_FIP])[0])
    assert stats.detail["stray"] == 0 and stats.detail["late"] == 0
    assert stats.failing == (UNUSED_FIP,)


async def probe_through_failover(
    lab: LabHandle, journal_path: Path, inject: str, undo: str | None
) -> tuple[Topology, str, float, float]:
    """Ping every floating IP while ``inject`` runs on router 1's primary node; returns the
    topology, the victim router id and the wall times just before and after the injection."""
    topo = topology_of(lab)
    victim = topo.routers[0].id
    node = primary_of(lab, victim)
    stop = asyncio.Event()
    times: list[float] = []

    async def fault() -> None:
        await asyncio.sleep(1.0)
        times.append(time.time())
        await lab_ssh(lab, node, inject)
        times.append(time.time())
        try:
            # Until another replica is the one primary, then a little more for the tail.
            deadline = time.monotonic() + 12
            while time.monotonic() < deadline and primary_of_or_none(lab, victim) in (None, node):
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.5)
        finally:
            stop.set()
            if undo is not None:
                await lab_ssh(lab, node, undo)

    with Journal(journal_path) as journal:
        probe = IcmpProbe(icmp_targets(topo), journal, interval=0.02, timeout=0.5, netns=topo.vantage.netns)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(probe.run(stop, max_duration=18.0))
            tg.create_task(fault())
    return topo, victim, times[0], times[1]


def assert_untouched_routers_lost_nothing(topo: Topology, victim: str, by_address: dict[str, list[dict[str, Any]]]) -> None:
    for router in topo.routers:
        if router.id == victim:
            continue
        for fip in router.floating_ips:
            _, rtt = flatten(by_address[str(fip.address)])
            assert rtt and rtt.count(None) == 0, f"{fip.address} of an untouched router lost {rtt.count(None)}"


@pytest.mark.lab
async def test_ha_link_down_failover_loses_about_master_down_interval(lab: LabHandle, tmp_path: Path) -> None:
    """The primary's ha- link goes down: it drops its addresses at once (FAULT) and the backup
    takes over after Master_Down_Interval (3 x 1 + 206/256 = 3.8 s at advert_int 1)."""
    wait_lab_ready(lab)
    router = lab.spec.routers[0]
    node = primary_of(lab, router.id)
    device = next(rep.ha_device for rep in router.replicas if rep.node == node)
    ns = shlex.quote(router.namespace)
    link = f"ip netns exec {ns} ip link set {shlex.quote(device)} "
    journal_path = tmp_path / "journal.jsonl"
    try:
        topo, victim, _, _ = await probe_through_failover(lab, journal_path, link + "down", link + "up")
        by_address = samples(journal_path)
        sent, rtt = flatten(by_address[router.floating_ips[0].address])
        count, seconds = longest_loss(sent, rtt)
        assert 2.0 <= seconds <= 6.0, f"loss run of {seconds:.2f}s ({count} requests)"
        assert rtt.count(None) == count, "one outage, not several"
        assert rtt[-1] is not None, "the router answers again through its new primary"
        assert_untouched_routers_lost_nothing(topo, victim, by_address)
    finally:
        await asyncio.to_thread(wait_lab_ready, lab)


@pytest.mark.lab
async def test_sigkill_failover_loss_ends_when_the_backup_takes_over(lab: LabHandle, tmp_path: Path) -> None:
    """SIGKILL leaves the dead primary's addresses in place, so traffic flows on until the
    agent's respawned keepalived (every 2 s in the shared lab) starts as backup and removes
    them; it stops until the other replica becomes primary, Master_Down_Interval (3.8 s)
    after the last advertisement. So: one loss run, ending about 3-4 s after the kill."""
    wait_lab_ready(lab)
    router = lab.spec.routers[0]
    pid_files = [shlex.quote(str(LAYOUT.keepalived_vrrp_pid(router.id))), shlex.quote(str(LAYOUT.keepalived_pid(router.id)))]
    kill = "kill -KILL " + " ".join(f"$(cat {p})" for p in pid_files)
    journal_path = tmp_path / "journal.jsonl"
    try:
        topo, victim, before, after = await probe_through_failover(lab, journal_path, kill, None)
        by_address = samples(journal_path)
        sent, rtt = flatten(by_address[router.floating_ips[0].address])
        count, seconds = longest_loss(sent, rtt)
        assert count > 0, "the respawned backup removes the addresses before the takeover"
        assert rtt.count(None) == count, "one outage, not several"
        first_lost = sent[rtt.index(None)]
        recovered = first_lost + seconds
        assert first_lost >= before, "nothing is lost before the kill"
        assert 2.5 <= recovered - before and recovered - after <= 6.0, (
            f"loss ended {recovered - before:.2f}s after the kill began (ssh returned {after - before:.2f}s later)"
        )
        assert_untouched_routers_lost_nothing(topo, victim, by_address)
    finally:
        await asyncio.to_thread(wait_lab_ready, lab)


def primary_of_or_none(lab: LabHandle, router_id: str) -> str | None:
    router = next(r for r in lab.status()["routers"] if r["id"] == router_id)
    primaries = [rep["node"] for rep in router["replicas"] if rep["state"] == "primary"]
    return primaries[0] if len(primaries) == 1 else None


def open_sockets() -> int:
    fd_dir = Path("/proc/self/fd")
    count = 0
    for fd in fd_dir.iterdir():
        try:
            count += (fd_dir / fd.name).readlink().name.startswith("socket:")
        except OSError:
            continue
    return count


@pytest.mark.lab
async def test_probe_stops_on_the_stop_event_and_cleans_up_when_cancelled(lab: LabHandle, tmp_path: Path) -> None:
    topo = topology_of(lab)
    targets = icmp_targets(topo)
    sockets_before = open_sockets()
    with Journal(tmp_path / "stop.jsonl") as journal:
        probe = IcmpProbe(targets, journal, interval=0.02, timeout=0.3, netns=topo.vantage.netns)
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.5, stop.set)
        started = time.monotonic()
        await probe.run(stop, max_duration=30.0)
        assert time.monotonic() - started < 0.5 + 0.3 + 0.5, "a set stop event ends the run promptly"
    assert open_sockets() == sockets_before

    journal_path = tmp_path / "cancel.jsonl"
    with Journal(journal_path) as journal:
        probe = IcmpProbe(targets, journal, interval=0.02, timeout=0.3, netns=topo.vantage.netns)
        task = asyncio.create_task(probe.run(asyncio.Event(), max_duration=30.0))
        await asyncio.sleep(1.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert open_sockets() == sockets_before, "the raw socket is closed even when the run is cancelled"
    recorded = samples(journal_path)
    assert set(recorded) == {t.address for t in targets}, "what was decided before the cancel is in the journal"
    for batches in recorded.values():
        sent, rtt = flatten(batches)
        assert len(sent) >= 50 and all(r is not None for r in rtt), "only decided requests are recorded"
