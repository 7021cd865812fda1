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
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from chaos.lab.node import AGENT_CONTAINER, KOLLA_VOLUME, SSHD, container_pid_file, node_dir
from chaos.lab.spec import LabSpec


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=10)


def kolla_container(d: Path, agent_cmd: list[str]) -> list[str]:
    """The agent as kolla-ansible runs it: in the neutron_l3_agent container, a mount namespace
    of its own where /var/lib/neutron is the image's (empty) and /var/lib/neutron/kolla the
    named volume, /usr/local/bin holds kolla's wrappers, and /run/netns is the host's (shared)."""
    setup = " && ".join([
        "mount -t tmpfs -o mode=755 tmpfs /var/lib/neutron",
        "mkdir -p /var/lib/neutron/kolla",
        f"mount --bind {shlex.quote(str(d / KOLLA_VOLUME))} /var/lib/neutron/kolla",
        f"mount --bind {shlex.quote(str(d / 'wrappers'))} /usr/local/bin",
        'exec "$@"',
    ])
    return ["unshare", "--mount", "--propagation", "unchanged", "sh", "-c", setup, AGENT_CONTAINER, *agent_cmd]


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
    # Shared, as ip netns makes it: a container started later sees the router namespaces too.
    _mount("--make-shared", "/run/netns")
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
    env = dict(os.environ)
    if spec.options.profile == "kolla":
        # The node's docker command; the agent runs in its neutron_l3_agent container.
        _mount("--bind", str(d / "sbin"), "/usr/local/sbin")
        agent_cmd = kolla_container(d, agent_cmd)
        env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    def start_agent() -> int:
        with open(d / "agent.log", "ab") as logf:
            proc = subprocess.Popen(agent_cmd, pass_fds=(fabric_fd,), stdout=logf, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env)
        if spec.options.profile == "kolla":
            container_pid_file(lab_dir, node.name).write_text(str(proc.pid))
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
