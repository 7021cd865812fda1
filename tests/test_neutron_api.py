"""The lab's Keystone/Neutron API through openstacksdk, the same code path as a real cloud.

Runs against the shared lab. Moving a replica here only adds one on a third node and removes
it again, so the lab's original replicas (and their ha- devices) stay as they were.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from multidict import MultiDict

from chaos.errors import InfrastructureError, InvalidInput
from chaos.lab.keystone import load_config, set_token_ttl
from chaos.lab.neutron_api import NeutronFault, apply_filters, parse_filters
from chaos.lab.spec import LabSpec
from chaos.targets.openstack import (
    ApiError,
    OpenStackClient,
    SshInventory,
    discover,
    is_ha_router,
    router_matches,
)
from tests.conftest import CHAOS_CLI, LabHandle, wait_lab_ready


@pytest.fixture
def cloud(lab: LabHandle, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(lab.dir / "clouds.yaml"))
    return lab.name


def api_url(lab: LabHandle) -> str:
    return json.loads((lab.dir / "services.json").read_text())["api_url"]


def http(method: str, url: str, token: str | None, body: object = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **({"X-Auth-Token": token} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - the lab's loopback API
            text = resp.read()
            return resp.status, json.loads(text) if text else {}
    except urllib.error.HTTPError as exc:
        text = exc.read()
        return exc.code, json.loads(text) if text else {}


async def token_of(client: OpenStackClient) -> str:
    return await client.call("token", lambda c: c.session.get_token())


def test_clouds_yaml_is_private(lab: LabHandle) -> None:
    path = lab.dir / "clouds.yaml"
    assert path.stat().st_mode & 0o777 == 0o600
    assert (lab.dir / "keystone.json").stat().st_mode & 0o777 == 0o600
    assert load_config(lab.dir).password in path.read_text()


async def test_ha_routers_agents_and_lagging_ha_state(lab: LabHandle, cloud: str) -> None:
    wait_lab_ready(lab)
    client = OpenStackClient(cloud)
    try:
        found = await discover(client)
        spec = LabSpec.load(lab.dir / "lab.json")
        assert sorted(r.id for r in found.routers) == sorted(r.id for r in spec.routers)
        for r in spec.routers:
            api = next(a for a in found.routers if a.id == r.id)
            assert sorted(a.host for a in api.agents) == sorted(rep.node for rep in r.replicas)
            assert all(a.alive and a.admin_state_up for a in api.agents)
            assert api.ha_ports == {rep.node: rep.ha_port_id for rep in r.replicas}
            topo_router = next(t for t in found.topology.routers if t.id == r.id)
            assert sorted(rep.ha_device for rep in topo_router.replicas) == sorted(rep.ha_device for rep in r.replicas)
            assert [str(f.address) for f in topo_router.floating_ips] == [f.address for f in r.floating_ips]
        assert {a.host for a in found.agents} == {n.name for n in spec.nodes}
        # ha_state follows the state files after the L3 agent's lag (about advert_int, batched).
        deadline = time.monotonic() + 10
        while True:
            mismatched = []
            for r in spec.routers:
                api_states = {a.host: a.ha_state for a in await client.hosting_agents(r.id)}
                truth = {rep.node: ("active" if lab.lab.replica_state(rep.node, r) == "primary" else "standby") for rep in r.replicas}
                if api_states != truth:
                    mismatched.append((r.name, api_states, truth))
            if not mismatched or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert not mismatched
    finally:
        client.close()


async def test_pagination_limit_two(lab: LabHandle, cloud: str) -> None:
    client = OpenStackClient(cloud)
    try:
        token = await token_of(client)
        status, page = http("GET", api_url(lab) + "/networking/v2.0/routers?limit=2", token)
        assert status == 200 and len(page["routers"]) == 2
        nxt = next(link["href"] for link in page["routers_links"] if link["rel"] == "next")
        seen = [r["id"] for r in page["routers"]]
        while nxt:
            status, page = http("GET", nxt, token)
            seen += [r["id"] for r in page["routers"]]
            nxt = next((link["href"] for link in page.get("routers_links", []) if link["rel"] == "next"), None)
        assert len(seen) == len(set(seen)) == len(lab.spec.routers)
        via_sdk = await client.list("routers", lambda c: c.network.routers(limit=2))
        assert sorted(r.id for r in via_sdk) == sorted(seen)
    finally:
        client.close()


async def test_move_replica_and_neutron_errors(lab: LabHandle, cloud: str) -> None:
    wait_lab_ready(lab)
    router = lab.spec.routers[0]
    spare = next(n.name for n in lab.spec.nodes if n.name not in {rep.node for rep in router.replicas})
    client = OpenStackClient(cloud)
    agents = {a.host: a for a in await client.l3_agents()}
    ns_cmd = ["ip", "netns", "list"]
    try:
        await client.add_router_to_agent(agents[spare].id, router.id)
        # The node's agent builds qrouter-<id> and starts keepalived there (a backup: nopreempt).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if lab.lab.keepalived_pids(spare, router) and lab.lab.replica_state(spare, router) == "backup":
                break
            await asyncio.sleep(0.3)
        assert lab.lab.keepalived_pids(spare, router), "no keepalived for the added replica"
        out = await asyncio.create_subprocess_exec(*CHAOS_CLI, "lab", "ssh", "--name", lab.name, spare, "--", *ns_cmd,
                                                   stdout=asyncio.subprocess.PIPE)
        assert router.namespace in (await out.communicate())[0].decode()
        with pytest.raises(ApiError) as conflict:
            await client.add_router_to_agent(agents[spare].id, router.id)
        assert conflict.value.status == 409
        token = await token_of(client)
        status, body = http("POST", f"{api_url(lab)}/networking/v2.0/agents/{agents[spare].id}/l3-routers", token,
                            {"router_id": router.id})
        assert status == 409 and body["NeutronError"]["type"] == "RouterHostedByL3Agent"
        status, body = http("POST", f"{api_url(lab)}/networking/v2.0/agents/{agents[spare].id}/l3-routers", token,
                            {"router_id": "00000000-0000-4000-8000-000000000000"})
        assert status == 404 and body["NeutronError"]["type"] == "RouterNotFound" and body["NeutronError"]["detail"] == ""
        status, body = http("POST", f"{api_url(lab)}/networking/v2.0/agents/{agents[spare].id}/l3-routers", token, {"x": 1})
        assert status == 400 and "NeutronError" in body
        # Three replicas now: discovery sees all of them, with the new HA port's ha- device.
        found = await discover(client)
        three = next(r for r in found.topology.routers if r.id == router.id)
        assert sorted(rep.node for rep in three.replicas) == sorted([*(rep.node for rep in router.replicas), spare])
        new_port = next(p for h, p in next(a for a in found.routers if a.id == router.id).ha_ports.items() if h == spare)
        assert next(rep.ha_device for rep in three.replicas if rep.node == spare) == f"ha-{new_port[:11]}"
        await client.remove_router_from_agent(agents[spare].id, router.id)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and lab.lab.keepalived_pids(spare, router):
            await asyncio.sleep(0.3)
        assert not lab.lab.keepalived_pids(spare, router)
        out = await asyncio.create_subprocess_exec(*CHAOS_CLI, "lab", "ssh", "--name", lab.name, spare, "--", *ns_cmd,
                                                   stdout=asyncio.subprocess.PIPE)
        assert router.namespace not in (await out.communicate())[0].decode()
        status, body = http("DELETE", f"{api_url(lab)}/networking/v2.0/agents/{agents[spare].id}/l3-routers/{router.id}", token)
        assert status == 409 and body["NeutronError"]["type"] == "RouterNotHostedByL3Agent"
    finally:
        spec = LabSpec.load(lab.dir / "lab.json")
        if any(rep.node == spare for r in spec.routers if r.id == router.id for rep in r.replicas):
            await client.remove_router_from_agent(agents[spare].id, router.id)
        client.close()
        wait_lab_ready(lab)


async def test_agent_admin_state(lab: LabHandle, cloud: str) -> None:
    client = OpenStackClient(cloud)
    node = lab.spec.nodes[2]
    try:
        await client.set_agent_admin_state(node.agent_id, False)
        assert [a.admin_state_up for a in await client.l3_agents(host=node.name)] == [False]
        with pytest.raises(ApiError) as refused:  # a disabled agent gets no new router
            await client.add_router_to_agent(node.agent_id, lab.spec.routers[0].id)
        assert refused.value.status == 404
    finally:
        await client.set_agent_admin_state(node.agent_id, True)
        client.close()
    assert [a.admin_state_up for a in await OpenStackClient(cloud).l3_agents(host=node.name)] == [True]


async def test_bad_token_401_and_reauth(lab: LabHandle, cloud: str) -> None:
    status, body = http("GET", api_url(lab) + "/networking/v2.0/routers", "not-a-token")
    assert status == 401 and body["error"]["code"] == 401
    client = OpenStackClient(cloud)
    try:
        first = await token_of(client)
        # Revoke the token the client holds: its next call meets a 401 and must re-authenticate.
        req = urllib.request.Request(api_url(lab) + "/identity/v3/auth/tokens", method="DELETE",
                                     headers={"X-Auth-Token": first, "X-Subject-Token": first})
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            assert resp.status == 204
        assert http("GET", api_url(lab) + "/networking/v2.0/routers", first)[0] == 401
        found = await discover(client)
        assert len(found.routers) == len(lab.spec.routers)
        assert await token_of(client) != first
    finally:
        client.close()


async def test_expired_token_is_refreshed(lab: LabHandle, cloud: str) -> None:
    set_token_ttl(lab.dir, 2.0)
    client = OpenStackClient(cloud)
    try:
        first = await token_of(client)
        await asyncio.sleep(2.5)
        assert http("GET", api_url(lab) + "/networking/v2.0/routers", first)[0] == 401  # really expired
        found = await discover(client)
        assert len(found.routers) == len(lab.spec.routers)
        assert await token_of(client) != first
    finally:
        set_token_ttl(lab.dir, 3600.0)
        client.close()


async def test_unreachable_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(
        "clouds:\n  gone:\n    auth_type: password\n    auth:\n      auth_url: http://127.0.0.1:9/identity/v3\n"
        "      username: u\n      password: p\n      project_name: x\n      user_domain_name: Default\n"
        "      project_domain_name: Default\n    identity_api_version: 3\n"
    )
    clouds.chmod(0o600)
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    client = OpenStackClient("gone", retries=1, backoff=0.05, timeout=5)
    with pytest.raises(InfrastructureError) as err:
        await discover(client)
    assert "cannot reach the OpenStack API of cloud 'gone'" in err.value.message
    assert "127.0.0.1:9" in err.value.message
    proc = await asyncio.create_subprocess_exec(*CHAOS_CLI, "discover", "--cloud", "gone", stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, errout = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 5, errout.decode()
    assert "cannot reach" in errout.decode() and "Traceback" not in errout.decode()


# --------------------------------------------------------------------------- pure functions
def test_filters_like_neutron() -> None:
    """Filter semantics; which keys and values are accepted is compared with Neutron's own code in
    tests/test_neutron_api_fidelity.py."""
    items = [
        {"id": "a", "admin_state_up": True, "name": "r1", "tags": ["x", "y"]},
        {"id": "b", "admin_state_up": False, "name": "r2", "tags": ["y"]},
    ]

    def ids(*params: tuple[str, str]) -> list[str]:
        return [i["id"] for i in apply_filters(items, parse_filters("routers", MultiDict(params)))]

    assert ids(("admin_state_up", "true")) == ["a"] and ids(("admin_state_up", "0")) == ["b"]
    assert ids(("name", "r1"), ("name", "r2")) == ["a", "b"]
    assert ids(("tags", "x,y")) == ["a"] and ids(("tags-any", "y")) == ["a", "b"]
    assert ids(("not-tags", "x,y")) == ["b"] and ids(("not-tags-any", "x")) == ["b"]
    assert ids(("name", "")) == ["a", "b"]  # an empty value filters nothing
    assert ids(("limit", "1"), ("fields", "id")) == ["a", "b"]  # not filters: paging and fields
    with pytest.raises(NeutronFault) as refused:
        parse_filters("routers", MultiDict([("ha", "True"), ("name", "r1"), ("distributed", "1")]))
    assert (refused.value.status, refused.value.kind) == (400, "HTTPBadRequest")
    assert refused.value.message == "['ha', 'distributed'] is invalid attribute for filtering"
    with pytest.raises(NeutronFault) as bad_value:
        parse_filters("routers", MultiDict([("admin_state_up", "maybe")]))
    assert bad_value.value.message == "Invalid input for operation: 'maybe' cannot be converted to boolean."


def test_non_ha_routers_are_skipped_and_filters() -> None:
    legacy = SimpleNamespace(is_ha=False, name="legacy", project_id="p", tags=[])
    ha = SimpleNamespace(is_ha=True, name="web-1", project_id="p", tags=["prod"])
    assert not is_ha_router(legacy) and is_ha_router(ha)
    assert router_matches(ha, "web-*", "p", ["prod"]) and not router_matches(ha, "db-*", None, [])
    assert not router_matches(ha, None, "other", []) and not router_matches(ha, None, None, ["dev"])


def test_ssh_inventory_mapping(tmp_path: Path) -> None:
    """Discovery reaches agent hosts through the static inventory format (exact name, then pattern)."""
    path = tmp_path / "inventory.yaml"
    path.write_text(
        "nodes:\n"
        "  - {name: net-1, address: 198.51.100.21, user: ops, sudo: true}\n"
        "  - {pattern: 'net-*', address_template: '{name}.mgmt.example', jump_host: bastion.example}\n"
    )
    inv = SshInventory.load(path)
    assert inv.node("net-1").address == "198.51.100.21" and inv.node("net-1").sudo
    assert inv.node("net-7").address == "net-7.mgmt.example" and inv.node("net-7").jump_host == "bastion.example"
    assert inv.covers("net-7") and not inv.covers("compute-3")
    with pytest.raises(InvalidInput, match="'compute-3' has no SSH mapping"):
        inv.node("compute-3")
    assert SshInventory(strict=False).node("anything").address == "anything"
