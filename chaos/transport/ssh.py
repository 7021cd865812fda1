"""A few SSH connections per node, shared by every task of a run.

A fresh ``ssh`` per command costs a key exchange and a login shell each time (about 290 ms
here); one asyncssh connection with several channels costs a round trip. OpenSSH allows
``MaxSessions`` (10) channels per connection and refuses the tenth with "open failed", so at
most ``max_channels`` (8) are open on one connection.

Commands get up to ``max_connections`` (3) connections per node, so up to 24 run at once: a
wave of 50 routers on 6 nodes put 11 - 18 of its injections on one node (bench/README.md,
``scale_bench.py``), and with 8 channels the last ones waited for the first to end, on top of
each action's own checks running meanwhile. A second connection is also a second sshd process
on the node, so the sessions it starts are forked in parallel with the first's. The extra
connections are opened only when the commands in flight need them (or ahead of a wave,
``prepare``), so a small run keeps one. Long-lived streams (the primary observer follows each
node over one channel for the whole run) get a connection of their own, so they never take a
command's channel. Each is a connection to sshd like any other: at most 4 per node, well
within sshd's ``MaxStartups`` (10 unauthenticated at once).

Host keys are always verified against the node's ``known_hosts`` (or ``~/.ssh/known_hosts``);
turning that off takes an explicit ``insecure_no_host_key_check=True`` and logs a warning. A
node's key is recorded only by ``chaos known-hosts add`` (``fetch_host_key`` here), which shows
its fingerprint and asks first.

OpenSSH's client config is not read here (``config=None`` for asyncssh): it was applied when the
node was described (``chaos.transport.ssh_config``, from the inventory loader), so the ``Node``
holds every setting a connection uses, the dry run can print them, and nothing in the
environment changes a connection behind the inventory's back.
When a node has ``netns`` set, the TCP socket is opened inside that network namespace and
handed to asyncssh, which is how lab nodes are reached without any route in the root namespace.
A connection that breaks (a node rebooted) is dropped and the next command reconnects.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import asyncssh
from pydantic import BaseModel

from chaos.errors import InfrastructureError, InvalidInput
from chaos.log import get_logger
from chaos.model import Node
from chaos.transport.netns import open_socket
from chaos.transport.node_commands import as_root

log = get_logger("ssh")

DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts")
KEEPALIVE_INTERVAL = 2.0  # a half-open connection to a node that lost power dies in ~6 s
KEEPALIVE_COUNT_MAX = 3
OPEN_RETRIES = 8  # 5 ms doubling: gives sshd up to about 1.3 s to free a session slot


class CommandResult(BaseModel):
    node: str
    command: str
    exit_status: int
    stdout: str
    stderr: str
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


class _Client(asyncssh.SSHClient):
    """Remembers that the connection is gone, so the pool reconnects instead of reusing it."""

    def __init__(self) -> None:
        self.lost = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


class _Conn:
    def __init__(self, conn: asyncssh.SSHClientConnection, client: _Client, jump: asyncssh.SSHClientConnection | None) -> None:
        self.conn = conn
        self.client = client
        self.jump = jump

    @property
    def usable(self) -> bool:
        return not self.client.lost and not self.conn.is_closed()

    def close(self) -> None:
        self.conn.close()
        if self.jump is not None:
            self.jump.close()


def _tail(text: str, lines: int = 5) -> str:
    return " / ".join(text.strip().splitlines()[-lines:])


def parse_jump_host(spec: str) -> tuple[str | None, str, int]:
    """``user@host:port`` (user and port optional, IPv6 in brackets) -> (user, host, port)."""
    user, _, hostport = spec.rpartition("@")
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = hostport.partition(":")
    if not host:
        raise InvalidInput(f"jump host {spec!r} is not user@host:port")
    try:
        return (user or None, host, int(port) if port else 22)
    except ValueError:
        raise InvalidInput(f"jump host {spec!r} has a port that is not a number") from None


class _Lane:
    """One connection to a node (None until opened, or once it broke) and its channels in use."""

    def __init__(self) -> None:
        self.conn: _Conn | None = None
        self.in_use = 0
        self.lock = asyncio.Lock()

    @property
    def open(self) -> bool:
        return self.conn is not None and self.conn.usable

    def drop(self, conn: _Conn | None = None) -> None:
        """Forget the connection (only ``conn``, if given and still the lane's) and close it."""
        if self.conn is not None and (conn is None or self.conn is conn):
            self.conn.close()
            self.conn = None


class SshPool:
    """SSH connections to a set of nodes, opened on first use and closed on exit: up to
    ``max_connections`` per node for commands, one more for streams (see the module docstring)."""

    def __init__(
        self,
        nodes: Sequence[Node],
        *,
        max_channels: int = 8,
        max_connections: int = 3,
        connect_timeout: float = 10,
        command_timeout: float = 30,
        connect_retries: int = 3,
        retry_backoff: float = 0.5,
        insecure_no_host_key_check: bool = False,
    ) -> None:
        if not 1 <= max_channels <= 9:
            raise ValueError("max_channels must be 1..9: OpenSSH refuses the 10th channel (MaxSessions 10)")
        if not 1 <= max_connections <= 8:
            raise ValueError("max_connections must be 1..8: sshd's MaxStartups (10) bounds the logins in progress")
        self.nodes = {n.name: n for n in nodes}
        self.max_channels = max_channels
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.connect_retries = connect_retries
        self.retry_backoff = retry_backoff
        self.insecure = insecure_no_host_key_check
        if self.insecure:
            log.warning("SSH host keys will NOT be verified (insecure_no_host_key_check)", nodes=sorted(self.nodes))
        self._lanes = {name: [_Lane() for _ in range(max_connections)] for name in self.nodes}
        self._stream_lanes = {name: _Lane() for name in self.nodes}
        # Commands: max_channels on each of max_connections; streams: max_channels on their own.
        self._channels = {name: asyncio.Semaphore(max_channels * max_connections) for name in self.nodes}
        self._stream_channels = {name: asyncio.Semaphore(max_channels) for name in self.nodes}

    async def __aenter__(self) -> SshPool:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    def _all_lanes(self, name: str) -> list[_Lane]:
        return [*self._lanes[name], self._stream_lanes[name]]

    async def close(self) -> None:
        conns = [lane.conn for name in self.nodes for lane in self._all_lanes(name) if lane.conn is not None]
        for name in self.nodes:
            for lane in self._all_lanes(name):
                lane.drop()
        for c in conns:
            try:
                async with asyncio.timeout(5):
                    await c.conn.wait_closed()
            except (TimeoutError, OSError, asyncssh.Error):
                pass

    def node(self, name: str) -> Node:
        try:
            return self.nodes[name]
        except KeyError:
            raise InfrastructureError(f"no node named {name!r} in this run's topology") from None

    def forget(self, name: str) -> None:
        """Drop a node's connections (after a reboot, say); the next command reconnects."""
        if name in self.nodes:
            for lane in self._all_lanes(name):
                lane.drop()

    async def prepare(self, name: str, channels: int) -> None:
        """Open the connections ``channels`` commands at once will need on the node, now, so
        that a wave of injections does not pay a key exchange in its middle (one more
        connection per ``max_channels``, up to ``max_connections``). Raises InfrastructureError
        as a command would when the node cannot be reached."""
        wanted = min(self.max_connections, max(1, -(-channels // self.max_channels)))
        error: InfrastructureError | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                for lane in self._lanes[self.node(name).name][:wanted]:
                    tg.create_task(self._connection(name, lane))
        except* InfrastructureError as group:
            error = group.exceptions[0]  # type: ignore[assignment]
        if error is not None:  # raised out here: inside except* it would be wrapped in a group again
            raise error

    # ------------------------------------------------------------------ connecting
    def _known_hosts(self, node: Node) -> Any:
        if self.insecure:
            return None
        path = (node.known_hosts or DEFAULT_KNOWN_HOSTS).expanduser()
        if not path.is_file():
            raise InfrastructureError(
                f"{node.name}: no known_hosts file at {path}; host keys must be verifiable",
                hint="set known_hosts for the node in the inventory, or add the host key to ~/.ssh/known_hosts",
            )
        return str(path)

    def _options(self, node: Node, user: str, known_hosts: Any) -> dict[str, Any]:
        options: dict[str, Any] = {
            "username": user,
            "known_hosts": known_hosts,
            "config": None,  # ~/.ssh/config was applied to the Node already (chaos.transport.ssh_config)
            "connect_timeout": self.connect_timeout,
            "login_timeout": self.connect_timeout,
            "keepalive_interval": KEEPALIVE_INTERVAL,
            "keepalive_count_max": KEEPALIVE_COUNT_MAX,
        }
        if node.key_file is not None:
            options["client_keys"] = [str(node.key_file.expanduser())]
            options["agent_path"] = os.environ.get("SSH_AUTH_SOCK") or None
        return options

    async def _jump(self, node: Node, known_hosts: Any) -> asyncssh.SSHClientConnection | None:
        """The connection to the node's jump host (its key verified like any node's), if it has one."""
        if not node.jump_host:
            return None
        juser, jhost, jport = parse_jump_host(node.jump_host)
        jsock = await open_socket(node.netns, jhost, jport, self.connect_timeout) if node.netns else None
        return await asyncssh.connect(jhost, jport, sock=jsock, **self._options(node, juser or node.user, known_hosts))

    async def _socket(self, node: Node) -> Any:
        """A socket to the node inside its namespace (None: asyncssh connects by itself)."""
        if node.netns and not node.jump_host:
            return await open_socket(node.netns, node.address, node.port, self.connect_timeout)
        return None

    async def fetch_host_key(self, name: str, algorithms: Sequence[str] = ()) -> asyncssh.SSHKey:
        """The host key the node presents, without logging in and without trusting it: for
        ``chaos known-hosts add``, which shows its fingerprint and records it only when told to.
        ``algorithms`` restricts the key types the server may choose (those already recorded for
        it, as a connection does). A jump host on the way is verified as usual (its key must be
        known first)."""
        node = self.node(name)
        jump: asyncssh.SSHClientConnection | None = None
        try:
            async with asyncio.timeout(self.connect_timeout + 2):
                jump = await self._jump(node, self._known_hosts(node)) if node.jump_host else None
                key = await asyncssh.get_server_host_key(
                    node.address, node.port, tunnel=jump or (), sock=await self._socket(node), config=None,
                    server_host_key_algs=list(algorithms) or (),
                )
        except asyncssh.HostKeyNotVerifiable as exc:
            raise InfrastructureError(
                f"{name}: the host key of its jump host {node.jump_host} is not trusted ({exc.reason})",
                hint="record the jump host's key first (chaos known-hosts add records it before the nodes behind it)",
            ) from None
        except (OSError, TimeoutError, asyncssh.Error) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else (str(exc) or type(exc).__name__)
            raise InfrastructureError(f"{name}: cannot reach {node.address}:{node.port} over SSH: {reason}") from None
        finally:
            if jump is not None:
                jump.close()
        if key is None:
            raise InfrastructureError(f"{name}: {node.address}:{node.port} presented no host key")
        return key

    async def _open(self, node: Node) -> _Conn:
        known_hosts = self._known_hosts(node)
        jump: asyncssh.SSHClientConnection | None = None
        try:
            async with asyncio.timeout(self.connect_timeout + 2):
                jump = await self._jump(node, known_hosts)
                sock = await self._socket(node)
                client = _Client()
                conn, _ = await asyncssh.create_connection(
                    lambda: client,
                    node.address,
                    node.port,
                    sock=sock,
                    tunnel=jump,
                    **self._options(node, node.user, known_hosts),
                )
                return _Conn(conn, client, jump)
        except BaseException:
            if jump is not None:
                jump.close()
            raise

    async def _connection(self, name: str, lane: _Lane) -> _Conn:
        node = self.node(name)
        if lane.open:
            assert lane.conn is not None
            return lane.conn
        async with lane.lock:
            if lane.open:
                assert lane.conn is not None
                return lane.conn
            lane.drop()
            last: BaseException | None = None
            for attempt in range(self.connect_retries + 1):
                _raise_if_cancelling()
                if attempt:
                    await asyncio.sleep(self.retry_backoff * 2 ** (attempt - 1))
                try:
                    conn = await self._open(node)
                except asyncssh.HostKeyNotVerifiable as exc:
                    raise InfrastructureError(
                        f"{name}: the host key of {node.address} is not trusted by {node.known_hosts or DEFAULT_KNOWN_HOSTS} ({exc.reason})",
                        hint="a changed host key can mean a reinstalled node or a man in the middle; check it, then update known_hosts",
                    ) from None
                except asyncssh.PermissionDenied as exc:
                    raise InfrastructureError(
                        f"{name}: SSH authentication as {node.user} failed ({exc.reason})",
                        hint="check the node's user and key_file, or the keys of your ssh-agent",
                    ) from None
                except asyncssh.KeyImportError as exc:
                    # A ValueError, not an asyncssh.Error: without this a key file that is no key
                    # ended the run as an internal error (found by tests/test_fuzz_experiments.py).
                    raise InvalidInput(
                        f"{name}: the SSH key file {node.key_file} cannot be used: {exc}",
                        hint="point key_file at an OpenSSH private key (ssh-keygen -y -f FILE checks one)",
                    ) from None
                except (OSError, TimeoutError, asyncssh.Error) as exc:
                    last = exc
                    log.debug("ssh connect failed", node=name, attempt=attempt + 1, error=str(exc) or type(exc).__name__)
                    continue
                lane.conn = conn
                return conn
            reason = "timed out" if isinstance(last, TimeoutError) else (str(last) or type(last).__name__)
            raise InfrastructureError(
                f"{name}: cannot reach {node.address}:{node.port} over SSH after {self.connect_retries + 1} attempts: {reason}"
            )

    # ------------------------------------------------------------------ commands
    def _pick(self, lanes: list[_Lane]) -> _Lane:
        """Where a command's channel goes: the open connection with the fewest channels in use
        that has room (spreading a wave over the sshd processes ``prepare`` opened), else the
        first connection not open yet. The node's semaphore guarantees one has room."""
        room = [lane for lane in lanes if lane.in_use < self.max_channels]
        opened = [lane for lane in room if lane.open]
        return min(opened, key=lambda lane: lane.in_use) if opened else room[0]

    def _wrap(self, name: str, command: str) -> str:
        return as_root(command, self.node(name).sudo)

    async def run(
        self, node: str, command: str, *, timeout: float | None = None, check: bool = True, input: str | None = None
    ) -> CommandResult:
        """Run one command on ``node`` and collect its output.

        Raises InfrastructureError when the node cannot be reached, the command outlives
        ``timeout`` (its channel is closed), the connection breaks, or, with ``check``, the
        command exits non-zero (the message carries the tail of stderr).

        A command is sent once and never again: only the connection and the channel's opening
        are retried, both before the command exists on the node. Once the channel is open the
        command may have run even when its result never comes back (the connection broke in
        between), and the commands that inject a fault are not idempotent (``iptables -I``, a
        dead-man's scheduling, a signal): re-sending one would inject twice. The error then says
        the command may have run; the caller's undo (idempotent) is what deals with it.
        """
        limit = self.command_timeout if timeout is None else timeout
        started = time.monotonic()
        lanes = self._lanes[self.node(node).name]
        # A node that cannot be reached fails with the connection's own error, not the command's timeout.
        conn = await self._connection(node, lanes[0])
        lane = lanes[0]
        process: asyncssh.SSHClientProcess[str] | None = None
        try:
            async with asyncio.timeout(limit):
                async with self._channels[node]:
                    lane = self._pick(lanes)
                    lane.in_use += 1
                    try:
                        conn = await self._connection(node, lane)
                        process = await _open_channel(conn.conn, self._wrap(node, command), input=input)
                        completed = await process.wait(check=False)
                    finally:
                        # sshd counts a session until the close handshake ends; only then is the slot free.
                        await _close_channel(process)
                        lane.in_use -= 1
        except TimeoutError:
            raise InfrastructureError(f"{node}: command timed out after {limit:g}s: {_short(command)}") from None
        except (OSError, asyncssh.Error) as exc:
            if not conn.usable:
                lane.drop(conn)
            # A refused channel never carried the command; any later failure may have come
            # after the exec request reached sshd (its reply is the first thing awaited).
            sent = "" if isinstance(exc, asyncssh.ChannelOpenError) else "; it was sent and may have run on the node"
            raise InfrastructureError(f"{node}: SSH failed while running {_short(command)}: {exc or type(exc).__name__}{sent}") from None
        status = completed.exit_status
        if status is None:  # ended by a signal
            status = 128 + _signal_number(completed.exit_signal)
        result = CommandResult(
            node=node,
            command=command,
            exit_status=status,
            stdout=str(completed.stdout or ""),
            stderr=str(completed.stderr or ""),
            duration_s=time.monotonic() - started,
        )
        if check and status != 0:
            raise InfrastructureError(f"{node}: command exited {status}: {_short(command)}: {_tail(result.stderr) or _tail(result.stdout)}")
        return result

    async def stream(self, node: str, command: str, *, timeout: float | None = None) -> AsyncIterator[str]:
        """Lines (without newline) of a long-lived command, until it ends or ``timeout`` passes.

        The channel is closed when the iterator is closed or cancelled: use it inside
        ``contextlib.aclosing`` (or let cancellation reach it) so the channel is never left open.
        ``timeout`` (default ``command_timeout``) bounds the whole stream; at the deadline the
        iteration simply ends.
        """
        limit = self.command_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        lane = self._stream_lanes[self.node(node).name]
        channels = self._stream_channels[node]
        conn = await self._connection(node, lane)
        process: asyncssh.SSHClientProcess[str] | None = None
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await channels.acquire()
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    process = await _open_channel(conn.conn, self._wrap(node, command))
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    try:
                        async with asyncio.timeout(remaining):
                            line = await process.stdout.readline()
                    except TimeoutError:
                        return
                    if not line:
                        return
                    yield line.rstrip("\n")
            finally:
                try:
                    await _close_channel(process)
                finally:
                    channels.release()
        except TimeoutError:
            raise InfrastructureError(f"{node}: could not open a channel within {limit:g}s for {_short(command)}") from None
        except (OSError, asyncssh.Error) as exc:
            if not conn.usable:
                lane.drop(conn)
            raise InfrastructureError(f"{node}: SSH failed while streaming {_short(command)}: {exc}") from None


async def _open_channel(
    conn: asyncssh.SSHClientConnection, command: str, *, input: str | None = None
) -> asyncssh.SSHClientProcess[str]:
    """Open a channel, retrying briefly when sshd still counts sessions that just closed.

    sshd frees a session slot only once it has reaped the session's child, a little after the
    channel's close handshake; at 8 channels in flight it was seen to refuse about one open in
    ten ("open failed") for a few milliseconds. Those refusals are retried, nothing else.
    """
    for attempt in range(OPEN_RETRIES):
        try:
            return await conn.create_process(command, input=input, encoding="utf-8", errors="replace")
        except asyncssh.ChannelOpenError:
            if attempt == OPEN_RETRIES - 1:
                raise
            await asyncio.sleep(0.005 * 2**attempt)
    raise AssertionError("unreachable")


def _raise_if_cancelling() -> None:
    """Stop retrying when this task has been asked to stop.

    A cancellation that arrives during asyncssh's handshake can come out as an ``asyncssh.Error``
    (the connection it was building is lost) rather than as CancelledError; the retry loop then
    took it for a failed attempt and went on connecting, and the cancelled task (an observer's
    stream, a poll) lived on until the run's own time limit: a run whose injection failed after
    an SSH drop rolled back only at max_run_duration, 100 s later. ``Task.cancelling()`` still
    counts the request, so it is honoured here."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _close_channel(process: asyncssh.SSHClientProcess[str] | None) -> None:
    """Close a channel and wait (briefly) for the server to confirm, even when cancelled."""
    if process is None:
        return
    process.close()
    try:
        async with asyncio.timeout(2):
            await asyncio.shield(process.wait_closed())
    except (TimeoutError, OSError, asyncssh.Error):
        pass


def _short(command: str, limit: int = 120) -> str:
    one_line = " ".join(command.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 3] + "..."


def _signal_number(name: str | None) -> int:
    import signal

    try:
        return int(signal.Signals[f"SIG{name}"]) if name else 0
    except KeyError:
        return 0
