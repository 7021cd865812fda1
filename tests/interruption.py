"""The interruption campaign: kill ``chaos run`` with SIGKILL at a random moment, recover, and
check from outside the tool that nothing is left.

Shared by ``tests/test_interruption.py`` (CI's short form) and ``bench/interruption_campaign.py``
(the long form). A trial runs one experiment through the CLI as a user would, watches its
journal, and sends SIGKILL to the runner's process at a moment drawn at random from one of
the phases of a run: before injection (plan, preflight, warm-up), while injecting (the undo is
journaled, the SSH command is in flight), while the fault holds, during the undo at the end of
the hold, and during the rollback that a SIGTERM starts. Then ``chaos recover RUN`` runs, and
``Inspector`` reads the lab's kernel and processes without the tool: ``nsenter`` into each
node's mount and network namespaces (``ip link``, ``iptables-save`` in every ``qrouter-``
namespace, the node's own links), the host's ``/proc`` for the processes of each node's PID
namespace (keepalived per replica, stopped or not, and anything the tool's SSH sessions left
running), the lab's power records and the lab API's agent table.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from chaos.lab.node import init_pid, is_powered
from chaos.lab.procs import pids_in_pidns
from chaos.lab.spec import LabSpec

CHAOS = [sys.executable, "-m", "chaos"]
MARKER = "chaos-"  # every iptables comment and dead-man tag of the tool starts so
PHASES = ("before", "injecting", "holding", "undo", "rollback")


# --------------------------------------------------------------------------- fault variants
@dataclass(frozen=True)
class Variant:
    """One fault type as the campaign runs it: its experiment's fault section and target."""

    name: str
    fault: str  # the YAML of the fault section, indented two spaces
    node_fault: bool = False  # one node (mode one) rather than every router
    openstack: bool = False  # through the lab's cloud (agent-evacuate)
    hold: float = 2.0  # how long the fault holds before its undo (0: no duration)


VARIANTS: tuple[Variant, ...] = (
    Variant("keepalived-term", "  type: keepalived-kill\n  replica: primary\n  params: {signal: TERM}", hold=0),
    Variant("keepalived-kill", "  type: keepalived-kill\n  replica: primary\n  params: {signal: KILL}", hold=0),
    Variant("keepalived-stop", "  type: keepalived-kill\n  replica: primary\n  params: {signal: STOP}\n  duration: 2s"),
    Variant("ha-link-down", "  type: ha-link-down\n  replica: primary\n  duration: 2s"),
    Variant("vrrp-partition", "  type: vrrp-partition\n  replica: backup\n  duration: 2s"),
    Variant("gateway-reboot", "  type: gateway-reboot\n  replica: primary\n  params: {method: lab, boot_timeout: 60s}",
            node_fault=True, hold=0),
    Variant("agent-evacuate", "  type: agent-evacuate\n  replica: primary\n  params: {mode: graceful}\n  duration: 2s",
            node_fault=True, openstack=True),
    Variant("agent-evacuate-abrupt", "  type: agent-evacuate\n  replica: backup\n  params: {mode: abrupt}\n  duration: 2s",
            node_fault=True, openstack=True),
)


def variant(name: str) -> Variant:
    return next(v for v in VARIANTS if v.name == name)


def experiment_text(v: Variant, lab: str) -> str:
    target = f"  source: openstack\n  cloud: {lab}\n" if v.openstack else ""
    return f"""title: interruption campaign {v.name}
target:
  routers: {{name: "*"}}
  mode: {"one" if v.node_fault else "all"}
{target}fault:
{v.fault}
safeguards:
  max_concurrent_routers: 10
  max_nodes_at_once: 3
  grace: 20s
  max_run_duration: 2m
probes:
  icmp: {{interval: 100ms}}
  primary: {{}}
  warmup: 1s
  settle: 0s
steady_state_hypothesis:
  title: every router ends with one primary
  tolerances:
    primaries_after: {{equals: 1}}
"""


# --------------------------------------------------------------------------- looking from outside
@dataclass
class NodeProcess:
    pid: int
    ppid: int
    state: str
    argv: list[str]

    @property
    def text(self) -> str:
        return " ".join(self.argv)


class Inspector:
    """What a lab's nodes hold right now, read without the tool: nsenter, /proc, the lab's files.

    ``leftovers()`` lists what a fault or a run can leave behind, one sentence each: a link down
    in a replica's namespace or on a node, an iptables rule carrying a chaos marker, a stopped,
    missing or extra keepalived (or one without its VRRP child), a node powered off, an L3 agent
    disabled in the lab's API, a process a tool's SSH session left running (a dead-man timer, a
    follower, a command). ``settled()`` adds the routers without exactly one primary.
    """

    def __init__(self, lab_dir: Path) -> None:
        self.dir = lab_dir

    def spec(self) -> LabSpec:
        return LabSpec.load(self.dir / "lab.json")  # the placement as it is now (evacuations move replicas)

    # ------------------------------------------------------------------ per node
    def node_processes(self, init: int) -> list[NodeProcess]:
        """Every process of the node's PID namespace, from the host's /proc."""
        found = []
        for entry in pids_in_pidns(init):
            try:
                argv = [a.decode(errors="replace") for a in Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0") if a]
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if argv:  # a zombie has no command line: it is gone
                found.append(NodeProcess(int(entry), int(fields[1]), fields[0], argv))
        return found

    def nsenter(self, init: int, script: str, timeout: float = 30) -> str:
        proc = subprocess.run(["nsenter", "-t", str(init), "-m", "-n", "--", "sh", "-c", script],
                              capture_output=True, text=True, timeout=timeout)
        return proc.stdout

    def node_leftovers(self, spec: LabSpec, node: str, *, grace_processes: bool) -> list[str]:
        problems: list[str] = []
        if not is_powered(self.dir, node):
            return [f"{node}: powered off"]
        init = init_pid(self.dir, node)
        if init is None:
            return [f"{node}: powered but its init does not run"]
        if grace_processes and node_age(init) < BOOTING:
            # A node that has just booted is still building its replicas (links not yet up,
            # keepalived not yet started): what it lacks is checked once the lab has settled.
            return [f"{node}: booting"]
        # Links and rules, in the node's own namespaces: every qrouter- namespace it has.
        out = self.nsenter(init, (
            "ip -o link show | sed 's/^/H /'; "
            "for n in $(ip netns list | cut -d' ' -f1); do echo \"N $n\"; "
            "ip -n \"$n\" -o link show | sed 's/^/L /'; ip netns exec \"$n\" iptables-save | sed 's/^/I /'; done; "
            "iptables-save | sed 's/^/J /'"
        ))
        namespaces: set[str] = set()
        current = "-"
        for line in out.splitlines():
            tag, _, rest = line.partition(" ")
            if tag == "N":
                current = rest.strip()
                namespaces.add(current)
            elif tag in ("H", "L"):
                flags = rest.split("<", 1)[1].split(">", 1)[0].split(",") if "<" in rest else []
                name = rest.split(":", 2)[1].strip().split("@")[0] if ":" in rest else rest
                if "UP" not in flags:
                    where = "the node" if tag == "H" else current
                    problems.append(f"{node}: link {name} is down in {where}")
            elif tag in ("I", "J") and MARKER in rest and "--comment" in rest:
                where = "the node" if tag == "J" else current
                problems.append(f"{node}: iptables rule with a chaos marker in {where}: {rest.strip()}")
        wanted = {r.id for r, _ in spec.replicas_on(node)}
        for rid in sorted(wanted):
            if f"qrouter-{rid}" not in namespaces:
                problems.append(f"{node}: no namespace qrouter-{rid}")
        # Processes: keepalived per replica, and nothing the tool's sessions started.
        procs = self.node_processes(init)
        by_pid = {p.pid: p for p in procs}
        agent = next((p for p in procs if "chaos.lab.agent" in p.text), None)

        def under(p: NodeProcess, ancestor: int) -> bool:
            seen = 0
            while p is not None and seen < 64:
                if p.pid == ancestor:
                    return True
                p = by_pid.get(p.ppid)  # type: ignore[assignment]
                seen += 1
            return False

        keepalived: dict[str, list[NodeProcess]] = {}
        for p in procs:
            if os.path.basename(p.argv[0]) == "keepalived":
                conf = next((a for a in p.argv if a.endswith("/keepalived.conf")), "")
                keepalived.setdefault(conf.split("/")[-2] if conf else "?", []).append(p)
        for rid in sorted(set(keepalived) | wanted):
            group = keepalived.get(rid, [])
            mains = [p for p in group if p.ppid not in {q.pid for q in group}]
            stopped = [p.pid for p in group if p.state == "T"]
            if stopped:
                problems.append(f"{node}: keepalived of {rid} stopped (state T): pid(s) {stopped}")
            if rid not in wanted:
                problems.append(f"{node}: keepalived of {rid}, which the node does not host: {[p.pid for p in group]}")
            elif len(mains) != 1:
                problems.append(f"{node}: {len(mains)} keepalived instance(s) of {rid} (want 1): {[p.pid for p in mains]}")
            else:
                children = [p for p in group if p.ppid == mains[0].pid]
                if len(children) != 1:
                    problems.append(f"{node}: keepalived {mains[0].pid} of {rid} has {len(children)} VRRP child(ren)")
        for p in procs:
            if p.pid == init or os.path.basename(p.argv[0]) == "keepalived":
                continue
            if p.text.startswith("sshd: ") and "[listener]" in p.text:
                continue
            if agent is not None and under(p, agent.pid):
                continue  # the lab's L3 agent and what it runs (state-change monitors, ...)
            if "chaos-deadman" in p.text:
                problems.append(f"{node}: a dead-man timer still runs: pid {p.pid}: {p.text[:160]}")
            elif grace_processes and p.text.startswith("sshd: "):
                continue  # an SSH session of the inspection's own time (none is ours) still closing
            else:
                problems.append(f"{node}: a process left by an SSH session: pid {p.pid} ({p.state}): {p.text[:160]}")
        return problems

    def fabric_leftovers(self, spec: LabSpec) -> list[str]:
        """Ports of the lab's switch (the fabric namespace) left shut: a management network cut
        for a test and never restored leaves a node that no run can reach."""
        out = subprocess.run(["ip", "-n", spec.fabric_netns, "-o", "link", "show"], capture_output=True, text=True,
                             timeout=30).stdout
        problems = []
        for line in out.splitlines():
            name = line.split(":", 2)[1].strip().split("@")[0] if line.count(":") >= 2 else ""
            flags = line.split("<", 1)[1].split(">", 1)[0].split(",") if "<" in line else []
            if name.startswith("mgmt-") and "UP" not in flags:
                problems.append(f"fabric: management port {name} is down")
        return problems

    def api_leftovers(self, spec: LabSpec) -> list[str]:
        try:
            state = json.loads((self.dir / "neutron_api.json").read_text())
        except FileNotFoundError:
            return []
        names = {n.agent_id: n.name for n in spec.nodes}
        return [
            f"L3 agent of {names.get(aid, aid)} disabled in the lab API (admin_state_up false)"
            for aid, agent in sorted(state.get("agents", {}).items())
            if agent.get("admin_state_up") is False
        ]

    def placement_leftovers(self, spec: LabSpec, placement: dict[str, list[str]]) -> list[str]:
        now = placement_of(spec)
        return [
            f"router {rid} hosted on {now.get(rid)} (was {nodes})"
            for rid, nodes in sorted(placement.items()) if now.get(rid) != nodes
        ]

    def leftovers(self, placement: dict[str, list[str]] | None = None, *, grace_processes: bool = False) -> list[str]:
        spec = self.spec()
        problems: list[str] = []
        for node in spec.nodes:
            problems += self.node_leftovers(spec, node.name, grace_processes=grace_processes)
        problems += self.fabric_leftovers(spec)
        problems += self.api_leftovers(spec)
        if placement is not None:
            problems += self.placement_leftovers(spec, placement)
        return problems

    def primaries(self) -> list[str]:
        """Routers without exactly one replica whose state file says primary."""
        from chaos.lab.manager import Lab

        lab = Lab(self.dir.parent, self.dir.name)
        spec = self.spec()
        return lab.not_ready(spec)

    def wait_clean(self, placement: dict[str, list[str]] | None, timeout: float) -> list[str]:
        """Poll until nothing is left and every router has one primary, at most ``timeout`` s;
        returns what is still wrong then (empty: clean). Bounded."""
        deadline = time.monotonic() + timeout
        while True:
            problems = self.leftovers(placement) or self.primaries()
            if not problems or time.monotonic() >= deadline:
                return problems
            time.sleep(0.5)


BOOTING = 30.0  # seconds since a node's init started during which it counts as booting


def node_age(pid: int) -> float:
    """Seconds since the process started (its start time in clock ticks since boot)."""
    try:
        start = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return uptime - start / os.sysconf("SC_CLK_TCK")


def placement_of(spec: LabSpec) -> dict[str, list[str]]:
    return {r.id: sorted(rep.node for rep in r.replicas) for r in spec.routers}


# --------------------------------------------------------------------------- a trial
@dataclass
class Trial:
    variant: str
    phase: str  # where the kill was aimed
    landed: str = ""  # where the journal says the run was when it died
    delay: float = 0.0  # seconds after the phase's trigger
    killed: bool = False
    run_rc: int | None = None
    recover_rc: int | None = None
    recover_out: str = ""
    leftovers: list[str] = field(default_factory=list)
    seconds: float = 0.0
    folder: str = ""
    sigterm: bool = False  # a SIGTERM went first (the rollback phase)
    error: str = ""  # the trial itself went wrong (the run never started, ...)
    timing: dict[str, float] = field(default_factory=dict)  # seconds: run (to the kill), recover, settle

    def describe(self) -> str:
        return (f"{self.variant} kill aimed at {self.phase} (+{self.delay:.2f}s), landed {self.landed or '-'}: "
                f"run rc {self.run_rc}, recover rc {self.recover_rc}; "
                + ("nothing left" if not self.leftovers else "LEFT: " + "; ".join(self.leftovers))
                + (f"; TRIAL ERROR: {self.error}" if self.error else ""))


IMMEDIATE = ("is down in", "iptables rule", "stopped (state T)", "dead-man", "disabled in the lab API", "powered off",
             "management port")


def immediate_kind(problem: str) -> bool:
    return any(word in problem for word in IMMEDIATE)


def journal_kinds(folder: Path | None) -> list[dict]:
    if folder is None or not (folder / "journal.jsonl").exists():
        return []
    events = []
    for line in (folder / "journal.jsonl").read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            break  # a line being written
    return events


def landed_phase(events: list[dict]) -> str:
    kinds = [e.get("kind") for e in events]
    if "run.finished" in kinds:
        return "finished"
    if "fault.undone" in kinds or "run.abort_requested" in kinds:
        return "undo"
    if "fault.injected" in kinds or "fault.inject_failed" in kinds:
        return "holding"
    if "fault.undo_recorded" in kinds:
        return "injecting"
    return "before"


def _trigger(phase: str, events: list[dict], v: Variant) -> float | None:
    """The journal time from which the kill delay counts, once the phase's trigger is written."""
    def first(kind: str) -> float | None:
        return next((e["t"] for e in events if e.get("kind") == kind), None)

    if phase == "before":
        return first("run.plan")
    if phase == "injecting":
        return first("fault.undo_recorded")
    if phase in ("holding", "rollback"):
        return first("fault.injected")
    if phase == "undo":  # the undo starts at the end of the hold (at once for a fault without one)
        t = first("fault.verified")
        return None if t is None else t + v.hold
    raise ValueError(phase)


def kill_delay(phase: str, v: Variant, rng: random.Random) -> float:
    return {
        "before": lambda: rng.uniform(0.0, 1.0),  # the warm-up is 1 s
        "injecting": lambda: rng.choice([0.0, rng.uniform(0.0, 0.15)]),
        "holding": lambda: rng.uniform(0.0, max(0.3, v.hold)),
        "undo": lambda: rng.uniform(0.0, 0.6),
        "rollback": lambda: rng.uniform(0.0, max(0.3, v.hold)),  # when the SIGTERM goes; SIGKILL follows
    }[phase]()


def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


@dataclass
class LiveRun:
    """``chaos run`` started as a user starts it, and its journal read as it grows (by the
    campaign's trials and by the tests that act on the lab at a moment of a run)."""

    proc: subprocess.Popen[str]
    reports: Path
    log_path: Path
    before: set[str]
    folder: Path | None = None

    @classmethod
    def start(cls, v: Variant, *, lab: str, reports: Path, env: dict[str, str] | None = None,
              extra: tuple[str, ...] = ()) -> LiveRun:
        """``extra``: more ``chaos run`` arguments (``--router ID``, say)."""
        reports.mkdir(parents=True, exist_ok=True)
        exp = reports / f"{v.name}.yaml"
        exp.write_text(experiment_text(v, lab))
        before = {p.name for p in reports.iterdir() if p.is_dir()}
        argv = [*CHAOS, "run", "--reports-dir", str(reports), *extra, str(exp)]
        if not v.openstack:
            argv[4:4] = ["--lab", lab]
        log_path = reports / f"{v.name}.log"
        with open(log_path, "w") as log:  # the child holds its own descriptor
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
        return cls(proc, reports, log_path, before)

    def events(self) -> list[dict]:
        if self.folder is None:
            new = [p for p in self.reports.iterdir() if p.is_dir() and p.name not in self.before]
            self.folder = new[0] if new else None
        return journal_kinds(self.folder)

    def wait_event(self, kind: str, timeout: float) -> dict | None:
        """The first journal event of ``kind``, waiting at most ``timeout`` s (None: not written,
        or the run ended without it)."""
        found: list[dict] = []

        def seen() -> bool:
            found[:] = [e for e in self.events() if e.get("kind") == kind][:1]
            return bool(found) or self.proc.poll() is not None

        wait_for(seen, timeout)
        seen()
        return found[0] if found else None

    def output(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        """Make sure the run is gone (SIGKILL if it still runs)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def run_trial(
    v: Variant, phase: str, *, lab: str, lab_dir: Path, reports: Path, rng: random.Random,
    placement: dict[str, list[str]], env: dict[str, str] | None = None, settle_timeout: float = 60.0,
    recover: bool = True, delay: float | None = None,
) -> Trial:
    """One trial: run, SIGKILL at a random moment of ``phase``, recover, look from outside.

    ``recover=False`` skips ``chaos recover`` and only looks: the check of the Inspector itself
    (a run killed while its fault holds must leave something it can see)."""
    started = time.monotonic()
    trial = Trial(variant=v.name, phase=phase, delay=kill_delay(phase, v, rng) if delay is None else delay)
    live = LiveRun.start(v, lab=lab, reports=reports, env=env)
    proc = live.proc
    try:
        deadline = time.monotonic() + 150
        kill_at: float | None = None
        while proc.poll() is None and time.monotonic() < deadline:
            events = live.events()
            if kill_at is None:
                t = _trigger(phase, events, v)
                if t is not None:
                    kill_at = t + trial.delay
            if kill_at is not None and time.time() >= kill_at:
                if phase == "rollback":  # SIGTERM starts the rollback; SIGKILL lands inside it
                    proc.send_signal(signal.SIGTERM)
                    trial.sigterm = True
                    wait_for(lambda: any(e.get("kind") in ("fault.undone", "run.finished")
                                         for e in live.events()) or proc.poll() is not None,
                             timeout=rng.uniform(0.0, 0.5))
                    if proc.poll() is None:
                        time.sleep(rng.uniform(0.0, 0.3))
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)
                    trial.killed = True
                break
            time.sleep(0.005)
        if proc.poll() is None and not trial.killed:  # never reached its trigger: stop it anyway
            os.kill(proc.pid, signal.SIGKILL)
            trial.killed = True
        trial.run_rc = proc.wait(timeout=30)
    finally:
        live.stop()
    live.events()
    folder = live.folder
    trial.timing["run"] = time.monotonic() - started
    trial.landed = landed_phase(journal_kinds(folder))
    if trial.sigterm and trial.landed in ("holding", "undo"):
        trial.landed = "rollback"  # the signal handler starts the rollback at once
    if not trial.killed and trial.run_rc not in (0, 1, 130):
        tail = live.output()[-600:]
        trial.error = f"the run ended by itself with exit code {trial.run_rc} before the kill: {tail}"
    if folder is not None:
        trial.folder = str(folder)
    if folder is not None and recover:
        rec = subprocess.run([*CHAOS, "recover", str(folder)], capture_output=True, text=True, timeout=240, env=env)
        trial.recover_rc, trial.recover_out = rec.returncode, (rec.stdout + rec.stderr).strip()
        trial.timing["recover"] = time.monotonic() - started - trial.timing["run"]
        if rec.returncode != 0:
            trial.leftovers.append(f"chaos recover exited {rec.returncode}: {trial.recover_out[-400:]}")
    inspector = Inspector(lab_dir)
    # What the recovery itself must have undone by the time it returns: no link down, no marked
    # rule, no stopped keepalived, no dead-man, no disabled agent, no node off. What the lab gets
    # back to by itself afterwards (a keepalived restarted by the recovery spawning its VRRP
    # child, a rebooted node's agent recreating its replicas, an SSH session closing, one primary
    # per router) gets ``settle_timeout``: anything still wrong then is left behind.
    immediate = [p for p in inspector.leftovers(placement, grace_processes=True) if immediate_kind(p)]
    trial.leftovers += immediate
    if not immediate:
        trial.leftovers += inspector.wait_clean(placement, settle_timeout)
    trial.seconds = time.monotonic() - started
    trial.timing["check"] = trial.seconds - sum(trial.timing.values())
    return trial
