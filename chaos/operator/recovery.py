"""After a crash: finish the runs the last operator on this state directory left mid-fault.

Those are the runs its history still shows as running, and any run folder under its runs
directory whose journal says it was started by this operator and never says it finished. Each
is undone from its journal (``chaos.runner.recover``: every action whose undo was recorded and
not done is replayed), its journal is closed with ``run.finished`` (``interrupted``, by
``recover``), its reports are rendered and its leases dropped. The operator calls this before it
schedules anything, so nothing new runs on top of a fault a dead process left in place.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from chaos.errors import ChaosError, ExitCode
from chaos.log import get_logger
from chaos.report.render import render_reports
from chaos.journal import Journal, JournalError, read_journal
from chaos.runner.recover import recover
from chaos.state.store import Store

log = get_logger("recovery")


def _scan(journal: Path, operator: str) -> tuple[bool, bool]:
    """(started by ``operator``, finished) as far as the journal can be read: a damaged line
    ends the reading with a warning instead of stopping the operator's start."""
    ours = finished = False
    try:
        for event in read_journal(journal):
            if event.get("kind") == "run.started":
                trigger = event.get("trigger")
                ours = isinstance(trigger, dict) and trigger.get("operator") == operator
            elif event.get("kind") == "run.finished":
                finished = True
    except JournalError as exc:
        log.warning("a run's journal is damaged; its readable part is used", journal=str(journal), error=exc.message)
    return ours, finished


def unfinished_folders(runs_dir: Path, operator: str) -> list[Path]:
    """Run folders of ``operator`` whose journal has no ``run.finished``."""
    found = []
    if not runs_dir.is_dir():
        return found
    for folder in sorted(runs_dir.iterdir()):
        journal = folder / "journal.jsonl"
        if not journal.is_file():
            continue
        ours, finished = _scan(journal, operator)
        if ours and not finished:
            found.append(folder)
    return found


async def recover_unfinished(store: Store, runs_dir: Path, operator: str) -> list[str]:
    """Recover every unfinished run of ``operator``; returns their run ids."""
    folders = {f.resolve() for f in unfinished_folders(runs_dir, operator)}
    for row in await store.unfinished_runs(operator):
        folder = Path(row.report_dir)
        if (folder / "journal.jsonl").is_file():
            folders.add(folder.resolve())
        else:  # it died before its run folder existed: nothing was injected
            await store.upsert_run(row.model_copy(update={"status": "finished", "verdict": "interrupted",
                                                          "exit_code": int(ExitCode.INTERRUPTED),
                                                          "reason": "the operator stopped before the run began"}))
    recovered = []
    for folder in sorted(folders):
        if _scan(folder / "journal.jsonl", operator)[1]:
            await store.index_folder(folder)  # finished after all; the index had not heard of it
            continue
        log.warning("recovering a run the operator left unfinished", run=folder.name)
        try:
            lines = await recover(folder)
        except ChaosError as exc:
            log.error("recovery failed: the run stays unfinished and is retried at the next start",
                      run=folder.name, error=exc.message)
            continue
        undone = "; ".join(lines) if lines else "nothing was left injected"
        with Journal(folder / "journal.jsonl") as journal:
            journal.write("run.finished", verdict="interrupted", exit_code=int(ExitCode.INTERRUPTED),
                          reason=f"the operator stopped mid-run (crash or kill); recovered at its next start: {undone}",
                          by="recover")
        await asyncio.to_thread(render_reports, folder)
        row = await store.index_folder(folder)
        await store.leases.release(row.run_id)
        recovered.append(row.run_id)
        log.info("run recovered", run=folder.name, undone=len(lines))
    return recovered
