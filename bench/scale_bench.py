"""Scale benchmark (issue 14, part 1): many routers failed over at once, and what it costs the tool.

What it does, in one invocation:

1. **Lab**: ``chaos lab up --name NAME --nodes 6 --routers N --replicas 2 --projects P
   --advert-int A --respawn-interval R``, timed, and ``chaos lab down`` at the end, timed (or
   ``--lab NAME`` reuses a running lab and leaves it). The host's neighbour (ARP) table is one
   table for every namespace (``net.ipv4.neigh.default.gc_thresh3``, 1024 by default); a lab
   needs several entries per router. The bench never changes a host setting: it prints what the
   size asked for would need and, unless ``--ignore-arp-limit``, shrinks the lab to what fits.
2. **Reference** (tobiko / os-faults style): the first wave of the plan (the same routers, the
   same primaries, the very commands ``chaos run`` would send) injected with one OpenSSH command
   per replica, in sequence, from the lab's vantage namespace (``ip netns exec <vantage> ssh -i
   <lab key> -o UserKnownHostsFile=<lab known_hosts> root@<node> CMD``). Its injection spread
   (first to last command start, and to the last command's end) is measured; then the bench
   waits until the lab's L3 agents respawned keepalived and every router has one primary again.
3. **chaos run** over every router, ``mode: all``, waves of ``--wave`` routers
   (``max_concurrent_routers``), keepalived SIGTERM on the primary, ICMP probes every 20 ms,
   the primary observer, optionally held TCP sessions. From its journal: injection spread per
   wave, observer lag, probe send-gap jitter, time to plan, undo times; from the kernel (its
   rusage at exit, ``/proc/PID`` while it runs): CPU seconds, cores used, peak RSS, descriptors.
   While it runs, the bench follows every replica's namespace with a local ``ip -o monitor
   address`` (``nsenter`` into the node, no SSH): the kernel's address events, against which
   the observer's ``observe.replica`` events are timed.
4. Optionally (``--rollback-test``) a second run, sent SIGTERM once its first wave is injected:
   time from the signal to every fault undone and to the runner's exit.

Run as root from the repository (see bench/README.md for the figures):

    python bench/scale_bench.py --routers 200                  # own lab "scbench", taken down after
    python bench/scale_bench.py --lab NAME --wave 50 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LAB_ROOT = Path(os.environ.get("CHAOS_LAB_ROOT", "/run/chaos-lab"))
ARP_DIR = Path("/proc/sys/net/ipv4/neigh/default")
ARP_MARGIN = 64  # entries left free for everything else on the host
SETTLE_TIMEOUT = 180.0  # after the reference wave: every router one primary, keepalived respawned
MONITOR_LIMIT = 2000  # local address watchers at most (one per replica)
TICK = os.sysconf("SC_CLK_TCK")


def chaos_cmd() -> list[str]:
    """The chaos CLI of this environment (the venv's script beside this Python), else PATH's."""
    beside = Path(sys.executable).parent / "chaos"
    return [str(beside)] if beside.exists() else ["chaos"]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))]


def ms(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value * 1000:.1f} ms"


# --------------------------------------------------------------------------- host limits
def arp_state() -> dict[str, int]:
    """gc_thresh1-3 and the table's current size (every namespace of the host counts), with the
    per-CPU counters of overflows (``table_fulls``) summed."""
    state = {f"gc_thresh{i}": int((ARP_DIR / f"gc_thresh{i}").read_text()) for i in (1, 2, 3)}
    rows = Path("/proc/net/stat/arp_cache").read_text().split("\n")
    header = rows[0].split()
    values = [[int(v, 16) for v in row.split()] for row in rows[1:] if row.strip()]
    state["entries"] = values[0][header.index("entries")]
    state["table_fulls"] = sum(v[header.index("table_fulls")] for v in values)
    return state


def arp_fit(args: argparse.Namespace, arp: dict[str, int]) -> tuple[int, str]:
    """How many routers the table takes now, and a sentence saying so and what more would need."""
    free = arp["gc_thresh3"] - arp["entries"] - ARP_MARGIN
    fit = max(0, free // args.arp_per_router)
    need = arp["entries"] + ARP_MARGIN + args.routers * args.arp_per_router
    text = (f"ARP table: gc_thresh3 {arp['gc_thresh3']} (gc_thresh2 {arp['gc_thresh2']}), {arp['entries']} entries now "
            f"(every namespace of the host, other labs included); ~{args.arp_per_router} per router -> {fit} routers fit. "
            f"{args.routers} routers need gc_thresh3 >= {need}")
    if need > arp["gc_thresh3"]:
        text += (f": as root, `sysctl -w net.ipv4.neigh.default.gc_thresh3={_round_up(need)} "
                 f"net.ipv4.neigh.default.gc_thresh2={_round_up(need) // 2}` (host-wide; this bench never changes it)")
    return fit, text


def _round_up(n: int) -> int:
    return ((n + 1023) // 1024) * 1024


def mem_available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def host_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole host from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


# --------------------------------------------------------------------------- lab
def run_timed(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """Run a command, timed; returns (seconds, exit status, its progress log as "+S.s message" lines)."""
    print("$", " ".join(argv), flush=True)
    started = time.monotonic()
    wall0 = time.time()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    took = time.monotonic() - started
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-3000:], sep="\n", file=sys.stderr)
    phases = []
    for line in proc.stderr.splitlines():  # structlog's console lines: "2026-12-02T01:27:29.487574Z [info ] message"
        stamp, _, rest = line.partition(" ")
        with contextlib.suppress(ValueError):
            t = time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone + float("0" + stamp[19:-1])
            phases.append(f"+{t - wall0:5.1f}s {rest.split(']', 1)[-1].strip()}")
    return took, proc.returncode, "\n".join(phases)


def lab_status(name: str) -> dict[str, Any]:
    out = subprocess.run([*chaos_cmd(), "lab", "status", "--name", name, "--json"], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    return json.loads(out)


def settled(status: dict[str, Any]) -> tuple[bool, str]:
    """Every router has exactly one replica holding its addresses and keepalived on every replica."""
    bad = []
    for r in status["routers"]:
        holders = [rep["node"] for rep in r["replicas"] if rep["holds_addresses"]]
        missing = [rep["node"] for rep in r["replicas"] if not rep.get("keepalived_pids")]
        if len(holders) != 1 or missing:
            bad.append(f"{r['name']}: holders {holders}, no keepalived on {missing}")
    return not bad, "; ".join(bad[:3]) + (f" (+{len(bad) - 3} more)" if len(bad) > 3 else "")


def wait_settled(name: str, timeout: float) -> float:
    started = time.monotonic()
    why = ""
    for _ in range(int(timeout / 2) + 1):
        ok, why = settled(lab_status(name))
        if ok:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            break
        time.sleep(2)
    raise SystemExit(f"the lab did not settle within {timeout:g}s: {why}")


# --------------------------------------------------------------------------- experiment
def experiment_yaml(args: argparse.Namespace, lab: str, routers: int, nodes: int) -> str:
    tcp = (f"  tcp: {{sessions: {args.tcp_sessions}, interval: 200ms, directions: [inbound], stall: 1s}}\n"
           if args.tcp_sessions else "")
    waves = -(-routers // args.wave)
    # warmup + per wave (SIGTERM exit, the agent's respawn within respawn_interval, recovery)
    # + settle, with a wide margin: the safeguard is there to stop a stuck run, not this one
    max_run = int(60 + waves * (args.respawn_interval + 60) + 30)
    return f"""\
title: scale bench, keepalived SIGTERM on every router in waves of {args.wave}
description: written by bench/scale_bench.py
target:
  routers: {{name: "*"}}
  mode: all
  source: lab
  lab: {lab}
fault:
  type: keepalived-kill
  replica: primary
  params: {{signal: TERM}}
safeguards:
  max_concurrent_routers: {args.wave}
  max_nodes_at_once: {nodes}
  abort_when_routers_without_primary: {routers}
  grace: 30s
  max_run_duration: {max_run}s
probes:
  icmp: {{interval: {args.icmp_ms}ms, timeout: 1s}}
{tcp}  primary: {{}}
  warmup: 5s
  settle: 10s
steady_state_hypothesis:
  title: every router fails over and ends with one primary
  tolerances:
    "p95(outage_s)": {{max: 5}}
    primaries_after: {{equals: 1}}
"""


# --------------------------------------------------------------------------- reference
async def first_wave(exp: Path) -> list[tuple[str, str, str]]:
    """(node, router_id, command) of the plan's first wave, planned by chaos itself."""
    from chaos.experiment.load import load_experiment
    from chaos.faults.base import FaultContext
    from chaos.runner.execute import make_plan
    from chaos.targets.lab import lab_topology
    from chaos.transport.ssh import SshPool

    experiment = load_experiment(exp)
    assert experiment.target.lab is not None
    topology = lab_topology(LAB_ROOT, experiment.target.lab)
    async with SshPool(topology.nodes) as ssh:
        ctx = FaultContext(topology=topology, ssh=ssh, run_id="scale-bench-reference")
        plan, _, _ = await make_plan(experiment, topology, ssh, ctx)
    wave = [plan.action(a) for a in plan.waves[0]]
    out = []
    for action in wave:
        # The fault's own command is the last one; a dead-man (keepalived-kill TERM/KILL arms one)
        # comes first. The reference sends the signal alone, as tobiko/os-faults do.
        assert action.inject and action.router_id is not None
        out.append((action.node, action.router_id, action.inject[-1]))
    return out


def reference_effect(ref: dict[str, Any], wave: list[tuple[str, str, str]], watchers: Watchers,
                     status: dict[str, Any]) -> None:
    """The kernel's removal of each old primary's last address after the reference's commands."""
    wanted = {r["id"]: {r["gateway_ip"].split("/")[0], *(f["address"] for f in r["floating_ips"])} for r in status["routers"]}
    flips = [f for node, rid, _ in wave
             if (f := _kernel_flip(watchers.events.get((rid, node), []), wanted[rid], ref["t0"], lost=True)) is not None]
    ref["effect_spread_s"] = (max(flips) - min(flips)) if flips else None
    ref["effect_n"] = len(flips)


def reference_wave(lab: str, wave: list[tuple[str, str, str]]) -> dict[str, Any]:
    """One OpenSSH command per replica, in sequence, as tobiko / os-faults inject."""
    from chaos.model import Topology

    topo = Topology.model_validate_json((LAB_ROOT / lab / "inventory.json").read_text())
    starts, ends, failed = [], [], 0
    for node_name, _rid, command in wave:
        node = topo.node(node_name)
        assert node.netns and node.key_file and node.known_hosts
        argv = [
            "ip", "netns", "exec", node.netns, "ssh", "-i", str(node.key_file),
            "-o", f"UserKnownHostsFile={node.known_hosts}", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
            "-p", str(node.port), f"{node.user}@{node.address}", command,
        ]
        starts.append(time.time())
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        ends.append(time.time())
        failed += proc.returncode != 0
    per = [e - s for s, e in zip(starts, ends)]
    return {
        "routers": len(wave),
        "nodes": len({n for n, _, _ in wave}),
        "spread_start_s": max(starts) - min(starts),
        "spread_landed_s": max(ends) - min(starts),
        "per_command_p50_s": statistics.median(per),
        "per_command_max_s": max(per),
        "failed": failed,
        "t0": min(starts),
    }


# --------------------------------------------------------------------------- kernel watchers
@dataclass
class Watchers:
    """A local ``ip -o monitor address`` in every replica's namespace (nsenter into its node)."""

    procs: list[asyncio.subprocess.Process] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    events: dict[tuple[str, str], list[tuple[float, bool, str]]] = field(default_factory=lambda: defaultdict(list))

    async def start(self, lab: str, status: dict[str, Any]) -> None:
        from chaos.lab.node import init_pid

        inits = {n["name"]: init_pid(LAB_ROOT / lab, n["name"]) for n in status["nodes"]}
        pairs = [(r["id"], rep["node"]) for r in status["routers"] for rep in r["replicas"]][:MONITOR_LIMIT]
        for rid, node in pairs:
            init = inits.get(node)
            if init is None:
                continue
            proc = await asyncio.create_subprocess_exec(
                "nsenter", "-t", str(init), "-m", "-n", "--", "ip", "-n", f"qrouter-{rid}", "-o", "monitor", "address",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            )
            self.procs.append(proc)
            self.tasks.append(asyncio.create_task(self._read(proc, (rid, node))))
        await asyncio.sleep(1.0)  # the monitors subscribe before anything happens

    async def _read(self, proc: asyncio.subprocess.Process, key: tuple[str, str]) -> None:
        assert proc.stdout is not None
        while True:
            line = await proc.stdout.readline()
            if not line:
                return
            now = time.time()
            fields = line.decode(errors="replace").split()
            added = not (fields and fields[0] == "Deleted")
            for i, tok in enumerate(fields[:-1]):
                if tok == "inet":
                    self.events[key].append((now, added, fields[i + 1].split("/", 1)[0]))
                    break

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        for proc in self.procs:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 5)
        for task in self.tasks:
            task.cancel()


# --------------------------------------------------------------------------- the run
@dataclass
class Sampler:
    """/proc of the runner (CPU, RSS, descriptors) and the host's CPU, every ``period`` s."""

    pid: int
    period: float = 0.5
    samples: list[dict[str, float]] = field(default_factory=list)

    async def run(self, done: asyncio.Event) -> None:
        while not done.is_set():
            try:
                stat = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
                status = {k: v for k, _, v in (line.partition(":") for line in
                                               Path(f"/proc/{self.pid}/status").read_text().splitlines())}
                fds = len(os.listdir(f"/proc/{self.pid}/fd"))
                busy, total = host_busy()
                self.samples.append({
                    "t": time.time(), "cpu": (int(stat[11]) + int(stat[12])) / TICK,
                    "rss_mb": int(status["VmRSS"].split()[0]) / 1024, "hwm_mb": int(status["VmHWM"].split()[0]) / 1024,
                    "fds": fds, "host_busy": busy, "host_total": total,
                })
            except (OSError, IndexError, KeyError, ValueError):
                pass  # the process is ending
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), self.period)

    def peak_cores(self, window: float = 5.0) -> float:
        best = 0.0
        s = self.samples
        j = 0
        for i in range(len(s)):
            while s[i]["t"] - s[j]["t"] > window:
                j += 1
            if s[i]["t"] - s[j]["t"] >= window * 0.8:
                best = max(best, (s[i]["cpu"] - s[j]["cpu"]) / (s[i]["t"] - s[j]["t"]))
        return best

    def host_busy_share(self, since: float | None = None, until: float | None = None) -> float:
        """The host's busy share of CPU between two times (default: the whole run)."""
        inside = [x for x in self.samples if (since is None or x["t"] >= since) and (until is None or x["t"] <= until)]
        if len(inside) < 2:
            return float("nan")
        a, b = inside[0], inside[-1]
        return (b["host_busy"] - a["host_busy"]) / max(1, b["host_total"] - a["host_total"])

    def runner_cores(self, since: float, until: float) -> float:
        inside = [x for x in self.samples if since <= x["t"] <= until]
        if len(inside) < 2:
            return float("nan")
        return (inside[-1]["cpu"] - inside[0]["cpu"]) / max(1e-6, inside[-1]["t"] - inside[0]["t"])


async def chaos_run(exp: Path, workdir: Path, *, sigterm_after_wave: int | None = None) -> dict[str, Any]:
    """``chaos run EXP`` as a child; its rusage from wait4, /proc sampled while it runs."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CHAOS_REPORTS_DIR=str(workdir / "reports"), CHAOS_STATE_DIR=str(workdir / "state"))
    argv = [*chaos_cmd(), "run", str(exp)]
    print("$", f"CHAOS_REPORTS_DIR={workdir / 'reports'} CHAOS_STATE_DIR={workdir / 'state'}", " ".join(argv), flush=True)
    out = open(workdir / "run.out", "w")  # noqa: SIM115 (closed below)
    started = time.time()
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    sampler = Sampler(proc.pid)
    done = asyncio.Event()
    sampling = asyncio.create_task(sampler.run(done))
    signalled: float | None = None
    waiter = asyncio.create_task(asyncio.to_thread(os.wait4, proc.pid, 0))
    try:
        if sigterm_after_wave is not None:
            signalled = await _sigterm_when_injected(proc, workdir / "reports", sigterm_after_wave, waiter)
        _, status, usage = await waiter
    finally:
        done.set()
        await sampling
        out.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    ended = time.time()
    runs = sorted((workdir / "reports").glob("*/journal.jsonl"))
    return {
        "exit": proc.returncode, "wall_s": ended - started, "started": started, "ended": ended,
        "cpu_user_s": usage.ru_utime, "cpu_sys_s": usage.ru_stime, "cpu_s": usage.ru_utime + usage.ru_stime,
        "maxrss_mb": usage.ru_maxrss / 1024, "sampler": sampler, "journal": runs[-1] if runs else None,
        "sigterm_at": signalled, "output": (workdir / "run.out").read_text()[-3000:],
    }


async def _sigterm_when_injected(proc: subprocess.Popen[bytes], reports: Path, count: int,
                                 waiter: asyncio.Task[Any]) -> float | None:
    """SIGTERM the runner once ``count`` faults are injected (bounded: 10 minutes)."""
    seen, offset, tail = 0, 0, b""
    for _ in range(6000):
        if waiter.done():
            return None
        journals = list(reports.glob("*/journal.jsonl"))
        if journals:
            with journals[0].open("rb") as f:  # only what was appended since the last look
                f.seek(offset)
                chunk = f.read()
            offset += len(chunk)
            lines = (tail + chunk).split(b"\n")
            tail = lines.pop()
            seen += sum(1 for line in lines if b'"kind":"fault.injected"' in line)
            if seen >= count:
                now = time.time()
                proc.send_signal(signal.SIGTERM)
                return now
        await asyncio.sleep(0.1)
    return None


# --------------------------------------------------------------------------- journal analysis
def analyse(journal: Path, watchers: Watchers | None, status: dict[str, Any]) -> dict[str, Any]:
    from chaos.journal import read_journal

    events = list(read_journal(journal))
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        by_kind[e["kind"]].append(e)
    out: dict[str, Any] = {}
    started = by_kind["run.started"][0]["t"]
    plan = by_kind["run.plan"][0] if by_kind["run.plan"] else None
    out["plan_s"] = plan["t"] - started if plan else None
    finished = by_kind["run.finished"][0] if by_kind["run.finished"] else None
    out["verdict"] = finished["verdict"] if finished else None
    if plan is None:
        return out
    waves = plan["waves"]
    actions = {a["action_id"]: a for a in plan["actions"]}
    injected = {e["action_id"]: e for e in by_kind["fault.injected"]}
    verified = {e["action_id"]: e for e in by_kind["fault.verified"]}
    undone = {e["action_id"]: e for e in by_kind["fault.undone"]}
    recovered = {e["action_id"]: e for e in by_kind["fault.recovered"]}
    rows = []
    for i, wave in enumerate(waves, start=1):
        inj = [injected[a] for a in wave if a in injected]
        if not inj:
            continue
        starts = [e["t"] for e in inj]
        ends = [e["t"] + e["inject_s"] for e in inj]
        rec = [recovered[a]["t"] for a in wave if a in recovered]
        rows.append({
            "wave": i, "actions": len(wave), "injected": len(inj),
            "nodes": len({actions[a]["node"] for a in wave}),
            # SshPool runs at most 8 channels per node and the observer's stream holds one for
            # the whole run: beyond 7 actions on one node, injections wait for a free channel
            "max_per_node": max(sum(1 for b in wave if actions[b]["node"] == actions[a]["node"]) for a in wave),
            "spread_start_s": max(starts) - min(starts), "spread_landed_s": max(ends) - min(starts),
            "inject_s_p50": statistics.median(e["inject_s"] for e in inj),
            "duration_s": (max(rec) - min(starts)) if rec else None,
        })
    out["waves"] = rows
    wanted = {r["id"]: {r["gateway_ip"].split("/")[0], *(f["address"] for f in r["floating_ips"])} for r in status["routers"]}
    if watchers is not None:
        # When SIGTERM took effect: the kernel's removal of the old primary's last address.
        for row, wave in zip(rows, (w for w in waves if any(a in injected for a in w))):
            flips = [f for a in wave if a in injected and (f := _kernel_flip(
                watchers.events.get((injected[a]["router_id"], injected[a]["node"]), []),
                wanted[injected[a]["router_id"]], injected[a]["t"], lost=True)) is not None]
            row["effect_spread_s"] = (max(flips) - min(flips)) if flips else None
            row["effect_n"] = len(flips)
    undo_s = [undone[a]["t"] - verified[a]["t"] for a in undone if a in verified]
    out["undo_s"] = {"p50": pct(undo_s, 0.5), "max": max(undo_s, default=float("nan")), "n": len(undo_s)}
    out["restarted_by"] = dict(sorted(
        (k, sum(1 for e in undone.values() if e.get("restarted_by") == k)) for k in {e.get("restarted_by") for e in undone.values()}
    ))
    out["undo_failed"] = sum(1 for e in undone.values() if not e["ok"])

    # Observer lag. (a) from the journal alone: the injection's start (fault.injected's t) to
    # the first observe.replica saying the replica no longer holds the addresses (this includes
    # the SSH command and keepalived's own shutdown after SIGTERM). (b) against the kernel: the local monitor's
    # time of the address change that flips "holds", to the observer's event for it, for the
    # old primary losing the addresses and for the new one taking them.
    obs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for e in by_kind["observe.replica"]:
        obs[(e["router_id"], e["node"])].append(e)
    replicas = {r["id"]: [rep["node"] for rep in r["replicas"]] for r in status["routers"]}
    journal_lag, loss_lag, gain_lag, unmatched = [], [], [], 0
    for aid, inj in injected.items():
        rid, node = inj["router_id"], inj["node"]
        t0 = inj["t"]
        first_loss = next((e for e in obs[(rid, node)] if e["t"] >= t0 and not e["holds"]), None)
        if first_loss is not None:
            journal_lag.append(first_loss["t"] - t0)
        if watchers is None:
            continue
        k_loss = _kernel_flip(watchers.events.get((rid, node), []), wanted[rid], t0, lost=True)
        if k_loss is not None and first_loss is not None:
            loss_lag.append(first_loss["t"] - k_loss)
        elif k_loss is not None or first_loss is not None:
            unmatched += 1
        for other in replicas.get(rid, []):
            if other == node:
                continue
            k_gain = _kernel_flip(watchers.events.get((rid, other), []), wanted[rid], t0, lost=False)
            o_gain = next((e for e in obs[(rid, other)] if e["t"] >= t0 and e["holds"]), None)
            if k_gain is not None and o_gain is not None:
                gain_lag.append(o_gain["t"] - k_gain)
    out["observer_lag_journal"] = _dist(journal_lag)
    if watchers is not None:
        both = loss_lag + gain_lag
        out["observer_lag_kernel"] = _dist(both) | {"loss": _dist(loss_lag), "takeover": _dist(gain_lag), "unmatched": unmatched}

    # Probe send timing: the journal keeps each request's send time, not its schedule, so the
    # figure is the gap between consecutive sends to one address against the interval.
    first_inj = min((e["t"] for e in injected.values()), default=None)
    last_rec = max((e["t"] for e in recovered.values()), default=None)
    gaps_all, gaps_wave, interval = [], [], None
    series: dict[str, list[float]] = defaultdict(list)
    for e in by_kind["probe.icmp"]:
        series[e["address"]].extend(e["sent"])
        interval = e["interval"]
    for sends in series.values():
        sends.sort()
        for a, b in zip(sends, sends[1:]):
            gaps_all.append(b - a)
            if first_inj is not None and last_rec is not None and first_inj <= a <= last_rec:
                gaps_wave.append(b - a)
    if interval:
        out["icmp"] = {"interval": interval, "targets": len(series), "sent": sum(len(s) for s in series.values()),
                       "all": _gaps(gaps_all, interval), "during_waves": _gaps(gaps_wave, interval)}
    tcp = [e for e in by_kind["probe.tcp"] if e["event"] in ("reset", "timeout", "failed")]
    out["tcp_sessions_broken"] = len(tcp)
    out["tcp_sessions_opened"] = sum(1 for e in by_kind["probe.tcp"] if e["event"] == "opened")
    out["window"] = (first_inj, last_rec)
    return out


def _kernel_flip(events: list[tuple[float, bool, str]], wanted: set[str], t0: float, *, lost: bool) -> float | None:
    """When, after ``t0``, the replica stopped holding any wanted address (``lost``: after the
    last one was deleted) or started holding one (the first added)."""
    gone: set[str] = set()
    for t, added, addr in events:
        if t < t0 - 0.05 or addr not in wanted:
            continue
        if lost and not added:
            gone.add(addr)
            if gone >= wanted:
                return t
        if not lost and added:
            return t
    return None


def _dist(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50": pct(values, 0.5), "p99": pct(values, 0.99), "max": max(values, default=float("nan"))}


def _gaps(gaps: list[float], interval: float) -> dict[str, Any]:
    dev = [abs(g - interval) for g in gaps]
    within = sum(1 for d in dev if d <= 0.002)
    return {"gaps": len(gaps), "dev_p50": pct(dev, 0.5), "dev_p99": pct(dev, 0.99), "dev_p999": pct(dev, 0.999),
            "within_2ms": within / len(gaps) if gaps else float("nan"),
            "skips": sum(1 for g in gaps if g > 1.5 * interval)}


def summary_figures(journal: Path) -> dict[str, Any]:
    path = journal.parent / "summary.json"
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    keep = {}
    for name in ("outage_s", "failover_s", "no_primary_s", "split_brain_s", "tcp_dropped", "tcp_max_stall_s"):
        if name in data.get("aggregates", {}):
            agg = data["aggregates"][name]
            if agg.get("count"):
                keep[name] = {k: v for k, v in agg.items() if k in ("p50", "p95", "max", "count")}
    health = data.get("health")
    if health:  # the run's own judgement of its measurement (run.health, issue 14 part 6)
        routers = [r for r in data.get("routers", []) if r.get("targeted")]
        keep["_health"] = {
            "verdict": data.get("verdict"),
            "samples": health["samples"], "saturated_samples": health["saturated_samples"],
            "routers_saturated": sum(1 for r in routers if r.get("saturated")), "routers": len(routers),
            "reasons": sorted({k for p in health.get("periods", []) for k in p["reasons"]}),
            **{k: health.get(k) for k in ("loop_lag_max", "runner_cpu_max", "cpu_pressure_max", "probe_late_p99_max",
                                          "observer_lag_max", "probe_sends", "probe_skipped")},
        }
    return keep


# --------------------------------------------------------------------------- main
def print_report(r: dict[str, Any], args: argparse.Namespace) -> None:
    print("\n================ scale bench ================")
    print(f"host: {os.cpu_count()} cores, kernel {os.uname().release}")
    print(r["arp_text"])
    lab = r["lab"]
    print(f"lab: {lab['nodes']} nodes, {lab['routers']} routers x {lab['replicas']} replicas, {lab['projects']} projects, "
          f"advert_int {lab['advert_int']}, respawn interval {lab['respawn_interval']:g}s")
    if lab.get("up_s") is not None:
        print(f"  bring-up {lab['up_s']:.1f} s (goal for 200 routers: <= 60 s); host MemAvailable dropped by "
              f"{lab['mem_mb']:.0f} MB; ARP entries +{lab['arp_added']} ({lab['arp_added'] / max(1, lab['routers']):.1f} per router)")
    if lab.get("status_s") is not None:
        print(f"  `chaos lab status --json` took {lab['status_s']:.1f} s")
    if lab.get("arp_after_run") is not None:
        print(f"  ARP entries after the run: +{lab['arp_after_run']} since the bench started "
              f"({lab['arp_after_run'] / max(1, lab['routers']):.1f} per router; other labs' entries move this too)")
    if lab.get("down_s") is not None:
        print(f"  teardown {lab['down_s']:.1f} s (goal <= 10 s)")
    ref = r.get("reference")
    if ref:
        print(f"reference (one OpenSSH command per replica, in sequence): {ref['routers']} routers on {ref['nodes']} nodes: "
              f"spread {ms(ref['spread_start_s'])} (first to last start), {ms(ref['spread_landed_s'])} to the last "
              f"command's end; per command p50 {ms(ref['per_command_p50_s'])}, max {ms(ref['per_command_max_s'])}; "
              f"{ref['failed']} failed; settled again after {ref['settle_s']:.0f} s")
        if ref.get("effect_n"):
            print(f"  kernel: first to last old primary's address removal {ms(ref['effect_spread_s'])} (n={ref['effect_n']})")
    run = r.get("run")
    if run:
        a = run["analysis"]
        print(f"chaos run: exit {run['exit']} (verdict {a.get('verdict')}), wall {run['wall_s']:.1f} s, "
              f"time to plan {a.get('plan_s', 0):.2f} s")
        for w in a.get("waves", []):
            print(f"  wave {w['wave']}: {w['injected']}/{w['actions']} injected on {w['nodes']} nodes "
                  f"(at most {w['max_per_node']} on one): spread "
                  f"{ms(w['spread_start_s'])} (starts), {ms(w['spread_landed_s'])} (to the last command's end); "
                  f"inject p50 {ms(w['inject_s_p50'])}; wave done after {w['duration_s'] or 0:.1f} s"
                  + (f"; kernel: address removals {ms(w['effect_spread_s'])} first to last (n={w['effect_n']})"
                     if w.get("effect_n") else ""))
        full = [w for w in a.get("waves", []) if w["actions"] == args.wave] or a.get("waves", [])
        if full and ref:
            cs = statistics.median(w["spread_start_s"] for w in full)
            cl = statistics.median(w["spread_landed_s"] for w in full)
            print(f"  RATIO reference / chaos, spread of a wave of {full[0]['actions']}: starts {ref['spread_start_s'] / max(cs, 1e-6):.0f}x, "
                  f"to the last end {ref['spread_landed_s'] / max(cl, 1e-6):.1f}x (chaos median over {len(full)} full waves: "
                  f"{ms(cs)}, {ms(cl)})")
            effects = [w["effect_spread_s"] for w in full if w.get("effect_spread_s") is not None]
            if effects and ref.get("effect_spread_s"):
                ce = statistics.median(effects)
                print(f"  RATIO reference / chaos, kernel address removals first to last: {ref['effect_spread_s'] / max(ce, 1e-6):.1f}x "
                      f"({ms(ref['effect_spread_s'])} vs {ms(ce)})")
        lj = a.get("observer_lag_journal", {})
        print(f"  observer, injection start -> old primary seen without the addresses: p50 {ms(lj.get('p50'))} "
              f"p99 {ms(lj.get('p99'))} max {ms(lj.get('max'))} (n={lj.get('n')}; includes the SSH command and keepalived's SIGTERM handling)")
        lk = a.get("observer_lag_kernel")
        if lk:
            print(f"  observer lag behind the kernel's address event (local ip monitor): p50 {ms(lk['p50'])} p99 {ms(lk['p99'])} "
                  f"max {ms(lk['max'])} (n={lk['n']}; loss p99 {ms(lk['loss']['p99'])}, takeover p99 {ms(lk['takeover']['p99'])}; "
                  f"unmatched {lk['unmatched']})")
        ic = a.get("icmp")
        if ic:
            for label, g in (("whole run", ic["all"]), ("during the waves", ic["during_waves"])):
                print(f"  icmp {ic['targets']} targets at {ic['interval'] * 1000:g} ms, {label}: send-gap deviation p50 "
                      f"{ms(g['dev_p50'])} p99 {ms(g['dev_p99'])} p99.9 {ms(g['dev_p999'])}; within 2 ms: "
                      f"{g['within_2ms']:.2%}; skipped sends {g['skips']} of {g['gaps']}")
            print("  (send lateness against the schedule is not journaled: the probe keeps it in memory only)")
        if a.get("tcp_sessions_opened"):
            print(f"  tcp: {a['tcp_sessions_opened']} sessions opened; reset/timeout/failed events: {a['tcp_sessions_broken']}")
        u = a.get("undo_s", {})
        print(f"  undo per fault (verified -> undone, waits for the L3 agent's respawn): p50 {u.get('p50', 0):.1f} s, "
              f"max {u.get('max', 0):.1f} s; restarted by {a.get('restarted_by')}; undo failed {a.get('undo_failed')}")
        routers = lab["routers"]
        print(f"  runner CPU {run['cpu_s']:.1f} s (user {run['cpu_user_s']:.1f}, sys {run['cpu_sys_s']:.1f}) over "
              f"{run['wall_s']:.0f} s = {run['cpu_s'] / run['wall_s']:.2f} cores average, peak 5 s window "
              f"{run['peak_cores']:.2f} cores; {run['cpu_s'] / (routers * run['wall_s'] / 60):.3f} CPU s per router-minute")
        print(f"  runner peak RSS {run['maxrss_mb']:.0f} MB, descriptors peak {run['fds_peak']}; host CPU busy "
              f"{run['host_busy']:.0%} during the run; ARP table overflows during the run: {run['arp_table_fulls']}")
        if run.get("host_busy_waves") is not None:
            print(f"  host CPU busy before the first injection (probes running) {run['host_busy_before']:.0%}, "
                  f"during the waves {run['host_busy_waves']:.0%}; runner {run['runner_cores_before']:.2f} cores before, "
                  f"{run['runner_cores_waves']:.2f} during the waves")
        if run.get("summary"):
            figures = {k: d for k, d in run["summary"].items() if not k.startswith("_")}
            print("  from summary.json: " + "; ".join(
                f"{k} " + ", ".join(f"{q} {v:.2f}" if isinstance(v, float) else f"{q} {v}" for q, v in d.items())
                for k, d in figures.items()))
            h = run["summary"].get("_health")
            if h:
                print(f"  the run's own health (run.health): saturated {h['saturated_samples']} of {h['samples']} s "
                      f"({', '.join(h['reasons']) or 'nothing'}); {h['routers_saturated']} of {h['routers']} routers "
                      f"measured while saturated; verdict {h['verdict']}; worst: event loop {h['loop_lag_max']} s late, "
                      f"ICMP sends {h['probe_late_p99_max']} s late (p99), {h['probe_skipped']} of "
                      f"{(h['probe_sends'] or 0) + (h['probe_skipped'] or 0)} skipped, replica stream "
                      f"{h['observer_lag_max']} s behind, lab CPU pressure {h['cpu_pressure_max']}, runner "
                      f"{h['runner_cpu_max']} cores")
    print_goals(r, args)
    rb = r.get("rollback")
    if rb:
        print(f"rollback test: SIGTERM after {rb['after_injected']} injections: every fault undone "
              f"{rb['undone_s']:.1f} s after the signal, runner exited after {rb['exit_s']:.1f} s "
              f"(exit {rb['exit']}, verdict {rb['verdict']}, {rb['undone']} undone)")


def print_goals(r: dict[str, Any], args: argparse.Namespace) -> None:
    """Issue 14's goals, each with the figure it is judged on."""
    lab, run = r["lab"], r.get("run")
    rows: list[tuple[str, str, bool | None]] = []
    if lab.get("up_s") is not None:
        rows.append((f"bring-up <= 60 s for 200 routers ({lab['routers']} here)", f"{lab['up_s']:.1f} s",
                     lab["up_s"] <= 60 if lab["routers"] >= 200 else None))
    if lab.get("down_s") is not None:
        rows.append(("teardown <= 10 s", f"{lab['down_s']:.1f} s", lab["down_s"] <= 10))
    if run:
        a = run["analysis"]
        full = [w for w in a.get("waves", []) if w["actions"] == args.wave and w["nodes"] >= 6]
        if full:
            worst = max(w["spread_landed_s"] for w in full)
            rows.append((f"spread <= 100 ms, {args.wave} routers on 6 nodes (first start to last command's end, worst wave)",
                         ms(worst), worst <= 0.1))
            effects = [w["effect_spread_s"] for w in full if w.get("effect_spread_s") is not None]
            if effects:
                rows.append(("  the same where it takes effect (kernel address removals, worst wave; includes keepalived)",
                             ms(max(effects)), max(effects) <= 0.1))
        lk = a.get("observer_lag_kernel")
        if lk and lk["n"]:
            rows.append(("observer lag p99 <= 100 ms (behind the kernel's address event)", ms(lk["p99"]), lk["p99"] <= 0.1))
        ic = a.get("icmp")
        if ic and ic["during_waves"]["gaps"]:
            share = ic["during_waves"]["within_2ms"]
            rows.append(("probes on time: 99.9 % within 2 ms (send gaps during the waves)", f"{share:.2%}", share >= 0.999))
        peak = run["peak_cores"]
        rows.append(("runner under one core (peak 5 s window)", f"{peak:.2f} cores", peak < 1.0))
    print("goals:")
    for text, value, ok in rows:
        mark = "n/a " if ok is None else "MET " if ok else "NOT "
        print(f"  {mark} {text}: {value}")


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    arp0 = arp_state()
    fit, text = arp_fit(args, arp0)
    if args.lab is None and args.routers > fit and not args.ignore_arp_limit:
        shrunk = max(10, (fit // 10) * 10)
        text += f"\n  -> running with {shrunk} routers instead of {args.routers} (--ignore-arp-limit runs the size asked for)"
        args.routers = shrunk
    result["arp_text"] = text
    print(text, flush=True)
    name = args.lab or args.name
    workdir = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    own_lab = args.lab is None
    lab: dict[str, Any] = {}
    result["lab"] = lab
    try:
        if own_lab:
            mem0 = mem_available_mb()
            up_s, rc, phases = await asyncio.to_thread(run_timed, [
                *chaos_cmd(), "lab", "up", "--name", name, "--nodes", str(args.nodes), "--routers", str(args.routers),
                "--replicas", "2", "--projects", str(args.projects or max(1, args.routers // 10)),
                "--advert-int", str(args.advert_int), "--respawn-interval", f"{args.respawn_interval:g}",
                "--timeout", str(args.up_timeout),
            ], args.up_timeout + 60)
            if rc != 0:
                raise SystemExit(f"chaos lab up failed (exit {rc})")
            lab["up_s"] = up_s
            lab["up_phases"] = phases
            print(phases, flush=True)
            lab["mem_mb"] = mem0 - mem_available_mb()
            print(f"lab up in {up_s:.1f} s", flush=True)
        t_status = time.monotonic()
        status = lab_status(name)
        lab["status_s"] = time.monotonic() - t_status
        lab["arp_added"] = arp_state()["entries"] - arp0["entries"]
        if args.up_only:
            lab["routers"] = len(status["routers"])
            lab.update({k: status["options"][k] for k in ("nodes", "replicas", "projects", "advert_int", "respawn_interval")})
            return result
        opts = status["options"]
        lab.update({k: opts[k] for k in ("nodes", "replicas", "projects", "advert_int", "respawn_interval")})
        lab["routers"] = len(status["routers"])
        await asyncio.to_thread(wait_settled, name, SETTLE_TIMEOUT)

        exp = workdir / "scale.yaml"
        exp.write_text(experiment_yaml(args, name, lab["routers"], lab["nodes"]))
        status = lab_status(name)
        watchers = None
        try:
            if not args.no_kernel_watch:
                watchers = Watchers()
                await watchers.start(name, status)
                print(f"{len(watchers.procs)} local address monitors started", flush=True)
            if not args.skip_reference:
                wave = (await first_wave(exp))[: args.wave]
                print(f"reference: {len(wave)} OpenSSH commands in sequence ...", flush=True)
                ref = await asyncio.to_thread(reference_wave, name, wave)
                ref["settle_s"] = await asyncio.to_thread(wait_settled, name, SETTLE_TIMEOUT)
                if watchers is not None:
                    reference_effect(ref, wave, watchers, status)
                result["reference"] = ref
                await asyncio.sleep(args.advert_int * 2)  # the respawned replicas' first adverts
            arp_run0 = arp_state()
            run = await chaos_run(exp, workdir / "run")
        finally:
            if watchers is not None:
                await watchers.stop()
        s: Sampler = run.pop("sampler")
        run.update({
            "peak_cores": s.peak_cores(), "fds_peak": max((x["fds"] for x in s.samples), default=0),
            "host_busy": s.host_busy_share(), "arp_table_fulls": arp_state()["table_fulls"] - arp_run0["table_fulls"],
            "sampler": s,
        })
        lab["arp_after_run"] = arp_state()["entries"] - arp0["entries"]
        if run["journal"] is None:
            print(run["output"], file=sys.stderr)
            raise SystemExit("the run wrote no journal")
        run["analysis"] = analyse(run["journal"], watchers, status)
        first_inj, last_rec = run["analysis"].get("window", (None, None))
        if first_inj is not None and last_rec is not None:
            run["host_busy_before"] = s.host_busy_share(until=first_inj)
            run["host_busy_waves"] = s.host_busy_share(first_inj, last_rec)
            run["runner_cores_before"] = s.runner_cores(s.samples[0]["t"], first_inj) if s.samples else float("nan")
            run["runner_cores_waves"] = s.runner_cores(first_inj, last_rec)
        run["summary"] = summary_figures(run["journal"])
        result["run"] = run
        if run["exit"] not in (0, 1):
            print(run["output"], file=sys.stderr)

        if args.rollback_test:
            await asyncio.to_thread(wait_settled, name, SETTLE_TIMEOUT)
            rb_dir = workdir / "rollback"
            rb = await chaos_run(exp, rb_dir, sigterm_after_wave=min(args.wave, lab["routers"]))
            rb.pop("sampler")
            result["rollback"] = _rollback_figures(rb, min(args.wave, lab["routers"]))
            await asyncio.to_thread(wait_settled, name, SETTLE_TIMEOUT)
    finally:
        if own_lab and not args.keep:
            down_s, rc, phases = await asyncio.to_thread(run_timed, [*chaos_cmd(), "lab", "down", "--name", name], 300)
            lab["down_s"] = down_s
            print(phases, flush=True)
        if not args.keep_files:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"run folders kept in {workdir}")
    return result


def _rollback_figures(rb: dict[str, Any], count: int) -> dict[str, Any]:
    from chaos.journal import read_journal

    events = list(read_journal(rb["journal"])) if rb["journal"] else []
    undone = [e["t"] for e in events if e["kind"] == "fault.undone"]
    finished = [e for e in events if e["kind"] == "run.finished"]
    t0 = rb["sigterm_at"] or rb["started"]
    return {"after_injected": count, "undone": len(undone), "undone_s": (max(undone) - t0) if undone else float("nan"),
            "exit_s": rb["ended"] - t0, "exit": rb["exit"], "verdict": finished[0]["verdict"] if finished else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lab", help="reuse this running lab (left up); default: bring up --name and take it down")
    parser.add_argument("--name", default="scbench", help="name of the lab the bench brings up")
    parser.add_argument("--routers", type=int, default=200)
    parser.add_argument("--nodes", type=int, default=6)
    parser.add_argument("--projects", type=int, help="HA networks (default routers/10: fewer keepalived per VRRP domain)")
    parser.add_argument("--advert-int", type=int, default=2, help="VRRP advert_int (Neutron's default 2)")
    parser.add_argument("--respawn-interval", type=float, default=5.0,
                        help="the lab agents' check_child_processes_interval (Neutron: 60); each wave's undo waits for it")
    parser.add_argument("--up-timeout", type=int, default=600)
    parser.add_argument("--wave", type=int, default=50, help="routers per wave (safeguards.max_concurrent_routers)")
    parser.add_argument("--icmp-ms", type=int, default=20)
    parser.add_argument("--tcp-sessions", type=int, default=1, help="inbound TCP sessions held per router (0: none)")
    parser.add_argument("--arp-per-router", type=int,
                        help="neighbour entries a router takes (default: the lab's own estimate, NEIGHBOURS_PER_ROUTER)")
    parser.add_argument("--ignore-arp-limit", action="store_true",
                        help="run the size asked for even if the host's ARP table (gc_thresh3) looks too small")
    parser.add_argument("--up-only", action="store_true", help="only bring the lab up and down, timed")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--no-kernel-watch", action="store_true", help="no local ip monitor per replica")
    parser.add_argument("--rollback-test", action="store_true", help="also SIGTERM a second run after its first wave")
    parser.add_argument("--keep", action="store_true", help="leave the lab up")
    parser.add_argument("--keep-files", action="store_true", help="keep the run folders (temp dir)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("run as root: the lab needs network, mount and PID namespaces")
    args.routers = max(1, min(args.routers, 2000))
    if args.arp_per_router is None:
        from chaos.lab.manager import NEIGHBOURS_PER_ROUTER

        args.arp_per_router = NEIGHBOURS_PER_ROUTER
    args.wave = max(1, args.wave)
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    result = asyncio.run(bench(args))
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    result["bench_self_cpu_s"] = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
    print_report(result, args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=_jsonable))
    return 0


def _jsonable(value: Any) -> Any:
    if isinstance(value, Sampler):
        return {"samples": value.samples}
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
