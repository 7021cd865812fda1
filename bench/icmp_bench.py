"""Benchmark: chaos's IcmpProbe against fping, same floating IPs, same rate, same vantage point.

Why: during a fault the probe pings every floating IP of every target router, tens of
thousands of requests a second on a large cloud, from the same host as the runner. It must
keep its schedule (or outage lengths are wrong) and cost no more CPU per request than the
usual tool. fping is that tool; it cannot go beyond about 6,500 requests a second (its
sequence-number map aborts), while the probe's sequence space is per target.

What it does: brings up a lab (``chaos lab up --name hbench ...``) or reuses one (``--lab``),
pings every floating IP (optionally repeated to ``--targets`` entries, to load the probe
beyond the lab's size) at ``--rate`` Hz per target for ``--seconds`` with IcmpProbe, then with
fping twice (quiet, for CPU and loss; verbose with timestamps, for send times), and prints
both side by side: achieved send rate, send-time jitter, CPU seconds per 1000 requests, loss.

Send times: the probe records each request's send time; fping prints reply times and RTTs,
so its send time is reply time - RTT (10 us resolution). Jitter is measured the same way for
both: per target, the deviation of each gap between consecutive sends from the period. The
probe also reports its lateness against its own schedule.

CPU: ``getrusage`` of this process around the probe (journal writing included) and of the
children around each fping run. Kernel work done in the sender's context (the forward path
through the lab's namespaces) is charged to whichever tool sent, the same for both.

Run as root:  python bench/icmp_bench.py --routers 120 --rate 50 --seconds 10
              python bench/icmp_bench.py --lab hbench --targets 500 --rate 50 --seconds 10 --keep
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from chaos.model import Topology
from chaos.probes.icmp import IcmpProbe, IcmpTarget, icmp_targets
from chaos.journal import Journal, read_journal

LAB_ROOT = Path("/run/chaos-lab")
FPING_LINE = re.compile(r"^\[(\d+\.\d+)\] (\S+)\s*: \[(\d+)\], \d+ bytes, ([\d.]+) ms")
FPING_SUMMARY = re.compile(r"^(\S+)\s*:((?:\s+(?:[\d.]+|-))+)\s*$")


def cpu_seconds(who: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``who`` so far."""
    usage = resource.getrusage(who)
    return usage.ru_utime, usage.ru_stime


def cpu_since(who: int, before: tuple[float, float]) -> dict[str, float]:
    user, system = cpu_seconds(who)
    return {"cpu_user_s": user - before[0], "cpu_sys_s": system - before[1], "cpu_s": user + system - sum(before)}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))]


def gap_jitter(send_times: dict[Any, list[tuple[int, float]]], period: float) -> dict[str, float]:
    """p50/p99 of |gap - period| between consecutive sends (by sequence) of each target."""
    deviations: list[float] = []
    for sends in send_times.values():
        sends.sort()
        for (k1, t1), (k2, t2) in zip(sends, sends[1:]):
            if k2 == k1 + 1:
                deviations.append(abs((t2 - t1) - period))
    return {"gap_dev_p50": percentile(deviations, 0.5), "gap_dev_p99": percentile(deviations, 0.99), "gaps": len(deviations)}


# --------------------------------------------------------------------------- lab
def lab_up(name: str, args: argparse.Namespace) -> float:
    started = time.monotonic()
    cmd = [
        "chaos", "lab", "up", "--name", name, "--routers", str(args.routers), "--nodes", str(args.nodes),
        "--projects", str(args.projects), "--advert-int", str(args.advert_int), "--timeout", str(args.up_timeout),
    ]
    print("$", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True)
    return time.monotonic() - started


def lab_down(name: str) -> None:
    subprocess.run(["chaos", "lab", "down", "--name", name], check=False)


# --------------------------------------------------------------------------- ours
async def _probe(targets: list[IcmpTarget], journal: Journal, args: argparse.Namespace, netns: str) -> IcmpProbe:
    probe = IcmpProbe(targets, journal, interval=1.0 / args.rate, timeout=args.timeout, netns=netns)
    await probe.run(asyncio.Event(), max_duration=args.seconds)
    return probe


def run_ours(targets: list[IcmpTarget], args: argparse.Namespace, netns: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        journal_path = Path(tmp) / "journal.jsonl"
        with Journal(journal_path) as journal:
            cpu0 = cpu_seconds(resource.RUSAGE_SELF)
            probe = asyncio.run(_probe(targets, journal, args, netns))
            cpu = cpu_since(resource.RUSAGE_SELF, cpu0)
        stats = probe.stats()
        sends: dict[str, list[tuple[int, float]]] = {}
        for event in read_journal(journal_path):
            if event["kind"] == "probe.icmp":
                # Sequence numbers unwrapped by position: batches of a target are consecutive.
                series = sends.setdefault(event["address"], [])
                start = series[-1][0] + 1 if series else 0
                series.extend((start + i, t) for i, t in enumerate(event["sent"]))
        journal_bytes = journal_path.stat().st_size
    sent = stats.sent
    seconds = stats.detail["sending_seconds"]
    result = {
        "tool": "chaos IcmpProbe",
        "targets": len(targets),
        "sent": sent,
        "rate": sent / seconds if seconds else 0.0,
        **cpu,
        "cpu_s_per_1000": 1000 * cpu["cpu_s"] / sent if sent else float("nan"),
        "loss": stats.lost / sent if sent else float("nan"),
        "lateness_p50": stats.detail["lateness_p50"],
        "lateness_p99": stats.detail["lateness_p99"],
        "skipped": stats.detail["skipped"],
        "journal_mb": journal_bytes / 1e6,
    }
    if len({t.address for t in targets}) == len(targets):  # per-target series are exact only then
        result.update(gap_jitter(sends, 1.0 / args.rate))
    return result


# --------------------------------------------------------------------------- fping
def fping_argv(addresses: list[str], args: argparse.Namespace, netns: str, verbose: bool) -> list[str]:
    count = int(args.seconds * args.rate)
    period_ms = 1000.0 / args.rate
    spacing_ms = period_ms / len(addresses)  # spread every target over the period, like the probe
    argv = [
        "ip", "netns", "exec", netns, "fping", "-4", "-C", str(count), "-p", f"{period_ms:g}",
        "-i", f"{spacing_ms:.4f}", "-t", str(int(args.timeout * 1000)),
    ]
    argv += ["-D"] if verbose else ["-q"]
    return argv + addresses


def run_fping(addresses: list[str], args: argparse.Namespace, netns: str, verbose: bool) -> dict[str, Any]:
    argv = fping_argv(addresses, args, netns, verbose)
    cpu0 = cpu_seconds(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=args.seconds * 3 + 60, check=False)
    wall = time.monotonic() - started
    cpu = cpu_since(resource.RUSAGE_CHILDREN, cpu0)
    result: dict[str, Any] = {
        "tool": "fping 5.1" + (" -D (verbose)" if verbose else " -q"),
        "targets": len(addresses),
        "exit": proc.returncode,
        **cpu,
        "wall_s": wall,
    }
    results = [m for line in proc.stderr.splitlines() if (m := FPING_SUMMARY.match(line.strip()))]
    if not results:
        result["error"] = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return result
    values = [v for m in results for v in m.group(2).split()]
    sent = len(values)
    lost = values.count("-")
    result.update(sent=sent, cpu_s_per_1000=1000 * cpu["cpu_s"] / sent, loss=lost / sent)
    if verbose:
        sends: dict[int, list[tuple[int, float]]] = {}
        first = last = None
        index: dict[str, int] = {a: i for i, a in enumerate(addresses)}
        for line in proc.stdout.splitlines():
            m = FPING_LINE.match(line)
            if not m:
                continue
            sent_at = float(m.group(1)) - float(m.group(4)) / 1000
            sends.setdefault(index.get(m.group(2), -1), []).append((int(m.group(3)), sent_at))
            first = sent_at if first is None else min(first, sent_at)
            last = sent_at if last is None else max(last, sent_at)
        if first is not None and last is not None and last > first:
            result["rate"] = sent / (last - first + 1.0 / args.rate)
        if len(set(addresses)) == len(addresses):
            result.update(gap_jitter(sends, 1.0 / args.rate))
    else:
        # Quiet mode prints nothing per request. fping stretches its schedule when it falls
        # behind (it never skips), so the run's length shows its rate: the requests over the
        # wall time less the final wait for replies, never more than the rate asked for.
        result["rate"] = sent / max(args.seconds, wall - args.timeout)
    return result


# --------------------------------------------------------------------------- report
ROWS = [
    ("targets", "targets", "{:.0f}"),
    ("requests sent", "sent", "{:.0f}"),
    ("send rate /s", "rate", "{:.0f}"),
    ("gap deviation p50 (ms)", "gap_dev_p50", "{:.3f}", 1000),
    ("gap deviation p99 (ms)", "gap_dev_p99", "{:.3f}", 1000),
    ("lateness vs schedule p50 (ms)", "lateness_p50", "{:.3f}", 1000),
    ("lateness vs schedule p99 (ms)", "lateness_p99", "{:.3f}", 1000),
    ("CPU s (user + system)", "cpu_s", "{:.2f}"),
    ("  user", "cpu_user_s", "{:.2f}"),
    ("  system", "cpu_sys_s", "{:.2f}"),
    ("CPU s per 1000 requests", "cpu_s_per_1000", "{:.4f}"),
    ("loss", "loss", "{:.4%}"),
]


def table(results: list[dict[str, Any]]) -> str:
    width = 30
    lines = [f"{'':{width}}" + "".join(f"{r['tool']:>26}" for r in results)]
    for label, key, fmt, *scale in ROWS:
        cells = []
        for r in results:
            value = r.get(key)
            cells.append(f"{'-' if value is None else fmt.format(value * (scale[0] if scale else 1)):>26}")
        lines.append(f"{label:{width}}" + "".join(cells))
    ours = results[0]
    for other in results[1:]:
        if "cpu_s_per_1000" in other and ours.get("cpu_s_per_1000"):
            lines.append(
                f"CPU per request, {other['tool']} / chaos: {other['cpu_s_per_1000'] / ours['cpu_s_per_1000']:.2f}x"
                + (f"; send rate chaos / {other['tool']}: {ours['rate'] / other['rate']:.2f}x" if other.get("rate") else "")
            )
        if "error" in other:
            lines.append(f"{other['tool']}: failed (exit {other['exit']}): {other['error']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lab", help="reuse this running lab (default: bring up 'hbench' and take it down)")
    parser.add_argument("--routers", type=int, default=120)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--projects", type=int, default=8, help="HA networks; few routers per HA network keeps VRRP chatter low")
    parser.add_argument("--advert-int", type=int, default=10, help="the bench makes no failover; slow adverts spare the CPU")
    parser.add_argument("--up-timeout", type=int, default=900)
    parser.add_argument("--keep", action="store_true", help="leave the lab up")
    parser.add_argument("--targets", type=int, help="repeat the floating IPs to this many targets (probe only)")
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second per target")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--no-fping", action="store_true")
    parser.add_argument(
        "--local", action="store_true",
        help="ping the vantage point's own address instead of the floating IPs: the tools' own cost, "
        "without the lab's data path (which the sender's system time otherwise includes)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    name = args.lab or "hbench"
    up_seconds = None
    try:
        if args.lab is None:
            up_seconds = lab_up(name, args)
        topo = Topology.model_validate_json((LAB_ROOT / name / "inventory.json").read_text())
        netns = topo.vantage.netns
        assert netns is not None
        targets = icmp_targets(topo)
        if args.local:
            assert topo.vantage.echo_address is not None
            targets = [IcmpTarget(router_id=t.router_id, address=topo.vantage.echo_address) for t in targets]
        if args.targets:
            targets = [targets[i % len(targets)] for i in range(args.targets)]
        print(f"{len(targets)} targets{' (local)' if args.local else ''} at {args.rate:g} Hz for {args.seconds:g} s "
              f"({len(targets) * args.rate:.0f} requests/s)" + (f"; lab up took {up_seconds:.0f}s" if up_seconds else ""),
              flush=True)
        results = [run_ours(targets, args, netns)]
        if not args.no_fping:
            addresses = [t.address for t in targets]
            results.append(run_fping(addresses, args, netns, verbose=False))
            results.append(run_fping(addresses, args, netns, verbose=True))
        print(table(results))
        if args.json:
            args.json.write_text(json.dumps({"lab_up_s": up_seconds, "args": vars(args) | {"json": str(args.json)},
                                             "results": results}, indent=2, default=str))
    finally:
        if args.lab is None and not args.keep:
            lab_down(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
