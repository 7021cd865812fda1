"""The neutron backend: Debian 12's Neutron Zed runs the lab's routers, and the shipped
experiments run against it through the CLI, as a user would.

One lab for the module (3 network nodes, 2 HA routers, respawn interval 5 s so keepalived
faults meet Neutron's own process monitor quickly; the default lab keeps Neutron's 60 s).
CI runs this file: bring-up, what Neutron wrote on the nodes, discovery against the real API,
keepalived-term, keepalived-kill and ha-link-down, and ``chaos lab down`` after a crash. The
rest of the shipped experiments (gateway-reboot, vrrp-partition, both evacuations) are in
``test_neutron_backend_full.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chaos.lab.procs import cmdline, pids_matching
from chaos.lab.router import LAYOUT
from chaos.lab.spec import LabSpec
from tests.conftest import CHAOS_CLI, IN_CI, LabHandle, wait_lab_ready

ROOT = Path(__file__).resolve().parent.parent
# The module's lab comes up inside the first test's time: Neutron's agents need minutes on two cores.
pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]


def require_neutron_backend() -> None:
    from chaos.errors import ChaosError
    from chaos.lab.manager import check_prerequisites

    try:
        check_prerequisites("neutron")
    except ChaosError as exc:
        if IN_CI:
            pytest.fail(f"neutron backend prerequisites missing in CI: {exc}")
        pytest.skip(f"neutron backend not installed: {exc}")


@pytest.fixture(scope="module")
def nlab(make_lab: Callable[..., LabHandle]) -> LabHandle:
    require_neutron_backend()
    return make_lab("n", timeout=600, backend="neutron", nodes=3, routers=2, respawn_interval=5.0, boot_delay=2.0)


def run_experiment(lab: LabHandle, experiment: Path, tmp: Path, *, timeout: float = 420) -> tuple[int, dict[str, Any], str]:
    """``chaos run`` a shipped experiment against the lab; (exit code, summary, output)."""
    text = experiment.read_text().replace("cloud: chaoslab", f"cloud: {lab.name}")
    path = tmp / experiment.name
    path.write_text(text)
    reports = tmp / "reports"
    proc = subprocess.run([*CHAOS_CLI, "run", "--lab", lab.name, "--reports-dir", str(reports), str(path)],
                          capture_output=True, text=True, timeout=timeout)
    summaries = sorted(reports.glob("*/summary.json"))
    assert summaries, f"no summary (exit {proc.returncode}): {proc.stdout}\n{proc.stderr[-3000:]}"
    return proc.returncode, json.loads(summaries[-1].read_text()), proc.stdout + proc.stderr


def nothing_injected(lab: LabHandle) -> None:
    """Every replica back: namespace, keepalived, ha- link up; one primary per router."""
    status = lab.status()
    for router in status["routers"]:
        states = [r["state"] for r in router["replicas"]]
        assert states.count("primary") == 1, (router["name"], states)
        for rep in router["replicas"]:
            assert rep["keepalived_pids"], (router["name"], rep)
    spec = LabSpec.load(lab.dir / "lab.json")
    for router in spec.routers:
        for rep in router.replicas:
            out = subprocess.run(
                [*CHAOS_CLI, "lab", "ssh", "--name", lab.name, rep.node, "--",
                 f"ip netns exec {router.namespace} ip -o link show {rep.ha_device}"],
                capture_output=True, text=True, timeout=60,
            ).stdout
            assert "state UP" in out or ",UP" in out, (rep, out)


def test_bring_up_runs_neutrons_own_processes(nlab: LabHandle) -> None:
    spec = nlab.spec
    assert spec.backend == "neutron"
    inventory = json.loads((nlab.dir / "inventory.json").read_text())
    assert inventory["backend"] == "neutron"
    assert inventory["neutron_version"].startswith("21.0.0"), inventory["neutron_version"]
    wait_lab_ready(nlab)
    live = LabSpec.load(nlab.dir / "lab.json")
    for router in live.routers:
        assert len(router.replicas) == 2 and 1 <= router.vrid <= 254, router
        for rep in router.replicas:
            # keepalived with Neutron's command line and pid files, as chaos.neutron says.
            argv = " ".join(LAYOUT.keepalived_argv(router.id))
            found = [p for p in pids_matching(f"ha_confs/{router.id}/keepalived.conf") if cmdline(p).strip() == argv]
            assert found, f"no keepalived with {argv!r}"
            # Zed's neutron-keepalived-state-change (Python, /usr/bin), started by the L3 agent.
            monitors = [cmdline(p) for p in pids_matching(f"--router_id={router.id}")]
            assert any("/usr/bin/neutron-keepalived-state-change" in c for c in monitors), monitors
            state = (nlab.dir / "nodes" / rep.node / "neutron" / "ha_confs" / router.id / "state").read_text()
            assert state in ("primary", "backup")  # no newline, as HaRouter writes it
            conf = (nlab.dir / "nodes" / rep.node / "neutron" / "ha_confs" / router.id / "keepalived.conf").read_text()
            assert f"virtual_router_id {router.vrid}" in conf and f"interface {rep.ha_device}" in conf
    # Neutron's processes never use the packages' own files.
    for pid in pids_matching("--config-file"):
        if str(nlab.dir) in cmdline(pid):
            assert "/etc/neutron/" not in cmdline(pid), cmdline(pid)


def test_nothing_of_the_backend_in_the_root_namespace(nlab: LabHandle) -> None:
    addrs = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, timeout=10).stdout
    for prefix in ("198.51.100.", "100.64.", "100.96.", "169.254.19", "169.254.0."):
        assert f"inet {prefix}" not in addrs, addrs
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=10).stdout
    assert "brq" not in links and "vxlan-" not in links and "tap" not in links, links
    # MariaDB, RabbitMQ and neutron-server listen inside the controller; in this namespace the
    # lab's processes listen on loopback only (the BMC, Keystone and the forwarder to neutron-server).
    import re

    listening = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, timeout=10).stdout
    ours = []
    for line in listening.splitlines():
        pids = [int(p) for p in re.findall(r"pid=(\d+)", line)]
        if any(str(nlab.dir) in cmdline(p) for p in pids):
            ours.append(line)
            local = line.split()[3]
            assert local.startswith("127.0.0.1:"), line
    assert len(ours) >= 3, listening  # BMC, Keystone, forwarder


def test_discovery_against_real_neutron_agrees_with_the_nodes(nlab: LabHandle) -> None:
    """`chaos discover` through Neutron's real API (admin token from the lab's Keystone,
    validated by keystonemiddleware): every router, its agents' ha_state beside the nodes' truth."""
    wait_lab_ready(nlab)
    import time

    time.sleep(5)  # the agents report a move to primary after advert_int, in batches
    proc = subprocess.run([*CHAOS_CLI, "discover", "--lab", nlab.name, "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = {r["id"]: r for r in json.loads(proc.stdout)["routers"]}
    live = LabSpec.load(nlab.dir / "lab.json")
    assert set(found) == {r.id for r in live.routers}
    for router in live.routers:
        d = found[router.id]
        assert d["flags"] == [], d
        assert {rep["node"] for rep in d["replicas"]} == {rep.node for rep in router.replicas}
        assert d["primary"] == d["api_active"] and len(d["primary"]) == 1, d
        for rep in d["replicas"]:
            assert rep["api_ha_state"] == {"primary": "active", "backup": "standby"}[rep["node_state"]], rep
            assert rep["vrid"] == router.vrid and rep["keepalived_alive"], rep


@pytest.mark.parametrize("name", ["keepalived-term", "keepalived-kill", "ha-link-down"])
def test_shipped_experiment_holds_against_neutron(nlab: LabHandle, tmp_path: Path, name: str) -> None:
    wait_lab_ready(nlab, timeout=120)
    code, summary, out = run_experiment(nlab, ROOT / "experiments" / f"{name}.yaml", tmp_path)
    failed = [f"{t['name']}={t['value']} ({t.get('reason') or 'over the bound'})" for t in summary["tolerances"] if not t["ok"]]
    assert code == 0 and summary["verdict"] == "held", f"exit {code}, failed: {failed}\n{out[-2000:]}"
    assert summary["run"]["backend"].startswith("neutron (Neutron 21.0.0"), summary["run"]
    report = next((tmp_path / "reports").glob("*/report.md")).read_text()
    assert "backend neutron (Neutron 21.0.0" in report
    nothing_injected(nlab)


def test_down_after_a_crash_removes_everything(make_lab: Callable[..., LabHandle], nlab: LabHandle) -> None:
    """Last: kill the lab's services and controller init as a crash would, then `chaos lab down`."""
    from chaos.lab.real.controller import init_marker

    services = nlab.lab.services_pid()
    assert services is not None
    os.kill(services, 9)
    for pid in pids_matching(init_marker(nlab.dir)):
        os.kill(pid, 9)
    proc = subprocess.run([*CHAOS_CLI, "lab", "down", "--name", nlab.name], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    leftovers = [cmdline(p) for p in pids_matching(str(nlab.dir))]
    assert not leftovers, leftovers
    for daemon in ("mariadbd", "beam.smp", "neutron-server", "neutron-l3-agent", "privsep-helper"):
        mine = [p for p in pids_matching(daemon) if str(nlab.dir) in Path(f"/proc/{p}/environ").read_text(errors="replace")
                or str(nlab.dir) in cmdline(p)]
        assert not mine, (daemon, mine)
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    assert f"{nlab.name}-" not in namespaces
    assert not nlab.dir.exists()
