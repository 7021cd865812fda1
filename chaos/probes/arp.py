"""Gratuitous ARPs for the routers' addresses, as the external network sees them.

After a failover the new primary announces the gateway and floating IPs with gratuitous ARPs
(keepalived: a burst at the transition, another ``garp_master_delay`` later); until the
switches and neighbours learn from them, traffic goes to the old primary. The field report
names VIP moves the network does not learn about as an open problem: this observer makes the
announcements visible, with their arrival time.

One AF_PACKET socket (``ETH_P_ARP``) created inside the vantage namespace receives every ARP
frame there; the asyncio loop reads it through a reader callback (no thread, no process per
address). An ARP is gratuitous when sender IP == target IP (request or reply), or when it is
a reply nobody at the vantage point asked for (no request for that address left the vantage
point in the last ``SOLICIT_WINDOW`` seconds). Each one for a router's gateway or floating IP
becomes an ``arp.garp`` event {router_id, address, mac, op, interface, port?} with ``t`` =
arrival (kernel receive to our read: well under a millisecond unless the loop is busy).

``port``: which bridge port the external network learned the router's MAC on. Only the lab
can tell (its fabric bridge's forwarding database, queried once per burst of GARPs with
``bridge fdb show``); on a real cloud it is not observable from the vantage point and is left
out. A lookup that fails leaves ``port`` out; it never fails the observer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from chaos.log import get_logger
from chaos.model import Router, Topology
from chaos.runner.journal import Journal
from chaos.transport.netns import NETNS_RUN_DIR, socket_in_netns

log = get_logger("arp")

ETH_P_ARP = 0x0806
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


class ArpObserver:
    """Records gratuitous ARPs for the routers' addresses at the vantage point."""

    def __init__(
        self,
        topology: Topology,
        routers: Sequence[Router],
        journal: Journal,
        *,
        port_lookup: PortLookup | None = None,
    ) -> None:
        self.netns = topology.vantage.netns
        self.addresses = watched_addresses(routers)
        self.journal = journal
        self.port_lookup = port_lookup
        self.seen = 0
        self.ready = asyncio.Event()  # the socket is open and being read
        self._asked: dict[str, float] = {}  # address -> when the vantage point last asked for it
        self._queue: list[tuple[float, ArpFrame, str]] = []
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
        proto = socket.htons(ETH_P_ARP)
        if self.netns:
            sock = socket_in_netns(self.netns, socket.AF_PACKET, socket.SOCK_RAW, proto)
        else:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, proto)
        sock.setblocking(False)
        return sock

    def _readable(self, sock: socket.socket) -> None:
        for _ in range(MAX_READS_PER_WAKEUP):
            try:
                data, addr = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("arp socket read failed", error=str(exc))
                return
            self._frame(time.time(), data, addr)

    def _frame(self, now: float, data: bytes, addr: Any) -> None:
        frame = parse_arp(data)
        if frame is None:
            return
        ifname, pkttype = str(addr[0]), int(addr[2])
        if pkttype == PACKET_OUTGOING:
            if frame.op == 1:
                self._asked[frame.target_ip] = now
            return
        if frame.sender_ip not in self.addresses:
            return
        unsolicited = frame.op == 2 and now - self._asked.get(frame.sender_ip, -1e9) > SOLICIT_WINDOW
        if frame.announces_itself or unsolicited:
            self.seen += 1
            self._queue.append((now, frame, ifname))
            self._wake.set()

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
        for t, frame, ifname in batch:
            port = ports.get(frame.sender_mac)
            self.journal.write(
                "arp.garp", t=t, router_id=self.addresses[frame.sender_ip], address=frame.sender_ip,
                mac=frame.sender_mac, op="request" if frame.op == 1 else "reply", interface=ifname,
                **({"port": port} if port else {}),
            )


__all__ = ["ArpObserver", "ArpFrame", "parse_arp", "parse_fdb", "lab_port_lookup", "watched_addresses"]
