"""Fuzzing the Neutron API answers that discovery reads (issue 14).

A small Keystone (the lab's, chaos.lab.keystone) and a fake Neutron serve one healthy cloud on
127.0.0.1; each example spoils one answer of one call discovery makes (a 4xx/5xx, a body that is
not JSON or not an object, a missing key, a field of the wrong type, a redirect elsewhere or in
a loop, an answer later than the client's timeout, a huge page) and runs discovery
(``chaos.targets.openstack.discover``). Whatever the answer: a Discovery, or a ChaosError whose
exit code is INFRASTRUCTURE (5) or, for the refusals discovery names on purpose (NotAdmin,
UnsupportedCloud), INVALID_INPUT (3); never another exception, which the CLI reports as an
internal error (exit 70).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from chaos.errors import ChaosError, ExitCode
from chaos.lab.keystone import NETWORK_PREFIX, Keystone, write_clouds_yaml
from chaos.targets.openstack import NotAdmin, OpenStackClient, UnsupportedCloud, discover
from tests.conftest import budget

CLOUD = "fuzzcloud"
RID = str(uuid.uuid5(uuid.NAMESPACE_URL, "router"))
PROJECT = "p" * 32
HOSTS = ("network-1", "network-2")
CALLS = ["routers", "agents", "ports", "floatingips", "networks", "l3-agents"]
FUZZ = settings(max_examples=budget(60), deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
CLIENT_TIMEOUT = 2.0


def healthy() -> dict[str, Any]:
    """The answers of a cloud with one HA router on two L3 agents."""
    agents = [{"id": str(uuid.uuid5(uuid.NAMESPACE_URL, h)), "agent_type": "L3 agent", "host": h, "alive": True,
               "admin_state_up": True, "binary": "neutron-l3-agent", "configurations": {"agent_mode": "legacy"}}
              for h in HOSTS]
    ports = [{"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"port-{h}")), "device_id": RID, "binding:host_id": h,
              "device_owner": "network:router_ha_interface", "network_id": "n1", "status": "ACTIVE",
              "fixed_ips": [{"ip_address": f"169.254.192.{i + 1}", "subnet_id": "s1"}]} for i, h in enumerate(HOSTS)]
    return {
        "routers": {"routers": [{"id": RID, "name": "web", "project_id": PROJECT, "tenant_id": PROJECT, "ha": True,
                                 "distributed": False, "tags": [], "status": "ACTIVE", "admin_state_up": True,
                                 "external_gateway_info": {"network_id": "ext", "external_fixed_ips": [
                                     {"subnet_id": "e1", "ip_address": "203.0.113.10"}]}}]},
        "agents": {"agents": agents},
        "ports": {"ports": ports},
        "floatingips": {"floatingips": [{"id": "f1", "floating_ip_address": "203.0.113.20", "fixed_ip_address": "10.0.0.5",
                                         "router_id": RID, "project_id": PROJECT, "status": "ACTIVE"}]},
        "networks": {"networks": [{"id": "n1", "name": f"HA network tenant {PROJECT}", "project_id": ""}]},
        "l3-agents": {"agents": [{**a, "ha_state": s} for a, s in zip(agents, ("active", "standby"), strict=True)]},
    }


class FakeNeutron:
    """Answers ``healthy()`` except for the one call ``spoil`` names, which gets ``how``."""

    def __init__(self) -> None:
        self.call: str | None = None
        self.how: dict[str, Any] = {}

    def spoil(self, call: str | None, how: dict[str, Any]) -> None:
        self.call, self.how = call, how

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path[len(NETWORK_PREFIX):].strip("/")
        if path in ("", "v2.0"):
            return web.json_response({"versions": [{"id": "v2.0", "status": "CURRENT",
                                                    "links": [{"rel": "self", "href": f"{request.url.origin()}{NETWORK_PREFIX}/v2.0/"}]}]})
        parts = path.split("/")[1:]  # after v2.0
        call = "l3-agents" if parts[-1:] == ["l3-agents"] else parts[0] if parts else ""
        body: Any = healthy().get(call)
        if body is None:
            return web.json_response({"NeutronError": {"type": "HTTPNotFound", "message": f"no {path}", "detail": ""}},
                                     status=404)
        if call != self.call:
            return web.json_response(body)
        how = self.how
        kind = how["kind"]
        if kind == "status":
            if how["status"] in (301, 302, 307):
                return web.Response(status=how["status"], headers={"Location": how["location"]})
            return web.Response(status=how["status"], text=how["text"], content_type=how["content_type"])
        if kind == "raw":
            return web.Response(status=200, body=how["body"], content_type="application/json")
        if kind == "slow":
            await asyncio.sleep(CLIENT_TIMEOUT + 1)
            return web.json_response(body)
        if kind == "huge":
            key = next(iter(body))
            item = body[key][0]
            many = [{**item, "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{key}{i}")), "ha": False} for i in range(how["n"])]
            return web.json_response({key: body[key] + many})
        if kind == "field":
            key = next(iter(body))
            items = body[key]
            if how["where"] == "list":
                body = {key: how["value"]}
            elif how["where"] == "top":
                body = how["value"]
            elif items:
                item = items[0]
                field = sorted(item)[how["index"] % len(item)]
                if how["delete"]:
                    del item[field]
                else:
                    item[field] = how["value"]
            return web.json_response(body)
        raise AssertionError(kind)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeNeutron]:
    """Keystone and the fake Neutron on 127.0.0.1 (a thread of their own), clouds.yaml naming them."""
    lab_dir = tmp_path_factory.mktemp("fuzz-cloud")
    neutron = FakeNeutron()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, Any] = {}

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # the port first: Keystone's catalog names the base URL
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def start() -> None:
        app = web.Application()
        Keystone(lab_dir, base).add_routes(app)
        app.router.add_route("*", NETWORK_PREFIX + "/{tail:.*}", neutron.handle)
        app.router.add_route("*", NETWORK_PREFIX, neutron.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        box.update(runner=runner, base=base)
        ready.set()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(20)
    clouds = write_clouds_yaml(lab_dir, CLOUD, box["base"])
    # no chaos_inventory: discovery on its own, as against a cloud without the tool's inventory
    clouds.write_text("".join(line for line in clouds.read_text().splitlines(keepends=True) if "chaos_inventory" not in line))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
        yield neutron
    asyncio.run_coroutine_threadsafe(box["runner"].cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def run_discovery() -> tuple[Any, BaseException | None]:
    async def go() -> Any:
        client = OpenStackClient(CLOUD, retries=1, backoff=0.01, timeout=CLIENT_TIMEOUT)
        try:
            return await discover(client)
        finally:
            client.close()

    try:
        return asyncio.run(go()), None
    except BaseException as exc:  # noqa: BLE001 - judged by the caller
        return None, exc


def check(exc: BaseException | None) -> None:
    if exc is None:
        return
    assert isinstance(exc, ChaosError), f"{type(exc).__name__}: {exc}"  # anything else is exit 70
    if isinstance(exc, NotAdmin | UnsupportedCloud):
        assert exc.exit_code == ExitCode.INVALID_INPUT
    else:
        assert exc.exit_code == ExitCode.INFRASTRUCTURE, (exc.exit_code, exc.message)
    assert exc.message and "Traceback" not in exc.message


def test_the_healthy_cloud_is_discovered(cloud: FakeNeutron) -> None:
    cloud.spoil(None, {})
    found, exc = run_discovery()
    assert exc is None, exc
    router = found.topology.routers[0]
    assert router.id == RID and {r.node for r in router.replicas} == set(HOSTS)


WRONG = st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.text(max_size=12),
                  st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                  st.just([None]), st.just([{}]), st.just(["x"]))
SPOIL = st.one_of(
    st.fixed_dictionaries({"kind": st.just("status"), "status": st.sampled_from([400, 401, 403, 404, 409, 500, 502, 503, 504]),
                           "text": st.sampled_from(["", "oops", '{"NeutronError": {"type": "X", "message": "m"}}',
                                                    '{"NeutronError": 5}', "<html>bad gateway</html>", '{"error": []}']),
                           "content_type": st.sampled_from(["application/json", "text/html", "text/plain"])}),
    st.fixed_dictionaries({"kind": st.just("status"), "status": st.sampled_from([301, 302, 307]),
                           "location": st.sampled_from(["http://127.0.0.1:9/v2.0/routers", "/networking/v2.0/x-loop",
                                                        "ftp://127.0.0.1/x", "http://[::1", ""]),
                           "text": st.just(""), "content_type": st.just("text/plain")}),
    st.fixed_dictionaries({"kind": st.just("raw"), "body": st.sampled_from([
        b"", b"{", b"not json", b"[]", b"null", b"42", b'"text"', b"\xff\xfe", b'{"routers": ', b"[" * 3000 + b"]" * 3000])}),
    st.fixed_dictionaries({"kind": st.just("field"), "where": st.sampled_from(["item", "item", "item", "list", "top"]),
                           "index": st.integers(0, 30), "delete": st.booleans(), "value": WRONG}),
    st.fixed_dictionaries({"kind": st.just("huge"), "n": st.sampled_from([2000])}),
)


@FUZZ
@given(call=st.sampled_from(CALLS), how=SPOIL)
@example(call="agents", how={"kind": "slow"})
# found: a body that is not JSON raised JSONDecodeError out of OpenStackClient.call (exit 70)
@example(call="routers", how={"kind": "raw", "body": b""})
# found: fields of the wrong type raised AttributeError in discovery's own reading (exit 70)
@example(call="routers", how={"kind": "field", "where": "item", "index": 2, "delete": False, "value": "x"})
@example(call="ports", how={"kind": "field", "where": "item", "index": 3, "delete": False, "value": ["x"]})
@example(call="floatingips", how={"kind": "field", "where": "list", "index": 0, "delete": False, "value": 5})
# found: JSON nested deeper than the decoder's recursion limit raised RecursionError (exit 70)
@example(call="routers", how={"kind": "raw", "body": b"[" * 5000 + b"]" * 5000})
def test_discovery_of_a_spoiled_answer_is_a_clear_error(cloud: FakeNeutron, call: str, how: dict[str, Any]) -> None:
    cloud.spoil(call, how)
    _, exc = run_discovery()
    check(exc)


def test_the_cli_says_exit_5_for_an_answer_it_cannot_read(cloud: FakeNeutron, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The same through ``chaos discover``: one sentence on stderr, exit 5, no internal error."""
    import contextlib
    import io

    from chaos.cli import main

    monkeypatch.setenv("CHAOS_STATE_DIR", str(tmp_path / "state"))
    cloud.spoil("routers", {"kind": "raw", "body": b"{"})
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["discover", "--cloud", CLOUD])
    assert code == ExitCode.INFRASTRUCTURE, err.getvalue()
    assert "the answer could not be read" in err.getvalue() and "internal error" not in err.getvalue()
