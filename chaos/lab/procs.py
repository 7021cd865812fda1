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
from collections.abc import Iterator
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


def pids_matching(fragment: str) -> list[int]:
    me = os.getpid()
    return [pid for pid in all_pids() if pid != me and fragment in cmdline(pid)]


def pids_in_pidns(init: int) -> list[int]:
    """Processes of the PID namespace whose init is host pid ``init`` (a lab node's), from the
    host's /proc; empty when that init is gone."""
    try:
        target = os.stat(f"/proc/{init}/ns/pid").st_ino
    except OSError:
        return []
    found = []
    for pid in all_pids():
        try:
            if os.stat(f"/proc/{pid}/ns/pid").st_ino == target:
                found.append(pid)
        except OSError:
            continue
    return found


def pids_in_netns(ns_path: Path) -> list[int]:
    """Processes whose network namespace is the one bound at ``ns_path``."""
    try:
        target = os.stat(ns_path)
    except OSError:
        return []
    found = []
    for pid in all_pids():
        try:
            st = os.stat(f"/proc/{pid}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            found.append(pid)
    return found


def terminate(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; returns once the process is gone."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    kill(pid)


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
