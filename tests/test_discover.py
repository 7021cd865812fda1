"""``chaos discover`` against the shared lab: every router, where its primary is, and a split brain
flagged; and what it refuses, each with a sentence and its exit code (no cloud, a member token,
refused credentials, ML2/OVN, a DVR router, also in ``chaos run``)."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import time
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from chaos.commands.discover import ReplicaRow, build_report, router_flags
from chaos.errors import ExitCode, InvalidInput
from chaos.experiment.schema import RouterSelector
from chaos.lab.keystone import MEMBER_SUFFIX
from chaos.lab.neutron_api import set_backend, set_router_distributed
from chaos.model import Topology
from chaos.targets.lab import lab_topology
from chaos.targets.openstack import (
    OVN_AGENT_TYPES,
    ApiAgent,
    ApiRouter,
    Discovery,
    NotAdmin,
    OpenStackClient,
    RefusedRouter,
    UnsupportedCloud,
    check_backend,
    first_error,
    hosting_l3_agents,
    refuse_selected,
)
from chaos.transport.ssh import SshPool
from tests.conftest import CHAOS_CLI, LAB_ROOT, LabHandle, wait_lab_ready


async def chaos_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*CHAOS_CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def lab_ssh(lab: LabHandle, node: str, command: str) -> None:
    """One command on a lab node over SSH (asyncssh, host key checked), as the tool reaches nodes."""
    topology = lab_topology(LAB_ROOT, lab.name)
    async with SshPool(topology.nodes) as ssh:
        await ssh.run(node, command, timeout=15)


async def test_discover_lists_every_router(lab: LabHandle) -> None:
    wait_lab_ready(lab)
    code, out, err = await chaos_cli("discover", "--lab", lab.name, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert sorted(r["id"] for r in report["routers"]) == sorted(r.id for r in lab.spec.routers)
    for row in report["routers"]:
        spec = next(r for r in lab.spec.routers if r.id == row["id"])
        assert sorted(r["node"] for r in row["replicas"]) == sorted(rep.node for rep in spec.replicas)
        truth = [rep.node for rep in spec.replicas if lab.lab.replica_state(rep.node, spec) == "primary"]
        assert row["primary"] == truth and len(truth) == 1
        assert {r["vrid"] for r in row["replicas"]} == {spec.vrid}
    (project, use), = report["vrids"].items()
    assert use["used"] == len(lab.spec.routers) and use["free"] == 254 - len(lab.spec.routers) and not use["warn"]
    code, table, _ = await chaos_cli("discover", "--lab", lab.name)
    assert code == 0 and all(r.name in table for r in lab.spec.routers) and "primary:" in table


async def test_discover_flags_two_primaries_during_vrrp_partition(lab: LabHandle) -> None:
    wait_lab_ready(lab)
    router = lab.spec.routers[1]
    backup = next(rep for rep in router.replicas if lab.lab.replica_state(rep.node, router) == "backup")
    ns, dev = shlex.quote(router.namespace), shlex.quote(backup.ha_device)
    # Both directions: with INPUT alone the old primary still hears the isolated side and, at
    # equal priority, the higher HA address wins: a failover rather than a split brain.
    rules = [f"INPUT -i {dev} -p 112 -j DROP", f"OUTPUT -o {dev} -p 112 -j DROP"]
    await lab_ssh(lab, backup.node, " && ".join(f"ip netns exec {ns} iptables -w -I {r}" for r in rules))
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if all(lab.lab.replica_state(rep.node, router) == "primary" for rep in router.replicas):
                break
            await asyncio.sleep(0.2)
        report = await build_report(lab.name)
        row = next(r for r in report.routers if r.id == router.id)
        assert sorted(row.primary) == sorted(rep.node for rep in router.replicas)
        assert any(f.startswith("2 primaries") for f in row.flags), row.flags
        others = [r for r in report.routers if r.id != router.id]
        assert all(len(r.primary) == 1 for r in others)
    finally:
        await lab_ssh(lab, backup.node, "; ".join(f"ip netns exec {ns} iptables -w -D {r}" for r in rules) + "; true")
        wait_lab_ready(lab)


def test_router_flags() -> None:
    api = ApiRouter(id="r", name="r", project_id="p", agents=(
        ApiAgent(id="a1", host="n1", alive=False, admin_state_up=True, ha_state="active"),
        ApiAgent(id="a2", host="n2", alive=True, admin_state_up=True, ha_state="active"),
    ))

    def row(node: str, alive: bool, api_state: str, state: str | None) -> ReplicaRow:
        return ReplicaRow(node=node, agent_alive=alive, admin_state_up=True, api_ha_state=api_state, node_state=state,
                          holds_addresses=state == "primary", keepalived_alive=True, reachable=True)

    flags = router_flags(api, [row("n1", False, "active", "primary"), row("n2", True, "active", "backup")], expected=3)
    assert "dead agent on n1 with a primary replica" in flags
    assert "API active but n2 is backup" in flags
    assert "2 replica(s), expected 3" in flags
    assert router_flags(api, [row("n1", True, "standby", "backup"), row("n2", True, "standby", "backup")], 2) == ["no primary"]


pytestmark = pytest.mark.timeout(180)


# --------------------------------------------------------------------------- refusals, each a sentence and its exit code


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    return {**env, **extra}


def run_chaos(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CHAOS_CLI, *args], capture_output=True, text=True, timeout=120, env=env or cli_env(), cwd=cwd)


def test_discover_without_a_cloud_says_how_to_name_one(tmp_path: Path) -> None:
    """No --cloud/--lab, no OS_CLOUD, no clouds.yaml: openstacksdk's MissingRequiredOptions was exit 70."""
    proc = run_chaos("discover", env=cli_env(HOME=str(tmp_path)), cwd=tmp_path)
    assert proc.returncode == ExitCode.INVALID_INPUT, proc.stderr
    assert "no OpenStack cloud is configured" in proc.stderr
    assert all(word in proc.stderr for word in ("--cloud", "OS_CLOUD", "clouds.yaml", "OS_AUTH_URL"))
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr


def test_run_from_openstack_without_a_cloud_says_how_to_name_one(tmp_path: Path) -> None:
    experiment = tmp_path / "e.yaml"
    experiment.write_text("""title: t
target: {source: openstack}
fault: {type: keepalived-kill}
steady_state_hypothesis: {title: t, tolerances: {primaries_after: {equals: 1}}}
""")
    proc = run_chaos("run", "--dry-run", str(experiment), env=cli_env(HOME=str(tmp_path)), cwd=tmp_path)
    assert proc.returncode == ExitCode.INVALID_INPUT, proc.stdout + proc.stderr
    assert "no OpenStack cloud is configured" in proc.stderr and "OS_CLOUD" in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_a_member_token_is_told_discovery_needs_admin(lab: LabHandle) -> None:
    """The member's answers (no agent, routers without ha) would read as a cloud without HA routers."""
    env = cli_env(OS_CLIENT_CONFIG_FILE=str(lab.dir / "clouds.yaml"))
    proc = run_chaos("discover", "--cloud", lab.name + MEMBER_SUFFIX, env=env)
    assert proc.returncode == ExitCode.INVALID_INPUT, proc.stdout + proc.stderr
    err = proc.stderr
    assert "discovery needs an admin token" in err and "user 'member'" in err and "roles: member, reader" in err
    assert "GET /v2.0/agents listed no agent" in err and "without the ha attribute" in err
    assert "GET /v2.0/routers/{id}/l3-agents" in err and "role" in err and "Traceback" not in err
    # The scheduler call itself answers a member 403, and discovery names it.
    os.environ["OS_CLIENT_CONFIG_FILE"] = str(lab.dir / "clouds.yaml")
    client = OpenStackClient(lab.name + MEMBER_SUFFIX)
    try:
        router = (await client.list("routers", lambda c: c.network.routers()))[0]
        with pytest.raises(NotAdmin) as refused:
            await hosting_l3_agents(client, router)
        assert f"GET /v2.0/routers/{router.id}/l3-agents was refused (403 rule:get_l3-agents is disallowed by policy)" in refused.value.message
    finally:
        client.close()
        del os.environ["OS_CLIENT_CONFIG_FILE"]


def test_refused_credentials_are_exit_5(lab: LabHandle, tmp_path: Path) -> None:
    yaml = YAML(typ="safe")
    clouds = yaml.load((lab.dir / "clouds.yaml").read_text())
    clouds["clouds"][lab.name]["auth"]["password"] = "wrong"
    path = tmp_path / "clouds.yaml"
    with path.open("w") as f:
        yaml.dump(clouds, f)
    proc = run_chaos("discover", "--cloud", lab.name, env=cli_env(OS_CLIENT_CONFIG_FILE=str(path)))
    assert proc.returncode == ExitCode.INFRASTRUCTURE, proc.stdout + proc.stderr
    assert "the credentials of user 'admin' were refused (401 from" in proc.stderr
    assert "wrong" not in proc.stderr and "Traceback" not in proc.stderr


async def test_an_ovn_cloud_is_refused(lab: LabHandle) -> None:
    """ML2/OVN as Neutron 24-28 present it: OVN agent types, routers with ha: true, no l3-agents."""
    set_backend(lab.dir, "ml2/ovn")
    try:
        proc = run_chaos("discover", "--lab", lab.name)
        assert proc.returncode == ExitCode.INVALID_INPUT, proc.stdout + proc.stderr
        assert f"cloud '{lab.name}' runs ML2/OVN (its agents are OVN Controller Gateway agent; no L3 agent)" in proc.stderr
        assert "fail over by gateway chassis priority, not keepalived" in proc.stderr
        assert "Traceback" not in proc.stderr and "ExceptionGroup" not in proc.stderr
        # The other sign, on its own: the scheduler's 404 (no such extension before Neutron 29).
        os.environ["OS_CLIENT_CONFIG_FILE"] = str(lab.dir / "clouds.yaml")
        client = OpenStackClient(lab.name)
        try:
            routers = await client.list("routers", lambda c: c.network.routers())
            assert routers and all(r.is_ha is True for r in routers), "OVN routers say ha: true"
            with pytest.raises(UnsupportedCloud) as refused:
                await hosting_l3_agents(client, routers[0])
            assert "answered 404: this Neutron has no l3_agent_scheduler" in refused.value.message
        finally:
            client.close()
            del os.environ["OS_CLIENT_CONFIG_FILE"]
    finally:
        set_backend(lab.dir, "ml2/ovs")
    assert run_chaos("discover", "--lab", lab.name).returncode == 0


def test_a_dvr_router_is_refused_by_discover_and_by_a_run(lab: LabHandle, tmp_path: Path) -> None:
    wait_lab_ready(lab)
    dvr, other = lab.spec.routers[0], lab.spec.routers[1]
    set_router_distributed(lab.dir, dvr.id, True)
    try:
        proc = run_chaos("discover", "--lab", lab.name, "--json")
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert dvr.id not in [r["id"] for r in report["routers"]]
        assert [r["id"] for r in report["refused"]] == [dvr.id]
        assert "DVR+HA router (distributed: true)" in report["refused"][0]["reason"]
        assert "snat-<id>" in report["refused"][0]["reason"]
        table = run_chaos("discover", "--lab", lab.name).stdout
        assert "refused 1 HA router(s)" in table and dvr.id in table

        def experiment(router_id: str) -> Path:
            path = tmp_path / f"e-{router_id[:8]}.yaml"
            path.write_text(f"""title: kill the primary of one router
target:
  routers: {{ids: ["{router_id}"]}}
  mode: one
  source: openstack
  cloud: {lab.name}
fault: {{type: keepalived-kill, replica: primary}}
steady_state_hypothesis: {{title: t, tolerances: {{primaries_after: {{equals: 1}}}}}}
""")
            return path

        reports = tmp_path / "reports"
        proc = run_chaos("run", "--reports-dir", str(reports), str(experiment(dvr.id)))
        assert proc.returncode == ExitCode.INVALID_INPUT, proc.stdout + proc.stderr
        assert f"selects 1 router(s) of cloud '{lab.name}' that this tool cannot act on: {dvr.name} ({dvr.id}): DVR+HA" in proc.stderr
        assert not reports.exists(), "refused before anything was written or injected"
        # A selection without the DVR router plans as usual.
        proc = run_chaos("run", "--dry-run", str(experiment(other.id)))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"router {other.name}" in proc.stdout
    finally:
        set_router_distributed(lab.dir, dvr.id, False)


# --------------------------------------------------------------------------- the rules, without a lab
def test_backend_and_refusal_rules() -> None:
    def agent(kind: str) -> ApiAgent:
        return ApiAgent(id=kind, host="n", alive=True, admin_state_up=True, agent_type=kind)

    check_backend("c", [agent("L3 agent"), agent("Open vSwitch agent")])
    check_backend("c", [agent("L3 agent"), agent("OVN Controller agent")])  # a cloud in migration keeps its L3 agents
    with pytest.raises(UnsupportedCloud, match="runs ML2/OVN"):
        check_backend("c", [agent(t) for t in sorted(OVN_AGENT_TYPES)])
    found = Discovery(cloud="c", routers=[], agents=[], ha_networks={}, skipped=[], topology=Topology(source="x", nodes=(), routers=()),
                      refused=[RefusedRouter(id="r-1", name="db", reason="DVR")])
    refuse_selected(found, RouterSelector(name="web-*"))
    with pytest.raises(InvalidInput, match=r"selects 1 router\(s\) of cloud 'c'.*db \(r-1\): DVR"):
        refuse_selected(found, RouterSelector())


def test_first_error_prefers_the_sentence() -> None:
    group = ExceptionGroup("x", [RuntimeError("bug"), ExceptionGroup("y", [NotAdmin("needs admin")])])
    assert isinstance(first_error(group), NotAdmin)
    assert isinstance(first_error(ExceptionGroup("x", [KeyError("k")])), KeyError)
