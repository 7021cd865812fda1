"""Every shipped experiment on both lab backends, side by side: the emulated lab against real Neutron.

    python bench/backends.py [--backends emulated,neutron] [--experiments NAME,...] \
        [--routers 2] [--respawn-interval 60] [--out docs/backends.md]

For each backend a lab of the same shape is brought up (3 network nodes, ``--routers`` HA
routers, advert_int 2 and the respawn interval as Neutron's defaults unless told), each shipped
experiment runs against it through the CLI (``chaos run --lab``; the evacuations' ``cloud:``
is pointed at the lab's own cloud), the lab is taken down, and one markdown table is written:
per experiment and backend the verdict, the worst targeted router's outage, failover, split
brain and time without a primary, when the L3 agent respawned keepalived, the API's lag behind
the nodes, the gratuitous ARPs seen, and how many held TCP sessions were reset per direction.
Every figure comes from the runs' summary.json and journal.jsonl, kept under ``--runs``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ["keepalived-term", "keepalived-kill", "ha-link-down", "vrrp-partition", "gateway-reboot",
               "agent-evacuate", "agent-evacuate-abrupt"]
LAB_NAMES = {"emulated": "bkemu", "neutron": "bkneu"}
COLUMNS = [
    ("outage_s", "outage s"), ("failover_s", "failover s"), ("split_brain_s", "split brain s"),
    ("no_primary_s", "no primary s"), ("respawn_s", "respawn s"), ("api_lag_s", "API lag s"),
    ("garp_count", "GARPs"), ("tcp_dropped_inbound", "TCP reset in"), ("tcp_dropped_outbound", "TCP reset out"),
]


def chaos(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chaos", *args], capture_output=True, text=True, timeout=timeout)


def worst(summary: dict[str, Any], metric: str) -> float | None:
    values = [r["metrics"].get(metric) for r in summary["routers"] if r["targeted"]]
    values = [v for v in values if isinstance(v, int | float)]
    return max(values) if values else None


def respawn_s(run_dir: Path) -> float | None:
    """Injection to the moment the undo found keepalived respawned by Neutron's (or the lab's) agent."""
    injected: dict[str, float] = {}
    found: list[float] = []
    for line in (run_dir / "journal.jsonl").read_text().splitlines():
        ev = json.loads(line)
        if ev["kind"] == "fault.injected":
            injected[ev["action_id"]] = ev["t"]
        elif ev["kind"] == "fault.undone" and ev.get("restarted_by") == "agent" and ev["action_id"] in injected:
            found.append(ev["t"] - injected[ev["action_id"]])
    return max(found) if found else None


def wait_floating_ips(lab: str, timeout: float = 180.0) -> float:
    """Until every floating IP answers from the vantage point (a previous run can leave one
    black-holed while the external bridge still sends the router's MAC to the old node);
    returns how long that took."""
    topo = json.loads((Path("/run/chaos-lab") / lab / "inventory.json").read_text())
    netns = topo["vantage"]["netns"]
    started = time.monotonic()
    pending = [f["address"] for r in topo["routers"] for f in r["floating_ips"]]
    while pending and time.monotonic() - started < timeout:
        pending = [a for a in pending if subprocess.run(["ip", "netns", "exec", netns, "ping", "-c", "1", "-W", "1", a],
                                                        capture_output=True, timeout=10).returncode != 0]
    return time.monotonic() - started


def row_of(folder: Path, started: float | None = None) -> dict[str, Any]:
    summary = json.loads((folder / "summary.json").read_text())
    row: dict[str, Any] = {"verdict": summary["verdict"], "run": str(folder),
                           "failed": [t["name"] for t in summary["tolerances"] if not t["ok"]]}
    if started is not None:
        row["wall_s"] = time.monotonic() - started
    for metric, _ in COLUMNS:
        row[metric] = respawn_s(folder) if metric == "respawn_s" else worst(summary, metric)
    return row


def reuse(backend: str, experiments: list[str], runs: Path) -> dict[str, dict[str, Any]]:
    """Rows from the latest earlier run of each experiment on that backend's lab (``--reuse``)."""
    found: dict[str, dict[str, Any]] = {}
    for name in experiments:
        exact = re.compile(rf"-{LAB_NAMES[backend]}-{re.escape(name)}-[0-9a-f]{{6}}$")  # not agent-evacuate-abrupt for agent-evacuate
        folders = sorted(f for f in runs.iterdir() if exact.search(f.name) and (f / "summary.json").exists())
        if folders:
            found[name] = row_of(folders[-1])
    return found


def run_one(lab: str, name: str, runs: Path) -> dict[str, Any]:
    dark_before = wait_floating_ips(lab)
    text = (ROOT / "experiments" / f"{name}.yaml").read_text().replace("cloud: chaoslab", f"cloud: {lab}")
    path = runs / f"{lab}-{name}.yaml"
    path.write_text(text)
    started = time.monotonic()
    proc = chaos("run", "--lab", lab, "--reports-dir", str(runs), str(path), timeout=900)
    folder = Path(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else None
    if folder is None or not (folder / "summary.json").exists():
        return {"verdict": f"error (exit {proc.returncode})", "wall_s": time.monotonic() - started}
    row = row_of(folder, started)
    row["waited_for_floating_ips_s"] = round(dark_before, 1)
    return row


def measure(backend: str, experiments: list[str], routers: int, respawn: float, runs: Path,
            done: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Bring the backend's lab up, run what ``done`` does not have yet, take the lab down."""
    lab = LAB_NAMES[backend]
    done = done or {}
    experiments = [e for e in experiments if e not in done]
    if not experiments:
        return {"_up": {"wall_s": None}, **done}
    chaos("lab", "down", "--name", lab, timeout=300)
    started = time.monotonic()
    up = chaos("lab", "up", "--name", lab, "--backend", backend, "--routers", str(routers),
               "--respawn-interval", str(respawn), "--timeout", "600", timeout=900)
    if up.returncode != 0:
        raise SystemExit(f"{backend}: lab up failed: {up.stderr[-2000:]}")
    results: dict[str, dict[str, Any]] = {"_up": {"wall_s": time.monotonic() - started}, **done}
    try:
        for name in experiments:
            print(f"{backend}: {name} ...", file=sys.stderr, flush=True)
            results[name] = run_one(lab, name, runs)
            print(f"{backend}: {name}: {results[name]['verdict']}", file=sys.stderr, flush=True)
    finally:
        chaos("lab", "down", "--name", lab, timeout=300)
    return results


def fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def table(results: dict[str, dict[str, dict[str, Any]]], experiments: list[str]) -> str:
    backends = list(results)
    head = "| experiment | backend | verdict | " + " | ".join(label for _, label in COLUMNS) + " |"
    lines = [head, "|" + " --- |" * (3 + len(COLUMNS))]
    for name in experiments:
        for backend in backends:
            row = results[backend].get(name)
            if row is None:
                continue
            verdict = row["verdict"] + (f" ({', '.join(row['failed'])})" if row.get("failed") else "")
            cells = [fmt(row.get(metric)) for metric, _ in COLUMNS]
            lines.append(f"| `{name}` | {backend} | {verdict} | " + " | ".join(cells) + " |")
    ups = ", ".join(f"{b} {results[b]['_up']['wall_s']:.0f} s" for b in backends if results[b]["_up"]["wall_s"])
    return "\n".join(lines) + f"\n\nBring-up (`chaos lab up`, 3 nodes): {ups}.\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="emulated,neutron")
    parser.add_argument("--experiments", default=",".join(EXPERIMENTS))
    parser.add_argument("--routers", type=int, default=2)
    parser.add_argument("--respawn-interval", type=float, default=60.0)
    parser.add_argument("--runs", type=Path, default=Path("/tmp/chaos-bench-backends"))
    parser.add_argument("--out", type=Path, help="write the table (and the raw figures as .json beside it)")
    parser.add_argument("--reuse", action="store_true", help="take the figures of experiments already run in --runs")
    args = parser.parse_args()
    experiments = args.experiments.split(",")
    args.runs.mkdir(parents=True, exist_ok=True)
    results = {}
    for b in args.backends.split(","):
        done = reuse(b, experiments, args.runs) if args.reuse else {}
        results[b] = measure(b, experiments, args.routers, args.respawn_interval, args.runs, done)
    text = table(results, experiments)
    print(text)
    if args.out:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))
        print(f"raw figures: {args.out.with_suffix('.json')}", file=sys.stderr)


if __name__ == "__main__":
    main()
