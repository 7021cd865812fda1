"""The lab's management plane, one long-lived process per lab (``chaos.lab.services``).

- A BMC for every node, speaking Redfish as server hardware does
  (``POST /redfish/v1/Systems/<node>/Actions/ComputerSystem.Reset``), so that the tool
  power-cycles a lab node through the same code path as a real server. It listens on loopback
  only and asks for HTTP basic credentials kept in the lab folder (mode 0600).
- The TCP echo service (RFC 862, port 7) of every VM and of the vantage point. Listening
  sockets are created inside those namespaces; the process itself stays in the root
  namespace, where it binds nothing but loopback.
- The lab's Keystone and, for the emulated backend, its Neutron API; for the neutron backend
  Keystone also listens inside the controller's namespace (for keystonemiddleware) and a
  loopback forwarder reaches neutron-server (``chaos.lab.real.forward``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hmac
import json
import os
import socket
import time
from pathlib import Path

import structlog
from aiohttp import web

from chaos.lab.node import is_powered, power_off, power_on
from chaos.lab.spec import ECHO_PORT, LabSpec, NodeSpec
from chaos.log import configure_logging
from chaos.transport.netns import socket_in_netns

log = structlog.get_logger("lab.services")

RESET_TYPES = ("On", "ForceOff", "ForceRestart", "GracefulRestart", "PowerCycle")


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


def _listener(ns: str, address: str, port: int) -> socket.socket:
    sock = socket_in_netns(ns, socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(512)
    sock.setblocking(False)
    return sock


class Bmc:
    """Power control of every node; reboots run in the background, one at a time per node."""

    def __init__(self, spec: LabSpec, lab_dir: Path, user: str, password: str) -> None:
        self.spec = spec
        self.lab_dir = lab_dir
        self.user = user
        self.password = password
        self.busy: dict[str, asyncio.Task[None]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return hmac.compare_digest(user, self.user) and hmac.compare_digest(password, self.password)

    def _node(self, request: web.Request) -> NodeSpec:
        name = request.match_info["node"]
        for node in self.spec.nodes:
            if node.name == name:
                return node
        raise web.HTTPNotFound(text=json.dumps({"error": {"message": f"no system {name}"}}), content_type="application/json")

    def _system(self, node: NodeSpec) -> dict[str, object]:
        return {
            "@odata.id": f"/redfish/v1/Systems/{node.name}",
            "Id": node.name,
            "Name": node.name,
            "PowerState": "On" if is_powered(self.lab_dir, node.name) else "Off",
            "Actions": {
                "#ComputerSystem.Reset": {
                    "target": f"/redfish/v1/Systems/{node.name}/Actions/ComputerSystem.Reset",
                    "ResetType@Redfish.AllowableValues": list(RESET_TYPES),
                }
            },
        }

    @web.middleware
    async def auth(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        if not self.authorized(request):
            raise web.HTTPUnauthorized(headers={"WWW-Authenticate": 'Basic realm="lab-bmc"'})
        return await handler(request)

    async def systems(self, request: web.Request) -> web.Response:
        members = [{"@odata.id": f"/redfish/v1/Systems/{n.name}"} for n in self.spec.nodes]
        return web.json_response({"Members": members, "Members@odata.count": len(members)})

    async def system(self, request: web.Request) -> web.Response:
        return web.json_response(self._system(self._node(request)))

    async def reset(self, request: web.Request) -> web.Response:
        node = self._node(request)
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = {}
        reset_type = body.get("ResetType") if isinstance(body, dict) else None
        if reset_type not in RESET_TYPES:
            return web.json_response(
                {"error": {"message": f"ResetType must be one of {', '.join(RESET_TYPES)}"}}, status=400
            )
        if node.name in self.busy and not self.busy[node.name].done():
            return web.json_response({"error": {"message": f"{node.name} is already resetting"}}, status=409)
        task = asyncio.create_task(self._do_reset(node, reset_type))
        self.busy[node.name] = task
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return web.Response(status=204)

    async def _do_reset(self, node: NodeSpec, reset_type: str) -> None:
        try:
            if reset_type != "On" and is_powered(self.lab_dir, node.name):
                log.info("power off", node=node.name, reset_type=reset_type)
                await asyncio.to_thread(power_off, self.spec, self.lab_dir, node)
            if reset_type == "ForceOff":
                return
            if reset_type != "On":
                await asyncio.sleep(self.spec.options.boot_delay)
            if not is_powered(self.lab_dir, node.name):
                await asyncio.to_thread(power_on, self.spec, self.lab_dir, node)
                log.info("power on", node=node.name)
        except Exception as exc:
            log.error("reset failed", node=node.name, error=str(exc))


async def serve(lab_dir: Path) -> None:
    spec = LabSpec.load(lab_dir / "lab.json")
    creds = json.loads((lab_dir / "bmc.json").read_text())
    bmc = Bmc(spec, lab_dir, creds["user"], creds["password"])
    app = web.Application(middlewares=[bmc.auth])
    app.router.add_get("/redfish/v1/Systems", bmc.systems)
    app.router.add_get("/redfish/v1/Systems/{node}", bmc.system)
    app.router.add_post("/redfish/v1/Systems/{node}/Actions/ComputerSystem.Reset", bmc.reset)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    servers = []
    for router in spec.routers:
        for vm in router.vms:
            servers.append(await asyncio.start_server(_echo, sock=_listener(vm.netns, vm.ip, ECHO_PORT)))
    v = spec.vantage
    servers.append(await asyncio.start_server(_echo, sock=_listener(v.netns, v.ext_ip, v.echo_port)))

    # The lab's Keystone (+ the emulated Neutron API) on a loopback port of its own, so that the
    # BMC's basic-auth middleware does not apply to it.
    from chaos.lab.neutron_api import start_lab_api

    forwarder = None
    if spec.controller is not None:  # the neutron backend: neutron-server behind a forwarder
        from chaos.lab.real.config import KEYSTONE_PORT, NEUTRON_PORT, identity_url
        from chaos.lab.real.forward import Forwarder

        forwarder = Forwarder(spec.controller.netns, spec.controller.mgmt_ip, NEUTRON_PORT)
        network_url = await forwarder.start()
        # keystonemiddleware in neutron-server validates tokens here, inside the lab.
        inside = _listener(spec.controller.netns, spec.controller.mgmt_ip, KEYSTONE_PORT)
        lab_api = await start_lab_api(lab_dir, network_url=network_url, serve_neutron=False, extra_sockets=(inside,),
                                      internal_identity_url=identity_url(spec))
    else:
        lab_api = await start_lab_api(lab_dir)
    status = {"pid": os.getpid(), "bmc_url": f"http://127.0.0.1:{port}", "api_url": lab_api.url, "started_at": time.time()}
    if forwarder is not None:
        status["network_url"] = forwarder.url
    tmp = lab_dir / "services.json.tmp"
    tmp.write_text(json.dumps(status))
    tmp.replace(lab_dir / "services.json")
    log.info("lab services ready", bmc_url=status["bmc_url"], echo_servers=len(servers))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    syncing = asyncio.create_task(_sync_placement(lab_dir, lab_api.url, stop)) if spec.controller is not None else None
    await stop.wait()
    if syncing is not None:
        await syncing
    for server in servers:
        server.close()
    if forwarder is not None:
        await forwarder.stop()
    await lab_api.stop()
    await runner.cleanup()


SYNC_INTERVAL = 3.0


async def _sync_placement(lab_dir: Path, api_url: str, stop: asyncio.Event) -> None:
    """The neutron backend: follow replicas that Neutron moves (chaos.lab.real.lab.sync_placement)."""
    from chaos.lab.real import build
    from chaos.lab.real.lab import sync_placement

    admin = None
    while not stop.is_set():
        try:
            if admin is None:
                admin = build.connect(api_url + "/identity/v3", build.accounts(lab_dir)[0])
            async with asyncio.timeout(60):
                if await asyncio.to_thread(sync_placement, lab_dir, admin):
                    log.info("replicas moved; plan and inventory rewritten")
        except Exception as exc:  # noqa: BLE001 - the API may be restarting; next round
            log.info("placement sync failed", error=str(exc)[:200])
        try:
            async with asyncio.timeout(SYNC_INTERVAL):
                await stop.wait()
        except TimeoutError:
            pass
    if admin is not None:
        admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="chaos.lab.services")
    parser.add_argument("--lab-dir", type=Path, required=True)
    args = parser.parse_args()
    configure_logging("json")
    asyncio.run(serve(args.lab_dir))


if __name__ == "__main__":
    main()
