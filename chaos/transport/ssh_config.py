"""OpenSSH's client configuration (``~/.ssh/config``) applied to a node, as ``ssh`` applies it.

Why it is read by default: the SRE who runs an experiment on a staging cloud already reaches its
network nodes with ``ssh net-1`` (a bastion through ``ProxyJump``, a login name, a key, a
management address through ``HostName``), and that file is where those facts live. An inventory
that had to repeat them would drift from it, and a tool that connected differently from ``ssh``
would fail where ``ssh`` works. ``ssh_config: false`` in an inventory turns it off (for a node or
in ``defaults:``); ``ssh_config: FILE`` reads another file.

How it combines with the inventory, in OpenSSH's own terms: the node's address (or, without one,
its name) is what you would type after ``ssh``; the file is read for it exactly as ``ssh -G
<that>`` reads it (``Host``/``Match`` blocks, the first value wins, ``HostName`` included), and
every SSH key the inventory writes (in the node's entry or in ``defaults:``) acts like a
command-line option: it wins over the file. What neither says takes the tool's defaults (user
``root``, port 22, the agent and ``~/.ssh/id_*``, ``~/.ssh/known_hosts``).

Read here, from the file: ``HostName``, ``User``, ``Port``, ``IdentityFile`` (the first one that
exists), ``UserKnownHostsFile`` (the first), ``ProxyJump`` (one hop; the jump host's own
``HostName``/``User``/``Port`` are read too). ``ProxyCommand`` is refused rather than ignored:
the tool cannot run it, and connecting another way than ``ssh`` does would be a surprise.
``StrictHostKeyChecking`` is not honoured: host keys are always verified (``chaos known-hosts
add`` records new ones, never silently).

The parser is asyncssh's (``asyncssh.config.SSHClientConfig``), which follows OpenSSH's rules;
tests compare its reading with ``ssh -G``.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from pathlib import Path

from chaos.errors import InvalidInput

DEFAULT_SSH_CONFIG = Path("~/.ssh/config")


@dataclass(frozen=True)
class SshConfigValues:
    """What the file says for one host (None: the file does not say)."""

    hostname: str | None
    user: str | None
    port: int | None
    identity_files: tuple[Path, ...]
    known_hosts: tuple[Path, ...]
    proxy_jump: str | None
    proxy_command: str | None


def default_ssh_config() -> Path | None:
    """``~/.ssh/config`` of the user the tool runs as, if there is one (as ``ssh`` reads it)."""
    path = DEFAULT_SSH_CONFIG.expanduser()
    return path if path.is_file() else None


def read_ssh_config(host: str, path: Path) -> SshConfigValues:
    """The settings ``ssh <host>`` would take from the file at ``path``.

    A file that cannot be read or parsed is ``InvalidInput`` (exit 3) naming the file and line.
    """
    from asyncssh.config import SSHClientConfig

    try:
        local_user = getpass.getuser()
    except (KeyError, OSError):
        local_user = "root"
    try:
        config = SSHClientConfig.load(None, [path], False, False, False, local_user, (), host, ())
    except OSError as exc:
        raise InvalidInput(f"cannot read the SSH client config {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # asyncssh's ConfigParseError (and friends) say "<file> line N: why"
        raise InvalidInput(
            f"SSH client config: {exc}",
            hint=f"fix the file, or set ssh_config: false in the inventory to connect without {path}",
        ) from None

    def text(option: str) -> str | None:
        value = config.get(option)
        return str(value) if value not in (None, "") else None

    def paths(option: str) -> tuple[Path, ...]:
        value = config.get(option) or []
        items = value if isinstance(value, list) else [value]
        return tuple(Path(str(v)).expanduser() for v in items if v)

    port = config.get("Port")
    return SshConfigValues(
        hostname=text("Hostname"),
        user=text("User"),
        port=int(port) if isinstance(port, int) else None,
        identity_files=paths("IdentityFile"),
        known_hosts=paths("UserKnownHostsFile"),
        proxy_jump=text("ProxyJump"),
        proxy_command=text("ProxyCommand"),
    )


def _split_hop(spec: str) -> tuple[str | None, str, int | None]:
    """``[ssh://][user@]host[:port]`` (IPv6 in brackets) -> (user, host, port or None)."""
    spec = spec.removeprefix("ssh://")
    user, _, hostport = spec.rpartition("@")
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = hostport.partition(":")
    if not host:
        raise ValueError(f"{spec!r} is not [user@]host[:port]")
    try:
        port = int(port_text) if port_text else None
    except ValueError:
        raise ValueError(f"{spec!r} has a port that is not a number") from None
    return (user or None), host, port


def jump_from_config(proxy_jump: str, path: Path, *, node: str) -> str:
    """A ``ProxyJump`` value as the inventory's ``jump_host`` (``user@host:port``), the jump host's
    alias resolved through the same file, as ``ssh`` resolves it. One hop only."""
    hops = [h.strip() for h in proxy_jump.split(",") if h.strip()]
    if len(hops) != 1:
        raise InvalidInput(
            f"{path}: ProxyJump for {node} lists {len(hops)} hops ({proxy_jump}); chaos goes through one jump host",
            hint="set jump_host: in the inventory for this node (it wins over the config), or ssh_config: false",
        )
    try:
        user, alias, port = _split_hop(hops[0])
    except ValueError as exc:
        raise InvalidInput(f"{path}: ProxyJump for {node}: {exc}") from None
    jump = read_ssh_config(alias, path)
    if jump.proxy_jump or jump.proxy_command:
        raise InvalidInput(
            f"{path}: the jump host {alias} of {node} has a ProxyJump/ProxyCommand of its own; "
            "chaos goes through one jump host",
            hint="set jump_host: in the inventory for this node, or ssh_config: false",
        )
    host = jump.hostname or alias
    user = user or jump.user
    port = port or jump.port or 22
    shown = f"[{host}]" if ":" in host else host
    return f"{user + '@' if user else ''}{shown}:{port}"


def settings_from_config(alias: str, path: Path, *, node: str, given: set[str]) -> dict[str, object]:
    """The ``chaos.model.Node`` fields the file sets for ``alias`` and the inventory does not
    (``given``: the SSH keys the inventory writes for the node). ``address`` comes from
    ``HostName``."""
    values = read_ssh_config(alias, path)
    out: dict[str, object] = {}
    if values.hostname:
        out["address"] = values.hostname
    if values.user and "user" not in given:
        out["user"] = values.user
    if values.port and "port" not in given:
        out["port"] = values.port
    if "key_file" not in given:
        existing = next((p for p in values.identity_files if p.is_file()), None)
        if existing is not None:
            out["key_file"] = existing
    if values.known_hosts and "known_hosts" not in given:
        out["known_hosts"] = values.known_hosts[0]
    if "jump_host" not in given:
        if values.proxy_jump:
            out["jump_host"] = jump_from_config(values.proxy_jump, path, node=node)
        elif values.proxy_command:
            raise InvalidInput(
                f"{path}: ProxyCommand applies to {alias} (node {node}); chaos does not run proxy commands",
                hint="use ProxyJump in the config, jump_host: in the inventory, or ssh_config: false for this node",
            )
    return out
