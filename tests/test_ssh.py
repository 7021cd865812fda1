"""SshPool against the shared lab: real sshd on the nodes, reached through the vantage namespace."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import asyncssh
import pytest

from chaos.errors import InfrastructureError, InvalidInput
from chaos.model import Node, Topology
from chaos.transport.ssh import SshPool, parse_jump_host

pytestmark = pytest.mark.lab


def topology(lab) -> Topology:  # type: ignore[no-untyped-def]
    return Topology.model_validate_json((lab.dir / "inventory.json").read_text())


async def test_run_verifies_host_key_and_runs_commands(lab) -> None:  # type: ignore[no-untyped-def]
    topo = topology(lab)
    async with SshPool(topo.nodes) as pool:
        for node in topo.nodes:
            result = await pool.run(node.name, "hostname")
            assert result.stdout.strip() == node.name and result.exit_status == 0
        name = topo.nodes[0].name
        echoed = await pool.run(name, "cat", input="through stdin\n")
        assert echoed.stdout == "through stdin\n"
        failed = await pool.run(name, "echo out; echo oops >&2; exit 7", check=False)
        assert (failed.exit_status, failed.stdout, failed.stderr) == (7, "out\n", "oops\n")
        with pytest.raises(InfrastructureError, match=r"exited 7.*oops"):
            await pool.run(name, "echo oops >&2; exit 7")
        with pytest.raises(InfrastructureError, match="timed out"):
            await pool.run(name, "sleep 5", timeout=0.5)
        # the pool still works after a timeout closed that channel
        assert (await pool.run(name, "echo still")).stdout == "still\n"


async def test_wrong_host_key_is_refused(lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = topology(lab).nodes[0]
    other_key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    known = tmp_path / "known_hosts"
    known.write_text(f"{node.address} {other_key}\n")
    bad = node.model_copy(update={"known_hosts": known})
    async with SshPool([bad], connect_retries=0) as pool:
        with pytest.raises(InfrastructureError, match="host key"):
            await pool.run(bad.name, "true")


async def test_missing_known_hosts_is_an_error_not_a_silent_accept(lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = topology(lab).nodes[0].model_copy(update={"known_hosts": tmp_path / "absent"})
    async with SshPool([node]) as pool:
        with pytest.raises(InfrastructureError, match="known_hosts"):
            await pool.run(node.name, "true")


async def test_wrong_client_key_is_an_authentication_failure(lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key = tmp_path / "id_other"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(key))
    node = topology(lab).nodes[0].model_copy(update={"key_file": key})
    async with SshPool([node], connect_retries=0) as pool:
        with pytest.raises(InfrastructureError, match="authentication"):
            await pool.run(node.name, "true")


async def test_unreachable_node_fails_after_retries(lab) -> None:  # type: ignore[no-untyped-def]
    node = topology(lab).nodes[0].model_copy(update={"name": "ghost", "address": "198.51.100.250"})
    async with SshPool([node], connect_timeout=1, connect_retries=1, retry_backoff=0.1) as pool:
        started = time.monotonic()
        with pytest.raises(InfrastructureError, match="cannot reach .* after 2 attempts"):
            await pool.run("ghost", "true")
        assert time.monotonic() - started < 10


async def test_more_commands_than_channels_on_one_node(lab) -> None:  # type: ignore[no-untyped-def]
    """20 commands at once on one connection: all succeed, at most 8 channels open (so at least
    3 waves of 0.4 s)."""
    node = topology(lab).nodes[1]
    async with SshPool([node], max_channels=8, max_connections=1) as pool:
        await pool.run(node.name, "true")  # connected
        started = time.monotonic()
        results = await asyncio.gather(*(pool.run(node.name, f"sleep 0.4; echo {i}") for i in range(20)))
        elapsed = time.monotonic() - started
    assert [r.stdout.strip() for r in results] == [str(i) for i in range(20)]
    assert elapsed >= 3 * 0.4 - 0.05, f"{elapsed:.2f}s: more than 8 channels were open at once"


async def test_a_wave_of_commands_spreads_over_connections_and_streams_take_none_of_their_channels(lab) -> None:  # type: ignore[no-untyped-def]
    """24 commands at once beside a held stream (the observer's): with 3 connections of 8
    channels each, opened ahead (``prepare``), they run in one round of 0.4 s, and no channel
    is refused (sshd's MaxSessions counts per connection)."""
    node = topology(lab).nodes[1]
    async with SshPool([node], max_channels=8, max_connections=3) as pool:
        await pool.prepare(node.name, 24)
        assert sum(lane.open for lane in pool._lanes[node.name]) == 3
        lines = pool.stream(node.name, "while true; do echo x; sleep 0.1; done", timeout=20)
        async with contextlib.aclosing(lines):
            assert await anext(lines) == "x"
            started = time.monotonic()
            results = await asyncio.gather(*(pool.run(node.name, f"sleep 0.4; echo {i}") for i in range(24)))
            elapsed = time.monotonic() - started
        assert [r.stdout.strip() for r in results] == [str(i) for i in range(24)]
        assert elapsed < 2 * 0.4, f"{elapsed:.2f}s: the commands queued for channels"
        assert all(lane.in_use == 0 for lane in pool._lanes[node.name])


async def test_stream_yields_lines_and_closing_it_ends_the_remote_command(lab) -> None:  # type: ignore[no-untyped-def]
    node = topology(lab).nodes[2]
    marker = f"streamtest{int(time.time() * 1000)}"
    command = f"i=0; while [ $i -lt 600 ]; do echo {marker} $i; i=$((i+1)); sleep 0.05; done"
    probe = f"ps -eo args | grep -c '[s]treamtest{marker[10:]}' || true"
    async with SshPool([node]) as pool:
        lines = []
        async with contextlib.aclosing(pool.stream(node.name, command, timeout=20)) as stream:
            async for line in stream:
                lines.append(line)
                if len(lines) == 3:
                    break
        assert lines == [f"{marker} 0", f"{marker} 1", f"{marker} 2"]
        await _until_gone(pool, node.name, probe)

        # cancelling the consumer closes the channel as well
        async def consume() -> None:
            async for _ in pool.stream(node.name, command, timeout=20):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.5)
        assert int((await pool.run(node.name, probe)).stdout.strip()) >= 1
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await _until_gone(pool, node.name, probe)
        # every channel slot is free again
        results = await asyncio.gather(*(pool.run(node.name, "true") for _ in range(8)))
        assert all(r.exit_status == 0 for r in results)


async def test_stream_ends_at_its_deadline(lab) -> None:  # type: ignore[no-untyped-def]
    node = topology(lab).nodes[0]
    async with SshPool([node]) as pool:
        started = time.monotonic()
        lines = [line async for line in pool.stream(node.name, "while true; do echo x; sleep 0.1; done", timeout=1.0)]
        assert 3 <= len(lines) <= 12 and time.monotonic() - started < 3


async def test_jump_host(lab) -> None:  # type: ignore[no-untyped-def]
    """network-2 reached through network-1: the tunnel and both host keys checked."""
    topo = topology(lab)
    jump, target = topo.nodes[0], topo.nodes[1]
    via = target.model_copy(update={"jump_host": f"root@{jump.address}:{jump.port}"})
    async with SshPool([via]) as pool:
        assert (await pool.run(via.name, "hostname")).stdout.strip() == target.name


def test_parse_jump_host() -> None:
    assert parse_jump_host("ops@bastion.example:2222") == ("ops", "bastion.example", 2222)
    assert parse_jump_host("bastion") == (None, "bastion", 22)
    assert parse_jump_host("u@[2001:db8::1]:22") == ("u", "2001:db8::1", 22)
    with pytest.raises(InvalidInput):
        parse_jump_host("u@host:port")


def test_channel_limit_stays_below_sshds_max_sessions() -> None:
    node = Node(name="n1", address="198.51.100.99")
    with pytest.raises(ValueError):
        SshPool([node], max_channels=10)


async def _until_gone(pool: SshPool, node: str, probe: str, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    count = -1
    while time.monotonic() < deadline:
        count = int((await pool.run(node, probe)).stdout.strip())
        if count == 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the streamed command still runs ({count} processes) after its channel closed")
