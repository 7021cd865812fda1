"""The operator without a lab: security, configuration errors, the state directory's lock,
firing rules (pause, blackout, missed), reindex, retention, webhooks, the Pushgateway.

Experiments here target a lab that does not exist: their runs end at once (no lab: exit 7,
verdict error), which is all these tests need from them. Servers are real (the operator as a
subprocess, an aiohttp webhook receiver, Debian's prometheus-pushgateway).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from chaos.errors import ExitCode
from chaos.operator.catalog import Catalog
from chaos.operator.config import Webhook
from chaos.operator.notify import Notice, Notifier
from chaos.report.render import render_reports
from chaos.state.store import RunRow, Store, index_row
from tests.conftest import CHAOS_CLI, IN_CI
from tests.test_operator_lab import Operator, wait_for

pytestmark = pytest.mark.system  # see tests/conftest.py: the proof tier

DATA_RUNS = Path(__file__).resolve().parent / "data" / "runs"
WEBHOOK_SECRET = "T000/B000/webhook-secret-xyz"

NO_LAB = """title: {name}
target: {{mode: one, lab: nolab9}}
fault: {{type: keepalived-kill, params: {{signal: TERM}}}}
steady_state_hypothesis:
  tolerances:
    primaries_after: {{equals: 1}}
"""


def write(folder: Path, name: str, schedule: str | None = None) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(NO_LAB.format(name=name) + (f"schedule: {schedule}\n" if schedule else ""))
    return path


def make_tokens(path: Path) -> tuple[str, str]:
    def add(name: str, role: str) -> str:
        return subprocess.run([*CHAOS_CLI, "token", "add", name, "--role", role, "--file", str(path)],
                              capture_output=True, text=True, check=True).stdout.strip()
    return add("alice", "operator"), add("bob", "viewer")


def serve(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CHAOS_CLI, "serve", *args], capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------- security
def test_unauthenticated_and_viewer_calls_are_refused_and_audited_and_no_secret_leaks(tmp_path: Path) -> None:
    exps, state = tmp_path / "exps", tmp_path / "state"
    write(exps, "quiet")
    tokens = tmp_path / "tokens.yaml"
    alice, bob = make_tokens(tokens)
    assert alice.startswith("chaos_") and alice not in tokens.read_text() and bob not in tokens.read_text()
    config = tmp_path / "serve.yaml"
    config.write_text(f"webhooks:\n  - url: https://hooks.example.invalid/services/{WEBHOOK_SECRET}\n")
    op = Operator.__new__(Operator)
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([*CHAOS_CLI, "serve", "--experiments", str(exps), "--state-dir", str(state), "--listen",
                             "127.0.0.1:0", "--tokens", str(tokens), "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=open(log, "w"), text=True, start_new_session=True)  # noqa: SIM115
    try:
        op.proc, op.log = proc, log
        op.url = proc.stdout.readline().split("listening on ")[1].strip()  # type: ignore[union-attr]
        op.wait_ready()
        mutating = [("POST", "/api/v1/pause"), ("POST", "/api/v1/resume"), ("POST", "/api/v1/experiments/quiet/runs"),
                    ("POST", "/api/v1/experiments/quiet/pause"), ("POST", "/api/v1/runs/x/abort")]
        for method, path in mutating:
            assert op.request(method, path)[0] == 401, path
            assert op.request(method, path, "chaos_not-a-token")[0] == 401, path
            assert op.request(method, path, bob)[0] == 403, path
        assert op.request("GET", "/api/v1/runs")[0] == 401  # reads need a token too (no --public-read)
        assert op.request("GET", "/api/v1/runs", bob)[0] == 200
        assert op.request("GET", "/healthz")[0] == 200 and op.request("GET", "/metrics")[0] == 200
        status, body = op.request("POST", "/api/v1/experiments/quiet/pause", alice, {"reason": "change window"})
        assert status == 200 and body["by"] == "alice"
        assert op.request("GET", "/api/v1/experiments/quiet", bob)[1]["paused_by"] == "alice"
        assert op.request("POST", "/api/v1/experiments/quiet/pause", alice, {"reason": 5})[0] == 400
        assert op.request("POST", "/api/v1/experiments/nope/runs", alice)[0] == 409
        audit = op.request("GET", "/api/v1/audit?limit=200", bob)[1]["audit"]
        refused = [a for a in audit if not a["ok"]]
        assert len(refused) == 3 * len(mutating) + 2  # the bad body and the unknown experiment were refused too
        assert {a["who"] for a in refused} >= {"anonymous", "invalid-token", "bob"}
        assert any(a["who"] == "alice" and a["ok"] and "pause" in a["action"] for a in audit)
        status, text = op.request("GET", "/")
        assert status == 401 or "Log in" in str(text)  # the dashboard sends people to its login form
        # no token, no webhook URL anywhere: API answers, metrics, logs, the database
        seen = [json.dumps(op.request("GET", p, bob)[1]) for p in
                ("/api/v1/experiments", "/api/v1/status", "/api/v1/audit", "/api/v1/runs", "/api/v1/openapi.json")]
        seen.append(str(op.request("GET", "/metrics")[1]))
        assert op.stop() == ExitCode.INTERRUPTED
        seen.append(log.read_text())
        db = sqlite3.connect(state / "chaos.db")
        seen += [repr(row) for table in ("audit", "runs", "firings", "pauses", "leases")
                 for row in db.execute(f"SELECT * FROM {table}")]  # noqa: S608 - fixed table names
        db.close()
        for text in seen:
            for secret in (alice, bob, WEBHOOK_SECRET):
                assert secret not in text
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_bad_configuration_gets_a_message_and_its_exit_code(tmp_path: Path) -> None:
    exps = tmp_path / "exps"
    write(exps, "x")
    for args, code, words in [
        (["--experiments", str(exps), "--listen", "localhost"], ExitCode.INVALID_INPUT, "HOST:PORT"),
        (["--experiments", str(tmp_path / "missing")], ExitCode.INVALID_INPUT, "no such folder"),
        (["--experiments", str(exps), "--tls-cert", str(exps / "x.yaml")], ExitCode.INVALID_INPUT, "go together"),
        (["--experiments", str(exps), "--tokens", str(exps / "x.yaml")], ExitCode.INVALID_INPUT, "tokens"),
        ([], ExitCode.INVALID_INPUT, "--experiments"),
        (["--experiments", str(exps), "--database-url", "mysql://u:hunter2@h/db"], ExitCode.INVALID_INPUT, "only sqlite"),
    ]:
        result = serve(*args, "--state-dir", str(tmp_path / "state"))
        assert result.returncode == code, (args, result.stdout, result.stderr)
        assert words in result.stderr and "Traceback" not in result.stderr
        assert "hunter2" not in result.stderr
    bad = tmp_path / "serve.yaml"
    bad.write_text("workers: 0\nwebhooks:\n  - {url: https://x.invalid/h, on: [exploded]}\n")
    result = serve("--experiments", str(exps), "--config", str(bad), "--state-dir", str(tmp_path / "state"))
    assert result.returncode == ExitCode.INVALID_INPUT
    assert f"{bad}:1:" in result.stderr and f"{bad}:3:" in result.stderr


def test_without_a_tokens_file_everyone_reads_and_nobody_acts(tmp_path: Path) -> None:
    exps = tmp_path / "exps"
    write(exps, "x")
    op = Operator(tmp_path, exps, tmp_path / "state", tokens=None, scale=None)
    try:
        op.wait_ready()
        assert op.request("GET", "/api/v1/experiments")[0] == 200
        status, body = op.request("POST", "/api/v1/pause")
        assert status == 401 and "read-only" in body["error"]
    finally:
        assert op.stop() == ExitCode.INTERRUPTED


def test_a_second_operator_on_the_same_state_directory_is_refused(tmp_path: Path) -> None:
    exps, state = tmp_path / "exps", tmp_path / "state"
    write(exps, "x")
    first = Operator(tmp_path, exps, state, tokens=None, scale=None)
    try:
        first.wait_ready()
        second = serve("--experiments", str(exps), "--state-dir", str(state), "--listen", "127.0.0.1:0")
        assert second.returncode == ExitCode.CONFLICT
        assert "another operator serves the state directory" in second.stderr and f"pid {first.proc.pid}" in second.stderr
    finally:
        assert first.stop() == ExitCode.INTERRUPTED


def test_tls_when_given_a_certificate_and_key(tmp_path: Path) -> None:
    import datetime as dt
    import ssl
    import urllib.request

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    exps = tmp_path / "exps"
    write(exps, "x")
    proc = subprocess.Popen([*CHAOS_CLI, "serve", "--experiments", str(exps), "--state-dir", str(tmp_path / "state"),
                             "--listen", "127.0.0.1:0", "--tls-cert", str(tmp_path / "cert.pem"), "--tls-key",
                             str(tmp_path / "key.pem")], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        url = proc.stdout.readline().split("listening on ")[1].strip()  # type: ignore[union-attr]
        assert url.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        body = wait_for(lambda: _get_tls(url + "/healthz", context), 20, "https")
        assert json.loads(body) == {"status": "ok"}
        with pytest.raises(urllib.error.URLError):  # a client that does not trust the certificate is refused
            urllib.request.urlopen(url + "/healthz", timeout=5)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == ExitCode.INTERRUPTED


def _get_tls(url: str, context: Any) -> str | None:
    import urllib.request

    try:
        return urllib.request.urlopen(url, timeout=5, context=context).read().decode()
    except OSError:
        return None


# ---------------------------------------------------------------------- firing rules
def test_pause_blackout_and_missed_firings_are_recorded_with_reasons(tmp_path: Path) -> None:
    exps, state = tmp_path / "exps", tmp_path / "state"
    write(exps, "paused", '"* * * * *"')
    write(exps, "frozen", '{cron: "* * * * *", blackouts: [{name: always, start: "00:00", end: "23:59"}]}')
    write(exps, "late", '{cron: "* * * * *", starting_deadline: 90s}')
    write(exps, "broken", '"* * * * *"')
    # the operator "was down" for ten minutes: its last firing of `late` was then
    asyncio.run(_seed_firing(state, "late", time.time() - 600))
    tokens = tmp_path / "tokens.yaml"
    alice, _ = make_tokens(tokens)
    op = Operator(tmp_path, exps, state, tokens=tokens, scale=60.0)  # a schedule minute per second
    try:
        op.wait_ready()
        assert op.request("POST", "/api/v1/experiments/paused/pause", alice, {"reason": "maintenance"})[0] == 200
        missed = [f for f in op.get("/api/v1/firings?experiment=late&outcome=missed")["firings"]]
        assert len(missed) >= 7 and all("not running" in f["reason"] for f in missed)
        (exps / "broken.yaml").write_text((exps / "broken.yaml").read_text().replace("keepalived-kill", "keepalived-kil"))
        wait_for(lambda: len(op.get("/api/v1/firings?experiment=frozen")["firings"]) >= 3, 30, "frozen firings")
        wait_for(lambda: op.get("/api/v1/firings?experiment=paused&outcome=skipped")["firings"], 20, "a paused firing")
        paused = op.get("/api/v1/firings?experiment=paused")["firings"]
        skipped = [f for f in paused if f["outcome"] == "skipped"]
        assert skipped and all(f["reason"] == "paused by alice: maintenance" for f in skipped)
        assert all(f["outcome"] == "skipped" for f in paused if f["fired_at"] > skipped[-1]["fired_at"])
        frozen = op.get("/api/v1/firings?experiment=frozen")["firings"]
        assert all(f["outcome"] == "skipped" and f["reason"] == "blackout always" for f in frozen)
        broken = wait_for(lambda: (e := op.get("/api/v1/experiments/broken")) and not e["valid"] and e, 20, "invalid")
        assert broken["runnable"] and "keepalived-kil" in broken["problems"][0] and ":3:" in broken["problems"][0]
        before = len(op.get("/api/v1/firings?experiment=broken&outcome=started")["firings"])
        wait_for(lambda: len(op.get("/api/v1/firings?experiment=broken&outcome=started")["firings"]) > before, 20,
                 "the last good version to keep firing")
        metrics = op.request("GET", "/metrics")[1]
        assert 'chaos_experiment_valid{experiment="broken"} 0.0' in metrics
        assert 'chaos_firings_total{experiment="frozen",outcome="skipped"}' in metrics
        assert 'chaos_firings_total{experiment="late",outcome="missed"}' in metrics
    finally:
        assert op.stop() == ExitCode.INTERRUPTED


async def _seed_firing(state: Path, key: str, when: float) -> None:
    store = await Store.open(state)
    try:
        await store.claim_firing(key, when, when, outcome="started", operator="earlier")
    finally:
        await store.close()


def test_catalog_keeps_the_last_good_version_and_forgets_removed_files(tmp_path: Path) -> None:
    write(tmp_path, "one", '"0 3 * * *"')
    catalog = Catalog(tmp_path)
    assert catalog.scan().changed == ["one"]
    assert not catalog.scan()  # nothing changed, nothing re-read
    good = catalog.get("one").experiment  # type: ignore[union-attr]
    (tmp_path / "one.yaml").write_text("title: [unclosed\n")
    changes = catalog.scan()
    entry = catalog.get("one")
    assert changes.broken == ["one"] and entry is not None and entry.experiment is good and not entry.valid
    assert "one.yaml:2:1: invalid YAML" in entry.problems[0]
    (tmp_path / "one.yaml").unlink()
    assert catalog.scan().removed == ["one"] and catalog.get("one") is None


# ---------------------------------------------------------------------- history
def test_reindex_rebuilds_the_history_from_run_folders_and_retention_prunes(tmp_path: Path) -> None:
    runs = tmp_path / "state" / "runs"
    shutil.copytree(DATA_RUNS, runs)
    result = serve("--reindex", "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 0 and "indexed 3 run folder(s)" in result.stdout, result.stderr

    async def check() -> None:
        store = await Store.open(tmp_path / "state")
        try:
            rows = await store.list_runs()
            assert len(rows) == 3 and {r.experiment for r in rows} == {"keepalived-term", "keepalived-kill", "vrrp-partition"}
            assert all(r.status == "finished" and r.trigger == "cli" for r in rows)
            term = next(r for r in rows if r.experiment == "keepalived-term")
            assert term.outage_max_s is not None and term.figures["outage_s"]["max"] == term.outage_max_s
            older = RunRow(**{**term.model_dump(), "run_id": "old-copy", "started_at": term.started_at - 10,
                              "report_dir": str(runs / "old-copy")})
            (runs / "old-copy").mkdir()
            await store.upsert_run(older)
            removed = await store.prune(runs, keep_per_experiment=1, max_age_s=None)
            assert removed == ["old-copy"] and not (runs / "old-copy").exists()
            assert await store.count_runs() == 3
        finally:
            await store.close()

    asyncio.run(check())


# ---------------------------------------------------------------------- notifications
async def test_webhook_retries_then_delivers_and_never_blocks(tmp_path: Path) -> None:
    received: list[dict[str, Any]] = []
    answers = [500, 200]
    release = asyncio.Event()  # the slow hook answers only at the end (the server's cleanup waits for it)

    async def hook(request: web.Request) -> web.Response:
        if request.path == "/slow":
            await release.wait()
        received.append(await request.json())
        return web.Response(status=answers.pop(0) if answers else 200)

    app = web.Application()
    app.router.add_post("/{name}", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    notifier = Notifier((Webhook(url=f"http://127.0.0.1:{port}/ok", retries=2),
                         Webhook(url=f"http://127.0.0.1:{port}/slow", timeout=0.3, retries=0, on=("deviated",))))
    try:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(notifier.run())
            started = time.monotonic()
            notifier.notify(Notice("deviated", "exp", "run r1 deviated", "outage_s 3.2 > 2"))
            notifier.notify(Notice("held", "exp", "run r2 held"))  # not wanted by either webhook
            assert time.monotonic() - started < 0.05  # queued, not sent inline
            await notifier.drain(10)
            task.cancel()
        assert notifier.delivered == 1 and notifier.failed == 1  # the slow one timed out and gave up
        assert len(received) == 2 and received[1]["text"].startswith("*chaos DEVIATED* exp")
        assert received[1]["blocks"][1]["elements"][0]["text"] == "outage_s 3.2 > 2"
    finally:
        release.set()
        await runner.cleanup()


# ---------------------------------------------------------------------- pushgateway
def test_chaos_run_metrics_reach_a_real_pushgateway(tmp_path: Path) -> None:
    exe = shutil.which("prometheus-pushgateway")
    if exe is None:
        if IN_CI:
            pytest.fail("prometheus-pushgateway is not installed (scripts/install.sh installs it)")
        pytest.skip("prometheus-pushgateway is not installed")
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gateway = subprocess.Popen([exe, f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        folder = tmp_path / DATA_RUNS.name / "run"
        shutil.copytree(next(DATA_RUNS.iterdir()), folder)
        render_reports(folder)
        row = index_row(folder)
        from chaos.operator.metrics import push_run

        def up() -> bool:
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2).status == 200
            except OSError:
                return False
        wait_for(up, 20, "the pushgateway", 0.2)
        asyncio.run(push_run(f"127.0.0.1:{port}", row, folder))
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert f'chaos_runs_total{{experiment="{row.experiment}",instance="",job="chaos",trigger="cli",verdict="{row.verdict}"}} 1' in text
        assert f'chaos_outage_seconds_count{{experiment="{row.experiment}"' in text
    finally:
        gateway.terminate()
        gateway.wait(10)
