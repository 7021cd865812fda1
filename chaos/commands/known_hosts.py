"""``chaos known-hosts add``: record the host keys of a target's nodes, explicitly, never silently.

The tool verifies every node's host key, always (``chaos.transport.ssh``). On a new cloud the
keys are not in any known_hosts yet, and the ways around that are bad: turning verification
off, or ``ssh-keyscan >> known_hosts``, which trusts whatever answers. This command connects to
each node (through its jump host, whose own key is recorded first), shows each key's SHA256
fingerprint beside what the node's known_hosts already says, and appends a new key only when
told to: a ``y`` at the prompt, or ``--yes`` for a script that has checked the fingerprints
another way (the node's console: ``ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub``).

- A key already recorded: nothing to do.
- A key that differs from the one recorded for that host and key type: reported as CHANGED and
  never replaced (a reinstalled node, or a man in the middle: a person must look); exit 5.
- Not a terminal and no ``--yes``: the fingerprints are printed, nothing is recorded, exit 2.

Each key goes to the node's own ``known_hosts`` (inventory) or ``~/.ssh/known_hosts``, as
``host`` (port 22) or ``[host]:port``, the form OpenSSH and asyncssh look up.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import asyncssh

from chaos.commands._target import add_target_arguments, target_topology
from chaos.errors import ChaosError, ExitCode, InvalidInput, UsageError
from chaos.log import get_logger
from chaos.model import Node
from chaos.settings import Settings
from chaos.transport.ssh import DEFAULT_KNOWN_HOSTS, SshPool, parse_jump_host

log = get_logger("known-hosts")
FETCH_CONCURRENCY = 8


@dataclass
class Seen:
    """One host key as the node presented it, and what its known_hosts says about it."""

    label: str  # node name, or "jump host of <node>"
    node: Node  # how it was reached (a jump host as a node of its own)
    file: Path
    state: Literal["known", "new", "changed", "unreachable"]
    key: asyncssh.SSHKey | None = None
    detail: str = ""

    @property
    def host_pattern(self) -> str:
        """How OpenSSH writes the host: as is on port 22, else ``[host]:port``."""
        return self.node.address if self.node.port == 22 else f"[{self.node.address}]:{self.node.port}"

    def line(self) -> str:
        assert self.key is not None
        public = self.key.export_public_key("openssh").decode().split()
        return f"{self.host_pattern} {public[0]} {public[1]}"

    def describe(self) -> str:
        where = f"{self.node.address}:{self.node.port}" + (f" via {self.node.jump_host}" if self.node.jump_host else "")
        if self.key is None:
            return f"{self.label} ({where}): {self.detail}"
        return f"{self.label} ({where}): {self.key.get_algorithm()} {self.key.get_fingerprint('sha256')}  {self.detail}"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "known-hosts",
        help="record the SSH host keys of a target's nodes, after showing their fingerprints",
        description="Host keys are always verified; this is how new ones are recorded, explicitly.",
    )
    kh_sub = parser.add_subparsers(dest="known_hosts_command", required=True, parser_class=type(parser))
    add = kh_sub.add_parser(
        "add",
        help="connect to each node, print its host key's fingerprint, append new keys when confirmed",
        description=(
            "Connect to every node of the target (or the --node ones), print each host key's SHA256 fingerprint "
            "and whether the node's known_hosts has it, and append new keys when confirmed (a prompt per key; "
            "--yes records them all). A changed key is never replaced (exit 5). Without a terminal and without "
            "--yes nothing is recorded (exit 2)."
        ),
    )
    add_target_arguments(
        add,
        cloud_help="a cloud from clouds.yaml: its L3 agents' hosts (SSH settings from --inventory)",
        inventory_help="an inventory file: its nodes, or with --cloud how to reach the hosts",
    )
    add.add_argument("--node", action="append", metavar="NAME", help="only this node (repeat for more)")
    add.add_argument("--yes", action="store_true", help="record every new key without asking (check the fingerprints first)")
    add.set_defaults(handler=cmd_add)


def jump_node(node: Node, index: int) -> Node:
    """A node's jump host as a node of its own: reached the way the pool reaches it (same user
    default, key, namespace), its key checked against the node's known_hosts."""
    user, host, port = parse_jump_host(node.jump_host or "")
    return node.model_copy(update={
        "name": f"jump-{index}", "address": host, "port": port, "user": user or node.user, "jump_host": None,
    })


def known_file(node: Node) -> Path:
    return (node.known_hosts or DEFAULT_KNOWN_HOSTS).expanduser()


def recorded(node: Node) -> tuple[list[asyncssh.SSHKey], bool]:
    """The keys the node's known_hosts holds for it, and whether a @cert-authority entry covers it."""
    path = known_file(node)
    if not path.is_file():
        return [], False
    try:
        known = asyncssh.read_known_hosts(str(path))
    except (OSError, ValueError, asyncssh.Error) as exc:
        raise InvalidInput(f"cannot read known_hosts {path}: {exc}") from None
    addr = node.address if _is_ip(node.address) else ""
    host_keys, ca_keys, *_ = known.match(node.address, addr, node.port if node.port != 22 else None)
    return list(host_keys), bool(ca_keys)


def _is_ip(value: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


async def inspect(pool: SshPool, label: str, node: Node) -> Seen:
    """Fetch the node's key, restricted to the key types recorded for it (as a connection is),
    and compare."""
    file = known_file(node)
    keys, by_ca = recorded(node)
    if by_ca:
        return Seen(label, node, file, "known", detail="covered by a @cert-authority entry")
    algorithms = [a.decode() for k in keys for a in k.sig_algorithms]
    try:
        key = await pool.fetch_host_key(node.name, algorithms)
    except ChaosError as exc:
        return Seen(label, node, file, "unreachable", detail=exc.message)
    public = key.export_public_key("openssh").split()[:2]
    if any(k.export_public_key("openssh").split()[:2] == public for k in keys):
        return Seen(label, node, file, "known", key, f"known ({file})")
    if keys:
        return Seen(label, node, file, "changed", key,
                    f"CHANGED: {file} records another {key.get_algorithm()} key for this host")
    return Seen(label, node, file, "new", key, f"new (not in {file})")


def jump_hosts(nodes: list[Node]) -> list[tuple[str, Node]]:
    """Each distinct jump host on the way to the nodes, as a node of its own."""
    jumps: dict[tuple[str, str, str | None], Node] = {}
    for n in nodes:
        if n.jump_host:
            jumps.setdefault((n.jump_host, str(known_file(n)), n.netns), jump_node(n, len(jumps) + 1))
    return [(f"jump host {spec}", j) for (spec, _, _), j in jumps.items()]


async def inspect_all(items: list[tuple[str, Node]]) -> list[Seen]:
    """Every node's key, fetched concurrently (bounded), each fetch under the pool's timeouts."""
    if not items:
        return []
    slots = asyncio.Semaphore(FETCH_CONCURRENCY)

    async def one(pool: SshPool, label: str, node: Node) -> Seen:
        async with slots:
            return await inspect(pool, label, node)

    async with SshPool([n for _, n in items]) as pool, asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(one(pool, label, n)) for label, n in items]
    return [t.result() for t in tasks]


def append(seen: Seen) -> None:
    """Append the key's line to the known_hosts file, creating it (0600, in a 0700 folder) if needed."""
    path = seen.file
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            f.write("\n")
        f.write(seen.line() + "\n")
    log.info("host key recorded", host=seen.host_pattern, fingerprint=seen.key.get_fingerprint("sha256") if seen.key else None,
             file=str(path))


def confirm(seen: Seen) -> bool:
    answer = input(f"record this key for {seen.host_pattern} in {seen.file}? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def cmd_add(args: argparse.Namespace, settings: Settings) -> int:
    topology = target_topology(args, settings, routers_required=False)
    nodes = list(topology.nodes)
    if args.node:
        unknown = sorted(set(args.node) - {n.name for n in nodes})
        if unknown:
            raise UsageError(f"--node {', '.join(unknown)}: not a node of {topology.source} "
                             f"(nodes: {', '.join(n.name for n in nodes)})")
        nodes = [n for n in nodes if n.name in set(args.node)]
    print(f"host keys of {topology.source} ({len(nodes)} node(s)):")
    everything: list[Seen] = []
    # Jump hosts first, recorded before the nodes behind them are reached through them.
    for items in (jump_hosts(nodes), [(n.name, n) for n in nodes]):
        seen = asyncio.run(inspect_all(items))
        everything += seen
        for s in seen:
            print(f"  {s.describe()}")
        new = [s for s in seen if s.state == "new"]
        if new and not args.yes and not sys.stdin.isatty():
            print(f"{len(new)} new key(s) NOT recorded: stdin is not a terminal. Compare the fingerprints above with "
                  "the hosts' own (on a console: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), then rerun with "
                  "--yes.", file=sys.stderr)
            return int(ExitCode.USAGE)
        added = declined = 0
        for s in new:
            if args.yes or confirm(s):
                append(s)
                added += 1
            else:
                declined += 1
        if new:
            print(f"recorded {added} new key(s)" + (f"; {declined} declined, not recorded" if declined else ""))
    changed = [s for s in everything if s.state == "changed"]
    unreachable = [s for s in everything if s.state == "unreachable"]
    if changed:
        print(f"{len(changed)} host key(s) CHANGED and left as recorded: a reinstalled host or a man in the middle. "
              "Check on the host's console; then remove the old entry (ssh-keygen -R HOST -f FILE) and rerun.",
              file=sys.stderr)
    if unreachable:
        print(f"{len(unreachable)} host(s) could not be reached: {', '.join(s.label for s in unreachable)}", file=sys.stderr)
    return int(ExitCode.INFRASTRUCTURE if changed or unreachable else ExitCode.OK)
