"""What the external network carries at the vantage point: gratuitous ARPs and TCP resets.

After a failover the new primary announces the gateway and floating IPs with gratuitous ARPs
(keepalived: a burst at the transition, another ``garp_master_delay`` later); until the
switches and neighbours learn from them, traffic goes to the old primary. The field report
names VIP moves the network does not learn about as an open problem: ``ArpObserver`` makes the
announcements visible, with their arrival time. And when a held TCP session is reset, the
question is who sent the reset: ``ResetObserver`` records every TCP reset that reaches the
vantage point from a router's floating IP or gateway, with the MAC it came from.

Each observer reads one AF_PACKET socket created inside the vantage namespace, through a reader
callback on the asyncio loop (no thread, no process per address); the reset socket carries a
kernel filter that passes TCP resets only, so the probes' own traffic never wakes it.

ARP: a frame is gratuitous when sender IP == target IP (request or reply), or when it is a
reply nobody at the vantage point asked for (no request for that address left the vantage
point in the last ``SOLICIT_WINDOW`` seconds). Each one for a router's gateway or floating IP
becomes an ``arp.garp`` event {router_id, address, mac, op, interface, port?}; each reset an
``tcp.reset_seen`` event {router_id, src, sport, dst, dport, mac, interface, port?}; ``t`` =
arrival (kernel receive to our read: well under a millisecond unless the loop is busy).

``port``: which bridge port the external network learned the sender's MAC on, which tells the
replica apart where every replica of a router shares its qg- MAC. Only the lab can tell (its
fabric bridge's forwarding database, queried once per burst with ``bridge fdb show``); on a
real cloud it is not observable from the vantage point and is left out. A lookup that fails
leaves ``port`` out; it never fails the observer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import re
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from chaos.log import get_logger
from chaos.model import Router, Topology
from chaos.probes.base import ProbeKind, ProbeRun, ProbeRunner
from chaos.journal import Journal
from chaos.transport.netns import NETNS_RUN_DIR, socket_in_netns

log = get_logger("arp")

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
IPPROTO_TCP = 6
TCP_RST = 0x04
SO_ATTACH_FILTER = 26
PACKET_OUTGOING = 4
SOLICIT_WINDOW = 2.0  # a reply this soon after our own request for the address is an answer
FDB_TIMEOUT = 2.0
MAX_READS_PER_WAKEUP = 256
_FDB_RE = re.compile(r"^([0-9a-f]{2}(?::[0-9a-f]{2}){5}) dev (\S+)")
_NETNS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

PortLookup = Callable[[], Awaitable[dict[str, str]]]


class ArpFrame(BaseModel):
    """The fields of an Ethernet ARP frame that matter here."""

    model_config = ConfigDict(frozen=True)

    op: int  # 1 request, 2 reply
    sender_mac: str
    sender_ip: str
    target_mac: str
    target_ip: str

    @property
    def announces_itself(self) -> bool:
        return self.sender_ip == self.target_ip


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def parse_arp(frame: bytes) -> ArpFrame | None:
    """An IPv4-over-Ethernet ARP frame (with its 14-byte Ethernet header), else None."""
    if len(frame) < 42 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_ARP:
        return None
    htype, ptype, hlen, plen, op = struct.unpack_from("!HHBBH", frame, 14)
    if htype != 1 or ptype != 0x0800 or hlen != 6 or plen != 4 or op not in (1, 2):
        return None
    return ArpFrame(
        op=op,
        sender_mac=_mac(frame[22:28]),
        sender_ip=socket.inet_ntoa(frame[28:32]),
        target_mac=_mac(frame[32:38]),
        target_ip=socket.inet_ntoa(frame[38:42]),
    )


def watched_addresses(routers: Sequence[Router]) -> dict[str, str]:
    """IPv4 address -> router id: every router's gateway IP and floating IPs."""
    out: dict[str, str] = {}
    for router in routers:
        if router.gateway_ip:
            out[str(ipaddress.ip_address(router.gateway_ip))] = router.id
        for fip in router.floating_ips:
            if isinstance(fip.address, ipaddress.IPv4Address):
                out[str(fip.address)] = router.id
    return out


def parse_fdb(output: str) -> dict[str, str]:
    """MAC -> bridge port of the learned (not permanent, not local) entries of ``bridge fdb show``."""
    table: dict[str, str] = {}
    for line in output.splitlines():
        match = _FDB_RE.match(line.strip())
        if match and "permanent" not in line and "self" not in line.split():
            table[match.group(1)] = match.group(2)
    return table


def lab_port_lookup(topology: Topology, bridge: str = "br-ext") -> PortLookup | None:
    """For a lab topology: a lookup of the external bridge's FDB in the lab's fabric namespace.

    The lab names its fabric namespace ``<lab>-fabric``; a topology from anywhere else (or a
    lab whose fabric is not there) gets None, and GARPs are journaled without a port.
    """
    source = topology.source
    if not source.startswith("lab:"):
        return None
    fabric = f"{source[4:]}-fabric"
    if not _NETNS_RE.match(fabric) or not re.match(r"^[A-Za-z0-9_-]{1,15}$", bridge) or not (NETNS_RUN_DIR / fabric).exists():
        return None
    argv = ["ip", "netns", "exec", fabric, "bridge", "fdb", "show", "br", bridge]

    async def lookup() -> dict[str, str]:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, stdin=asyncio.subprocess.DEVNULL
        )
        try:
            async with asyncio.timeout(FDB_TIMEOUT):
                out, _ = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        return parse_fdb(out.decode(errors="replace"))

    return lookup


class _VantageCapture:
    """One AF_PACKET socket in the vantage namespace, read on the loop; what it keeps is queued
    and journaled in bursts (one FDB lookup per burst). Subclasses say what to open and keep."""

    ethertype: int = ETH_P_ARP
    bpf: bytes | None = None  # a classic BPF program attached to the socket

    def __init__(self, topology: Topology, routers: Sequence[Router], journal: Journal, *,
                 port_lookup: PortLookup | None = None) -> None:
        self.netns = topology.vantage.netns
        self.addresses = watched_addresses(routers)
        self.journal = journal
        self.port_lookup = port_lookup
        self.seen = 0
        self.ready = asyncio.Event()  # the socket is open and being read
        self._queue: list[tuple[float, Any, str]] = []
        self._wake = asyncio.Event()

    async def run(self, stop: asyncio.Event, max_duration: float) -> None:
        """Listen until ``stop`` or ``max_duration``; the socket is closed on the way out."""
        if not self.addresses:
            self.ready.set()
            return
        sock = await asyncio.to_thread(self._open)
        loop = asyncio.get_running_loop()
        try:
            loop.add_reader(sock.fileno(), self._readable, sock)
            self.ready.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max_duration):
                    await self._writer(stop)
        finally:
            with contextlib.suppress(Exception):
                loop.remove_reader(sock.fileno())
            sock.close()
            await self._flush()  # what arrived before the end is still journaled

    def _open(self) -> socket.socket:
        proto = socket.htons(self.ethertype)
        if self.netns:
            sock = socket_in_netns(self.netns, socket.AF_PACKET, socket.SOCK_RAW, proto)
        else:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, proto)
        if self.bpf is not None:
            program = (ctypes.c_char * len(self.bpf)).from_buffer_copy(self.bpf)
            fprog = struct.pack("HL", len(self.bpf) // 8, ctypes.addressof(program))
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        sock.setblocking(False)
        return sock

    def _readable(self, sock: socket.socket) -> None:
        for _ in range(MAX_READS_PER_WAKEUP):
            try:
                data, addr = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("vantage capture read failed", error=str(exc))
                return
            item = self._frame(time.time(), data, addr)
            if item is not None:
                self.seen += 1
                self._queue.append(item)
                self._wake.set()

    def _frame(self, now: float, data: bytes, addr: Any) -> tuple[float, Any, str] | None:
        raise NotImplementedError

    def _journal(self, t: float, item: Any, ifname: str, port: str | None) -> None:
        raise NotImplementedError

    def _mac_of(self, item: Any) -> str:
        raise NotImplementedError

    async def _writer(self, stop: asyncio.Event) -> None:
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                waker = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait({stopper, waker}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waker.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await waker
                await self._flush()
        finally:
            stopper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopper

    async def _flush(self) -> None:
        """Journal what is queued; one FDB lookup serves the whole burst."""
        self._wake.clear()
        if not self._queue:
            return
        ports: dict[str, str] = {}
        if self.port_lookup is not None:
            try:
                ports = await self.port_lookup()
            except Exception as exc:  # best effort, lab only
                log.debug("fdb lookup failed", error=str(exc))
        batch, self._queue = self._queue, []
        for t, item, ifname in batch:
            self._journal(t, item, ifname, ports.get(self._mac_of(item)))


class ArpObserver(_VantageCapture):
    """Records gratuitous ARPs for the routers' addresses at the vantage point."""

    ethertype = ETH_P_ARP

    def __init__(self, topology: Topology, routers: Sequence[Router], journal: Journal, *,
                 port_lookup: PortLookup | None = None) -> None:
        super().__init__(topology, routers, journal, port_lookup=port_lookup)
        self._asked: dict[str, float] = {}  # address -> when the vantage point last asked for it

    def _frame(self, now: float, data: bytes, addr: Any) -> tuple[float, Any, str] | None:
        frame = parse_arp(data)
        if frame is None:
            return None
        ifname, pkttype = str(addr[0]), int(addr[2])
        if pkttype == PACKET_OUTGOING:
            if frame.op == 1:
                self._asked[frame.target_ip] = now
            return None
        if frame.sender_ip not in self.addresses:
            return None
        unsolicited = frame.op == 2 and now - self._asked.get(frame.sender_ip, -1e9) > SOLICIT_WINDOW
        return (now, frame, ifname) if frame.announces_itself or unsolicited else None

    def _mac_of(self, item: Any) -> str:
        return str(item.sender_mac)

    def _journal(self, t: float, item: Any, ifname: str, port: str | None) -> None:
        self.journal.write(
            "arp.garp", t=t, router_id=self.addresses[item.sender_ip], address=item.sender_ip,
            mac=item.sender_mac, op="request" if item.op == 1 else "reply", interface=ifname,
            **({"port": port} if port else {}),
        )


class TcpReset(BaseModel):
    """A TCP segment with RST set, as it arrived: who sent it, for which connection."""

    model_config = ConfigDict(frozen=True)

    mac: str
    src: str
    dst: str
    sport: int
    dport: int


def parse_tcp_reset(frame: bytes) -> TcpReset | None:
    """An Ethernet/IPv4/TCP frame with RST set, else None."""
    if len(frame) < 34 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_IP:
        return None
    ihl = (frame[14] & 0x0F) * 4
    if frame[14] >> 4 != 4 or frame[23] != IPPROTO_TCP or ihl < 20 or len(frame) < 14 + ihl + 14:
        return None
    tcp = 14 + ihl
    if not frame[tcp + 13] & TCP_RST:
        return None
    sport, dport = struct.unpack_from("!HH", frame, tcp)
    return TcpReset(mac=_mac(frame[6:12]), src=socket.inet_ntoa(frame[26:30]), dst=socket.inet_ntoa(frame[30:34]),
                    sport=sport, dport=dport)


def _bpf(*insns: tuple[int, int, int, int]) -> bytes:
    return b"".join(struct.pack("HBBI", code, jt, jf, k) for code, jt, jf, k in insns)


# Keeps IPv4 TCP segments with RST set, first fragments only (classic BPF on Ethernet frames):
#   ldh [12]; jeq 0x800 else drop; ldb [23]; jeq 6 else drop; ldh [20]; jset 0x1fff (a later
#   fragment) then drop; ldxb 4*([14]&0xf); ldb [x+27] (TCP flags); jset 0x04 then keep else drop.
_RST_FILTER = _bpf(
    (0x28, 0, 0, 12), (0x15, 0, 8, ETH_P_IP),
    (0x30, 0, 0, 23), (0x15, 0, 6, IPPROTO_TCP),
    (0x28, 0, 0, 20), (0x45, 4, 0, 0x1FFF),
    (0xB1, 0, 0, 14), (0x50, 0, 0, 27), (0x45, 0, 1, TCP_RST),
    (0x06, 0, 0, 0x40000), (0x06, 0, 0, 0),
)


class ResetObserver(_VantageCapture):
    """Records the TCP resets that reach the vantage point from the routers' addresses (the
    floating IPs of inbound sessions, the SNAT address of outbound ones): a reset the probes
    see says a session was broken; this says by whom."""

    ethertype = ETH_P_IP
    bpf = _RST_FILTER

    def _frame(self, now: float, data: bytes, addr: Any) -> tuple[float, Any, str] | None:
        if int(addr[2]) == PACKET_OUTGOING:
            return None
        reset = parse_tcp_reset(data)
        if reset is None or reset.src not in self.addresses:
            return None
        return now, reset, str(addr[0])

    def _mac_of(self, item: Any) -> str:
        return str(item.mac)

    def _journal(self, t: float, item: Any, ifname: str, port: str | None) -> None:
        self.journal.write(
            "tcp.reset_seen", t=t, router_id=self.addresses[item.src], src=item.src, sport=item.sport,
            dst=item.dst, dport=item.dport, mac=item.mac, interface=ifname, **({"port": port} if port else {}),
        )


# --------------------------------------------------------------------------- the probe
class ArpKind(ProbeKind):
    """``probes.arp``: the gratuitous ARPs of the routers' addresses on the external network,
    heard from the vantage namespace (the lab's; a real cloud has none). No settings."""

    name: ClassVar[str] = "arp"
    order: ClassVar[int] = 60

    @classmethod
    def build(cls, settings: Any, run: ProbeRun) -> list[ProbeRunner]:
        if run.topology.vantage.netns is None:
            run.skipped(cls.name, "the GARP watcher listens on the external network from the vantage namespace "
                                  "(vantage.netns), which this target does not have")
            return []
        return [ArpObserver(run.topology, run.routers, run.journal, port_lookup=lab_port_lookup(run.topology))]


__all__ = ["ArpKind", "ArpObserver", "ArpFrame", "ResetObserver", "TcpReset", "parse_arp", "parse_fdb", "parse_tcp_reset",
           "lab_port_lookup", "watched_addresses"]
