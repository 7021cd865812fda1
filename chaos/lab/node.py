"""A lab network node seen from outside: its disk (a folder), its NIC, its power.

A node is a host of its own: a network namespace (``<lab>-network-N``) with ``eth0`` on the
management network, and, started inside it by ``power_on``, a private mount, PID and UTS
namespace whose first process is ``chaos.lab.node_init``. Killing that process takes every
process of the node with it (the kernel ends a PID namespace with its init), which is exactly
a power cut; ``power_off`` then deletes the node's network namespace so that its addresses
vanish too. ``power_on`` recreates both, as a server booting again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from chaos.errors import InfrastructureError
from chaos.lab.fabric import attach, ext_port, mgmt_port, new_netns, unplug_node
from chaos.lab.netlink import remove_netns
from chaos.lab.procs import kill, pid_alive, pids_matching, read_pid
from chaos.lab.spec import LabSpec, NodeSpec

SSHD = "/usr/sbin/sshd"
# What a node's L3 agent last reported to the server per router (update_ha_routers_states),
# written by the agent in the node's folder, read by the lab's Neutron API.
HA_REPORTS = "ha_reports.json"


def node_dir(lab_dir: Path, node: str) -> Path:
    return lab_dir / "nodes" / node


def sshd_config(listen: str, port: int, host_key: Path, pid_file: Path, authorized_keys: Path) -> str:
    return "\n".join(
        [
            f"ListenAddress {listen}",
            f"Port {port}",
            f"HostKey {host_key}",
            f"PidFile {pid_file}",
            f"AuthorizedKeysFile {authorized_keys}",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "UseDNS no",
            "PrintMotd no",
            "MaxSessions 10",
            "MaxStartups 100:30:200",
            "Subsystem sftp internal-sftp",
            "",
        ]
    )


def generate_key(path: Path, comment: str) -> str:
    """An ed25519 key pair at ``path``; returns the public key line."""
    if not path.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
            check=True,
            capture_output=True,
            timeout=30,
        )
    return path.with_suffix(".pub").read_text().strip()


def prepare_node_disk(spec: LabSpec, lab_dir: Path, node: NodeSpec) -> str:
    """The node's persistent files: host key, sshd config, /var/lib/neutron and /root."""
    d = node_dir(lab_dir, node.name)
    (d / "neutron").mkdir(parents=True, exist_ok=True)
    (d / "root").mkdir(exist_ok=True)
    host_pub = generate_key(d / "ssh_host_ed25519_key", f"root@{node.name}")
    (d / "sshd_config").write_text(
        sshd_config(node.mgmt_ip, node.ssh_port, d / "ssh_host_ed25519_key", d / "sshd.pid", lab_dir / "ssh" / "authorized_keys")
    )
    return host_pub


def node_mac(node: NodeSpec, nic: int = 0) -> str:
    return f"52:54:00:{nic:02x}:{node.index >> 8:02x}:{node.index & 0xFF:02x}"


def init_pid(lab_dir: Path, node: str) -> int | None:
    """Host pid of the node's init (PID 1 inside the node), if it runs."""
    marker = f"chaos.lab.node_init --lab-dir {lab_dir} --node {node}"
    for pid in pids_matching(marker):
        if not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"unshare"):
            return pid
    return None


def is_powered(lab_dir: Path, node: str) -> bool:
    pid = read_pid(node_dir(lab_dir, node) / "power.pid")
    return pid is not None and pid_alive(pid, "unshare")


def power_on(spec: LabSpec, lab_dir: Path, node: NodeSpec) -> int:
    """Boot the node: its NIC on the management network, then its init. Returns the power pid."""
    d = node_dir(lab_dir, node.name)
    if is_powered(lab_dir, node.name):
        raise InfrastructureError(f"node {node.name} is already powered on")
    remove_netns(node.netns)
    new_netns(node.netns)
    prefix = spec.mgmt_cidr.rsplit("/", 1)[1]
    # A server keeps its NIC's MAC across reboots; so does a lab node (no stale ARP after boot).
    attach(spec, node.netns, "eth0", mgmt_port(node.index), "br-mgmt", f"{node.mgmt_ip}/{prefix}", node_mac(node))
    if spec.backend == "neutron":  # Neutron's LinuxBridge agent maps physnet extnet to eth1
        attach(spec, node.netns, "eth1", ext_port(node.index), "br-ext", None, node_mac(node, nic=1))
    log = open(d / "console.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(
            [
                "ip", "netns", "exec", node.netns,
                "unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
                "--mount-proc", "--uts",
                sys.executable, "-m", "chaos.lab.node_init", "--lab-dir", str(lab_dir), "--node", node.name,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    finally:
        log.close()
    (d / "power.pid").write_text(str(proc.pid))
    return proc.pid


def power_off(spec: LabSpec, lab_dir: Path, node: NodeSpec, timeout: float = 10.0) -> None:
    """Cut the power: the node falls silent at once, then every process of it dies and its
    namespaces and addresses vanish.

    A server that loses power sends nothing more: no FIN or reset from its sockets, no ARP.
    Killing the node's processes first would let its kernel close their connections politely
    (peers would see resets a real power cut never sends), so its wires are cut first."""
    d = node_dir(lab_dir, node.name)
    unplug_node(spec.fabric_netns, node.index)
    victims = []
    pid = read_pid(d / "power.pid")
    if pid is not None and pid_alive(pid, "unshare"):
        victims.append(pid)
    init = init_pid(lab_dir, node.name)
    if init is not None:
        victims.append(init)
    for victim in victims:
        kill(victim)
    deadline = time.monotonic() + timeout
    while any(pid_alive(v) for v in victims):
        if time.monotonic() > deadline:
            raise InfrastructureError(f"node {node.name} did not power off within {timeout:.0f}s")
        time.sleep(0.05)
    (d / "power.pid").unlink(missing_ok=True)
    (d / "agent.json").unlink(missing_ok=True)
    remove_netns(node.netns)
    unplug_node(spec.fabric_netns, node.index)
