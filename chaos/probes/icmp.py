"""ICMP echo to every floating IP of the target routers, from one raw socket.

The probe must stay cheap at hundreds of floating IPs pinged every 10-20 ms (tens of
thousands of requests a second), so there is no process or task per address: ONE raw ICMP
socket, created inside the vantage namespace, serves every target. One scheduler sends, with
each target's slot spread evenly over the interval so the requests leave as a steady stream
rather than a burst per round; replies are read by a reader callback on the event loop. A
kernel socket filter (classic BPF) passes only echo replies carrying this probe's ICMP id, so
other pingers in the same namespace (fping, a second probe) cost nothing here.

Replies are matched by ICMP id (one per probe instance), the target's index carried in the
payload, the source address and the target's 16-bit sequence number. Sequence numbers wrap;
the probe refuses a timeout so long that a sequence number could be reused while its previous
request is still waiting, so a reply always matches the request that caused it.

What is recorded is raw fact: per request its send time (``time.time()``) and its round-trip
time, or null when no reply came within ``timeout``. Each target's resolved requests are
flushed about once a second as a ``probe.icmp`` event (and at the end); conclusions such as
outage length are for the analysis to draw. Beyond the journal's documented fields
(router_id, address, sent, rtt) a batch carries ``seq`` (sequence number of its first request;
the others follow consecutively, modulo 2**16), ``interval``, ``timeout``, ``ident`` (the ICMP
id), and ``send_errors`` ([[position in the batch, errno name], ...]) when the kernel refused
a send: such a request is recorded with a null rtt, as an operator would see it.
"""

from __future__ import annotations

import asyncio
import bisect
import ctypes
import errno
import ipaddress
import itertools
import random
import socket
import struct
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from chaos.errors import InfrastructureError
from chaos.model import RouterId, Topology
from chaos.experiment.params import Duration, Params
from chaos.probes.base import ProbeKind, ProbeRun, ProbeRunner, ProbeStats, RunBound
from chaos.journal import Journal
from chaos.transport.netns import socket_in_netns

ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0
SEQ_MODULO = 1 << 16
PAYLOAD_TAG = b"chaos-l3ha!!"  # 12 bytes after the 4-byte target index: 16 bytes of payload
MIN_INTERVAL = 0.01
RCVBUF_BYTES = 4 << 20
LATENESS_BIN = 25e-6  # send-lateness histogram resolution (seconds)
LATENESS_BINS = 4000  # up to 100 ms; later sends land in the last bin
MAX_READS_PER_WAKEUP = 2048  # bound the reader callback so sending is never starved
SO_ATTACH_FILTER = 26
_ECHO_HEADER = struct.Struct("!BBHHH")
_PER_BIN = 1 / LATENESS_BIN

_used_ids: set[int] = set()


class IcmpTarget(BaseModel):
    """One floating IP to ping, and the router it belongs to."""

    model_config = ConfigDict(frozen=True)

    router_id: RouterId
    address: str

    @field_validator("address")
    @classmethod
    def _ipv4(cls, value: str) -> str:
        try:
            return str(ipaddress.IPv4Address(value))
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an IPv4 address (the probe's raw socket is IPv4)") from exc


def icmp_targets(topology: Topology, router_ids: Iterable[str] | None = None) -> list[IcmpTarget]:
    """Every IPv4 floating IP of the given routers (all routers when None)."""
    wanted = None if router_ids is None else set(router_ids)
    return [
        IcmpTarget(router_id=router.id, address=str(fip.address))
        for router in topology.routers
        if wanted is None or router.id in wanted
        for fip in router.floating_ips
        if isinstance(fip.address, ipaddress.IPv4Address)
    ]


# --------------------------------------------------------------------------- wire format
def ones_complement_sum(data: bytes) -> int:
    """Sum of big-endian 16-bit words, unfolded (a trailing odd byte is padded with zero)."""
    if len(data) % 2:
        data += b"\0"
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def fold_checksum(total: int) -> int:
    """The Internet checksum (RFC 1071) of words whose plain sum is ``total``."""
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, payload: bytes) -> bytes:
    """A complete ICMP echo request (reference form; the probe's send path is incremental)."""
    header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    csum = fold_checksum(ones_complement_sum(header + payload))
    return struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, csum, ident, seq) + payload


def parse_echo_reply(packet: bytes) -> tuple[bytes, int, int, int] | None:
    """(source address, ICMP id, sequence, target index) of an IPv4 echo reply, else None.

    A raw IPv4 socket delivers the IP header too; its length is read from the header, not
    assumed, because options may be present.
    """
    if len(packet) < 20:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + 12 or packet[ihl] != ICMP_ECHO_REPLY:
        return None
    ident, seq, index = struct.unpack_from("!HHI", packet, ihl + 4)
    return packet[12:16], ident, seq, index


def seq_distance(newer: int, older: int) -> int:
    """How many requests ``newer`` is after ``older`` on the 16-bit sequence circle."""
    return (newer - older) % SEQ_MODULO


def _reply_filter(ident: int) -> bytes:
    """Classic BPF: accept an IPv4 ICMP echo reply whose id is ``ident``; drop everything else."""
    ins = [
        (0xB1, 0, 0, 0),  # ldxb 4*([0]&0xf)      X = IP header length
        (0x50, 0, 0, 0),  # ldb [x+0]             ICMP type
        (0x15, 0, 3, ICMP_ECHO_REPLY),  # jeq #0 ? next : drop
        (0x48, 0, 0, 4),  # ldh [x+4]             ICMP id
        (0x15, 0, 1, ident),  # jeq #ident ? accept : drop
        (0x06, 0, 0, 0xFFFF),  # ret #65535 (accept)
        (0x06, 0, 0, 0),  # ret #0 (drop)
    ]
    return b"".join(struct.pack("HBBI", *i) for i in ins)


def attach_reply_filter(sock: socket.socket, ident: int) -> bool:
    """Let the kernel drop foreign ICMP before it wakes us; False if the kernel refused it."""
    program = _reply_filter(ident)
    buf = ctypes.create_string_buffer(program)
    fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(buf))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError:
        return False
    return True


def _new_ident() -> int:
    """An ICMP id no other probe of this process uses, so concurrent probes never share replies."""
    for _ in range(1000):
        ident = random.getrandbits(16)
        if ident not in _used_ids:
            _used_ids.add(ident)
            return ident
    raise RuntimeError("no free ICMP id: too many ICMP probes in this process")


# --------------------------------------------------------------------------- per-target state
class _Request:
    __slots__ = ("seq", "sent", "sent_mono", "rtt", "error")

    def __init__(self, seq: int, sent: float, sent_mono: float) -> None:
        self.seq = seq
        self.sent = sent
        self.sent_mono = sent_mono
        self.rtt: float | None = None
        self.error: str | None = None


class _Target:
    """A target's sequence counter, its requests awaiting a verdict, and its live counters."""

    __slots__ = (
        "index", "router_id", "address", "packed", "sockaddr", "base_sum", "payload", "seq",
        "waiting", "requests", "sent", "received", "lost", "last_reply_mono", "first_sent_mono",
    )

    def __init__(self, index: int, target: IcmpTarget, ident: int) -> None:
        self.index = index
        self.router_id = target.router_id
        self.address = target.address
        self.packed = socket.inet_aton(target.address)
        self.sockaddr = (target.address, 0)
        self.payload = struct.pack("!I", index) + PAYLOAD_TAG
        # Everything of the checksum but the sequence number, summed once.
        self.base_sum = (ICMP_ECHO_REQUEST << 8) + ident + ones_complement_sum(self.payload)
        self.seq = random.getrandbits(16)  # like ping: do not start every run at 0
        self.waiting: dict[int, _Request] = {}
        self.requests: deque[_Request] = deque()  # in send order, until flushed
        self.sent = 0
        self.received = 0
        self.lost = 0
        self.last_reply_mono = 0.0
        self.first_sent_mono = 0.0


# --------------------------------------------------------------------------- the probe
class IcmpProbe:
    """Pings every target every ``interval`` seconds from one raw socket; see the module docstring."""

    kind = "probe.icmp"

    def __init__(
        self,
        targets: Sequence[IcmpTarget],
        journal: Journal,
        *,
        interval: float = 0.02,
        timeout: float = 1.0,
        netns: str | None = None,
        batch_seconds: float = 1.0,
        first_seq: int | None = None,
    ) -> None:
        """``first_seq`` fixes every target's first sequence number (default: random per target)."""
        if not targets:
            raise ValueError("IcmpProbe needs at least one target")
        if interval < MIN_INTERVAL:
            raise ValueError(f"interval {interval}s is below the minimum of {MIN_INTERVAL}s per target")
        if timeout <= 0 or batch_seconds <= 0:
            raise ValueError("timeout and batch_seconds must be positive")
        if timeout >= interval * SEQ_MODULO / 2:
            raise ValueError(
                f"timeout {timeout}s would let a 16-bit sequence number be reused while its request still waits "
                f"(at most {interval * SEQ_MODULO / 2:.0f}s at interval {interval}s)"
            )
        self.journal = journal
        self.interval = interval
        self.timeout = timeout
        self.netns = netns
        self.batch_seconds = batch_seconds
        self.ident = _new_ident()
        self._targets = [_Target(i, t, self.ident) for i, t in enumerate(targets)]
        if first_seq is not None:
            for target in self._targets:
                target.seq = first_seq & 0xFFFF
        self._sock: socket.socket | None = None
        self._skipped = 0
        self._stray = 0
        self._late = 0
        self._send_errors = 0
        self._lateness = [0] * LATENESS_BINS
        self._filtered = False
        self._sending_since = 0.0
        self._sending_until: float | None = None

    # ------------------------------------------------------------------ run
    async def run(self, stop: asyncio.Event, max_duration: float) -> None:
        """Ping until ``stop`` is set or ``max_duration`` has passed, then collect the last replies.

        Sending ends at the bound; the probe then waits at most ``timeout`` for replies still
        on their way, so it returns within ``max_duration + timeout``. If it is cancelled, the
        requests already decided are still flushed; those still waiting are left out rather
        than recorded as lost, because nobody knows yet.
        """
        bound = RunBound(stop, max_duration)
        loop = asyncio.get_running_loop()
        self._sock = self._open_socket()
        fd = self._sock.fileno()
        loop.add_reader(fd, self._on_readable)
        try:
            self._sending_since = time.monotonic()
            try:
                await self._send_loop(bound)
            finally:
                self._sending_until = time.monotonic()
            await self._drain()
            self._flush(final=True)
        finally:
            loop.remove_reader(fd)
            self._sock.close()
            self._flush(final=False)  # no-op after a normal end; keeps what was decided on cancel
            _used_ids.discard(self.ident)

    def _open_socket(self) -> socket.socket:
        kind = (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        try:
            sock = socket_in_netns(self.netns, *kind) if self.netns else socket.socket(*kind)
        except OSError as exc:
            where = f"namespace {self.netns}" if self.netns else "this namespace"
            raise InfrastructureError(
                f"cannot open the ICMP probe's raw socket in {where}: {exc}",
                hint="the probe needs root (CAP_NET_RAW) and the vantage namespace must exist",
            ) from exc
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, RCVBUF_BYTES)
            self._filtered = attach_reply_filter(sock, self.ident)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _send_loop(self, bound: RunBound) -> None:
        """The one scheduler: target j of round k is due at start + k*interval + j*interval/n."""
        targets = self._targets
        n = len(targets)
        step = self.interval / n
        interval = self.interval
        start = time.monotonic()
        # Flushing is spread too: a few targets per wake-up, each about every batch_seconds,
        # so journal writing never holds the loop for a whole round of targets at once.
        flush_rate = n / self.batch_seconds
        flush_credit = 0.0
        flush_pos = 0
        last = start
        k = j = 0
        while not bound.over():
            now = time.monotonic()
            due = start + k * interval + j * step
            while due <= now:
                if now - due > interval:
                    # A whole round behind (the loop was blocked): skip rather than burst.
                    self._skipped += 1
                else:
                    self._send(targets[j], due)
                j += 1
                if j == n:
                    j = 0
                    k += 1
                due = start + k * interval + j * step
            flush_credit = min(flush_credit + (now - last) * flush_rate, n)
            last = now
            horizon = now - self.timeout
            while flush_credit >= 1:
                self._flush_target(targets[flush_pos], horizon, final=False)
                flush_pos = (flush_pos + 1) % n
                flush_credit -= 1
            # Capped so that a set stop event is noticed quickly even at long intervals.
            await asyncio.sleep(min(max(0.0, due - time.monotonic()), 0.05))

    def _send(self, target: _Target, due: float) -> None:
        """One echo request; the hot path, so the checksum is the precomputed sum plus seq."""
        seq = target.seq
        target.seq = (seq + 1) & 0xFFFF
        total = target.base_sum + seq
        total = (total & 0xFFFF) + (total >> 16)
        total = (total & 0xFFFF) + (total >> 16)
        packet = _ECHO_HEADER.pack(ICMP_ECHO_REQUEST, 0, ~total & 0xFFFF, self.ident, seq) + target.payload
        sent_mono = time.monotonic()
        request = _Request(seq, time.time(), sent_mono)
        try:
            self._sock.sendto(packet, target.sockaddr)  # type: ignore[union-attr]
        except OSError as exc:
            # Recorded as a request without reply (that is what the operator would see),
            # with the reason kept beside it.
            request.error = errno.errorcode.get(exc.errno or 0, str(exc))
            self._send_errors += 1
        else:
            # Replaces an entry of the same seq only if one were still waiting 2**16 requests
            # later, which the timeout check forbids; it would then just be judged lost.
            target.waiting[seq] = request
        target.requests.append(request)
        target.sent += 1
        if not target.first_sent_mono:
            target.first_sent_mono = sent_mono
        late = int((sent_mono - due) * _PER_BIN)
        self._lateness[late if late < LATENESS_BINS else LATENESS_BINS - 1] += 1

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        targets = self._targets
        ident = self.ident
        for _ in range(MAX_READS_PER_WAKEUP):
            try:
                packet = sock.recv(256)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. a queued ICMP error on the raw socket; the next read goes on
            now = time.monotonic()
            reply = parse_echo_reply(packet)
            if reply is None:
                continue
            source, rid, seq, index = reply
            if rid != ident:
                continue
            if index >= len(targets) or targets[index].packed != source:
                self._stray += 1
                continue
            target = targets[index]
            request = target.waiting.pop(seq, None)
            if request is None:
                self._stray += 1  # duplicate, or a reply to a request already judged lost
                continue
            rtt = now - request.sent_mono
            if rtt > self.timeout:
                self._late += 1  # arrived, but after the probe's timeout: counts as lost
                continue
            request.rtt = rtt
            target.received += 1
            target.last_reply_mono = now

    async def _drain(self) -> None:
        """Give the requests still waiting up to ``timeout`` to be answered."""
        deadline = time.monotonic() + self.timeout
        while any(t.waiting for t in self._targets) and time.monotonic() < deadline:
            await asyncio.sleep(min(0.02, max(0.0, deadline - time.monotonic())))

    def _flush(self, *, final: bool) -> None:
        """Write each target's decided requests, oldest first, as one ``probe.icmp`` event.

        A request is decided when its reply came or its timeout passed. On the final flush
        every request is decided (the drain waited a full timeout).
        """
        horizon = time.monotonic() - self.timeout
        for target in self._targets:
            self._flush_target(target, horizon, final=final)

    def _flush_target(self, target: _Target, horizon: float, *, final: bool) -> None:
        """One target's decided requests (sent before ``horizon`` or answered) as one event."""
        requests = target.requests
        sent: list[float] = []
        rtt: list[float | None] = []
        first_seq = requests[0].seq if requests else 0
        errors: list[list[Any]] = []
        while requests:
            request = requests[0]
            if request.rtt is None and request.error is None and request.sent_mono > horizon and not final:
                break  # still waiting; later requests wait for it to keep send order
            requests.popleft()
            if request.rtt is None:
                if target.waiting.get(request.seq) is request:
                    del target.waiting[request.seq]
                target.lost += 1
                if request.error is not None:
                    errors.append([len(sent), request.error])
            sent.append(round(request.sent, 6))
            rtt.append(None if request.rtt is None else round(request.rtt, 7))
        if sent:
            fields: dict[str, Any] = {
                "router_id": target.router_id,
                "address": target.address,
                "seq": first_seq,
                "sent": sent,
                "rtt": rtt,
                "interval": self.interval,
                "timeout": self.timeout,
                "ident": self.ident,
            }
            if errors:
                fields["send_errors"] = errors
            self.journal.write(self.kind, **fields)

    # ------------------------------------------------------------------ live counters
    def stats(self) -> ProbeStats:
        """Counters for progress display. A target is failing when it has had no reply for
        longer than ``timeout`` (plus one interval) while being pinged."""
        now = time.monotonic() if self._sending_until is None else self._sending_until
        horizon = self.timeout + self.interval
        failing = tuple(
            t.address
            for t in self._targets
            if t.sent and now - max(t.last_reply_mono, t.first_sent_mono) > horizon
        )
        p50, p99, worst = self._lateness_percentiles((0.5, 0.99, 1.0))
        return ProbeStats(
            probe="icmp",
            sent=sum(t.sent for t in self._targets),
            received=sum(t.received for t in self._targets),
            lost=sum(t.lost for t in self._targets),
            failing=failing,
            detail={
                "targets": len(self._targets),
                "skipped": self._skipped,
                "stray": self._stray,
                "late": self._late,
                "send_errors": self._send_errors,
                "lateness_p50": p50,
                "lateness_p99": p99,
                "lateness_max_bin": worst,
                "kernel_filter": float(self._filtered),
                "sending_seconds": (
                    (now - self._sending_since) if self._sending_since else 0.0
                ),
            },
        )

    def send_counts(self) -> tuple[int, Sequence[int], float]:
        """(sends skipped so far, the send-lateness histogram so far, its bin width in seconds):
        the run's health sampler diffs two of these to judge one second of sending."""
        return self._skipped, self._lateness, LATENESS_BIN

    def _lateness_percentiles(self, quantiles: Sequence[float]) -> list[float]:
        """Send lateness against the schedule (seconds, upper edge of the histogram bin)."""
        return histogram_quantiles(self._lateness, quantiles, LATENESS_BIN) or [0.0] * len(quantiles)


def histogram_quantiles(counts: Sequence[int], quantiles: Sequence[float], width: float) -> list[float]:
    """Quantiles of a histogram of ``width``-second bins (the upper edge of the bin each falls
    in); [] for an empty histogram. The run's health sampler reads the probe's lateness with it."""
    total = sum(counts)
    if not total:
        return []
    cumulative = list(itertools.accumulate(counts))
    return [(bisect.bisect_left(cumulative, max(1, int(q * total + 0.999999))) + 1) * width for q in quantiles]


__all__ = [
    "IcmpProbe",
    "IcmpTarget",
    "echo_request",
    "icmp_targets",
    "histogram_quantiles",
    "parse_echo_reply",
    "seq_distance",
]


# --------------------------------------------------------------------------- the probe
class IcmpSettings(Params):
    interval: Annotated[Duration, Field(ge=0.001)] = 0.02
    timeout: Duration = 1.0


class IcmpKind(ProbeKind):
    """``probes.icmp``: every floating IP of the disturbed routers pinged at ``interval``."""

    name: ClassVar[str] = "icmp"
    settings_model: ClassVar[type[BaseModel]] = IcmpSettings
    default_on: ClassVar[bool] = True
    order: ClassVar[int] = 10

    @classmethod
    def build(cls, settings: IcmpSettings, run: ProbeRun) -> list[ProbeRunner]:
        targets = [IcmpTarget(router_id=r.id, address=str(f.address)) for r in run.routers for f in r.floating_ips]
        for r in run.routers:
            if not r.floating_ips:
                run.skipped(cls.name, "the router has no floating IP", r.id)
        if not targets:
            return []
        return [IcmpProbe(targets, run.journal, interval=settings.interval, timeout=settings.timeout,
                          netns=run.topology.vantage.netns)]
