"""A TCP relay between the runner's asyncssh and a lab node's sshd that drops the connection
at a chosen moment: after a command reached the node and ran, before its result got back.

That moment is where a transport that retries commands would run an injection twice, and it
cannot be hit by timing alone (a result comes back in milliseconds). So the relay holds back
what the node sends, by ``delay`` seconds once armed for that node, while an observer outside
the tool watches the node's kernel and processes; when the command's effect shows there, the
test calls ``cut``: both legs close and the held-back result is thrown away, so the runner sees
a broken connection exactly as when a link drops mid-command. ``refuse`` then turns new
connections to the node away for a while, which gives the observer a window in which nothing
the runner does can reach the node.

Both legs live inside the lab: the node leg is a socket opened in the runner's namespace (the
lab's vantage point, as the tool opens it), the runner's leg a loopback TCP pair in that same
namespace; the bytes are the real SSH stream (real sshd, real asyncssh), never read.
"""

from __future__ import annotations

import collections
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from chaos.transport import netns

OpenSocket = Callable[[str, str, int, float], Coroutine[Any, Any, socket.socket]]


class DroppingRelay:
    """Replaces ``chaos.transport.ssh.open_socket`` (monkeypatch) for one test."""

    def __init__(self, real_open: OpenSocket) -> None:
        self._real_open = real_open
        self._lock = threading.Lock()
        self._delay: dict[str, float] = {}  # node address -> seconds its bytes are held back
        self._refuse_until: dict[str, float] = {}
        self._legs: dict[str, list[socket.socket]] = collections.defaultdict(list)
        self.cuts = 0

    # ------------------------------------------------------------------ what the test does
    def arm(self, address: str, delay: float) -> None:
        """Hold back what ``address`` sends from now on by ``delay`` seconds."""
        with self._lock:
            self._delay[address] = delay

    def cut(self, address: str, refuse_for: float = 0.0) -> int:
        """Drop every connection to ``address`` now (held-back bytes are lost), stop delaying,
        and refuse new connections for ``refuse_for`` seconds. Returns how many legs closed."""
        with self._lock:
            legs, self._legs[address] = self._legs[address], []
            self._delay.pop(address, None)
            self._refuse_until[address] = time.monotonic() + refuse_for
            self.cuts += 1
        for leg in legs:
            with contextlib.suppress(OSError):
                leg.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
                leg.shutdown(socket.SHUT_RDWR)
            leg.close()
        return len(legs)

    # ------------------------------------------------------------------ what the runner calls
    async def open_socket(self, ns: str, host: str, port: int, timeout: float) -> socket.socket:
        with self._lock:
            refused = time.monotonic() < self._refuse_until.get(host, 0.0)
        if refused:
            raise ConnectionRefusedError(f"relay: {host} refused for the test")
        upstream = await self._real_open(ns, host, port, timeout)
        upstream.setblocking(True)
        try:
            ours, theirs = _loopback_pair(ns)
        except BaseException:
            upstream.close()
            raise
        with self._lock:
            self._legs[host] += [upstream, theirs]
        threading.Thread(target=self._pump, args=(theirs, upstream, None), daemon=True).start()
        threading.Thread(target=self._pump, args=(upstream, theirs, host), daemon=True).start()
        ours.setblocking(False)
        return ours

    def _pump(self, src: socket.socket, dst: socket.socket, delayed_from: str | None) -> None:
        """Copy ``src`` to ``dst``; bytes from a node are sent when their time has come (held
        back by the node's delay when they arrived). Ends with either socket."""
        queue: collections.deque[tuple[float, bytes]] = collections.deque()
        ready = threading.Condition()
        done = threading.Event()

        def sender() -> None:
            while True:
                with ready:
                    while not queue and not done.is_set():
                        ready.wait()
                    if not queue:
                        break
                    due, data = queue.popleft()
                time.sleep(max(0.0, due - time.monotonic()))
                try:
                    dst.sendall(data)
                except OSError:
                    break
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        out = threading.Thread(target=sender, daemon=True)
        out.start()
        try:
            while True:
                try:
                    data = src.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                with self._lock:
                    delay = self._delay.get(delayed_from, 0.0) if delayed_from else 0.0
                with ready:
                    queue.append((time.monotonic() + delay, data))
                    ready.notify()
        finally:
            done.set()
            with ready:
                ready.notify()
            out.join(timeout=10)


def _loopback_pair(ns: str) -> tuple[socket.socket, socket.socket]:
    """Two connected TCP sockets on the loopback of lab namespace ``ns`` (asyncssh wants an
    INET socket: it asks its peer's address)."""
    listener = netns.socket_in_netns(ns, socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        ours = netns.connected_socket(ns, "127.0.0.1", listener.getsockname()[1], 5.0)
        ours.setblocking(True)
        theirs, _ = listener.accept()
        return ours, theirs
    finally:
        listener.close()
