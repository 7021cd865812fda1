"""Benchmark of the operator (`chaos serve`) against peers measured in the same run.

1. Idle cost: an operator serving 50 experiments whose schedules do not fire during the
   measurement, CPU time of its process over ``--idle-seconds`` (as % of one core), beside
   busybox crond (Debian's busybox-static) holding the same 50 schedules (the floor: a C daemon that sleeps to the minute).
2. Firing lag: ``--firing`` experiments scheduled every minute (against a lab that does not exist,
   so each run ends at once), over ``--minutes`` minute boundaries: the lag between each firing's
   time and its start, as the operator records it, beside crond's lag running ``date`` every minute.
3. API and dashboard latency with 10,000 runs in the history: p50/p99 of ``GET /api/v1/runs``
   (a page of 50) and of ``GET /runs`` (the dashboard's history page), sequentially, beside
   Python's ``http.server`` serving the very same bytes as static files.

Targets (issue 12): idle < 1 % of a core; a firing starts within 1 s; p99 < 50 ms.

    python bench/operator_bench.py                      # about 4 minutes
    python bench/operator_bench.py --idle-seconds 30 --minutes 1 --requests 300 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chaos.state.store import RunRow, Store  # noqa: E402

EXPERIMENT = """title: bench {n}
target: {{mode: one, lab: nolab0}}
fault: {{type: keepalived-kill, params: {{signal: TERM}}}}
steady_state_hypothesis:
  tolerances:
    primaries_after: {{equals: 1}}
schedule: "{cron}"
"""
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def start_operator(exps: Path, state: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "chaos", "serve", "--experiments", str(exps), "--state-dir", str(state),
                             "--listen", "127.0.0.1:0", "--workers", "4"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True, cwd=ROOT)
    line = proc.stdout.readline() if proc.stdout else ""
    if "listening on " not in line:
        proc.kill()
        raise SystemExit(f"the operator did not start: {line!r}")
    url = line.split("listening on ", 1)[1].strip()
    for _ in range(200):
        try:
            import urllib.request
            if urllib.request.urlopen(url + "/readyz", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.1)
    return proc, url


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def start_crond(entries: list[str], work: Path) -> subprocess.Popen[str] | None:
    busybox = shutil.which("busybox")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True).stdout.split() if busybox else []
    if "crond" not in applets:  # Debian's busybox has no crond; busybox-static has
        print("  (no busybox with crond: no crond peer; apt-get install busybox-static)")
        return None
    tabs = work / "crontabs"
    tabs.mkdir()
    (tabs / "root").write_text("\n".join(entries) + "\n")
    return subprocess.Popen([busybox, "crond", "-f", "-c", str(tabs), "-L", str(work / "crond.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True, start_new_session=True)


def idle(args: argparse.Namespace, work: Path) -> dict[str, float | None]:
    exps = work / "idle-exps"
    exps.mkdir()
    for n in range(50):
        (exps / f"e{n:02d}.yaml").write_text(EXPERIMENT.format(n=n, cron=f"{n % 60} 3 * * *"))
    proc, _ = start_operator(exps, work / "idle-state")
    (work / "cron-idle").mkdir()
    cron = start_crond([f"{n % 60} 3 * * * true" for n in range(50)], work / "cron-idle")
    try:
        time.sleep(3)  # past start-up
        pids = {"operator": proc.pid, **({"crond": cron.pid} if cron else {})}
        before = {k: cpu_seconds(p) for k, p in pids.items()}
        t0 = time.monotonic()
        time.sleep(args.idle_seconds)
        elapsed = time.monotonic() - t0
        used = {k: cpu_seconds(p) - before[k] for k, p in pids.items()}
    finally:
        stop(proc)
        if cron:
            stop(cron)  # type: ignore[arg-type]
    out = {f"{k}_cpu_percent": round(100 * v / elapsed, 4) for k, v in used.items()}
    out.setdefault("crond_cpu_percent", None)
    return out


def firing(args: argparse.Namespace, work: Path) -> dict[str, float | None]:
    exps = work / "fire-exps"
    exps.mkdir()
    for n in range(args.firing):
        (exps / f"f{n:02d}.yaml").write_text(EXPERIMENT.format(n=n, cron="* * * * *"))
    marks = work / "cron-marks"
    cron_dir = work / "cron-fire"
    cron_dir.mkdir()
    cron = start_crond([f"* * * * * date +%s.%N >> {marks}"], cron_dir)
    proc, url = start_operator(exps, work / "fire-state")
    try:
        now = time.time()
        end = (int(now // 60) + args.minutes) * 60 + 15  # past the last boundary, runs ended
        time.sleep(max(0.0, end - now))
        firings = []
        for n in range(args.firing):
            with aiohttp_get(url + f"/api/v1/firings?experiment=f{n:02d}") as data:
                firings += [f for f in data["firings"] if f["outcome"] in ("started",)]
    finally:
        stop(proc)
        if cron:
            stop(cron)  # type: ignore[arg-type]
    lags = sorted(f["lag_s"] for f in firings)
    cron_lags = sorted(float(t) % 60 for t in marks.read_text().split()) if marks.exists() else []
    out = {
        "firings": len(lags), "lag_p50_s": _pct(lags, 50), "lag_max_s": _pct(lags, 100),
        "crond_firings": len(cron_lags), "crond_lag_p50_s": _pct(cron_lags, 50), "crond_lag_max_s": _pct(cron_lags, 100),
    }
    if lags and cron_lags:
        out["lag_max_ratio_vs_crond"] = round(lags[-1] / max(cron_lags[-1], 1e-6), 2)
    return out


class aiohttp_get:  # noqa: N801 - a tiny synchronous helper
    def __init__(self, url: str) -> None:
        import urllib.request
        self.data = json.loads(urllib.request.urlopen(url, timeout=10).read())

    def __enter__(self) -> dict:
        return self.data

    def __exit__(self, *exc: object) -> None:
        return None


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return round(sorted(values)[k], 4)


async def _populate(state: Path, runs: int) -> None:
    store = await Store.open(state)
    try:
        from sqlalchemy import insert

        from chaos.state.tables import runs as table

        base = time.time() - runs * 60
        verdicts = ["held"] * 8 + ["deviated", "aborted"]
        rows = [RunRow(run_id=f"20260101T000000Z-bench-{k:06d}", experiment=f"exp-{k % 20:02d}", title=f"bench {k % 20}",
                       trigger="schedule", triggered_by="schedule", started_at=base + k * 60, finished_at=base + k * 60 + 42,
                       status="finished", verdict=verdicts[k % 10], exit_code=0, outage_max_s=0.8 + (k % 7) * 0.1,
                       failover_max_s=1.0 + (k % 5) * 0.1, figures={"outage_s": {"p50": 0.8, "p95": 1.2, "max": 1.4}},
                       faults_injected=2, faults_undone=2, report_dir=f"/nowhere/{k}").to_db() for k in range(runs)]
        async with store.db.transaction() as conn:
            for i in range(0, len(rows), 1000):
                await conn.execute(insert(table), rows[i:i + 1000])
    finally:
        await store.close()


async def _latencies(url: str, n: int) -> list[float]:
    out = []
    async with aiohttp.ClientSession() as session:
        for _ in range(20):  # warm-up
            async with session.get(url) as r:
                await r.read()
        for _ in range(n):
            t = time.perf_counter()
            async with session.get(url) as r:
                await r.read()
                assert r.status == 200, (url, r.status)
            out.append(time.perf_counter() - t)
    return out


def api(args: argparse.Namespace, work: Path) -> dict[str, float | None]:
    state = work / "api-state"
    asyncio.run(_populate(state, args.runs))
    exps = work / "api-exps"
    exps.mkdir()
    proc, url = start_operator(exps, state)
    static = work / "static"
    static.mkdir()
    try:
        import urllib.request
        (static / "runs.json").write_bytes(urllib.request.urlopen(url + "/api/v1/runs?limit=50", timeout=10).read())
        (static / "runs.html").write_bytes(urllib.request.urlopen(url + "/runs", timeout=10).read())
        server = subprocess.Popen([sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(static)],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        try:
            line = server.stdout.readline() if server.stdout else ""
            port = int(line.split("port ")[1].split()[0])
            peer = f"http://127.0.0.1:{port}"
            results = {}
            for name, ours, theirs in (("api_runs", url + "/api/v1/runs?limit=50", peer + "/runs.json"),
                                       ("dashboard_runs", url + "/runs", peer + "/runs.html")):
                a = sorted(asyncio.run(_latencies(ours, args.requests)))
                b = sorted(asyncio.run(_latencies(theirs, args.requests)))
                results.update({
                    f"{name}_p50_ms": round(1000 * _pct(a, 50), 2), f"{name}_p99_ms": round(1000 * _pct(a, 99), 2),
                    f"{name}_static_p50_ms": round(1000 * _pct(b, 50), 2), f"{name}_static_p99_ms": round(1000 * _pct(b, 99), 2),
                    f"{name}_p99_ratio": round(_pct(a, 99) / _pct(b, 99), 2),
                })
            results["bytes_api_page"] = (static / "runs.json").stat().st_size
            results["bytes_dashboard_page"] = (static / "runs.html").stat().st_size
            return results
        finally:
            stop(server)  # type: ignore[arg-type]
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--firing", type=int, default=10, help="experiments firing every minute")
    parser.add_argument("--minutes", type=int, default=2, help="minute boundaries to watch")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--skip", action="append", default=[], choices=["idle", "firing", "api"])
    args = parser.parse_args()
    results: dict[str, object] = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="chaos-opbench-") as tmp:
        work = Path(tmp)
        for name, step in (("idle", idle), ("api", api), ("firing", firing)):
            if name in args.skip:
                continue
            print(f"== {name}", flush=True)
            figures = step(args, work)
            for k, v in figures.items():
                print(f"  {k:32} {v}")
            results[name] = figures
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
