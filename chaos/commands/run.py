"""``chaos run EXPERIMENT``, ``chaos recover RUN`` and ``chaos recover --pending``.

``chaos run`` takes its leases and records its run in the state database (``CHAOS_STATE_DIR``
or ``CHAOS_DATABASE_URL``), the one ``chaos serve`` uses, so a run from a terminal and the
operator's scheduled runs never disturb the same router or node at once.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from chaos.errors import ChaosError, ExitCode, InvalidInput, UsageError
from chaos.log import get_logger
from chaos.settings import Settings

if TYPE_CHECKING:
    from chaos.runner.execute import TargetOverrides

log = get_logger("run")


def target_overrides(args: argparse.Namespace) -> TargetOverrides | None:
    """The target flags of ``chaos run`` (None when none is given)."""
    from chaos.runner.execute import TargetOverrides

    if args.lab and (args.cloud or args.inventory):
        raise UsageError("--lab names the embedded lab; --cloud and --inventory name another target: give one of them")
    if not (args.cloud or args.inventory or args.seed is not None or args.router):
        return None
    return TargetOverrides(
        cloud=args.cloud, inventory=Path(args.inventory) if args.inventory else None, seed=args.seed,
        routers=tuple(dict.fromkeys(args.router or ())),
    )


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from chaos.runner.execute import print_verdict, run

    if args.reports_dir:
        settings = settings.model_copy(update={"reports_dir": Path(args.reports_dir)})
    if args.lab:
        settings = settings.model_copy(update={"lab_name": args.lab})
    path = Path(args.experiment)
    overrides = target_overrides(args)
    if args.dry_run:
        return run(path, settings, dry_run=True, overrides=overrides)  # touches nothing, needs no lease
    if not path.exists():
        raise InvalidInput(f"{path}: no such experiment file")
    code, run_dir = asyncio.run(run_recorded(path, settings, wait_lease=args.wait_lease, pushgateway=args.pushgateway,
                                             overrides=overrides))
    if run_dir is not None:
        print_verdict(run_dir)
        print(run_dir)
    return int(code)


async def run_recorded(
    path: Path, settings: Settings, *, wait_lease: float = 0.0, pushgateway: str | None = None,
    overrides: TargetOverrides | None = None,
) -> tuple[int, Path | None]:
    """A run from a terminal: leases through the state database (shared with any operator on
    it), the run indexed in its history, its metrics pushed when asked. A state database that
    cannot be opened stops the run before anything is injected: leases fail closed."""
    import time

    from chaos.runner.control import RunTrigger
    from chaos.runner.execute import new_run_id, run_experiment
    from chaos.state.store import RunRow, Store

    store = await Store.open(settings.state_dir, settings.database_url)
    try:
        trigger = RunTrigger(kind="cli", by=f"{getpass.getuser()}@{socket.gethostname()}")
        run_id = new_run_id(path)
        # In the history as running from the start: a run killed outright is then found by
        # `chaos recover --pending` wherever its folder is (the index below replaces this row).
        await store.upsert_run(RunRow(
            run_id=run_id, experiment=path.stem, trigger="cli", triggered_by=trigger.by, started_at=time.time(),
            status="running", report_dir=str((settings.reports_dir / run_id).resolve())))
        code, run_dir = await run_experiment(path, settings, run_id=run_id, trigger=trigger, leases=store.leases,
                                             lease_wait=wait_lease, overrides=overrides)
        row = None
        if run_dir is not None:
            try:
                row = await store.index_folder(run_dir)
            except ChaosError as exc:  # the run folder is the record; `chaos serve --reindex` redoes this
                log.warning("the run was not indexed in the history", error=exc.message)
    finally:
        await store.close()
    if pushgateway and row is not None and run_dir is not None:
        from chaos.operator.metrics import push_run

        await push_run(pushgateway, row, run_dir)
    return code, run_dir


def cmd_recover(args: argparse.Namespace, settings: Settings) -> int:
    from chaos.runner.recover import run_folder

    if args.reports_dir:
        settings = settings.model_copy(update={"reports_dir": Path(args.reports_dir)})
    if args.pending == (args.run is not None):
        raise UsageError("give either a run (id or folder) or --pending, not both and not neither")
    if args.pending:
        return asyncio.run(recover_pending(settings))
    folder = run_folder(settings.reports_dir, args.run)
    done, released = asyncio.run(recover_and_release(folder, settings))
    if not done:
        print(f"{folder}: nothing left injected")
    for line in done:
        print(line)
    if released:
        print(f"released {released} lease(s) the run still held")
    return ExitCode.OK


LIVE_QUIET_S = 30.0  # a run without run.finished whose journal moved this recently may still run


async def recover_pending(settings: Settings) -> int:
    """List every run with undo steps pending, under the reports folder or wherever the run history
    (the state database) says a run that may hold faults wrote its folder, and undo them.

    A run still going holds its leases (renewed every few seconds) and writes its journal: it
    is listed and left alone, never undone under its feet; ``chaos recover RUN`` names one
    explicitly. Every run is tried even if one fails; the exit code is 9 if any fault is still
    in place at the end (each is named), 0 otherwise."""
    import time

    from chaos.errors import FaultsLeftInjected
    from chaos.runner.recover import pending_runs
    from chaos.state.store import Store

    live: set[str] = set()
    elsewhere: list[Path] = []
    try:
        store = await Store.open(settings.state_dir, settings.database_url)
        try:
            live = {str(row["holder"]) for row in await store.leases.held()}
            elsewhere = await store.folders_to_recover()
        finally:
            await store.close()
    except ChaosError as exc:
        log.warning("run history and leases not readable: only the reports folder is searched, and runs are judged "
                    "live by their journal alone", error=exc.message)
    pending, unreadable = pending_runs(settings.reports_dir, also=elsewhere)
    for folder, why in unreadable:
        print(f"{folder.name}: journal unreadable, not recovered: {why}")
    if not pending:
        print(f"{settings.reports_dir} and the run history: no run has undo steps pending")
        return ExitCode.OK if not unreadable else ExitCode.INVALID_INPUT
    failed: list[str] = []
    recovered = 0
    for folder, actions in pending:
        print(f"{folder.name}: {len(actions)} action(s) pending: {', '.join(actions)}")
        journal = folder / "journal.jsonl"
        quiet = time.time() - journal.stat().st_mtime
        if folder.name in live or (quiet < LIVE_QUIET_S and not _finished(journal)):
            print(f"  left alone: the run may still be going (leases held, or journal written {quiet:.0f}s ago); "
                  f"`chaos recover {folder.name}` undoes it anyway")
            failed += [f"{folder.name}/{a} (run still going?)" for a in actions]
            continue
        try:
            done, released = await recover_and_release(folder, settings)
        except ChaosError as exc:
            print(f"  FAILED: {exc.message}")
            failed += [f"{folder.name}/{a}" for a in actions]
            continue
        recovered += 1
        for line in done:
            print(f"  {line}")
        if released:
            print(f"  released {released} lease(s) the run still held")
    print(f"{recovered} of {len(pending)} run(s) recovered")
    if failed:
        raise FaultsLeftInjected(
            f"{len(failed)} action(s) may still be in place: {', '.join(failed)}",
            actions=failed, hint="run `chaos recover --pending` again once the nodes answer, or `chaos recover RUN` for one run",
        )
    return ExitCode.OK


def _finished(journal: Path) -> bool:
    """Whether the journal's last complete line is run.finished (cheap: the file's tail)."""
    with journal.open("rb") as f:
        f.seek(max(0, journal.stat().st_size - 4096))
        return b'"run.finished"' in f.read()


async def recover_and_release(folder: Path, settings: Settings) -> tuple[list[str], int]:
    """Undo what the run left injected, then free the leases it held: a killed run's leases
    would otherwise keep its routers and nodes from other runs until they lapse. A state
    database that cannot be opened leaves them to lapse (the undo is what matters)."""
    from chaos.runner.recover import JournalDamaged, recover

    damage: JournalDamaged | None = None
    try:
        done = await recover(folder)
    except JournalDamaged as exc:  # the readable part was undone: say so, free the leases, then fail
        done, damage = exc.done, exc
        for line in done:
            print(line)
    if damage is not None:
        await _release(folder, settings)
        raise damage
    if done:  # the reports said what was left injected: they now say it was undone
        from chaos.report.render import render_reports

        try:
            await asyncio.to_thread(render_reports, folder)
        except Exception as exc:  # the journal is the record; `chaos report RUN` redoes the reports
            log.warning("reports not re-rendered after the recovery; `chaos report` can", error=str(exc))
    return done, await _release(folder, settings)


async def _release(folder: Path, settings: Settings) -> int:
    """Free the leases the run held (0 when the state database cannot be opened)."""
    from chaos.state.store import Store

    try:
        store = await Store.open(settings.state_dir, settings.database_url)
    except ChaosError as exc:
        log.warning("leases not released; they lapse by themselves", error=exc.message)
        return 0
    try:
        return await store.leases.release(folder.name)
    finally:
        await store.close()


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("run", help="run an experiment: inject, measure, roll back, report")
    p.add_argument("experiment", help="experiment file (YAML)")
    p.add_argument("--dry-run", action="store_true", help="print the plan with the exact commands; touch nothing")
    p.add_argument("--reports-dir", help="where the run folder goes (default: reports/)")
    p.add_argument("--lab", help="lab name when the experiment targets the lab (default: CHAOS_LAB_NAME or chaoslab)")
    target = p.add_argument_group(
        "target overrides", "change the experiment's target for this run (journaled in run.started, shown by --dry-run)"
    )
    target.add_argument("--cloud", metavar="NAME",
                        help="discover the routers of this clouds.yaml cloud (source: openstack); needs an admin token")
    target.add_argument("--inventory", metavar="FILE",
                        help="an inventory file: with a cloud, how to reach its hosts and which ports to probe; "
                        "otherwise the routers and nodes themselves (source: inventory)")
    target.add_argument("--seed", type=int, metavar="N", help="seed of the random choice of routers and replicas")
    target.add_argument("--router", action="append", metavar="NAME_OR_ID",
                        help="disturb exactly this router (its exact name or id; repeat for more); "
                        "replaces target.routers and target.mode")
    p.add_argument("--wait-lease", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long for another run's leases on the same routers or nodes (default: fail at once, exit 7)")
    p.add_argument("--pushgateway", metavar="URL", help="push the run's metrics to this Prometheus Pushgateway")
    p.set_defaults(handler=cmd_run)
    r = sub.add_parser("recover", help="undo whatever an interrupted or killed run left injected")
    r.add_argument("run", nargs="?", help="run id (folder under reports/) or path of the run folder")
    r.add_argument("--pending", action="store_true",
                   help="list every run with undo steps pending (under the reports folder, and wherever the run "
                   "history says a killed or left-injected run wrote its folder) and undo them "
                   "(runs still going are left alone)")
    r.add_argument("--reports-dir", help="where run ids are looked up (default: CHAOS_REPORTS_DIR or reports/)")
    r.set_defaults(handler=cmd_recover)
