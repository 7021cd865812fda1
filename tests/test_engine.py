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
from chaos.journal import JournalHeader, read_events, read_journal
from tests.conftest import CHAOS_CLI, LabHandle, wait_lab_ready
from tests.interruption import Inspector, placement_of

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


SHIPPED_ON_NODES = sorted(p.name for p in EXPERIMENTS.glob("*.yaml") if "evacuate" not in p.name)


@pytest.mark.parametrize("experiment", SHIPPED_ON_NODES)
def test_shipped_experiment_runs_and_leaves_nothing_injected(lab: LabHandle, tmp_path: Path, experiment: str) -> None:
    shipped_experiment_leaves_nothing_injected(lab, tmp_path, experiment)


@pytest.mark.parametrize("experiment", SHIPPED_ON_NODES)
def test_shipped_experiment_on_a_kolla_shaped_lab(kolla_lab: LabHandle, tmp_path: Path, experiment: str) -> None:
    """The same experiments where the L3 agent runs as kolla-ansible runs it: every node command
    goes through `docker exec` into neutron_l3_agent, with kolla's paths, and keepalived comes
    back through kolla's wrapper (a sidecar per router)."""
    # As shipped, but with a shorter warm-up and settle (the suite's time; the upstream shape runs
    # the files untouched).
    text = (EXPERIMENTS / experiment).read_text().replace("warmup: 5s", "warmup: 2s").replace("settle: 10s", "settle: 4s")
    assert "warmup: 2s" in text and "settle: 4s" in text
    (tmp_path / "exp").mkdir()
    shortened = tmp_path / "exp" / experiment
    shortened.write_text(text)
    folder = shipped_experiment_leaves_nothing_injected(kolla_lab, tmp_path, str(shortened))
    plan = events(folder, "run.plan")[0]
    for action in plan["actions"]:
        for command in action["inject"]:
            assert "/var/lib/neutron/ha_confs" not in command, command
            if command.startswith("nohup setsid"):  # the dead-man: a timer on the host, its undo in the agent's context
                assert "docker exec -u root neutron_l3_agent sh -c " in command, command
            elif "ip netns" in command or "keepalived" in command or "ip -n " in command:
                assert command.startswith("docker exec -u root neutron_l3_agent sh -c "), command


def shipped_experiment_leaves_nothing_injected(lab: LabHandle, tmp_path: Path, experiment: str) -> Path:
    wait_lab_ready(lab)
    proc = run_cli(lab, tmp_path, str(EXPERIMENTS / experiment))  # an absolute path stays as given
    assert proc.returncode in (ExitCode.OK, ExitCode.DEVIATED, ExitCode.INCONCLUSIVE), proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    folder = run_folder(proc)
    # The run's own health, once a second: real ICMP send counts and the replica stream's real
    # lag behind the nodes (the lab's nodes share this host's clock).
    health = events(folder, "run.health")
    started, ended = events(folder, "run.started")[0]["t"], events(folder, "run.finished")[0]["t"]
    assert len(health) >= (ended - started) * 0.5, f"{len(health)} health samples in a {ended - started:.0f} s run"
    assert all(h["runner_cpu"] is not None and h["loop_lag_max"] is not None for h in health)
    assert sum(h.get("probe_sends") or 0 for h in health) > 0
    lags = [h["observer_lag_max"] for h in health if h.get("observer_lag_max") is not None]
    assert len(lags) >= len(health) // 2 and 0 <= sorted(lags)[len(lags) // 2] < 0.5, lags
    # Every line the run wrote fits the journal's models (read_events validates each one).
    whole = list(read_events(folder / "journal.jsonl"))
    assert isinstance(whole[0], JournalHeader) and whole[0].tool_version
    plan = events(folder, "run.plan")[0]
    injected = {e["action_id"]: e["t"] for e in events(folder, "fault.injected")}
    undone = {e["action_id"]: e for e in events(folder, "fault.undone")}
    recorded = {e["action_id"]: e["t"] for e in events(folder, "fault.undo_recorded")}
    assert set(injected) == {a["action_id"] for a in plan["actions"]}
    for action_id, t in injected.items():
        assert recorded[action_id] <= t, "the undo must be journaled before the injection"
        assert undone[action_id]["ok"] and undone[action_id]["t"] >= t
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["verdict"] in ("held", "deviated", "inconclusive")
    assert summary["health"]["samples"] == len(health)
    lab_is_clean(lab)
    return folder


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


# --------------------------------------------------------------------------- keepalived restarts
class KeepalivedWatcher:
    """Counts, every few milliseconds while a run goes on, the keepalived instances of each
    router on each lab node, straight from /proc (not through the tool): an instance is a
    keepalived process whose parent is not a keepalived of the same config (a main process;
    its VRRP child does not count)."""

    def __init__(self, lab: LabHandle) -> None:
        import threading

        self.lab = lab
        self.most: dict[tuple[str, str], int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "KeepalivedWatcher":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)

    def _loop(self) -> None:
        deadline = time.monotonic() + 600  # bounded, whatever the test does
        while not self.stop.is_set() and time.monotonic() < deadline:
            for key, count in self.instances().items():
                self.most[key] = max(self.most.get(key, 0), count)
            time.sleep(0.02)

    def instances(self) -> dict[tuple[str, str], int]:
        from chaos.lab.node import init_pid

        nodes = {}
        for node in self.lab.spec.nodes:
            init = init_pid(self.lab.dir, node.name)
            if init is not None:
                try:
                    nodes[os.stat(f"/proc/{init}/ns/pid").st_ino] = node.name
                except OSError:
                    continue
        procs: dict[int, tuple[str, int, str]] = {}  # pid -> (node, ppid, conf)
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                if not argv or not argv[0].endswith(b"keepalived"):
                    continue
                node = nodes.get(os.stat(f"/proc/{entry}/ns/pid").st_ino)
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            conf = next((a.decode() for a in argv if a.endswith(b"keepalived.conf")), "")
            if node is not None and conf:
                procs[int(entry)] = (node, ppid, conf)
        counts: dict[tuple[str, str], int] = {}
        for node, ppid, conf in procs.values():
            parent = procs.get(ppid)
            if parent is None or parent[2] != conf:
                key = (node, conf.split("/")[-2])
                counts[key] = counts.get(key, 0) + 1
        return counts


@pytest.mark.lab  # its lab comes through request.getfixturevalue, which the automatic marking cannot see
@pytest.mark.parametrize("lab_fixture, respawn_wait, restarted_by", [("still_lab", "0s", "tool"), ("lab", "20s", "agent")])
def test_sigkill_runs_never_leave_two_keepalived(request: pytest.FixtureRequest, tmp_path: Path, lab_fixture: str,
                                                  respawn_wait: str, restarted_by: str) -> None:
    """Whether the tool restarts keepalived (on a lab whose agents never respawn it) or the
    agent's process monitor does (every 2 s in the shared lab, well within respawn_wait), at no
    moment do two keepalived run for one replica, and the journal says who restarted it."""
    lab: LabHandle = request.getfixturevalue(lab_fixture)
    wait_lab_ready(lab)
    path = write_experiment(
        tmp_path, f"kill-{restarted_by}",
        f"  type: keepalived-kill\n  replica: primary\n  params: {{signal: KILL, respawn_wait: {respawn_wait}}}",
        probes="primary: {}\n  warmup: 1s\n  settle: 4s",
    )
    with KeepalivedWatcher(lab) as watcher:
        proc = run_cli(lab, tmp_path, str(path))
        time.sleep(2 * max(lab.spec.options.respawn_interval, 1.0) + 1)  # the agent's next checks, after the run
    assert proc.returncode in (ExitCode.OK, ExitCode.DEVIATED, ExitCode.INCONCLUSIVE), proc.stdout + proc.stderr
    assert len(watcher.most) == sum(len(r.replicas) for r in lab.spec.routers), watcher.most
    assert max(watcher.most.values()) == 1, {k: v for k, v in watcher.most.items() if v > 1}
    assert all(v == 1 for v in watcher.instances().values())
    folder = run_folder(proc)
    undone = events(folder, "fault.undone")
    assert len(undone) == len(lab.spec.routers)
    assert {e.get("restarted_by") for e in undone} == {restarted_by}, undone
    # Each kill armed a dead-man (no duration, yet a deadline), and the completed run cancelled it.
    assert all("dead-man pid" in e["detail"] for e in events(folder, "fault.injected"))
    left = [p for p in Inspector(lab.dir).leftovers() if "dead-man" in p]
    assert not left, left
    lab_is_clean(lab)


DEADMAN_BOUND = 3.0  # seconds past its deadline by which the dead-man's keepalived must run (sh, SSH-free start)


def test_a_sigkilled_runs_keepalived_kill_is_undone_by_its_dead_man(still_lab: LabHandle, tmp_path: Path) -> None:
    """Issue 14: a fault without a duration gets a node-side deadline too. The runner of a
    SIGKILL experiment is killed right after the injection, nobody runs ``chaos recover``, and
    this lab's agents never respawn keepalived: the dead-man alone brings it back, at
    respawn_wait + its margin after the kill (not before: nothing else would), exactly one
    instance with its VRRP child, and then no dead-man is left. Looked at from outside the tool
    (/proc and nsenter, tests/interruption.py's Inspector). ``chaos recover`` afterwards has
    nothing left to do but free the leases."""
    from chaos.faults.keepalived_kill import REVERT_GRACE, KeepalivedKill
    from chaos.lab.node import init_pid

    lab = still_lab
    wait_lab_ready(lab)
    placement = placement_of(lab.lab.spec())
    deadline = 2 + KeepalivedKill.took_timeout + REVERT_GRACE
    path = write_experiment(tmp_path, "kill-no-runner",
                            "  type: keepalived-kill\n  replica: primary\n  params: {signal: KILL, respawn_wait: 2s}",
                            mode="one", probes="primary: {}\n  warmup: 1s\n  settle: 1s")
    proc = subprocess.Popen([*CHAOS, "run", "--lab", lab.name, "--reports-dir", str(tmp_path), str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    injected: dict | None = None
    try:
        limit = time.monotonic() + 60
        while injected is None and time.monotonic() < limit and proc.poll() is None:
            journal = next(tmp_path.glob("*/journal.jsonl"), None)
            found = [e for e in read_journal(journal) if e["kind"] == "fault.injected"] if journal else []
            injected = found[0] if found else None
            time.sleep(0.05)
        assert injected is not None, "the run never injected"
        os.killpg(proc.pid, signal.SIGKILL)  # during took() or the respawn wait: no undo has run
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    folder = journal.parent  # type: ignore[union-attr]
    assert f"undoes it after {deadline:g}s" in injected["detail"], injected["detail"]
    inspector = Inspector(lab.dir)
    init = init_pid(lab.dir, injected["node"])
    assert init is not None

    def instances() -> tuple[int, int, bool]:
        """(main keepalived of the router, their VRRP children, a dead-man of this run armed)."""
        procs = inspector.node_processes(init)
        ours = [p for p in procs if os.path.basename(p.argv[0]) == "keepalived"
                and f"/{injected['router_id']}/keepalived.conf" in p.text]
        mains = [p for p in ours if p.ppid not in {q.pid for q in ours}]
        armed = any(f"chaos-deadman chaos-{folder.name}-" in p.text for p in procs)
        return len(mains), len(ours) - len(mains), armed

    back = None
    while time.time() - injected["t"] < deadline + DEADMAN_BOUND:
        mains, children, armed = instances()
        if mains:
            back = time.time() - injected["t"]
            break
        assert armed, "the dead-man must outlive the runner until it fires"
        time.sleep(0.05)
    print(f"keepalived back {back}s after the kill (dead-man deadline {deadline:g}s)")
    assert back is not None, f"keepalived not back {deadline + DEADMAN_BOUND:g}s after the kill"
    assert back >= deadline - 0.5, f"keepalived back after {back:.1f}s: before the dead-man's deadline ({deadline:g}s)"
    left = inspector.wait_clean(placement, 30)  # its VRRP child, the dead-man's shell gone, one primary per router
    assert not left, left
    assert instances() == (1, 1, False)
    rec = subprocess.run([*CHAOS, "recover", str(folder)], capture_output=True, text=True, timeout=120)
    assert rec.returncode == 0, rec.stdout + rec.stderr
    assert instances() == (1, 1, False)
    lab_is_clean(lab)


def test_a_failed_injection_is_an_infrastructure_error_and_is_rolled_back(still_lab: LabHandle, tmp_path: Path) -> None:
    """keepalived dies on the chosen replica after the run's preflight passed (during its
    warmup) and this lab's agent never respawns it: the injection finds nothing to signal. The
    run says so in one sentence, exits 5, the journal records the action as not injected, and
    the undo still starts keepalived."""
    still = still_lab
    wait_lab_ready(still)
    router = still.spec.routers[0]
    backup = next(r["node"] for r in still.status()["routers"][0]["replicas"] if r["state"] == "backup")
    path = write_experiment(tmp_path, "nothing-to-kill",
                            "  type: keepalived-kill\n  replica: backup\n  params: {signal: TERM, respawn_wait: 0s}",
                            mode="one", probes="primary: {}\n  warmup: 6s\n  settle: 1s")
    path.write_text(path.read_text().replace('routers: {name: "*"}', f"routers: {{ids: [{router.id}]}}"))
    proc = subprocess.Popen([*CHAOS, "run", "--lab", still.name, "--reports-dir", str(tmp_path), str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        journal = None
        while time.monotonic() < deadline:  # the preflight has passed: the run is in its warmup
            journal = next(tmp_path.glob("*/journal.jsonl"), None)
            if journal and any(e["kind"] == "run.preflight" for e in read_journal(journal)):
                break
            time.sleep(0.1)
        assert journal is not None
        subprocess.run([*CHAOS, "lab", "ssh", "--name", still.name, backup, "--",
                        f"kill $(cat /var/lib/neutron/ha_confs/{router.id}.pid.keepalived)"], check=True, timeout=30)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == ExitCode.INFRASTRUCTURE, out + err
    assert "Traceback" not in err and "internal error" not in out + err
    assert "no running keepalived" in out + err
    folder = Path(out.strip().splitlines()[-1])
    assert [e["action_id"] for e in events(folder, "fault.inject_failed")] == ["a1"]
    assert not events(folder, "fault.injected")
    assert events(folder, "fault.undone")[0]["restarted_by"] == "tool"
    assert events(folder, "run.finished")[0]["exit_code"] == ExitCode.INFRASTRUCTURE
    lab_is_clean(still)
