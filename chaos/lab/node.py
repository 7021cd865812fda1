"""A lab network node seen from outside: its disk (a folder), its NIC, its power.

A node is a host of its own: a network namespace (``<lab>-network-N``) with ``eth0`` on the
management network, and, started inside it by ``power_on``, a private mount, PID and UTS
namespace whose first process is ``chaos.lab.node_init``. Killing that process takes every
process of the node with it (the kernel ends a PID namespace with its init), which is exactly
a power cut; ``power_off`` then deletes the node's network namespace so that its addresses
vanish too. ``power_on`` recreates both, as a server booting again.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath

from chaos.errors import InfrastructureError
from chaos.lab.fabric import attach, ext_port, mgmt_port, new_netns, unplug_node
from chaos.lab.netlink import remove_netns
from chaos.lab.procs import ProcTable, kill, pid_alive, read_pid
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


# ---------------------------------------------------------------- the kolla shape
# A kolla node runs the L3 agent in the neutron_l3_agent container: the agent's world is a mount
# namespace of its own where kolla's state_path (/var/lib/neutron/kolla) is the named volume
# neutron_metadata_socket, /run/netns is shared with the host, and /usr/local/bin holds
# kolla's keepalived wrapper. The host (the node) has no /var/lib/neutron/kolla: reaching the
# agent's files takes `docker exec`, which the node's docker shim provides.
AGENT_CONTAINER = "neutron_l3_agent"
KOLLA_VOLUME = Path("volumes") / "neutron_metadata_socket" / "_data"  # in the node's folder, as under /var/lib/docker

# `docker exec [options] CONTAINER CMD...`: CMD in the container's namespaces (here: its mount
# namespace, through its first process); any other docker command is not this lab's business.
DOCKER_SHIM = """#!/bin/sh
# docker, as far as a lab node of the kolla shape has one: `docker exec` into its containers.
if [ "$1" != exec ]; then echo "lab docker: only 'docker exec' is available on this node" >&2; exit 125; fi
shift
while [ $# -gt 0 ]; do
  case "$1" in
    -u|--user|-w|--workdir|-e|--env) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
name=$1; shift
pid=$(cat "%(containers)s/$name.pid" 2>/dev/null)
if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then echo "Error response from daemon: No such container: $name" >&2; exit 1; fi
exec nsenter -t "$pid" -m -- "$@"
"""

# kolla's keepalived wrapper (kolla/docker/neutron/neutron-base/keepalived): keepalived in a
# sidecar of its own per router namespace, host PID namespace, container paths, in the
# foreground (-n -l -D). The agent and the tool call `keepalived` as usual; this answers.
KEEPALIVED_WRAPPER = """#!/bin/sh
# kolla's keepalived wrapper, as the lab's kolla shape runs it: a sidecar per router namespace.
NETNS=$(ip netns identify)
setsid -f unshare --mount --propagation unchanged ip netns exec "$NETNS" /usr/sbin/keepalived -n -l -D "$@" \
  </dev/null >/dev/null 2>&1
"""


def container_pid_file(lab_dir: Path, node: str, container: str = AGENT_CONTAINER) -> Path:
    return node_dir(lab_dir, node) / "containers" / f"{container}.pid"


def prepare_kolla_disk(lab_dir: Path, node: str) -> None:
    """The kolla node's docker shim, the agent image's keepalived wrapper, the named volume."""
    d = node_dir(lab_dir, node)
    for sub in ("sbin", "wrappers", "containers", str(KOLLA_VOLUME)):
        (d / sub).mkdir(parents=True, exist_ok=True)
    shim = d / "sbin" / "docker"
    shim.write_text(DOCKER_SHIM % {"containers": d / "containers"})
    wrapper = d / "wrappers" / "keepalived"
    wrapper.write_text(KEEPALIVED_WRAPPER)
    for script in (shim, wrapper):
        script.chmod(0o755)


def neutron_file(lab_dir: Path, spec: LabSpec, node: str, path: PurePosixPath) -> Path:
    """Where a file the node's agent sees at ``path`` is on the lab's disk."""
    from chaos.lab.router import lab_layout

    rel = path.relative_to(lab_layout(spec).state_path)
    d = node_dir(lab_dir, node)
    return (d / KOLLA_VOLUME / rel) if spec.options.profile == "kolla" else (d / "neutron" / rel)


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
    if spec.options.profile == "kolla":
        prepare_kolla_disk(lab_dir, node.name)
    host_pub = generate_key(d / "ssh_host_ed25519_key", f"root@{node.name}")
    (d / "sshd_config").write_text(
        sshd_config(node.mgmt_ip, node.ssh_port, d / "ssh_host_ed25519_key", d / "sshd.pid", lab_dir / "ssh" / "authorized_keys")
    )
    return host_pub


def node_mac(node: NodeSpec, nic: int = 0) -> str:
    return f"52:54:00:{nic:02x}:{node.index >> 8:02x}:{node.index & 0xFF:02x}"


def init_pid(lab_dir: Path, node: str, procs: ProcTable | None = None) -> int | None:
    """Host pid of the node's init (PID 1 inside the node), if it runs; from ``procs`` when the
    caller has already scanned /proc (a status asks once per replica)."""
    procs = procs or ProcTable.scan()
    marker = f"chaos.lab.node_init --lab-dir {lab_dir} --node {node}"
    for pid in procs.matching(marker):
        if not procs.cmdlines[pid].startswith("unshare"):
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


def new_credentials(lab_dir: Path) -> None:
    """Fresh credentials for the lab's BMCs (the services process asks for them), mode 0600."""
    path = lab_dir / "bmc.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"user": "admin", "password": secrets.token_urlsafe(24)}, f)
