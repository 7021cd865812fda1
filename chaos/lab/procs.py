"""Finding and ending the lab's processes by pid, pid file, command line or namespace.

Processes started inside a namespace of a node are not listed by ``ip netns pids`` of the
node's own namespace, and they outlive a teardown that only kills the node's pids, so the lab
finds them in /proc itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path


def run_checked(argv: list[str], what: str, *, input: str | None = None, timeout: float = 30.0) -> str:
    """Run a program; a failure becomes an InfrastructureError that says what and why."""
    from chaos.errors import InfrastructureError

    try:
        proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InfrastructureError(f"{what} failed: {exc}") from exc
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise InfrastructureError(f"{what} failed (exit {proc.returncode}): {' / '.join(detail[-3:])}")
    return proc.stdout


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pid_alive(pid: int, name: str | None = None) -> bool:
    """True if ``pid`` runs (not a zombie) and, when ``name`` is given, its command matches."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    if state in ("Z", "X"):
        return False
    return name is None or name in cmdline(pid)


def all_pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def _ns_id(pid: int, kind: str) -> tuple[int, int] | None:
    """(device, inode) of a process's namespace of ``kind`` (``net``, ``pid``); None once it is gone."""
    try:
        st = os.stat(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None
    return st.st_dev, st.st_ino


class ProcTable:
    """One pass over /proc: every process's command line, and on demand its PID and network
    namespaces, indexed once.

    A 100-router lab runs well over a thousand processes; answering "which keepalived of this
    replica runs on this node" with a fresh /proc scan per question made ``chaos lab status``
    O(replicas x processes) (16 s at 100 routers) and the teardown scan once per namespace.
    A table answers every such question of one call from a single snapshot. It is a snapshot:
    a process started after ``scan`` is not in it, so callers that must catch late arrivals
    (teardown after killing) scan again.
    """

    def __init__(self, cmdlines: dict[int, str]) -> None:
        self.cmdlines = cmdlines
        self._by_ns: dict[str, dict[tuple[int, int], list[int]]] = {}
        self._matches: dict[str, list[int]] = {}

    @classmethod
    def scan(cls) -> ProcTable:
        """Every process but the caller, with its command line (empty for a zombie: its memory,
        and so its command line, is gone)."""
        me = os.getpid()
        return cls({pid: cmdline(pid) for pid in all_pids() if pid != me})

    def matching(self, fragment: str) -> list[int]:
        """Processes whose command line contains ``fragment`` (zombies never do); asked again
        (a node's init, once per replica of a status), answered from memory."""
        found = self._matches.get(fragment)
        if found is None:
            found = self._matches[fragment] = [pid for pid, line in self.cmdlines.items() if fragment in line]
        return list(found)

    def _ns_index(self, kind: str) -> dict[tuple[int, int], list[int]]:
        index = self._by_ns.get(kind)
        if index is None:
            index = {}
            for pid in self.cmdlines:
                ns = _ns_id(pid, kind)
                if ns is not None:
                    index.setdefault(ns, []).append(pid)
            self._by_ns[kind] = index
        return index

    def in_pidns(self, init: int) -> list[int]:
        """Processes of the PID namespace whose init is host pid ``init``; empty when it is gone."""
        ns = _ns_id(init, "pid")
        return list(self._ns_index("pid").get(ns, [])) if ns is not None else []

    def in_netns(self, ns_path: Path) -> list[int]:
        """Processes whose network namespace is the one bound at ``ns_path``."""
        try:
            st = os.stat(ns_path)
        except OSError:
            return []
        return list(self._ns_index("net").get((st.st_dev, st.st_ino), []))


def pids_matching(fragment: str) -> list[int]:
    return ProcTable.scan().matching(fragment)


def pids_in_pidns(init: int) -> list[int]:
    """Processes of the PID namespace whose init is host pid ``init`` (a lab node's), from the
    host's /proc; empty when that init is gone."""
    return ProcTable.scan().in_pidns(init)


def pids_in_netns(ns_path: Path) -> list[int]:
    """Processes whose network namespace is the one bound at ``ns_path``."""
    return ProcTable.scan().in_netns(ns_path)


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` runs any more (a zombie counts as gone), at most ``timeout``
    seconds, all of them together; returns those still running."""
    waiting = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        waiting = [pid for pid in waiting if pid_alive(pid)]
        if not waiting or time.monotonic() >= deadline:
            return waiting
        time.sleep(0.05)


def kill_all(pids: Iterable[int]) -> None:
    """SIGKILL every one of ``pids`` at once (one already gone is fine)."""
    for pid in pids:
        kill(pid)


def terminate_all(pids: Iterable[int], timeout: float = 5.0) -> None:
    """SIGTERM all of ``pids``, then SIGKILL those still running after ``timeout`` (one wait for
    all, not one per process); returns once the survivors were sent SIGKILL."""
    sent = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        sent.append(pid)
    kill_all(wait_gone(sent, timeout))


def terminate(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``."""
    terminate_all([pid], timeout)


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
