"""The operator against the real lab, as issue 12's "done when" says:

- two schedules (one every minute, one every two) run on time for three minutes; a third
  schedule on the same router as the first is skipped, with the lease holder named, every time
  they fire together; an API-triggered run works and an API abort rolls it back (the journal
  says who); `chaos run` in a terminal is refused the router the operator holds; history,
  dashboard (headless Chromium) and /metrics show all of it;
- kill -9 of the operator mid-fault, then a new start: the fault is undone before anything runs.

Three minutes of schedule in one: the operator's clock runs three times faster than the wall
clock (``CHAOS_SERVE_CLOCK_SCALE``, an internal test hook), so a "minute" lasts 20 s; runs take
their real time. One lab ("op": 3 nodes, 3 routers, advert_int 1) serves both tests.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chaos.errors import ExitCode
from chaos.journal import read_journal
from tests.conftest import CHAOS_CLI, LabHandle, wait_lab_ready
from tests.test_report_browser import ARTIFACTS, browse, console_errors

SCALE = 3.0  # one schedule minute = 20 s
PROBES = "probes: {icmp: {interval: 50ms}, primary: {}, warmup: 1s, settle: 1s}"


@pytest.fixture(scope="module")
def oplab(make_lab: Any) -> LabHandle:
    return make_lab("op", nodes=3, routers=3, replicas=2, advert_int=1, respawn_interval=2.0, boot_delay=2.0)


def experiment(folder: Path, name: str, lab: str, router: str, fault: str, schedule: str | None = None) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(f"""title: {name}
target: {{routers: {{name: {router}}}, mode: one, lab: {lab}}}
fault: {fault}
safeguards: {{max_concurrent_routers: 5, grace: 20s, max_run_duration: 2m}}
{PROBES}
steady_state_hypothesis:
  tolerances:
    primaries_after: {{equals: 1}}
""" + (f'schedule: {{cron: "{schedule}", starting_deadline: 3m}}\n' if schedule else ""))
    return path


class Operator:
    """``chaos serve`` as a subprocess, and a small client of its API."""

    def __init__(self, tmp: Path, experiments: Path, state: Path, *, tokens: Path | None, scale: float | None) -> None:
        self.log = tmp / f"serve-{int(time.time() * 1000)}.log"
        env = {**os.environ, "CHAOS_STATE_DIR": str(state)}
        if scale:
            env["CHAOS_SERVE_CLOCK_SCALE"] = str(scale)
        argv = [*CHAOS_CLI, "serve", "--experiments", str(experiments), "--state-dir", str(state),
                "--listen", "127.0.0.1:0", "--workers", "4"]
        if tokens is not None:
            argv += ["--tokens", str(tokens), "--public-read"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=open(self.log, "w"), text=True,  # noqa: SIM115
                                     env=env, start_new_session=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        match = re.search(r"listening on (\S+)", line)
        assert match, f"no listening line: {line!r}; log: {self.log.read_text()[-3000:]}"
        self.url = match.group(1)

    def request(self, method: str, path: str, token: str | None = None, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=20) as resp:
                raw, status = resp.read(), resp.status
        except urllib.error.HTTPError as err:
            raw, status = err.read(), err.code
        text = raw.decode()
        try:
            return status, json.loads(text)
        except json.JSONDecodeError:
            return status, text

    def get(self, path: str) -> Any:
        status, data = self.request("GET", path)
        assert status == 200, (path, status, data)
        return data

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            if self.request("GET", "/readyz")[0] == 200:
                return
            time.sleep(0.3)
        raise AssertionError("the operator never became ready: " + self.log.read_text()[-3000:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 90) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode


@pytest.fixture
def tokens(tmp_path: Path) -> tuple[Path, str, str]:
    path = tmp_path / "tokens.yaml"
    alice = subprocess.run([*CHAOS_CLI, "token", "add", "alice", "--role", "operator", "--file", str(path)],
                           capture_output=True, text=True, check=True).stdout.strip()
    bob = subprocess.run([*CHAOS_CLI, "token", "add", "bob", "--role", "viewer", "--file", str(path)],
                         capture_output=True, text=True, check=True).stdout.strip()
    return path, alice, bob


def wait_for(check: Any, timeout: float, what: str, interval: float = 0.5, log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    tail = log.read_text()[-4000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def journal(path: Path) -> list[dict[str, Any]]:
    return list(read_journal(path / "journal.jsonl")) if (path / "journal.jsonl").exists() else []


def ha_link_down(lab: LabHandle, router_id: str, node: str) -> bool:
    router = next(r for r in lab.spec.routers if r.id == router_id)
    rep = next(r for r in router.replicas if r.node == node)
    out = subprocess.run([*CHAOS_CLI, "lab", "ssh", "--name", lab.name, node, "--",
                          f"ip -n qrouter-{router.id} -o link show {rep.ha_device}"],
                         capture_output=True, text=True, timeout=30).stdout
    return "state DOWN" in out or ",UP" not in out


@pytest.fixture
def operators() -> Iterator[list[Operator]]:
    started: list[Operator] = []
    yield started
    for op in started:
        op.stop(signal.SIGKILL if op.proc.poll() is None else signal.SIGTERM)


def test_schedules_overlap_trigger_abort_history_dashboard_metrics(
    oplab: LabHandle, tmp_path: Path, tokens: tuple[Path, str, str], operators: list[Operator]
) -> None:
    wait_lab_ready(oplab)
    exps, state = tmp_path / "experiments", tmp_path / "state"
    exps.mkdir()
    term = "{type: keepalived-kill, replica: primary, params: {signal: TERM, respawn_wait: 5s}}"
    link = "{type: ha-link-down, replica: backup, duration: 2s}"
    experiment(exps, "a-term", oplab.name, "router-1", term, "* * * * *")
    experiment(exps, "b-link", oplab.name, "router-2", link, "*/2 * * * *")
    experiment(exps, "c-overlap", oplab.name, "router-1", link, "* * * * *")  # the same router as a-term
    experiment(exps, "d-long", oplab.name, "router-3", "{type: ha-link-down, replica: backup, duration: 40s}")
    queued = experiment(exps, "e-queue", oplab.name, "router-2", link, "*/2 * * * *")  # with b-link, but it waits
    queued.write_text(queued.read_text().replace("starting_deadline: 3m}", "starting_deadline: 3m, concurrency: queue}"))
    token_file, alice, bob = tokens
    op = Operator(tmp_path, exps, state, tokens=token_file, scale=SCALE)
    operators.append(op)
    op.wait_ready()
    began = time.time()

    # an API-triggered run: a viewer may not, an operator may
    assert op.request("POST", "/api/v1/experiments/d-long/runs", bob)[0] == 403
    status, started = op.request("POST", "/api/v1/experiments/d-long/runs", alice)
    assert status == 202, started
    long_run = state / "runs" / started["run_id"]
    verified = wait_for(lambda: [e for e in journal(long_run) if e["kind"] == "fault.verified"], 90, "d-long's fault", log=op.log)
    injected = next(e for e in journal(long_run) if e["kind"] == "fault.injected")
    assert verified and ha_link_down(oplab, injected["router_id"], injected["node"])

    # `chaos run` in a terminal honours the operator's lease on router-3 (shared state dir)
    cli = subprocess.run([*CHAOS_CLI, "run", "--lab", oplab.name, "--reports-dir", str(tmp_path / "cli"),
                          str(exps / "d-long.yaml")], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CHAOS_STATE_DIR": str(state)})
    assert cli.returncode == ExitCode.CONFLICT, cli.stdout + cli.stderr
    assert "router router-3 is leased" in cli.stdout and started["run_id"] in cli.stdout
    assert "Traceback" not in cli.stderr

    # the API abort: the run rolls back and its journal says who asked
    assert op.request("POST", f"/api/v1/runs/{started['run_id']}/abort", None, {"reason": "x"})[0] == 401
    status, body = op.request("POST", f"/api/v1/runs/{started['run_id']}/abort", alice, {"reason": "test abort"})
    assert status == 202 and body["abort_requested_by"] == "alice"
    wait_for(lambda: [e for e in journal(long_run) if e["kind"] == "run.finished"], 90, "d-long to finish")
    events = journal(long_run)
    assert [e["by"] for e in events if e["kind"] == "run.abort_requested"] == ["alice"]
    assert next(e for e in events if e["kind"] == "run.finished")["verdict"] == "aborted"
    assert all(e["ok"] for e in events if e["kind"] == "fault.undone")
    assert not ha_link_down(oplab, injected["router_id"], injected["node"])

    # three schedule minutes after the first firing, then every run finished
    first = wait_for(lambda: op.get("/api/v1/firings?experiment=a-term")["firings"], 40, "a first firing")
    window_end = first[-1]["scheduled_for"] + 3 * 60
    wait_for(lambda: any(f["scheduled_for"] >= window_end for f in op.get("/api/v1/firings?experiment=a-term")["firings"]),
             3 * 60 / SCALE + 30, "three schedule minutes")
    wait_for(lambda: not op.get("/api/v1/status")["running"], 90, "the runs to finish")

    firings = {name: [f for f in op.get(f"/api/v1/firings?experiment={name}")["firings"] if f["scheduled_for"] <= window_end]
               for name in ("a-term", "b-link", "c-overlap")}
    a_times = sorted(f["scheduled_for"] for f in firings["a-term"])
    assert len(a_times) >= 4 and all(b - a == 60 for a, b in zip(a_times, a_times[1:], strict=False)), a_times  # no minute lost
    for name in ("a-term", "b-link"):
        assert firings[name], name
        for f in firings[name]:
            assert f["outcome"] == "started", f
            assert f["lag_s"] < 1.0, f"{name} fired {f['lag_s']}s late"  # on time (real seconds)
    assert all(t % 120 == 0 for t in (f["scheduled_for"] for f in firings["b-link"]))
    overlaps = firings["c-overlap"]
    assert len(overlaps) >= 3
    for f in overlaps:  # fired with a-term every minute; a-term claims first, c-overlap is skipped
        assert f["outcome"] == "skipped", f
        assert "router router-1 is leased" in f["reason"] and "a-term" in f["reason"], f

    # e-queue fired with b-link on the same router: it waited for b-link's leases, then ran
    for f in [f for f in op.get("/api/v1/firings?experiment=e-queue")["firings"] if f["scheduled_for"] <= window_end]:
        assert f["outcome"] == "started", f
        mine = journal(state / "runs" / f["run_id"])
        peer = next(x for x in firings["b-link"] if x["scheduled_for"] == f["scheduled_for"])
        theirs = journal(state / "runs" / peer["run_id"])
        assert next(e for e in mine if e["kind"] == "run.finished")["verdict"] in ("held", "deviated", "inconclusive")
        last_undo = max(e["t"] for e in theirs if e["kind"] == "fault.undone")
        assert min(e["t"] for e in mine if e["kind"] == "fault.injected") > last_undo

    runs = op.get("/api/v1/runs?limit=200")["runs"]
    by_exp: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_exp.setdefault(r["experiment"], []).append(r)
    assert all(r["verdict"] in ("held", "deviated", "inconclusive") and r["trigger"] == "schedule" for r in by_exp["a-term"])
    assert all(r["verdict"] == "skipped" and r["faults_injected"] == 0 for r in by_exp["c-overlap"])
    manual = next(r for r in runs if r["run_id"] == started["run_id"])
    assert manual["trigger"] == "manual" and manual["triggered_by"] == "alice" and manual["aborted_by"] == "alice"
    assert manual["verdict"] == "aborted" and manual["exit_code"] == ExitCode.ABORTED
    assert op.get("/api/v1/runs?experiment=a-term&limit=1")["next_page_token"]  # paged
    detail = op.get(f"/api/v1/runs/{by_exp['a-term'][0]['run_id']}")
    assert detail["summary"]["verdict"] == detail["verdict"] and detail["links"]["report.html"]
    audit = op.get("/api/v1/audit")["audit"]
    assert {(a["who"], a["ok"]) for a in audit} >= {("alice", True), ("bob", False), ("anonymous", False)}

    metrics = op.request("GET", "/metrics")[1]
    held = sum(float(v) for v in re.findall(r'chaos_runs_total\{experiment="a-term",trigger="schedule",verdict="(?:held|deviated|inconclusive)"\} (\S+)', metrics))
    assert held == len(by_exp["a-term"]) >= 3, metrics
    assert re.search(r'chaos_firings_total\{experiment="c-overlap",outcome="skipped"\} ([3-9]|\d\d)', metrics)
    assert 'chaos_runs_total{experiment="d-long",trigger="manual",verdict="aborted"} 1.0' in metrics
    assert re.search(r'chaos_outage_seconds_count\{experiment="a-term"\} [1-9]', metrics)
    assert re.search(r'chaos_next_fire_timestamp_seconds\{experiment="a-term"\} 1\.\d+e\+09', metrics)
    assert re.search(r'chaos_faults_undone_total\{experiment="d-long",fault="ha-link-down"\} 1', metrics)

    # the dashboard in a real browser: schedules, history with verdicts, trends, live table
    dom, stderr = browse_url(op.url + "/")
    assert not console_errors(stderr), console_errors(stderr)
    for name in ("a-term", "b-link", "c-overlap", "d-long"):
        assert f'data-experiment="{name}"' in dom
    assert 'data-verdict="skipped"' in dom and 'data-verdict="aborted"' in dom
    assert re.search(r'class="trend" data-runs="([3-9]|\d\d)"', dom), "a-term's trend shows its runs"
    assert 'data-live="on"' in dom, "the live table's script ran and read the API"
    ARTIFACTS.mkdir(exist_ok=True)
    for page, shot in (("/", "dashboard-overview.png"), ("/experiments/a-term", "dashboard-experiment.png")):
        (ARTIFACTS / shot).unlink(missing_ok=True)
        _, stderr = browse_url(op.url + page, f"--screenshot={ARTIFACTS / shot}", "--window-size=1280,1800")
        assert not console_errors(stderr)
        assert (ARTIFACTS / shot).stat().st_size > 20_000
    exp_dom, _ = browse_url(op.url + "/experiments/c-overlap")
    assert "router router-1 is leased" in exp_dom and 'data-outcome="skipped"' in exp_dom

    # no secret of the lab (its cloud's password, its BMC's, its SSH key) in anything shown
    shown = [op.log.read_text(), metrics, dom, exp_dom, json.dumps(runs), json.dumps(detail), json.dumps(audit),
             json.dumps(op.get("/api/v1/experiments")), json.dumps(op.get("/api/v1/status")), cli.stdout + cli.stderr]
    shown += [p.read_text(errors="replace") for p in (state / "runs").rglob("*") if p.is_file()]
    for secret in lab_secrets(oplab):
        assert not [text[:80] for text in shown if secret in text]

    assert op.stop() == ExitCode.INTERRUPTED
    assert time.time() - began < 300
    wait_lab_ready(oplab)


def lab_secrets(lab: LabHandle) -> list[str]:
    """The lab cloud's passwords (admin and member), the BMC's password, and the body of the SSH private key."""
    from chaos.lab.keystone import load_config

    key_lines = [line for line in (lab.dir / "ssh" / "id_ed25519").read_text().splitlines() if "PRIVATE KEY" not in line]
    config = load_config(lab.dir)
    assert config.member is not None
    secrets = [config.password, config.member.password, lab.lab.bmc()[2], *[line for line in key_lines if len(line) > 20]]
    assert all(len(s) >= 12 for s in secrets)
    return secrets


def browse_url(url: str, *extra: str) -> tuple[str, str]:
    if not any(e.startswith("--screenshot") for e in extra):
        extra = ("--dump-dom", "--virtual-time-budget=4000", *extra)
    return browse(url, *extra)


def test_kill_9_mid_fault_then_start_undoes_it_before_anything_runs(
    oplab: LabHandle, tmp_path: Path, operators: list[Operator]
) -> None:
    wait_lab_ready(oplab)
    exps, state = tmp_path / "experiments", tmp_path / "state"
    exps.mkdir()
    experiment(exps, "long", oplab.name, "router-2", "{type: ha-link-down, replica: backup, duration: 60s}")
    token = tmp_path / "tokens.yaml"
    alice = subprocess.run([*CHAOS_CLI, "token", "add", "alice", "--role", "operator", "--file", str(token)],
                           capture_output=True, text=True, check=True).stdout.strip()
    first = Operator(tmp_path, exps, state, tokens=token, scale=None)
    operators.append(first)
    first.wait_ready()
    status, started = first.request("POST", "/api/v1/experiments/long/runs", alice)
    assert status == 202
    folder = state / "runs" / started["run_id"]
    wait_for(lambda: [e for e in journal(folder) if e["kind"] == "fault.verified"], 90, "the fault", log=first.log)
    injected = next(e for e in journal(folder) if e["kind"] == "fault.injected")
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    assert ha_link_down(oplab, injected["router_id"], injected["node"]), "kill -9 leaves the fault in place"

    # the next start: a schedule that fires at once is waiting, but recovery comes first
    experiment(exps, "eager", oplab.name, "router-1", "{type: ha-link-down, replica: backup, duration: 2s}", "* * * * *")
    second = Operator(tmp_path, exps, state, tokens=token, scale=60.0)  # a schedule minute per second
    operators.append(second)
    second.wait_ready()
    events = journal(folder)
    undone = [e for e in events if e["kind"] == "fault.undone"]
    assert undone and all(e["ok"] and e.get("by") == "recover" for e in undone)
    finished = next(e for e in events if e["kind"] == "run.finished")
    assert finished["verdict"] == "interrupted" and finished["by"] == "recover"
    assert not ha_link_down(oplab, injected["router_id"], injected["node"])
    assert second.get("/api/v1/status")["recovered_at_start"] == [started["run_id"]]
    eager = wait_for(lambda: [r for r in second.get("/api/v1/runs?experiment=eager")["runs"]], 60, "the schedule to fire")
    assert min(r["started_at"] for r in eager) > max(e["t"] for e in undone), "nothing ran before the recovery"
    row = second.get(f"/api/v1/runs/{started['run_id']}")
    assert row["verdict"] == "interrupted" and row["status"] == "finished"
    wait_for(lambda: second.get("/api/v1/status")["running"], 30, "an eager run to be going")
    assert second.stop() == ExitCode.INTERRUPTED  # SIGTERM: the running run is aborted and rolled back
    for folder in (state / "runs").iterdir():
        events = journal(folder)
        assert any(e["kind"] == "run.finished" for e in events), folder.name
        assert all(e["ok"] for e in events if e["kind"] == "fault.undone")
        injected = {e["action_id"] for e in events if e["kind"] == "fault.injected"}
        assert injected <= {e["action_id"] for e in events if e["kind"] == "fault.undone" and e["ok"]}
    stopped = [journal(f) for f in (state / "runs").iterdir()
               if any(e["kind"] == "run.abort_requested" and e["by"] == "SIGTERM" for e in journal(f))]
    assert stopped and all(next(e for e in ev if e["kind"] == "run.finished")["verdict"] == "interrupted" for ev in stopped)
    wait_lab_ready(oplab)
