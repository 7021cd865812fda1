"""Run code and open sockets inside a network namespace without touching the caller's.

Python 3.11 has no ``os.setns``; the C library's ``setns(2)`` is called through ctypes in a
short-lived helper thread, so only that thread changes namespace and the asyncio loop's thread
never does. A socket created there stays bound to that namespace for its whole life and can be
handed to asyncio or asyncssh. This is how the runner reaches lab hosts without any route or
address in the root namespace.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = Path("/run/netns")

T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(name_or_path: str | os.PathLike[str]) -> Path:
    """``name`` means ``/run/netns/<name>``; anything with a slash is taken as a path."""
    text = os.fspath(name_or_path)
    return Path(text) if "/" in text else NETNS_RUN_DIR / text


def run_in_netns(ns: str | os.PathLike[str], fn: Callable[..., T], *args: object) -> T:
    """Call ``fn(*args)`` in a fresh thread that has entered network namespace ``ns``."""
    path = netns_path(ns)
    result: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            failure.append(exc)
            return
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                failure.append(OSError(err, f"setns({path}): {os.strerror(err)}"))
                return
            result.append(fn(*args))
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)
        finally:
            os.close(fd)

    thread = threading.Thread(target=target, name=f"netns:{path.name}", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def connected_socket(ns: str | os.PathLike[str], host: str, port: int, timeout: float) -> socket.socket:
    """A TCP socket created inside ``ns`` and connected to ``host:port`` (blocking, bounded)."""

    def connect() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect((host, port))
            sock.setblocking(False)
            return sock
        except BaseException:
            sock.close()
            raise

    return run_in_netns(ns, connect)


async def open_socket(ns: str | os.PathLike[str], host: str, port: int, timeout: float) -> socket.socket:
    """Async wrapper of ``connected_socket``: the connect runs in a worker thread."""
    return await asyncio.wait_for(asyncio.to_thread(connected_socket, ns, host, port, timeout), timeout + 1)


def socket_in_netns(ns: str | os.PathLike[str], family: int, kind: int, proto: int = 0) -> socket.socket:
    """An unconnected socket of the given type living in ``ns`` (raw ICMP, listeners, ...)."""
    return run_in_netns(ns, socket.socket, family, kind, proto)


def write_sysctls(ns: str | os.PathLike[str], values: dict[str, str]) -> None:
    """Write ``net.*`` sysctls of namespace ``ns`` (``/proc/sys/net`` follows the writer's netns)."""

    def write() -> None:
        for key, value in values.items():
            path = Path("/proc/sys") / key.replace(".", "/")
            try:
                path.write_text(value)
            except FileNotFoundError as exc:
                raise OSError(errno.ENOENT, f"sysctl {key} does not exist in this kernel") from exc

    run_in_netns(ns, write)
