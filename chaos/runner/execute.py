"""``chaos run``: from an experiment file to a run folder with its journal and summary.

The steps read each other's output in one direction only: the experiment is validated, the
target resolved into a topology, the ground truth observed, the plan made inside the
safeguards (and printed and stopped there with ``--dry-run``), then the scheduler runs it
while the probes record, and the summary is computed from the journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict

from chaos import __version__
from chaos.analysis.hypothesis import check_hypothesis
from chaos.analysis.summary import judge, left_injected, summarize, write_summary
from chaos.errors import ChaosError, ExitCode, InvalidInput, Prerequisites, UsageError, without_rollback_claim
from chaos.experiment.load import load_experiment
from chaos.experiment.registry import registry
from chaos.experiment.schema import Experiment, RouterSelector, combination_problems, format_loc
from chaos.faults.base import Fault, FaultContext
from chaos.model import Router, Topology
from chaos.probes.conntrack import ConntrackProbe
from chaos.probes.health import RunHealth
from chaos.probes.primary import PrimaryObserver
from chaos.probes.base import ProbeRun
from chaos.probes.replicas import observe
from chaos.report.render import render_reports
from chaos.runner.control import AbortSignal, RunTrigger
from chaos.journal import Journal, read_journal
from chaos.runner.preflight import failures, preflight, render
from chaos.runner.leases import LeaseConflict, LeaseProvider, claims_for
from chaos.runner.plan import (
    Plan,
    PlannedAction,
    affected_by_node,
    build_waves,
    check_replica_count,
    choose_replica,
    describe,
    holders_by_router,
    select_routers,
)
from chaos.runner.scheduler import Progress, Scheduler
from chaos.settings import Settings
from chaos.targets.lab import lab_topology
from chaos.transport.ssh import SshPool

log = structlog.get_logger("run")


def resolve_topology(experiment: Experiment, settings: Settings) -> Topology:
    target = experiment.target
    if target.source == "lab":
        return lab_topology(settings.lab_root, target.lab or settings.lab_name)
    if target.source == "inventory":
        from chaos.targets.inventory import load_inventory

        assert target.inventory is not None
        return load_inventory(target.inventory)
    from chaos.targets.openstack import discover_topology  # the OpenStack issue

    return discover_topology(target.cloud, inventory=target.inventory, selector=target.routers)


class TargetOverrides(BaseModel):
    """What ``chaos run``'s flags change in an experiment's target, so one file serves several
    clouds (``--cloud``, ``--inventory``), a reproducible or a new sample (``--seed``) and a blast
    radius named on the command line (``--router``: exactly these routers, each by its name or
    id). The changes are journaled (``run.started``'s ``overrides``) and printed by ``--dry-run``:
    the run folder's experiment.yaml is the file as written, so the record must say what differed.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    cloud: str | None = None
    inventory: Path | None = None
    seed: int | None = None
    routers: tuple[str, ...] = ()

    def apply(self, experiment: Experiment) -> tuple[Experiment, dict[str, dict[str, Any]]]:
        """The experiment with its target overridden, and ``{"target.<key>": {"from", "to"}}``
        for every key that changed. Flags that make the experiment invalid are a ``UsageError``."""
        target = experiment.target
        update: dict[str, Any] = {}
        if self.cloud is not None:
            update.update(source="openstack", cloud=self.cloud, lab=None)
        if self.inventory is not None:
            if not self.inventory.is_file():
                raise InvalidInput(f"--inventory {self.inventory}: no such file")
            update["inventory"] = self.inventory.absolute()
            if update.get("source", target.source) != "openstack":
                update.update(source="inventory", lab=None, cloud=None)
        if self.seed is not None:
            update["seed"] = self.seed
        if self.routers:
            update.update(routers=RouterSelector(one_of=self.routers), mode="all", value=None)
        if not update:
            return experiment, {}
        new = target.model_copy(update=update)
        problems = combination_problems(
            target=new, fault=experiment.fault, safeguards=experiment.safeguards, probes=experiment.probes,
            hypothesis=experiment.steady_state_hypothesis,
        )
        if problems:
            raise UsageError(
                "the command line's target does not fit the experiment: "
                + "; ".join(f"{format_loc(loc)}: {message}" for loc, message in problems),
                hint="docs/experiment-format.md#target says which keys go with which source",
            )
        changed = {
            f"target.{key}": {"from": _plain_value(getattr(target, key)), "to": _plain_value(getattr(new, key))}
            for key in update
            if getattr(target, key) != getattr(new, key)
        }
        return experiment.model_copy(update={"target": new}), changed


def _plain_value(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_none=True)
    return str(value) if isinstance(value, Path) else value


def describe_overrides(changed: dict[str, dict[str, Any]]) -> list[str]:
    return [f"  {key}: {info['from']!r} -> {info['to']!r}" for key, info in changed.items()]


def check_named_routers(topology: Topology, names: tuple[str, ...]) -> None:
    """``--router`` names the blast radius exactly: every name or id must be one HA router of the
    target. Neutron does not keep router names unique, so a name shared by two is refused (pass
    the id) rather than widening the blast radius."""
    for wanted in names:
        found = [r for r in topology.routers if wanted in (r.id, r.name)]
        if not found:
            raise InvalidInput(
                f"--router {wanted}: no HA router of {topology.source} has that name or id",
                hint="`chaos discover` (or `chaos lab status`) lists the routers",
            )
        if len(found) > 1:
            raise InvalidInput(
                f"--router {wanted}: {len(found)} routers of {topology.source} have that name "
                f"({', '.join(r.id for r in found)}); pass the id of the one to disturb",
            )


def _backend(topology: Topology) -> str | None:
    """What ran the routers, as the target describes it: e.g. "neutron (Neutron 21.0.0 ...)"."""
    if topology.backend is None and topology.neutron_version is None:
        return None
    return f"{topology.backend or '?'} (Neutron {topology.neutron_version or 'unknown'})"


def new_run_id(experiment_path: Path) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{experiment_path.stem}-{secrets.token_hex(3)}"


async def make_plan(
    experiment: Experiment, topology: Topology, ssh: SshPool, ctx: FaultContext
) -> tuple[Plan, dict[str, Fault], dict[str, list[str]]]:
    t = experiment.target
    routers = select_routers(topology, t.routers, t.mode, t.value, t.seed)
    observations = await observe(ssh, topology, routers)
    holders = holders_by_router(observations)
    rng = random.Random(t.seed)
    fault_spec = experiment.fault
    cls = fault_spec.kind()
    actions: list[PlannedAction] = []
    faults: dict[str, Fault] = {}

    def add(node: str, router: Router | None, role: str, affected: list[str]) -> None:
        action_id = f"a{len(actions) + 1}"
        fault = cls(
            ctx, router=router, node=topology.node(node), params=fault_spec.params,
            duration=fault_spec.duration, action_id=action_id,
        )
        faults[action_id] = fault
        actions.append(
            PlannedAction(
                action_id=action_id, fault=fault_spec.type, scope=cls.scope, node=node,
                router_id=router.id if router else None, router_name=router.name if router else None,
                replica_role=role, affected_routers=affected,
                inject=fault.inject_commands(), undo=[s.model_dump() for s in fault.undo_steps()],
            )
        )

    if cls.scope == "node":
        nodes: list[str] = []
        explicit = cls.chosen_node(fault_spec.params)
        if explicit:
            nodes = [explicit]
        else:
            for router in routers:
                check_replica_count(router)
                node = choose_replica(router, holders.get(router.id, []), fault_spec.replica, rng).node
                if node not in nodes:
                    nodes.append(node)
        for node in nodes:
            add(node, None, fault_spec.replica, affected_by_node(topology, node))
    else:
        for router in routers:
            check_replica_count(router)
            replica = choose_replica(router, holders.get(router.id, []), fault_spec.replica, rng)
            add(replica.node, router, fault_spec.replica, [router.id])
    plan = Plan(
        fault=fault_spec.type,
        routers=[r.id for r in routers],
        actions=actions,
        waves=build_waves(actions, topology, experiment.safeguards),
    )
    return plan, faults, holders


def build_probes(experiment: Experiment, topology: Topology, plan: Plan, journal: Journal, ssh: SshPool) -> list[Any]:
    """Every probe the experiment switches on, built by its kind (``ProbeKind.build``) over the
    routers the plan disturbs, in the registry's order."""
    ids = set(plan.routers) | {rid for a in plan.actions for rid in a.affected_routers}
    probes = experiment.probes
    enabled = {name: probes.settings(name) for name in probes.enabled()}
    run = ProbeRun(topology=topology, journal=journal, ssh=ssh,
                   routers=[r for r in topology.routers if r.id in ids], enabled=enabled)  # type: ignore[arg-type]
    kinds = registry().probes
    return [runner for name, settings in enabled.items() for runner in kinds[name].build(settings, run)]


def _progress_printer(
    probes: list[Any], max_run_duration: float, sink: Callable[[dict[str, Any]], None] | None = None
) -> Callable[[Progress], None]:
    """One status line on a terminal (redrawn twice a second); a structured log line every
    5 s otherwise, so logs stay machine-friendly. With ``sink`` (the operator's live view) the
    same fields go there instead, twice a second."""
    interactive = sys.stderr.isatty() and sink is None
    started = time.monotonic()
    last = [0.0]

    def show(p: Progress) -> None:
        now = time.monotonic()
        if now - last[0] < (0.5 if interactive or sink is not None else 5.0):
            return
        last[0] = now
        dark = sorted({addr for probe in probes if hasattr(probe, "stats") for addr in probe.stats().failing})
        fields = {
            "injected": f"{p.injected}/{p.total}", "undone": p.undone, "recovered": p.recovered,
            "without_primary": len(p.without_primary), "split_brain": len(p.split_brain),
            "failing_now": len(dark), "time_left_s": round(max(0.0, max_run_duration - (now - started))),
        }
        if sink is not None:
            sink(fields)
        elif interactive:
            line = "  ".join(f"{k.replace('_', ' ')} {v}" for k, v in fields.items())
            print("\r" + line[:160].ljust(120), end="", file=sys.stderr, flush=True)
        else:
            log.info("progress", **fields)

    return show


async def check_before_injecting(ssh: SshPool, topology: Topology, experiment: Experiment, plan: Plan,
                                 journal: Journal) -> None:
    """chaos doctor's checks on the nodes the plan acts on, before anything is injected: a fault
    whose undo could not run is refused here (exit 6) rather than left behind. Journaled as
    ``run.preflight``."""
    nodes = sorted({a.node for a in plan.actions})
    ids = set(plan.routers) | {rid for a in plan.actions for rid in a.affected_routers}
    routers = [r for r in topology.routers if r.id in ids]
    needed = {"ip"} | set(experiment.fault.kind().programs)
    checks = await preflight(ssh, topology, routers, nodes=nodes, needed=needed)
    blocking = failures(checks)
    journal.write("run.preflight", ok=not blocking, checks=[c.model_dump() for c in checks if c.status != "ok"])
    if blocking:
        raise Prerequisites(
            f"{len(blocking)} problem(s) on the target nodes; nothing was injected:\n" + render(blocking),
            hint="chaos doctor checks a target the same way",
        )


async def run_experiment(
    path: Path,
    settings: Settings,
    *,
    dry_run: bool = False,
    run_id: str | None = None,
    trigger: RunTrigger | None = None,
    abort: AbortSignal | None = None,
    leases: LeaseProvider | None = None,
    lease_wait: float = 0.0,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    handle_signals: bool = True,
    loaded: tuple[Experiment, str] | None = None,
    overrides: TargetOverrides | None = None,
) -> tuple[int, Path | None]:
    """Run one experiment; returns the exit code and the run folder (None for a dry run).

    ``chaos run`` and ``chaos serve`` both call this. The operator passes the run id it has
    already announced, the trigger (journaled in ``run.started``), an abort signal, its lease
    provider (taken after planning, before anything is injected; released after the rollback),
    a sink for live progress, ``handle_signals=False`` (several runs share its process, and
    SIGTERM is the operator's to handle: it aborts every run through its signal), and ``loaded``:
    the experiment and its text as last validated, which it keeps running while the file on
    disk is being edited into something invalid. ``chaos run`` passes the ``overrides`` of its
    target flags.
    """
    experiment = loaded[0] if loaded is not None else load_experiment(path)
    changed: dict[str, dict[str, Any]] = {}
    if overrides is not None:
        experiment, changed = overrides.apply(experiment)
    topology = await asyncio.to_thread(resolve_topology, experiment, settings)  # OpenStack discovery blocks
    if experiment.target.routers.one_of:
        check_named_routers(topology, experiment.target.routers.one_of)
    run_id = run_id or new_run_id(path)
    run_dir = settings.reports_dir / run_id
    if dry_run:
        async with SshPool(topology.nodes) as ssh:
            ctx = FaultContext(topology=topology, ssh=ssh, run_id=run_id)
            plan, faults, holders = await make_plan(experiment, topology, ssh, ctx)
        deadlines = {aid: d for aid, f in faults.items() if (d := f.deadman_deadline()) is not None}
        if changed:
            print("target overridden on the command line:\n" + "\n".join(describe_overrides(changed)))
        print(f"target {topology.source}: {experiment.target.describe()}")
        print(describe(plan, topology, deadlines))
        print(describe_reach(topology, plan))
        return ExitCode.OK, None
    run_dir.mkdir(parents=True, exist_ok=False)
    (run_dir / "topology.json").write_text(topology.model_dump_json(indent=2))
    (run_dir / "experiment.yaml").write_text(loaded[1] if loaded is not None else path.read_text())
    journal = Journal(run_dir / "journal.jsonl", tool_version=__version__)
    tolerances = {name: tol.model_dump(exclude_none=True) for name, tol in experiment.steady_state_hypothesis.tolerances.items()}
    journal.write(
        "run.started", run_id=run_id, experiment=str(path), title=experiment.title, tool_version=__version__,
        target=topology.source, backend=_backend(topology), safeguards=experiment.safeguards.model_dump(), tolerances=tolerances,
        hypothesis=experiment.steady_state_hypothesis.title,
        **({"trigger": trigger.model_dump()} if trigger is not None else {}),
        **({"overrides": changed} if changed else {}),
    )
    verdict, reason, code = "error", "", ExitCode.INFRASTRUCTURE
    main = asyncio.current_task()
    assert main is not None

    def on_abort() -> None:
        assert abort is not None
        journal.write("run.abort_requested", by=abort.by, reason=abort.reason, interrupt=abort.interrupt)
        log.warning("abort requested: rolling back", run_id=run_id, by=abort.by)
        main.cancel()

    unsubscribe = abort.subscribe(on_abort) if abort is not None else (lambda: None)
    try:
        async with SshPool(topology.nodes) as ssh:
            ctx = FaultContext(topology=topology, ssh=ssh, run_id=run_id)
            plan, faults, _ = await make_plan(experiment, topology, ssh, ctx)
            # The hypothesis applies to every router the plan disturbs: a node fault chosen for one
            # router's primary hits every router with a replica on that node.
            disturbed = sorted(set(plan.routers) | {rid for a in plan.actions for rid in a.affected_routers})
            journal.write("run.plan", routers=disturbed, targets=plan.routers, waves=plan.waves,
                          actions=[a.model_dump() for a in plan.actions])
            log.info("plan", routers=len(plan.routers), actions=len(plan.actions), waves=len(plan.waves))
            await check_before_injecting(ssh, topology, experiment, plan, journal)

            def steady(phase: str) -> tuple[bool, str]:
                result = check_hypothesis(read_journal(journal.path), tolerances, phase)  # type: ignore[arg-type]
                for r in result.results:
                    journal.write("hypothesis.check", **r.journal_fields())
                return result.ok, "; ".join(r.describe() for r in result.failed)

            built = build_probes(experiment, topology, plan, journal, ssh)
            # The observer feeds the runtime safeguards and the conntrack snapshots are taken
            # around the faults: the scheduler drives those two itself; the rest just run.
            observer = next((p for p in built if isinstance(p, PrimaryObserver)), None)
            conntrack = next((p for p in built if isinstance(p, ConntrackProbe)), None)
            probes = [p for p in built if p is not observer and p is not conntrack]
            # The run's own health beside the figures, so a saturated measurement is never
            # reported as the cloud's deviation.
            health = RunHealth(journal, senders=[p for p in probes if hasattr(p, "send_counts")],
                               lag_sources=[observer] if observer is not None else [],
                               lab_on_host=experiment.target.source == "lab")
            scheduler = Scheduler(
                topology=topology, plan=plan, faults=faults, ctx=ctx, journal=journal,
                safeguards=experiment.safeguards,
                warmup=experiment.probes.warmup, settle=experiment.probes.settle,
                observe_interval=0.5,
                probes=[*(probe.run for probe in probes), health.run],
                steady_state_check=steady,
                on_progress=_progress_printer(probes, experiment.safeguards.max_run_duration, on_progress),
                observer=observer,
                conntrack=conntrack,
                ready=[p.ready for p in probes if isinstance(getattr(p, "ready", None), asyncio.Event)],
                handle_signals=handle_signals,
            )
            hold = leases.hold(run_id, claims_for(plan, topology), experiment=path.stem, wait=lease_wait) \
                if leases is not None else contextlib.nullcontext()
            async with hold:
                await scheduler.run()
        verdict = "held"
    except asyncio.CancelledError:
        if abort is None or not abort.requested:
            raise
        main.uncancel()  # the abort's cancellation is consumed here: later timeouts must work
        error = abort.error()
        verdict = "interrupted" if abort.interrupt else "aborted"
        reason, code = str(error), error.exit_code
        log.error("run stopped", verdict=verdict, reason=reason)
    except LeaseConflict as exc:
        verdict, reason, code = "skipped", exc.message, exc.exit_code
        log.warning("run skipped", reason=reason)
    except ChaosError as exc:
        verdict = verdict_for(exc.exit_code)
        reason, code = str(exc), exc.exit_code
        log.error("run stopped", verdict=verdict, reason=reason)
    except Exception as exc:  # a bug: rollback has run (scheduler); still close the journal honestly
        verdict, reason, code = "error", f"internal error: {type(exc).__name__}: {exc}", ExitCode.INTERNAL
        log.exception("run failed", reason=reason)
    finally:
        unsubscribe()
        if sys.stderr.isatty() and on_progress is None:
            print(file=sys.stderr)
    left = left_injected(read_journal(journal.path), run_id)
    if left and verdict != "left-injected":
        # Whatever ended the run (an abort through the API, a bug), the journal is the judge: an
        # undo recorded and never completed means a fault may still be in place, and the run
        # must not end with a verdict or a reason that says everything was rolled back.
        listed = ", ".join(f"{x.action_id} ({x.fault} on {x.node})" for x in left)
        reason = (f"{len(left)} fault(s) could not be undone and may still be in place: {listed}; "
                  f"`chaos recover {run_id}` undoes them" + (f"; the run had stopped: {without_rollback_claim(reason)}" if reason else ""))
        verdict, code = "left-injected", ExitCode.LEFT_INJECTED
        log.error("run stopped", verdict=verdict, reason=reason)
    if verdict == "held":
        verdict = judge(summarize(read_journal(journal.path), tolerances).tolerances)
        code = {"deviated": ExitCode.DEVIATED, "inconclusive": ExitCode.INCONCLUSIVE}.get(verdict, ExitCode.OK)
    journal.write("run.finished", verdict=verdict, exit_code=int(code), reason=reason)
    journal.close()
    # CPU-bound analysis off the event loop: an operator's other runs and its API keep going
    await asyncio.to_thread(_summarize_and_render, run_dir, journal.path, tolerances)
    return code, run_dir


def describe_reach(topology: Topology, plan: Plan) -> str:
    """How each node of the plan is reached over SSH, as the inventory and ~/.ssh/config resolved
    it: what a user checks before the first real run on a new cloud."""
    nodes = sorted({a.node for a in plan.actions} | {s["node"] for a in plan.actions for s in a.undo if s.get("node")})
    lines = ["nodes, reached as:"]
    for name in nodes:
        try:
            n = topology.node(name)
        except KeyError:
            continue
        via = f" via {n.jump_host}" if n.jump_host else ""
        via += f" (socket in netns {n.netns})" if n.netns else ""
        extra = f"; key {n.key_file}" if n.key_file else "; keys of the agent and ~/.ssh"
        extra += f"; known_hosts {n.known_hosts or '~/.ssh/known_hosts'}"
        extra += f"; {n.profile}" + (" with sudo -n" if n.sudo else "")
        extra += f"; from {n.ssh_config}" if n.ssh_config else ""
        lines.append(f"  {name}: {n.user}@{n.address}:{n.port}{via}{extra}")
    return "\n".join(lines)


def verdict_for(code: int) -> str:
    """The verdict a run that ended with a ChaosError of this exit code gets."""
    return {
        ExitCode.ABORTED: "aborted",
        ExitCode.INTERRUPTED: "interrupted",
        ExitCode.STEADY_STATE_BROKEN: "steady-state-broken",
        ExitCode.INVALID_INPUT: "invalid",
        ExitCode.LEFT_INJECTED: "left-injected",
    }.get(code, "error")


def _summarize_and_render(run_dir: Path, journal_path: Path, tolerances: dict[str, Any]) -> None:
    summary = summarize(read_journal(journal_path), tolerances)
    write_summary(summary, run_dir / "summary.json")
    try:
        render_reports(run_dir)
    except Exception as exc:  # the journal and summary are the record; a report can be redone
        log.error("report rendering failed; `chaos report` can redo it", error=str(exc))


def print_verdict(run_dir: Path) -> None:
    """The verdict and each tolerance, for a person at a terminal (from the run's summary)."""
    from chaos.analysis.summary import load_summary

    summary = load_summary(run_dir / "summary.json")
    reason = summary.run.reason or ""
    print(f"verdict: {summary.verdict}" + (f" ({reason})" if reason else ""))
    if summary.left_injected:
        print(f"STILL INJECTED: {len(summary.left_injected)} fault(s) may still be in place; "
              f"`{summary.left_injected[0].command}` undoes them:")
        for x in summary.left_injected:
            print(f"  {x.action_id}: {x.fault} on {x.node}" + (f" (router {x.router_id})" if x.router_id else "")
                  + (f": {x.detail}" if x.detail else "") + (f"; {x.deadman()}" if x.deadman_at is not None else ""))
    for tol in summary.tolerances:
        mark = "skip" if tol.skipped else "ok  " if tol.ok else "FAIL"
        print(f"  {mark} {tol.describe() if hasattr(tol, 'describe') else tol}")


def run(path: Path, settings: Settings, *, dry_run: bool = False, overrides: TargetOverrides | None = None) -> int:
    """``chaos run`` without the state database (kept for callers that want the bare engine)."""
    if not path.exists():
        raise InvalidInput(f"{path}: no such experiment file")
    code, run_dir = asyncio.run(run_experiment(path, settings, dry_run=dry_run, overrides=overrides))
    if run_dir is not None:
        print_verdict(run_dir)
        print(run_dir)
    return int(code)
