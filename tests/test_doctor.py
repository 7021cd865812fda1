"""chaos doctor and the preflight of chaos run: what a run needs on each node, checked for real.

The lab's nodes are hosts of their own (private mount namespaces): a prerequisite is removed
on one node by mounting /dev/null over a program there, which the rest of the machine never
sees, and put back afterwards.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from chaos.errors import ExitCode
from chaos.model import Node
from chaos.journal import read_journal
from chaos.runner.preflight import parse_preflight
from tests.conftest import CHAOS_CLI, LabHandle, wait_lab_ready


def chaos(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CHAOS_CLI, *args], capture_output=True, text=True, timeout=timeout)


def on_node(lab: LabHandle, node: str, command: str) -> None:
    proc = chaos("lab", "ssh", "--name", lab.name, node, "--", command, timeout=30)
    assert proc.returncode == 0, proc.stderr


@contextmanager
def without(lab: LabHandle, node: str, program: str) -> Iterator[None]:
    """``program`` (an absolute path) does not run on ``node`` while inside."""
    on_node(lab, node, f"mount --bind /dev/null {program}")
    try:
        yield
    finally:
        on_node(lab, node, f"umount {program}")


def test_parse_preflight_names_each_problem() -> None:
    node = Node(name="net-1", address="192.0.2.1", check_child_processes_interval=60)
    out = "\n".join([
        "U 1000", "A ok", "P ip ok ip utility", "P keepalived missing not found", "P conntrack missing not found",
        "P iptables ok iptables v1.8.9 (nf_tables)", "N ok", "I iptables v1.8.9 (nf_tables)",
        "C check_child_processes_interval = 30",
    ])
    checks = {c.check: c for c in parse_preflight(node, out, "", needed={"ip", "keepalived"})}
    assert checks["root"].status == "fail" and "uid 1000" in checks["root"].detail and "sudo" in checks["root"].fix
    assert checks["keepalived"].status == "fail"  # a fault of the run needs it
    assert checks["conntrack"].status == "warn"  # only a measurement does
    assert checks["respawn interval"].status == "warn" and "30" in checks["respawn interval"].fix
    broken = parse_preflight(node.model_copy(update={"profile": "kolla"}), "U 0\nA fail exit 1\n",
                             "Error: No such container: neutron_l3_agent", needed={"ip"})
    assert [(c.check, c.status) for c in broken] == [("root", "ok"), ("agent context", "fail")]
    assert "No such container" in broken[1].detail


def test_doctor_passes_on_a_healthy_lab(lab: LabHandle) -> None:
    wait_lab_ready(lab)
    proc = chaos("doctor", "--lab", lab.name, "--json")
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and {c["node"] for c in report["checks"]} == {n.name for n in lab.spec.nodes}
    replicas = [c for c in report["checks"] if c["check"].startswith("replica ")]
    assert len(replicas) == sum(len(r.replicas) for r in lab.spec.routers)
    assert all(c["status"] == "ok" for c in replicas)


def test_doctor_names_a_missing_prerequisite_and_exits_6(lab: LabHandle) -> None:
    wait_lab_ready(lab)
    with without(lab, "network-2", "/usr/sbin/keepalived"):
        proc = chaos("doctor", "--lab", lab.name)
    assert proc.returncode == ExitCode.PREREQUISITES, proc.stdout + proc.stderr
    failing = [line for line in proc.stdout.splitlines() if line.startswith("FAIL")]
    assert failing == [next(line for line in failing if "network-2" in line and "keepalived" in line)], failing
    assert "fix: install keepalived where the L3 agent runs" in proc.stdout
    with without(lab, "network-1", "/usr/sbin/conntrack"):  # only a measurement needs it: a warning
        proc = chaos("doctor", "--lab", lab.name)
    assert proc.returncode == ExitCode.OK and "WARN  network-1  conntrack" in proc.stdout, proc.stdout


def test_doctor_sees_a_kolla_node_without_its_container(kolla_lab: LabHandle) -> None:
    wait_lab_ready(kolla_lab)
    proc = chaos("doctor", "--lab", kolla_lab.name)
    assert proc.returncode == ExitCode.OK, proc.stdout
    assert "profile kolla: docker exec -u root neutron_l3_agent" in proc.stdout
    pid_file = f"{kolla_lab.dir}/nodes/network-3/containers/neutron_l3_agent.pid"
    Path(pid_file).rename(pid_file + ".away")
    try:
        proc = chaos("doctor", "--lab", kolla_lab.name)
    finally:
        Path(pid_file + ".away").rename(pid_file)
    assert proc.returncode == ExitCode.PREREQUISITES, proc.stdout
    assert "FAIL  network-3  agent context" in proc.stdout and "No such container: neutron_l3_agent" in proc.stdout


def test_run_refuses_before_injecting_when_a_node_lacks_what_the_fault_needs(lab: LabHandle, tmp_path: Path) -> None:
    wait_lab_ready(lab)
    experiment = tmp_path / "partition.yaml"
    experiment.write_text(
        "title: block VRRP\ntarget: {routers: {name: '*'}, mode: all}\n"
        "fault: {type: vrrp-partition, replica: backup, duration: 5s}\n"
        "probes: {primary: {}, warmup: 1s, settle: 1s}\n"
        "steady_state_hypothesis: {tolerances: {primaries_after: {equals: 1}}}\n"
    )
    with ExitStack() as stack:  # whichever nodes the plan picks, iptables does not run there
        for node in lab.spec.nodes:
            stack.enter_context(without(lab, node.name, "/usr/sbin/iptables"))
        proc = chaos("run", "--lab", lab.name, "--reports-dir", str(tmp_path), str(experiment), timeout=180)
    assert proc.returncode == ExitCode.PREREQUISITES, proc.stdout + proc.stderr
    assert "nothing was injected" in proc.stderr and "iptables" in proc.stderr and "Traceback" not in proc.stderr
    folder = Path(proc.stdout.strip().splitlines()[-1])
    kinds = [e["kind"] for e in read_journal(folder / "journal.jsonl")]
    assert "run.preflight" in kinds and "fault.injected" not in kinds and "fault.undo_recorded" not in kinds
