"""PID 1 of a lab network node: mounts the node's private files, starts sshd, then the agents.

It runs inside the node's network namespace and in new mount, PID and UTS namespaces, so
``/run/netns`` (the qrouter namespaces), ``/var/lib/neutron`` (ha_confs, state files), ``/root``
and the boot id are the node's own. Boot order is a server's: sshd first, then the L3 agent,
which recreates the node's replicas: the emulated agent, or with the neutron backend Neutron's
LinuxBridge and L3 agents. As init it reaps orphans (keepalived daemonizes) and restarts an
agent that dies, as systemd would.
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
from collections.abc import Callable
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
    own_hosts_entry(d, node.name)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"{time.time():.3f} {node.name}: booting, boot_id {boot_id.read_text().strip()}", flush=True)
    subprocess.run([SSHD, "-f", str(d / "sshd_config")], check=True, timeout=30)
    print(f"{time.time():.3f} {node.name}: sshd started", flush=True)

    services = Supervisor(d)
    if spec.backend == "neutron":
        from chaos.lab.real.agents import node_agents

        os.close(fabric_fd)  # Neutron's agents plug ports into the node's own bridges
        for name, argv in node_agents(lab_dir, node):
            services.start(name, argv, env=neutron_env())
    else:
        agent_cmd = [
            sys.executable, "-m", "chaos.lab.agent",
            "--lab-dir", str(lab_dir), "--node", node.name, "--fabric-ns", f"/proc/self/fd/{fabric_fd}",
        ]
        env = dict(os.environ)
        on_start = None
        if spec.options.profile == "kolla":
            # The node's docker command; the agent runs in its neutron_l3_agent container.
            _mount("--bind", str(d / "sbin"), "/usr/local/sbin")
            agent_cmd = kolla_container(d, agent_cmd)
            env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

            def on_start(pid: int) -> None:
                container_pid_file(lab_dir, node.name).write_text(str(pid))

        services.start("agent", agent_cmd, env=env, pass_fds=(fabric_fd,), on_start=on_start)
    services.run_forever(node.name)


def own_hosts_entry(host_dir: Path, name: str) -> None:
    """The host resolves its own name, as a server's /etc/hosts says (``127.0.1.1 <name>``):
    sudo (privsep's helper) and RabbitMQ look it up, and a lab namespace has no route to the
    machine's DNS server, so each lookup would wait for a resolver timeout."""
    try:
        base = Path("/etc/hosts").read_text()
    except OSError:
        base = "127.0.0.1 localhost\n"
    own = host_dir / "hosts"
    own.write_text(base.rstrip("\n") + f"\n127.0.1.1 {name}\n")
    _mount("--bind", str(own), "/etc/hosts")


def neutron_env() -> dict[str, str]:
    """The environment of Neutron's processes: the system's programs only. The tool's own
    environment has neutron 29's neutron-keepalived-state-change on its PATH (the emulated
    lab runs it); the Zed agents must start Zed's, from /usr/bin."""
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}


class Supervisor:
    """What systemd does for a host's services here: start them, log to files in the host's
    folder, restart one that dies (after a second), and reap every orphan (as PID 1 must:
    keepalived and the privsep helpers daemonize)."""

    def __init__(self, host_dir: Path) -> None:
        self.host_dir = host_dir
        self.specs: dict[str, tuple[list[str], dict[str, str] | None, tuple[int, ...], Callable[[int], None] | None]] = {}
        self.running: dict[int, str] = {}

    def start(self, name: str, argv: list[str], *, env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = (),
              on_start: Callable[[int], None] | None = None) -> int:
        """Start a service; ``on_start(pid)`` runs after every (re)start (kolla's container pid file)."""
        self.specs[name] = (argv, env, pass_fds, on_start)
        return self._spawn(name)

    def _spawn(self, name: str) -> int:
        argv, env, pass_fds, on_start = self.specs[name]
        with open(self.host_dir / f"{name}.log", "ab") as logf:
            proc = subprocess.Popen(argv, pass_fds=pass_fds, stdout=logf, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env)
        self.running[proc.pid] = name
        if on_start is not None:
            on_start(proc.pid)
        print(f"{time.time():.3f} started {name} (pid {proc.pid})", flush=True)
        return proc.pid

    def run_forever(self, host: str) -> None:
        while True:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                time.sleep(1)
                continue
            name = self.running.pop(pid, None)
            if name is not None:
                print(f"{time.time():.3f} {host}: {name} exited ({status}); restarting", flush=True)
                time.sleep(1)
                self._spawn(name)


if __name__ == "__main__":
    main()
