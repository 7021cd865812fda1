"""neutron-server on a loopback port: a TCP forwarder from 127.0.0.1 into the controller's namespace.

neutron-server listens on the controller's management address, inside the lab. The tool (and
openstacksdk) run in the root namespace, where the lab adds no address or route; so the lab's
services process listens on a loopback port and, per connection, opens a socket inside the
controller's namespace (``chaos.transport.netns``) and copies bytes both ways. The catalog of
the lab's Keystone names that loopback URL as the network endpoint: the same shape as the
emulated backend's API.
"""

from __future__ import annotations

import asyncio
import socket
from contextlib import suppress

import structlog

from chaos.transport.netns import open_socket

log = structlog.get_logger("lab.forward")

CONNECT_TIMEOUT = 5.0
IDLE_TIMEOUT = 600.0  # a connection with no byte either way for this long is closed


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            async with asyncio.timeout(IDLE_TIMEOUT):
                data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            async with asyncio.timeout(IDLE_TIMEOUT):
                await writer.drain()
    except (ConnectionError, OSError, TimeoutError):
        pass
    finally:
        with suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


class Forwarder:
    """127.0.0.1:<port> -> ``host:port`` inside namespace ``netns``."""

    def __init__(self, netns: str, host: str, port: int) -> None:
        self.netns, self.host, self.port = netns, host, port
        self.server: asyncio.Server | None = None
        self.url = ""
        self.connections: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.server = await asyncio.start_server(self._serve, sock=sock)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        log.info("forwarder ready", url=self.url, to=f"{self.netns}:{self.host}:{self.port}")
        return self.url

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.connections.add(task)
        try:
            try:
                inner = await open_socket(self.netns, self.host, self.port, CONNECT_TIMEOUT)
            except OSError as exc:  # neutron-server down (booting, restarting): the client sees a reset
                log.info("forward target unreachable", error=str(exc))
                return
            server_r, server_w = await asyncio.open_connection(sock=inner)
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(_pipe(client_r, server_w))
                    tg.create_task(_pipe(server_r, client_w))
            finally:
                server_w.close()
        finally:
            client_w.close()
            if task is not None:
                self.connections.discard(task)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.connections):
            task.cancel()
        if self.connections:
            await asyncio.gather(*self.connections, return_exceptions=True)
