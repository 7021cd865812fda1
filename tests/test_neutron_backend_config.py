"""The neutron backend's pure parts: the plan, the configuration each process gets, Keystone's
accounts and catalog, the loopback forwarder. No root needed except for the forwarder test."""

from __future__ import annotations

import asyncio
import configparser
import os
import socket
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request

from chaos.errors import InvalidInput
from chaos.lab.keystone import Keystone, ensure_config
from chaos.lab.real import config
from chaos.lab.real.agents import node_agents
from chaos.lab.spec import CONTROLLER_IP, LabOptions, plan_lab


def ini(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    return parser


def test_plan_has_a_controller_only_for_the_neutron_backend() -> None:
    assert plan_lab(LabOptions(name="x")).controller is None
    spec = plan_lab(LabOptions(name="x", backend="neutron"))
    assert spec.controller is not None and spec.controller.mgmt_ip == CONTROLLER_IP
    assert spec.controller.netns == "x-controller"
    assert CONTROLLER_IP not in {n.mgmt_ip for n in spec.nodes} | {spec.vantage.mgmt_ip}


@pytest.mark.parametrize("options", [{"conntrackd": True}, {"strict_conntrack": True}, {"projects": 2}])
def test_neutron_backend_refuses_what_zed_cannot_do(options: dict[str, object]) -> None:
    with pytest.raises(InvalidInput, match="not available with --backend neutron"):
        plan_lab(LabOptions(name="x", backend="neutron", **options))


def test_server_conf_is_neutrons_ha_setup(tmp_path: Path) -> None:
    spec = plan_lab(LabOptions(name="x", backend="neutron", replicas=3, nodes=3))
    s = config.Secrets(db_password="d", rabbit_password="r")
    conf = ini(config.server_conf(spec, tmp_path, s, ("admin", "pw", "admin")))
    d = conf["DEFAULT"]
    assert d["l3_ha"] == "True" and d["max_l3_agents_per_router"] == "3"
    assert d["l3_ha_net_cidr"] == "169.254.192.0/18" and d["l3_ha_network_type"] == "vxlan"
    assert d["bind_host"] == CONTROLLER_IP and d["auth_strategy"] == "keystone"
    assert d["transport_url"] == f"rabbit://chaos:r@{CONTROLLER_IP}:5672/"
    assert conf["database"]["connection"] == f"mysql+pymysql://neutron:d@{CONTROLLER_IP}:3306/neutron"
    assert conf["keystone_authtoken"]["auth_url"] == f"http://{CONTROLLER_IP}:5000/identity"
    assert conf["keystone_authtoken"]["interface"] == "internal"
    assert conf["experimental"]["linuxbridge"] == "True"
    # never the packages' own files
    assert "/etc/neutron" not in config.server_conf(spec, tmp_path, s, ("a", "b", "c"))
    assert str(tmp_path) in conf["oslo_policy"]["policy_dirs"]


@pytest.mark.parametrize(("respawn", "expected"), [(60.0, "60"), (5.0, "5"), (0.0, "0"), (0.4, "1")])
def test_agents_get_the_labs_respawn_interval_and_advert_int(respawn: float, expected: str) -> None:
    spec = plan_lab(LabOptions(name="x", backend="neutron", respawn_interval=respawn, advert_int=1))
    s = config.Secrets(db_password="d", rabbit_password="r")
    agent = ini(config.agent_conf(spec, s, "network-1", "/var/lib/neutron", Path("/tmp/log")))
    assert agent["agent"]["check_child_processes_interval"] == expected
    assert agent["agent"]["root_helper"] == ""
    assert agent["DEFAULT"]["host"] == "network-1" and agent["DEFAULT"]["state_path"] == "/var/lib/neutron"
    l3 = ini(config.l3_agent_ini(spec))["DEFAULT"]
    assert l3["ha_vrrp_advert_int"] == "1" and l3["interface_driver"] == "linuxbridge" and l3["agent_mode"] == "legacy"
    lb = ini(config.linuxbridge_ini("198.51.100.11", "eth1"))
    assert lb["linux_bridge"]["physical_interface_mappings"] == "extnet:eth1"
    assert lb["vxlan"]["local_ip"] == "198.51.100.11" and lb["vxlan"]["l2_population"] == "True"


def test_node_agents_read_the_nodes_own_files(tmp_path: Path) -> None:
    spec = plan_lab(LabOptions(name="x", backend="neutron"))
    (name1, lb), (name2, l3) = node_agents(tmp_path, spec.nodes[0])
    assert (name1, name2) == ("linuxbridge-agent", "l3-agent")
    assert lb[0] == "/usr/bin/neutron-linuxbridge-agent" and l3[0] == "/usr/bin/neutron-l3-agent"
    for argv in (lb, l3):
        files = [argv[i + 1] for i, a in enumerate(argv) if a == "--config-file"]
        assert files and all(f.startswith(str(tmp_path / "nodes" / "network-1" / "etc")) for f in files)


def test_secrets_are_private_and_stable(tmp_path: Path) -> None:
    first = config.ensure_secrets(tmp_path)
    assert config.ensure_secrets(tmp_path) == first
    assert (tmp_path / config.SECRETS_FILE).stat().st_mode & 0o077 == 0


async def test_keystone_tenant_token_and_internal_catalog(tmp_path: Path) -> None:
    cfg = ensure_config(tmp_path)
    ks = Keystone(tmp_path, "http://127.0.0.1:1", "http://127.0.0.1:2", "http://198.51.100.2:5000/identity")

    async def issue(user: str, password: str, project: str) -> tuple[int, dict, str]:
        body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": user, "password": password, "domain": {"name": "Default"}}}},
            "scope": {"project": {"name": project, "domain": {"name": "Default"}}}}}
        req = make_mocked_request("POST", "/identity/v3/auth/tokens")
        req.json = lambda: _coro(body)  # type: ignore[method-assign]
        resp = await ks.issue(req)
        import json

        return resp.status, json.loads(resp.body) if resp.status == 201 else {}, resp.headers.get("X-Subject-Token", "")

    member = cfg.member
    assert member is not None
    status, body, token = await issue(member.user, member.password, member.project)
    assert status == 201 and ks.valid(token)
    roles = {r["name"] for r in body["token"]["roles"]}
    assert roles == {"member", "reader"} and body["token"]["project"]["id"] == member.project_id
    # the tenant cannot scope to the admin project, nor log in with the admin's password
    assert (await issue(member.user, member.password, cfg.project))[0] == 401
    assert (await issue(member.user, cfg.password, member.project))[0] == 401
    status, body, _ = await issue(cfg.user, cfg.password, cfg.project)
    assert status == 201 and "admin" in {r["name"] for r in body["token"]["roles"]}
    identity = next(s for s in body["token"]["catalog"] if s["type"] == "identity")
    urls = {e["interface"]: e["url"] for e in identity["endpoints"]}
    assert urls == {"public": "http://127.0.0.1:1/identity", "internal": "http://198.51.100.2:5000/identity",
                    "admin": "http://198.51.100.2:5000/identity"}
    network = next(s for s in body["token"]["catalog"] if s["type"] == "network")
    assert {e["url"] for e in network["endpoints"]} == {"http://127.0.0.1:2"}


async def _coro(value: object) -> object:
    return value


@pytest.mark.lab
async def test_forwarder_reaches_a_listener_inside_a_namespace() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (a network namespace)")
    from chaos.lab.fabric import new_netns
    from chaos.lab.netlink import remove_netns
    from chaos.lab.real.forward import Forwarder
    from chaos.transport.netns import socket_in_netns

    ns = f"t{os.getpid() % 100000}fw"
    new_netns(ns)
    try:
        listener = socket_in_netns(ns, socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 9696))
        listener.listen(4)
        listener.setblocking(False)

        async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(b"inside:" + await r.readline())
            await w.drain()
            w.close()

        server = await asyncio.start_server(echo, sock=listener)
        fwd = Forwarder(ns, "127.0.0.1", 9696)
        url = await fwd.start()
        port = int(url.rsplit(":", 1)[1])
        async with asyncio.timeout(10):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"hello\n")
            await w.drain()
            assert await r.read() == b"inside:hello\n"
            w.close()
        await fwd.stop()
        server.close()
    finally:
        remove_netns(ns)
