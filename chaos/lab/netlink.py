"""Netlink access to lab namespaces, safely.

Two traps shape this module. pyroute2's own namespace support forks a helper and signals it
with SIGTERM; in a process running asyncio signal handlers, the fork inherits the loop's
wake-up descriptor and the SIGTERM reaches the parent. And pyroute2 opens its netlink socket
lazily, once per thread, in whatever namespace that thread is in at the time. So every netlink
operation on a lab namespace runs as one function inside a helper thread that has entered the
namespace (``run_netlink``): the IPRoute is created, used and closed there. A guard refuses to
run when the thread is still in the process's own namespace, so a mistake can never create
a lab device in the root namespace.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
from collections.abc import Callable
from typing import TypeVar

from pyroute2 import IPRoute

from chaos.lab.procs import run_checked
from chaos.transport.netns import NETNS_RUN_DIR, run_in_netns

T = TypeVar("T")
SO_NETNS_COOKIE = 71


def netns_cookie() -> int:
    """The kernel's cookie for the calling thread's network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")


_HOME_COOKIE = netns_cookie()


def run_netlink(ns: str, fn: Callable[[IPRoute], T]) -> T:
    """Run ``fn(ipr)`` with an IPRoute bound to namespace ``ns`` (a /run/netns name or a path)."""

    def work() -> T:
        if netns_cookie() == _HOME_COOKIE:
            raise RuntimeError(f"refusing netlink work for {ns}: the thread is still in the process's own namespace")
        with IPRoute() as ipr:
            return fn(ipr)

    return run_in_netns(ns, work)


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def create_netns(name: str) -> None:
    run_checked(["ip", "netns", "add", name], f"creating namespace {name}")


def remove_netns(name: str) -> None:
    if name in list_netns():
        run_checked(["ip", "netns", "delete", name], f"deleting namespace {name}")


MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8  # a symlink planted in /run/netns must not lead the unmount elsewhere
_libc = ctypes.CDLL(None, use_errno=True)


def drop_netns(names: list[str]) -> list[str]:
    """Delete the namespaces bound at ``/run/netns/<name>``, in this process, as ``ip netns
    delete`` does (detach the bind mount, unlink the file); returns the names that could not be.

    A 100-router lab has over a hundred namespaces: one ``ip`` process per namespace cost more
    than the deletions. The kernel frees each namespace, and every device in it (a veth takes
    its peer along), once nothing holds it any more, which is why the caller ends the
    processes inside first. Only the names given are touched; a name is a file name in
    /run/netns, never a path elsewhere.
    """
    failed = []
    for name in names:
        if not name or "/" in name or name in (".", ".."):
            failed.append(name)
            continue
        path = os.path.join(NETNS_RUN_DIR, name)
        if _libc.umount2(os.fsencode(path), MNT_DETACH | UMOUNT_NOFOLLOW) != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
            failed.append(name)  # EINVAL: not a mount point (a stale file), unlinked below
            continue
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError:
            failed.append(name)
    return failed
