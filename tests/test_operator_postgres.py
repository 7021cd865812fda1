"""The state database on a real PostgreSQL (Debian's postgresql-15, started here as the
``postgres`` user, or as the unprivileged user running the tests, in a temporary folder, on 127.0.0.1 with a password): the same store,
leases shared between processes, and two operators of one site sharing history and splitting
the firings between them. Outside CI a machine without the server binaries skips; in CI fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.errors import ExitCode
from chaos.runner.leases import LeaseClaim, LeaseConflict
from chaos.state.store import RunFilter, RunRow, Store
from tests.conftest import IN_CI
from tests.test_operator import write
from tests.test_operator_lab import Operator, wait_for

pytestmark = pytest.mark.system  # see tests/conftest.py: the proof tier

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PASSWORD = "pg-secret-pw-31337"


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    # PostgreSQL refuses to run as root: root runs it as the postgres user, anyone else as
    # themselves (so the quick tier runs it unprivileged too).
    as_root = os.geteuid() == 0
    if not (PG_BIN / "initdb").exists() or (as_root and shutil.which("runuser") is None):
        if IN_CI:
            pytest.fail(f"PostgreSQL 15 is not installed ({PG_BIN}); scripts/install.sh installs it")
        pytest.skip("PostgreSQL 15 is not installed")
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    base = Path(tempfile.mkdtemp(prefix="chaos-pg-"))
    pwfile = base / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if as_root:
        shutil.chown(base, "postgres", "postgres")
        shutil.chown(pwfile, "postgres", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def as_postgres(*argv: str) -> None:
        subprocess.run([*prefix, *argv], check=True, capture_output=True, timeout=120)

    as_postgres(str(PG_BIN / "initdb"), "-D", str(base / "data"), "-U", "postgres", "--auth=scram-sha-256",
                f"--pwfile={pwfile}", "--no-sync")
    as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(base / "data"), "-l", str(base / "log"), "-w", "start",
                "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off")
    try:
        url = f"postgresql+asyncpg://postgres:{PASSWORD}@127.0.0.1:{port}/postgres"
        yield url
    finally:
        subprocess.run([*prefix, str(PG_BIN / "pg_ctl"), "-D", str(base / "data"), "-m", "fast",
                        "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def test_the_store_on_postgresql(postgres: str, tmp_path: Path) -> None:
    async def check() -> None:
        store = await Store.open(tmp_path, postgres)
        again = await Store.open(tmp_path, postgres)  # migrating an up-to-date schema changes nothing
        try:
            assert store.db.dialect == "postgresql" and PASSWORD not in store.db.display_url
            now = time.time()
            for k in range(5):
                await store.upsert_run(RunRow(run_id=f"pg-{k}", experiment="e1" if k % 2 else "e2", trigger="schedule",
                                              started_at=now + k, status="finished", verdict="held" if k else "deviated",
                                              report_dir="/nowhere", figures={"outage_s": {"max": 1.0 + k}}))
            assert [r.run_id for r in await again.list_runs(limit=2)] == ["pg-4", "pg-3"]
            page2 = await again.list_runs(limit=2, before=(now + 3, "pg-3"))
            assert [r.run_id for r in page2] == ["pg-2", "pg-1"]
            assert [r.run_id for r in await again.list_runs(RunFilter(verdict="deviated"))] == ["pg-0"]
            assert (await again.get_run("pg-4")).figures == {"outage_s": {"max": 5.0}}  # type: ignore[union-attr]
            assert set(await again.latest_by_experiment()) == {"e1", "e2"}
            first = await store.claim_firing("e1", 1000.0, 1000.0, outcome="started", operator="a")
            second = await again.claim_firing("e1", 1000.0, 1000.0, outcome="started", operator="b")
            assert first is not None and second is None
        finally:
            await store.close()
            await again.close()

    asyncio.run(check())


CONTENDER = """
import asyncio, sys
from pathlib import Path
from chaos.runner.leases import LeaseClaim, LeaseConflict
from chaos.state.store import Store

async def main():
    store = await Store.open(Path(sys.argv[2]), sys.argv[1], owner="other-process")
    try:
        async with store.leases.hold("run-b", [LeaseClaim(key="router:r1", mode="exclusive", label="router r1")],
                                     experiment="b", wait=float(sys.argv[3])):
            print("acquired")
    except LeaseConflict as exc:
        print("conflict:", exc.message)
    finally:
        await store.close()
asyncio.run(main())
"""


def test_leases_are_honoured_across_processes_on_postgresql(postgres: str, tmp_path: Path) -> None:
    def contender(wait: float) -> str:
        out = subprocess.run([sys.executable, "-c", CONTENDER, postgres, str(tmp_path), str(wait)],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        # its own words (structlog's default configuration prints log lines here too)
        return next(line for line in out.splitlines() if line.startswith(("acquired", "conflict: ")))

    async def check() -> None:
        store = await Store.open(tmp_path, postgres, owner="this-process")
        try:
            claim = [LeaseClaim(key="router:r1", mode="exclusive", label="router r1"),
                     LeaseClaim(key="node:lab/n1", mode="shared", label="node n1")]
            async with store.leases.hold("run-a", claim, experiment="a"):
                out = await asyncio.to_thread(contender, 0.5)
                assert out.startswith("conflict: ") and "router r1 is leased (exclusive) by run run-a" in out
                assert "this-process" in out
                with pytest.raises(LeaseConflict):
                    async with store.leases.hold("run-c", claim[:1], experiment="c"):
                        pass
            assert await asyncio.to_thread(contender, 0) == "acquired"
        finally:
            await store.close()

    asyncio.run(check())


def test_two_operators_of_one_site_share_history_and_split_the_firings(postgres: str, tmp_path: Path) -> None:
    exps = tmp_path / "exps"
    write(exps, "shared", '"* * * * *"')
    env_url = {"CHAOS_DATABASE_URL": postgres, "CHAOS_SERVE_CLOCK_ORIGIN": str(time.time())}  # one clock for both
    os.environ.update(env_url)
    try:
        one = Operator(tmp_path, exps, tmp_path / "state-1", tokens=None, scale=60.0)
        two = Operator(tmp_path, exps, tmp_path / "state-2", tokens=None, scale=60.0)
    finally:
        for key in env_url:
            os.environ.pop(key, None)
    try:
        one.wait_ready()
        two.wait_ready()
        def operators_firing() -> set[str | None]:
            return {f["operator"] for f in one.get("/api/v1/firings?experiment=shared&limit=200")["firings"]}

        wait_for(lambda: len(one.get("/api/v1/firings?experiment=shared")["firings"]) >= 8, 60, "firings")
        # which one claims a firing is a race; on a loaded machine one may win several in a row
        wait_for(lambda: len(operators_firing() - {None}) == 2, 60, "firings claimed by both operators")
        firings = one.get("/api/v1/firings?experiment=shared&limit=200")["firings"]
        times = [f["scheduled_for"] for f in firings]
        assert len(times) == len(set(times)), "a firing was claimed twice"
        claimed_by = {f["operator"] for f in firings}
        assert len(claimed_by) == 2, "both operators fire (each firing once, whoever claims it first)"
        runs_seen_by_two = {r["operator"] for r in two.get("/api/v1/runs?experiment=shared&limit=200")["runs"]}
        assert runs_seen_by_two == claimed_by - {None}  # one history: each sees the other's runs
        status = json.dumps(one.get("/api/v1/status"))
        assert "postgresql+asyncpg://postgres:***@" in status and PASSWORD not in status
    finally:
        assert one.stop() == ExitCode.INTERRUPTED
        assert two.stop() == ExitCode.INTERRUPTED
    for op in (one, two):
        assert PASSWORD not in op.log.read_text()
