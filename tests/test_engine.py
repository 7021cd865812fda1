"""The experiment engine end to end against the real lab: plan, inject, hold, undo, recover.

Runs go through the `chaos` CLI as a subprocess (as users run it), with a temporary reports
folder; assertions read the run's journal and the lab's live state.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from chaos.errors import ExitCode
from chaos.runner.journal import read_journal
from tests.conftest import CHAOS_CLI, LabHandle, wait_lab_ready

CHAOS = list(CHAOS_CLI)
EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def run_cli(lab: LabHandle, reports: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CHAOS, "run", "--lab", lab.name, "--reports-dir", str(reports), *args],
        capture_output=True, text=True, timeout=timeout,
    )


def run_folder(proc: subprocess.CompletedProcess[str]) -> Path:
    last = proc.stdout.strip().splitlines()[-1]
    path = Path(last)
    assert (path / "journal.jsonl").exists(), proc.stdout + proc.stderr
    return path


def events(folder: Path, kind: str | None = None) -> list[dict]:
    return [e for e in read_journal(folder / "journal.jsonl") if kind is None or e["kind"] == kind]


def lab_is_clean(lab: LabHandle) -> None:
    """No fault left: every router has one primary, ha- links up, no chaos rule, keepalived up."""
    wait_lab_ready(lab, timeout=90)
    for router in lab.status()["routers"]:
        for rep in router["replicas"]:
            assert rep["keepalived_pids"], f"keepalived not running: {router['name']} on {rep['node']}"
    for node in lab.spec.nodes:
        script = "; ".join(
            f"ip -n qrouter-{r.id} -o link show {rep.ha_device}; ip netns exec qrouter-{r.id} iptables-save"
            for r, rep in lab.spec.replicas_on(node.name)
        )
        out = subprocess.run([*CHAOS, "lab", "ssh", "--name", lab.name, node.name, "--", script],
                             capture_output=True, text=True, timeout=30).stdout
        assert "state DOWN" not in out and ",UP" in out, out
        assert "chaos" not in out.lower(), f"a chaos rule is left on {node.name}: {out}"


def write_experiment(tmp: Path, name: str, fault: str, *, mode: str = "all", extra: str = "", safeguards: str = "",
                     probes: str = "icmp: {interval: 50ms}\n  primary: {}\n  warmup: 2s\n  settle: 3s") -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(f"""title: {name}
target:
  routers: {{name: "*"}}
  mode: {mode}
fault:
{fault}
safeguards:
  max_concurrent_routers: 10
  max_nodes_at_once: 3
  grace: 20s
  max_run_duration: 3m
{safeguards}
probes:
  {probes}
steady_state_hypothesis:
  title: routers come back
  tolerances:
    primaries_after: {{equals: 1}}
{extra}""")
    return path


@pytest.mark.parametrize("experiment", sorted(p.name for p in EXPERIMENTS.glob("*.yaml") if "evacuate" not in p.name))
def test_shipped_experiment_runs_and_leaves_nothing_injected(lab: LabHandle, tmp_path: Path, experiment: str) -> None:
    wait_lab_ready(lab)
    proc = run_cli(lab, tmp_path, str(EXPERIMENTS / experiment))
    assert proc.returncode in (ExitCode.OK, ExitCode.DEVIATED), proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    folder = run_folder(proc)
    plan = events(folder, "run.plan")[0]
    injected = {e["action_id"]: e["t"] for e in events(folder, "fault.injected")}
    undone = {e["action_id"]: e for e in events(folder, "fault.undone")}
    recorded = {e["action_id"]: e["t"] for e in events(folder, "fault.undo_recorded")}
    assert set(injected) == {a["action_id"] for a in plan["actions"]}
    for action_id, t in injected.items():
        assert recorded[action_id] <= t, "the undo must be journaled before the injection"
        assert undone[action_id]["ok"] and undone[action_id]["t"] >= t
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["verdict"] in ("held", "deviated")
    lab_is_clean(lab)


def test_faults_on_several_routers_are_injected_concurrently(lab: LabHandle, tmp_path: Path) -> None:
    wait_lab_ready(lab)
    path = write_experiment(tmp_path, "concurrent", "  type: ha-link-down\n  replica: backup\n  duration: 3s")
    proc = run_cli(lab, tmp_path, str(path))
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    folder = run_folder(proc)
    injected = sorted(e["t"] for e in events(folder, "fault.injected"))
    first_undo = min(e["t"] for e in events(folder, "fault.undone"))
    assert len(injected) == len(lab.spec.routers)
    assert injected[-1] - injected[0] < 1.0, f"injections spread over {injected[-1] - injected[0]:.2f}s"
    assert injected[-1] < first_undo, "every fault must hold at the same time"
    lab_is_clean(lab)


def test_plan_that_breaks_a_safeguard_is_refused_before_anything_runs(lab: LabHandle, tmp_path: Path) -> None:
    wait_lab_ready(lab)
    path = write_experiment(
        tmp_path, "refused", "  type: gateway-reboot\n  params: {method: lab}", mode="one",
    ).read_text().replace("max_concurrent_routers: 10", "max_concurrent_routers: 1")
    (tmp_path / "refused.yaml").write_text(path)
    proc = run_cli(lab, tmp_path, str(tmp_path / "refused.yaml"))
    assert proc.returncode == ExitCode.ABORTED, proc.stdout + proc.stderr
    assert "max_concurrent_routers" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    for folder in tmp_path.iterdir():
        if folder.is_dir():
            assert not events(folder, "fault.injected")
    assert all(n["powered"] for n in lab.status()["nodes"])


def test_dry_run_prints_the_commands_and_touches_nothing(lab: LabHandle, tmp_path: Path) -> None:
    wait_lab_ready(lab)
    path = write_experiment(tmp_path, "dry", "  type: vrrp-partition\n  duration: 5s", mode="one")
    before = {r["id"]: [x["state"] for x in r["replicas"]] for r in lab.status()["routers"]}
    proc = run_cli(lab, tmp_path, "--dry-run", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "iptables" in proc.stdout and "inject" in proc.stdout and "undo" in proc.stdout
    assert not [p for p in tmp_path.iterdir() if p.is_dir()], "a dry run writes no run folder"
    after = {r["id"]: [x["state"] for x in r["replicas"]] for r in lab.status()["routers"]}
    assert before == after


def _start_long_run(lab: LabHandle, tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    path = write_experiment(tmp_path, "long", "  type: ha-link-down\n  replica: backup\n  duration: 40s", mode="one")
    proc = subprocess.Popen(
        [*CHAOS, "run", "--lab", lab.name, "--reports-dir", str(tmp_path), str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        folders = [p for p in tmp_path.iterdir() if p.is_dir()]
        if folders and (folders[0] / "journal.jsonl").exists() and events(folders[0], "fault.verified"):
            return proc, folders[0]
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the run never injected its fault")


def _ha_link_down(lab: LabHandle, folder: Path) -> bool:
    action = events(folder, "fault.injected")[0]
    router = next(r for r in lab.spec.routers if r.id == action["router_id"])
    rep = next(r for r in router.replicas if r.node == action["node"])
    out = subprocess.run([*CHAOS, "lab", "ssh", "--name", lab.name, rep.node, "--",
                          f"ip -n qrouter-{router.id} -o link show {rep.ha_device}"],
                         capture_output=True, text=True, timeout=30).stdout
    return "state DOWN" in out or ",UP" not in out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_fault_rolls_back(lab: LabHandle, tmp_path: Path, sig: signal.Signals) -> None:
    wait_lab_ready(lab)
    proc, folder = _start_long_run(lab, tmp_path)
    try:
        assert _ha_link_down(lab, folder)
        os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == ExitCode.INTERRUPTED, out + err
        assert "Traceback" not in err
        undone = events(folder, "fault.undone")
        assert undone and all(e["ok"] for e in undone)
        assert events(folder, "run.finished")[0]["verdict"] == "interrupted"
        assert not _ha_link_down(lab, folder)
    finally:
        if proc.poll() is None:
            proc.kill()
        lab_is_clean(lab)


def test_kill_9_then_recover_leaves_nothing_injected(lab: LabHandle, tmp_path: Path) -> None:
    wait_lab_ready(lab)
    proc, folder = _start_long_run(lab, tmp_path)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert _ha_link_down(lab, folder), "kill -9 must leave the fault in place (nothing could undo it)"
        rec = subprocess.run([*CHAOS, "recover", str(folder)], capture_output=True, text=True, timeout=120)
        assert rec.returncode == 0, rec.stdout + rec.stderr
        assert "undone" in rec.stdout
        assert not _ha_link_down(lab, folder)
        assert any(e.get("by") == "recover" and e["ok"] for e in events(folder, "fault.undone"))
        again = subprocess.run([*CHAOS, "recover", str(folder)], capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and "nothing left injected" in again.stdout
    finally:
        lab_is_clean(lab)
