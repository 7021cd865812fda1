"""OpenSSH's client config applied to nodes, and ``chaos known-hosts add``.

The config is read by asyncssh's parser and compared with what OpenSSH itself makes of the same
file (``ssh -G``); how it combines with an inventory is checked key by key. Against the lab:
a connection through a ``ProxyJump`` bastion that only ``~/.ssh/config``-style settings name,
and host keys recorded by ``chaos known-hosts add`` (never without ``--yes`` or a "y" at the
prompt, never replacing a changed key), with the fingerprints OpenSSH prints for the nodes' keys.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import pty
import subprocess
from pathlib import Path

import asyncssh
import pytest
from typing import Any

from chaos.errors import ExitCode, InvalidInput
from chaos.model import Topology
from chaos.targets.inventory import read_inventory, ssh_settings_for, to_topology
from chaos.transport.ssh import SshPool
from chaos.transport.ssh_config import read_ssh_config
from tests.conftest import CHAOS_CLI, LabHandle

CONFIG = """\
Host bastion
  HostName 192.0.2.5
  User jumper
  Port 2222

Host net-*
  User ops
  IdentityFile {dir}/missing_key
  IdentityFile {dir}/id_test
  ProxyJump bastion
  UserKnownHostsFile {dir}/known_hosts

Host net-1
  HostName 198.51.100.11
  Port 2200
  User not-this-one

Match originalhost net-2
  Port 2202

Host 10.*
  User byaddress

Host odd
  ProxyCommand nc %h %p

Host twohops
  ProxyJump bastion,other

Host *
  Port 22
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "id_test").write_text("not used for connecting here\n")
    (tmp_path / "known_hosts").write_text("")
    path = tmp_path / "ssh_config"
    path.write_text(CONFIG.format(dir=tmp_path))
    return path


def ssh_g(config: Path, host: str) -> dict[str, list[str]]:
    """What OpenSSH makes of the config for ``host`` (``ssh -G``: evaluate, print, connect nowhere)."""
    out = subprocess.run(["ssh", "-G", "-F", str(config), host], capture_output=True, text=True, timeout=10, check=True)
    values: dict[str, list[str]] = {}
    for line in out.stdout.splitlines():
        key, _, value = line.partition(" ")
        values.setdefault(key, []).append(value)
    return values


@pytest.mark.parametrize("host", ["net-1", "net-2", "net-7", "bastion", "10.1.2.3", "plain"])
def test_the_config_reads_as_openssh_reads_it(config: Path, host: str) -> None:
    ours = read_ssh_config(host, config)
    theirs = ssh_g(config, host)
    assert (ours.hostname or host) == theirs["hostname"][0]
    assert (ours.user or getpass.getuser()) == theirs["user"][0]
    assert (ours.port or 22) == int(theirs["port"][0])
    assert (ours.proxy_jump or None) == (theirs["proxyjump"][0] if "proxyjump" in theirs else None)
    if ours.identity_files:  # ssh -G lists its defaults when the file names none
        assert [str(p) for p in ours.identity_files] == theirs["identityfile"]
    if ours.known_hosts:
        assert [str(p) for p in ours.known_hosts] == theirs["userknownhostsfile"][0].split()


def inventory(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    return path


def test_inventory_keys_win_over_the_config_and_the_config_over_defaults(config: Path, tmp_path: Path) -> None:
    inv = read_inventory(inventory(tmp_path, f"""\
defaults: {{ssh_config: {config}, sudo: true}}
nodes:
  - name: net-1                # everything from the config
  - name: net-2
    user: admin                # written here: wins over the config's User
    jump_host: null            # reached directly, whatever the config's ProxyJump says
  - name: net-3
    ssh_config: false          # this node ignores the config
  - name: net-4
    address: 10.0.0.4          # the address is what `ssh` would be given: Host 10.* applies
"""))
    n1, n2, n3, n4 = (ssh_settings_for(h, inv) for h in ("net-1", "net-2", "net-3", "net-4"))
    assert (n1.address, n1.user, n1.port, n1.sudo) == ("198.51.100.11", "ops", 2200, True)
    assert n1.key_file == tmp_path / "id_test"  # the first IdentityFile that exists
    assert n1.known_hosts == tmp_path / "known_hosts"
    assert n1.jump_host == "jumper@192.0.2.5:2222"  # the bastion alias resolved through the same file
    assert n1.ssh_config == config
    assert (n2.address, n2.user, n2.port, n2.jump_host) == ("net-2", "admin", 2202, None)
    assert (n3.address, n3.user, n3.port, n3.jump_host, n3.key_file, n3.ssh_config) == ("net-3", "root", 22, None, None, None)
    assert (n4.address, n4.user, n4.port) == ("10.0.0.4", "byaddress", 22)
    # a key written in defaults: counts as written for every node
    port_default = read_inventory(inventory(tmp_path, f"defaults: {{ssh_config: {config}, port: 2022}}\nnodes: [{{name: net-1}}]\n"))
    assert ssh_settings_for("net-1", port_default).port == 2022


def test_what_the_tool_cannot_honour_is_refused_with_the_file(config: Path, tmp_path: Path) -> None:
    for host, message in (("odd", "ProxyCommand applies to odd"), ("twohops", "lists 2 hops")):
        inv = read_inventory(inventory(tmp_path, f"defaults: {{ssh_config: {config}}}\nnodes: [{{name: {host}}}]\n"))
        with pytest.raises(InvalidInput, match=message) as err:
            ssh_settings_for(host, inv)
        assert str(config) in err.value.message and err.value.exit_code == ExitCode.INVALID_INPUT
    broken = tmp_path / "broken_config"
    broken.write_text("Host x\n  Port twenty-two\n")
    inv = read_inventory(inventory(tmp_path, f"defaults: {{ssh_config: {broken}}}\nnodes: [{{name: x}}]\n"))
    with pytest.raises(InvalidInput, match=r"broken_config line 2: .*twenty-two"):
        ssh_settings_for("x", inv)
    proc = subprocess.run([*CHAOS_CLI, "known-hosts", "add", "--inventory", str(tmp_path / "inventory.yaml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == ExitCode.INVALID_INPUT and "line 2" in proc.stderr and "Traceback" not in proc.stderr


def test_without_an_inventory_a_host_is_reached_through_the_default_config(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(config.read_text())
    monkeypatch.setenv("HOME", str(home))
    node = ssh_settings_for("net-1", None)
    assert (node.address, node.user, node.port, node.jump_host) == ("198.51.100.11", "ops", 2200, "jumper@192.0.2.5:2222")
    (home / ".ssh" / "config").unlink()
    plain = ssh_settings_for("net-1", None)
    assert (plain.address, plain.user, plain.port, plain.ssh_config) == ("net-1", "root", 22, None)


# --------------------------------------------------------------------------- against the lab
def lab_config(lab: LabHandle, tmp_path: Path, known_hosts: Path) -> Path:
    """An ~/.ssh/config as an SRE would have it: a bastion (network-1) and a node behind it
    (network-2) under an alias, with the user, key and known_hosts file."""
    ssh = lab.dir / "ssh"
    path = tmp_path / "ssh_config"
    path.write_text(f"""\
Host bastion
  HostName 198.51.100.11
  User root

Host staging-net2
  HostName 198.51.100.12
  User root
  IdentityFile {ssh / 'id_ed25519'}
  ProxyJump bastion

Host *
  IdentityFile {ssh / 'id_ed25519'}
  UserKnownHostsFile {known_hosts}
""")
    return path


def lab_inventory(lab: LabHandle, tmp_path: Path, config: Path) -> Path:
    return inventory(tmp_path, f"""\
defaults:
  netns: {lab.spec.vantage.netns}     # the lab's management network is reached from its vantage namespace
  ssh_config: {config}
nodes:
  - name: network-2
    address: staging-net2
""")


async def test_a_node_behind_a_proxyjump_bastion_named_only_in_the_config(lab: LabHandle, tmp_path: Path) -> None:
    config = lab_config(lab, tmp_path, lab.dir / "ssh" / "known_hosts")
    topo = load_inventory_nodes(lab_inventory(lab, tmp_path, config))
    node = topo.nodes[0]
    assert (node.address, node.user, node.jump_host) == ("198.51.100.12", "root", "root@198.51.100.11:22")
    async with SshPool(topo.nodes) as pool:
        out = await pool.run("network-2", 'echo "$(hostname) ${SSH_CONNECTION%% *}"')
    # network-2 answered, and the connection came from the bastion, not from the vantage point
    assert out.stdout.split() == ["network-2", "198.51.100.11"]


def load_inventory_nodes(path: Path) -> Topology:
    return to_topology(read_inventory(path))


async def hostname(topo: Topology, node: str) -> str:
    async with SshPool(topo.nodes) as pool:
        return (await pool.run(node, "hostname")).stdout.strip()


def chaos(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CHAOS_CLI, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def fingerprint(pub: Path) -> str:
    """OpenSSH's own reading of a public key's fingerprint."""
    return subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True).stdout.split()[1]


def test_known_hosts_add_records_only_when_told_and_never_replaces(lab: LabHandle, tmp_path: Path) -> None:
    known = tmp_path / "kh" / "known_hosts"  # not there yet: created 0600 in a 0700 folder
    config = lab_config(lab, tmp_path, known)
    inv = str(lab_inventory(lab, tmp_path, config))
    node_fp = fingerprint(lab.dir / "nodes" / "network-2" / "ssh_host_ed25519_key.pub")
    bastion_fp = fingerprint(lab.dir / "nodes" / "network-1" / "ssh_host_ed25519_key.pub")

    refused = chaos("known-hosts", "add", "--inventory", inv)  # no terminal, no --yes
    assert refused.returncode == ExitCode.USAGE, refused.stdout + refused.stderr
    assert bastion_fp in refused.stdout and "NOT recorded" in refused.stderr and "--yes" in refused.stderr
    assert not known.exists()

    added = chaos("known-hosts", "add", "--inventory", inv, "--yes")
    assert added.returncode == ExitCode.OK, added.stdout + added.stderr
    lines = added.stdout.splitlines()
    # the bastion first (the node is reached through it), then the node; OpenSSH's fingerprints
    assert [bastion_fp in line for line in lines].index(True) < [node_fp in line for line in lines].index(True)
    assert known.read_text().splitlines()[0].startswith("198.51.100.11 ssh-ed25519 ")
    assert known.read_text().splitlines()[1].startswith("198.51.100.12 ssh-ed25519 ")
    assert (known.stat().st_mode & 0o777, known.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    again = chaos("known-hosts", "add", "--inventory", inv)
    assert again.returncode == ExitCode.OK and again.stdout.count("known (") == 2 and "recorded" not in again.stdout
    # what was recorded is what a connection verifies against (bastion and node)
    assert asyncio.run(hostname(load_inventory_nodes(Path(inv)), "network-2")) == "network-2"

    # a changed key (reinstalled node, or a man in the middle) is reported and left alone
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().split()
    tampered = known.read_text().replace(known.read_text().splitlines()[1], f"198.51.100.12 {other[0]} {other[1]}")
    known.write_text(tampered)
    changed = chaos("known-hosts", "add", "--inventory", inv, "--yes")
    assert changed.returncode == ExitCode.INFRASTRUCTURE
    assert "CHANGED" in changed.stdout and node_fp in changed.stdout and "man in the middle" in changed.stderr
    assert known.read_text() == tampered


def test_known_hosts_add_asks_at_a_terminal(lab: LabHandle, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    inv = inventory(tmp_path, f"""\
defaults: {{netns: {lab.spec.vantage.netns}, ssh_config: false, known_hosts: {known}}}
nodes: [{{name: network-3, address: 198.51.100.13}}]
""")
    known.write_text("")
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.Popen([*CHAOS_CLI, "known-hosts", "add", "--inventory", str(inv)],
                                stdin=secondary, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        os.write(primary, b"y\n")
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(primary)
        os.close(secondary)
    assert proc.returncode == ExitCode.OK, out + err
    assert "record this key for 198.51.100.13" in out and "recorded 1 new key(s)" in out
    assert known.read_text().startswith("198.51.100.13 ssh-ed25519 ")


async def test_a_cancelled_connect_is_not_retried_when_asyncssh_turns_the_cancel_into_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """asyncssh can report a cancellation that lands mid-handshake as a lost connection; the
    pool's retry loop took that for a failed attempt and kept connecting, so a cancelled task
    (a stream, a poll) outlived its TaskGroup until the run's time limit. It must stop at once."""
    import asyncio
    import time

    import asyncssh

    from chaos.model import Node
    from chaos.transport.ssh import SshPool

    attempts = 0

    async def open_that_loses_the_connection_when_cancelled(self: SshPool, node: Node) -> Any:
        nonlocal attempts
        attempts += 1
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise asyncssh.ConnectionLost("Connection lost") from None
        raise AssertionError("not reached")

    monkeypatch.setattr(SshPool, "_open", open_that_loses_the_connection_when_cancelled)
    pool = SshPool([Node(name="net-1", address="198.51.100.1", check_child_processes_interval=60)],
                   insecure_no_host_key_check=True, retry_backoff=0.5)
    task = asyncio.create_task(pool.run("net-1", "true"))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert attempts == 1 and time.monotonic() - started < 0.5
