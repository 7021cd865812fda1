"""PID 1 of a lab network node: mounts the node's private files, starts sshd, then the agent.

It runs inside the node's network namespace and in new mount, PID and UTS namespaces, so
``/run/netns`` (the qrouter namespaces), ``/var/lib/neutron`` (ha_confs, state files), ``/root``
and the boot id are the node's own. Boot order is a server's: sshd first, then the L3 agent,
which recreates the node's replicas. As init it reaps orphans (keepalived daemonizes) and
restarts the agent if it dies, as systemd would.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from chaos.lab.node import SSHD, node_dir
from chaos.lab.spec import LabSpec


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(prog="chaos.lab.node_init")
    parser.add_argument("--lab-dir", type=Path, required=True)
    parser.add_argument("--node", required=True)
    args = parser.parse_args()
    lab_dir: Path = args.lab_dir
    spec = LabSpec.load(lab_dir / "lab.json")
    node = spec.node(args.node)
    d = node_dir(lab_dir, node.name)

    # The fabric's namespace must be opened before /run/netns becomes the node's own.
    fabric_fd = os.open(f"/run/netns/{spec.fabric_netns}", os.O_RDONLY)
    os.set_inheritable(fabric_fd, True)
    _mount("-t", "tmpfs", "-o", "mode=755", "tmpfs", "/run/netns")
    _mount("--bind", str(d / "neutron"), "/var/lib/neutron")
    # Root's shell start-up files are the node's own (empty): the host's may run slow things
    # such as `pyenv init` on every SSH command. /root itself stays, since the interpreter
    # may live below it.
    for rc in (".bashrc", ".profile", ".bash_profile"):
        if Path("/root", rc).is_file():
            own = d / "root" / rc
            own.touch()
            _mount("--bind", str(own), f"/root/{rc}")
    boot_id = d / "boot_id"
    boot_id.write_text(str(uuid.uuid4()) + "\n")
    _mount("--bind", str(boot_id), "/proc/sys/kernel/random/boot_id")
    socket.sethostname(node.name)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"{time.time():.3f} {node.name}: booting, boot_id {boot_id.read_text().strip()}", flush=True)
    subprocess.run([SSHD, "-f", str(d / "sshd_config")], check=True, timeout=30)
    print(f"{time.time():.3f} {node.name}: sshd started", flush=True)

    agent_cmd = [
        sys.executable, "-m", "chaos.lab.agent",
        "--lab-dir", str(lab_dir), "--node", node.name, "--fabric-ns", f"/proc/self/fd/{fabric_fd}",
    ]

    def start_agent() -> int:
        with open(d / "agent.log", "ab") as logf:
            proc = subprocess.Popen(agent_cmd, pass_fds=(fabric_fd,), stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return proc.pid

    agent = start_agent()
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            time.sleep(1)
            continue
        if pid == agent:
            print(f"{time.time():.3f} {node.name}: agent exited ({status}); restarting", flush=True)
            time.sleep(1)
            agent = start_agent()


if __name__ == "__main__":
    main()
