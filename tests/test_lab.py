"""The embedded lab behaves like Neutron L3 HA: real keepalived, state files, respawn, reboot.

All of these run against real namespaces, keepalived and sshd (root only; see conftest).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chaos.errors import ExitCode, InvalidInput
from chaos.lab.manager import Lab
from chaos.lab.netlink import list_netns
from chaos.lab.netlink import drop_netns
from chaos.lab.node import init_pid, node_dir
from chaos.lab.procs import ProcTable, pids_matching
from chaos.lab.spec import LabOptions, plan_lab
from tests.conftest import CHAOS_CLI, LAB_ROOT, LabHandle, lab_name, require_lab_prerequisites, wait_lab_ready

CHAOS = list(CHAOS_CLI)


def master_down_interval(advert_int: float, priority: int = 50) -> float:
    return 3 * advert_int + (256 - priority) / 256 * advert_int


# keepalived 2.2.7 on these 2-core machines takes over within Master_Down_Interval of the last
# advert it heard (a hand-built pair: 4.9-5.4 s after a link-down at advert 2, inside the
# VRRP bound). What a test reads on top is the state-change daemon writing the state file and
# its own polling, slower under CI's load: this margin covers that, not keepalived.
OBSERVATION_MARGIN = 2.0


def root_netns_snapshot() -> str:
    out = []
    for args in (["link"], ["-4", "addr"], ["-6", "addr"], ["route"], ["-6", "route"]):
        text = subprocess.run(["ip", "-o", *args], capture_output=True, text=True, check=True).stdout
        # Counters and timers change by themselves; names, addresses and routes must not.
        out.append("\n".join(sorted(line.split(" valid_lft")[0] for line in text.splitlines())))
    return "\n".join(out)


ROOT_BEFORE = root_netns_snapshot()


def chaos_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CHAOS, *args], capture_output=True, text=True, timeout=timeout)


def ssh(handle: LabHandle, node: str, command: str) -> str:
    proc = chaos_cli("lab", "ssh", "--name", handle.name, node, "--", command, timeout=30)
    assert proc.returncode == 0, f"ssh {node} {command!r}: {proc.stderr}"
    return proc.stdout


def ping(handle: LabHandle, address: str) -> bool:
    proc = subprocess.run(
        ["ip", "netns", "exec", handle.spec.vantage.netns, "ping", "-c", "1", "-W", "1", address],
        capture_output=True,
        timeout=10,
    )
    return proc.returncode == 0


def router_status(handle: LabHandle, router_id: str) -> dict:
    return next(r for r in handle.status()["routers"] if r["id"] == router_id)


# --------------------------------------------------------------------------- plan (pure)
def test_plan_refuses_the_255th_router_of_a_project() -> None:
    plan_lab(LabOptions(name="p", routers=254, nodes=2))
    with pytest.raises(InvalidInput, match="VRID"):
        plan_lab(LabOptions(name="p", routers=255, nodes=2))
    # Two projects have two HA networks, so 255 routers fit.
    spec = plan_lab(LabOptions(name="p", routers=255, nodes=2, projects=2))
    vrids = {(r.project_id, r.vrid) for r in spec.routers}
    assert len(vrids) == 255 and max(v for _, v in vrids) == 128


def test_plan_uses_neutron_names_and_lab_ranges_only() -> None:
    spec = plan_lab(LabOptions(name="p", routers=3, nodes=3, replicas=3))
    for router in spec.routers:
        assert router.gateway_device.startswith("qg-") and len(router.gateway_device) == 14
        assert router.ha_vip == f"169.254.0.{router.vrid}"
        assert {rep.node for rep in router.replicas} == {"network-1", "network-2", "network-3"}
        for addr in [router.gateway_ip, router.internal_ip, *(f.address for f in router.floating_ips)]:
            assert addr.startswith(("100.64.", "100.96.")), addr
    assert all(n.mgmt_ip.startswith("198.51.100.") for n in spec.nodes)


@pytest.mark.root  # `chaos lab up` checks root before it reads the options
def test_cli_rejects_impossible_lab_before_creating_anything() -> None:
    name = lab_name("x")
    proc = chaos_cli("lab", "up", "--name", name, "--routers", "255")
    assert proc.returncode == ExitCode.INVALID_INPUT, proc.stderr
    assert "VRID" in proc.stderr and "Traceback" not in proc.stderr
    proc = chaos_cli("lab", "up", "--name", name, "--replicas", "4", "--nodes", "3")
    assert proc.returncode == ExitCode.INVALID_INPUT and "replicas" in proc.stderr
    assert not any(ns.startswith(f"{name}-") for ns in list_netns())


# --------------------------------------------------------------------------- a running lab
def test_every_router_has_exactly_one_primary_holding_its_addresses(lab: LabHandle) -> None:
    wait_lab_ready(lab)
    for router in lab.status()["routers"]:
        primaries = [r for r in router["replicas"] if r["state"] == "primary"]
        holders = [r for r in router["replicas"] if r["holds_addresses"]]
        assert len(primaries) == 1, router
        assert [r["node"] for r in holders] == [primaries[0]["node"]], router
        assert all(r["keepalived_pids"] for r in router["replicas"]), router
        for fip in router["floating_ips"]:
            assert ping(lab, fip["address"]), f"{fip['address']} of {router['name']} does not answer"


def test_nodes_look_like_neutron_network_nodes(lab: LabHandle) -> None:
    router = lab.spec.routers[0]
    macs = {}
    for rep in router.replicas:
        out = ssh(lab, rep.node, f"hostname; ip netns list; ps -eo args; ip -n qrouter-{router.id} -o link; "
                  f"cat /var/lib/neutron/ha_confs/{router.id}/keepalived.conf")
        assert out.splitlines()[0] == rep.node
        assert f"qrouter-{router.id}" in out
        assert (
            f"keepalived -P -f /var/lib/neutron/ha_confs/{router.id}/keepalived.conf "
            f"-p /var/lib/neutron/ha_confs/{router.id}.pid.keepalived "
            f"-r /var/lib/neutron/ha_confs/{router.id}.pid.keepalived-vrrp"
        ) in out
        assert f"neutron-keepalived-state-change --router_id {router.id} --namespace qrouter-{router.id}" in out
        for needle in ("state BACKUP", "nopreempt", "priority 50", "advert_int 1", f"virtual_router_id {router.vrid}",
                       f"{router.ha_vip}/24 dev {rep.ha_device}", "virtual_ipaddress_excluded",
                       f"{router.floating_ips[0].address}/32 dev {router.gateway_device}",
                       f"0.0.0.0/0 via {lab.spec.external_gateway_ip} dev {router.gateway_device}"):
            assert needle in out, needle
        for line in out.splitlines():
            if f" {router.internal_device}" in line and "link/ether" in line:
                macs[rep.node] = line.split("link/ether ")[1].split()[0]
    assert len(macs) == 2 and len(set(macs.values())) == 1, f"qr- MAC must be the same on every replica: {macs}"


def test_nodes_are_hosts_of_their_own(lab: LabHandle) -> None:
    """Each node has its own qrouter namespaces, /var/lib/neutron and boot id."""
    outs = {n.name: ssh(lab, n.name, "cat /proc/sys/kernel/random/boot_id; ls /var/lib/neutron/ha_confs") for n in lab.spec.nodes}
    boot_ids = {out.splitlines()[0] for out in outs.values()}
    assert len(boot_ids) == len(lab.spec.nodes)
    for node in lab.spec.nodes:
        hosted = {r.id for r, _ in lab.spec.replicas_on(node.name)}
        listed = {line for line in outs[node.name].splitlines()[1:] if ".pid." not in line}
        assert listed == hosted
    # The root namespace sees none of the qrouter namespaces.
    assert not [ns for ns in list_netns() if ns.startswith("qrouter-")]


def test_sigkill_of_primary_keepalived_fails_over_and_agent_respawns(lab: LabHandle) -> None:
    wait_lab_ready(lab)
    router = lab.spec.routers[1]
    before = router_status(lab, router.id)
    primary = next(r for r in before["replicas"] if r["state"] == "primary")
    backup = next(r for r in before["replicas"] if r["state"] == "backup")
    pids_before = set(primary["keepalived_pids"])
    try:
        ssh(lab, primary["node"], f"kill -9 $(cat /var/lib/neutron/ha_confs/{router.id}.pid.keepalived) "
                                  f"$(cat /var/lib/neutron/ha_confs/{router.id}.pid.keepalived-vrrp)")
        t0 = time.monotonic()  # after the kill: starting the CLI and SSH is not failover time
        # The takeover is read from the backup's state file alone (a cheap read, polled fast);
        # the respawn and the addresses from the whole status, which takes longer to gather.
        took_over = None
        deadline = t0 + master_down_interval(1) + OBSERVATION_MARGIN + 5
        while took_over is None and time.monotonic() < deadline:
            if lab.lab.replica_state(backup["node"], router) == "primary":
                took_over = time.monotonic() - t0
            time.sleep(0.02)
        respawned = False
        deadline = time.monotonic() + lab.spec.options.respawn_interval + 10
        while time.monotonic() < deadline:
            reps = {r["node"]: r for r in router_status(lab, router.id)["replicas"]}
            pids = set(reps[primary["node"]]["keepalived_pids"])
            if pids and not pids & pids_before:
                respawned = True
            if respawned and not reps[primary["node"]]["holds_addresses"]:
                break
            time.sleep(0.1)
        assert took_over is not None, "the backup never became primary"
        assert took_over <= master_down_interval(1) + OBSERVATION_MARGIN, f"failover took {took_over:.2f}s"
        assert respawned, "the agent did not respawn the killed keepalived"
        final = {r["node"]: r for r in router_status(lab, router.id)["replicas"]}
        # The respawned keepalived starts in BACKUP (nopreempt) and removes what the killed one left.
        assert final[primary["node"]]["state"] == "backup"
        assert not final[primary["node"]]["holds_addresses"]
        assert final[backup["node"]]["holds_addresses"]
        # Through the new primary within a few seconds. Not at once: the old primary held the
        # addresses (same MAC on every replica) until its respawned keepalived removed them, and
        # the fabric may still forward that MAC to it until the new primary next sends a frame.
        answered_after = None
        started = time.monotonic()
        while answered_after is None and time.monotonic() - started < 5.0:
            if ping(lab, router.floating_ips[0].address):
                answered_after = time.monotonic() - started
        assert answered_after is not None, "the floating IP did not answer within 5 s of the respawn"
    finally:
        wait_lab_ready(lab)


def test_reboot_moves_primaries_and_brings_replicas_back_as_backups(lab: LabHandle) -> None:
    wait_lab_ready(lab)
    status = lab.status()
    node = "network-1"
    old_boot = next(n["boot_id"] for n in status["nodes"] if n["name"] == node)
    hosted = [r for r in status["routers"] if any(rep["node"] == node for rep in r["replicas"])]
    assert hosted
    try:
        proc = chaos_cli("lab", "reboot", "--name", lab.name, node, "--no-wait")
        assert proc.returncode == 0, proc.stderr
        # Powered off: the node is gone from the management network at once (both checked
        # inside the lab's 2 s boot delay: the status first, the ping then waits up to 1 s).
        assert not next(n for n in lab.status()["nodes"] if n["name"] == node)["powered"]
        assert not ping(lab, lab.spec.node(node).mgmt_ip)
        wait_lab_ready(lab, timeout=60)
        after = lab.status()
        new_boot = next(n["boot_id"] for n in after["nodes"] if n["name"] == node)
        assert new_boot and new_boot != old_boot
        assert ssh(lab, node, "hostname").strip() == node
        for router in after["routers"]:
            reps = {r["node"]: r for r in router["replicas"]}
            if node in reps:
                assert reps[node]["state"] == "backup", router
                assert reps[node]["keepalived_pids"], router
            assert [r["node"] for r in router["replicas"] if r["holds_addresses"]] != [node]
            assert ping(lab, router["floating_ips"][0]["address"])
    finally:
        wait_lab_ready(lab, timeout=60)


def test_up_is_idempotent_and_refuses_other_options(lab: LabHandle) -> None:
    o = lab.spec.options
    same = ["--nodes", str(o.nodes), "--routers", str(o.routers), "--replicas", str(o.replicas),
            "--advert-int", str(o.advert_int), "--respawn-interval", str(o.respawn_interval),
            "--boot-delay", str(o.boot_delay)]
    t0 = time.monotonic()
    proc = chaos_cli("lab", "up", "--name", lab.name, *same)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - t0 < 10
    proc = chaos_cli("lab", "up", "--name", lab.name, "--routers", "7")
    assert proc.returncode == ExitCode.CONFLICT
    assert "lab down" in proc.stderr and "Traceback" not in proc.stderr


def test_status_json_and_inventory_describe_the_lab(lab: LabHandle) -> None:
    proc = chaos_cli("lab", "status", "--name", lab.name, "--json")
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert [n["name"] for n in status["nodes"]] == ["network-1", "network-2", "network-3"]
    node = status["nodes"][0]
    assert Path(node["key_file"]).exists() and node["host_key"].startswith("ssh-ed25519 ")
    assert node["host_key"].split()[1] in Path(node["known_hosts"]).read_text()
    assert len(status["routers"]) == 4
    from chaos.model import Topology

    topo = Topology.model_validate_json(Path(status["inventory"]).read_text())
    assert {r.id for r in topo.routers} == {r["id"] for r in status["routers"]}
    assert topo.bmc_url and topo.bmc_url.startswith("http://127.0.0.1:")


def test_status_without_lab_is_a_clear_error() -> None:
    proc = chaos_cli("lab", "status", "--name", "nosuchlab")
    assert proc.returncode == ExitCode.CONFLICT
    assert "chaos lab up" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.root  # brings up a lab of its own
def test_down_removes_everything_even_after_a_crash() -> None:
    require_lab_prerequisites()
    lab = Lab(LAB_ROOT, lab_name("d"))
    try:
        lab.up(LabOptions(name=lab.name, nodes=2, routers=1, advert_int=1), timeout=120)
        # Simulate a crashed manager: its state file is gone, its processes and namespaces are not.
        (lab.dir / "lab.json").unlink()
        assert lab.leftover_namespaces()
    finally:
        lab.down()
    assert not lab.leftover_namespaces()
    assert not lab.dir.exists()
    assert not pids_matching(str(lab.dir))
    # Nothing of it is left running in any namespace: no keepalived without a lab.
    leftover = subprocess.run(["pgrep", "-f", f"chaos-lab/{lab.name}"], capture_output=True, text=True).stdout
    assert not leftover.strip()


@pytest.mark.root  # brings up a lab of its own
def test_down_leaves_nothing_when_node_processes_are_stopped_or_strays_run() -> None:
    """The teardown kills a node's whole PID namespace through its init and whatever runs in a
    lab namespace, all at once: a frozen init and frozen keepalived (a keepalived-stop fault
    caught by the teardown), a process started into a node by hand, strays in the fabric's and
    a VM's namespace whose command line names nothing of the lab, and services that crashed."""
    require_lab_prerequisites()
    lab = Lab(LAB_ROOT, lab_name("s"))
    strays: list[subprocess.Popen[bytes]] = []
    try:
        spec = lab.up(LabOptions(name=lab.name, nodes=2, routers=2, advert_int=1), timeout=120)
        services = lab.services_pid()
        assert services is not None
        os.kill(services, signal.SIGKILL)  # the services crashed
        init = init_pid(lab.dir, "network-1")
        assert init is not None
        table = ProcTable.scan()
        node_procs = table.in_pidns(init)
        frozen = [p for p in node_procs if "keepalived.conf" in table.cmdlines[p]]
        assert frozen
        for pid in [*frozen, init]:
            os.kill(pid, signal.SIGSTOP)
        for argv in (
            ["nsenter", "-t", str(init), "-p", "-m", "-n", "--", "sleep", "600"],  # inside node 1
            ["ip", "netns", "exec", spec.fabric_netns, "sleep", "600"],
            ["ip", "netns", "exec", spec.routers[0].vms[0].netns, "sleep", "600"],
        ):
            strays.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL))
        time.sleep(0.5)
        assert all(s.poll() is None for s in strays)
        lab.down()
        for stray in strays:
            assert stray.wait(timeout=10) == -signal.SIGKILL
        assert all(not Path(f"/proc/{p}").exists() or _zombie(p) for p in [*node_procs, init])
    finally:
        for stray in strays:
            if stray.poll() is None:
                stray.kill()
                stray.wait()
        lab.down()
    assert not lab.leftover_namespaces()
    assert not lab.dir.exists()
    assert not pids_matching(str(lab.dir))
    assert f"/{lab.name}-" not in Path("/proc/self/mountinfo").read_text()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def test_status_names_each_replicas_own_keepalived(lab: LabHandle) -> None:
    """``status`` finds every keepalived from one /proc snapshot; each replica's pids must still
    be exactly its own: the two processes (keepalived and its VRRP child) whose pids, seen from
    inside their node, are in the replica's pid files there, on the replica's node only, and
    several replicas per node must not share or swap them."""
    wait_lab_ready(lab)
    status = lab.status()
    seen: list[int] = []
    per_node: dict[str, int] = {}
    for router in status["routers"]:
        for rep in router["replicas"]:
            inner = set()
            for suffix in ("keepalived", "keepalived-vrrp"):
                pid_file = node_dir(lab.dir, rep["node"]) / "neutron" / "ha_confs" / f"{router['id']}.pid.{suffix}"
                inner.add(int(pid_file.read_text().strip()))
            hosts = {p: _nspids(p) for p in rep["keepalived_pids"]}
            assert {ns[-1] for ns in hosts.values()} == inner, (router["name"], rep["node"], hosts, inner)
            init = init_pid(lab.dir, rep["node"])
            assert set(rep["keepalived_pids"]) <= set(ProcTable.scan().in_pidns(init or 0))
            seen += rep["keepalived_pids"]
            per_node[rep["node"]] = per_node.get(rep["node"], 0) + 1
    assert len(seen) == len(set(seen)) == 2 * sum(per_node.values())
    assert max(per_node.values()) >= 2, per_node


def _nspids(pid: int) -> list[int]:
    """A process's pid in each PID namespace it belongs to, outermost first (NSpid)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return [int(x) for x in line.split()[1:]]
    return []


def test_proc_table_finds_processes_by_command_line_and_namespace() -> None:
    """One /proc snapshot answers by command line, PID namespace and network namespace."""
    marker = f"proc-table-{os.getpid()}-{time.monotonic_ns()}"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", marker])
    try:
        deadline = time.monotonic() + 10
        while marker not in Path(f"/proc/{child.pid}/cmdline").read_text(errors="replace"):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        table = ProcTable.scan()
        assert table.matching(marker) == [child.pid]
        assert table.matching(marker) == [child.pid]  # answered again from memory
        assert child.pid in table.in_pidns(os.getpid())
        assert child.pid in table.in_netns(Path("/proc/self/ns/net"))
        assert os.getpid() not in table.cmdlines  # the caller is never its own target
        assert table.in_netns(Path("/nonexistent")) == [] and table.in_pidns(2**22 + 1) == []
    finally:
        child.kill()
        child.wait()


def test_drop_netns_refuses_anything_but_a_name_in_run_netns() -> None:
    assert drop_netns(["../x", "a/b", "", ".", ".."]) == ["../x", "a/b", "", ".", ".."]


def test_root_namespace_is_untouched(lab: LabHandle) -> None:
    assert root_netns_snapshot() == ROOT_BEFORE


def test_a_lab_too_big_for_the_hosts_arp_table_is_warned_about() -> None:
    from chaos.lab.manager import _neighbour_table_warning

    limit = int(Path("/proc/sys/net/ipv4/neigh/default/gc_thresh3").read_text())
    small = plan_lab(LabOptions(name="p", routers=4))
    big = plan_lab(LabOptions(name="p", routers=2000, projects=10))
    assert _neighbour_table_warning(small) is None
    if limit >= 16000:
        pytest.skip(f"this host's ARP table ({limit}) holds even a 2000-router lab")
    warning = _neighbour_table_warning(big)
    assert warning is not None and "gc_thresh3" in warning and str(limit) in warning
