"""Finish what an interrupted or killed run left injected, from its journal alone.

Every undo is journaled before its injection (``fault.undo_recorded``), and the run folder
keeps the topology the run used (``topology.json``), so a run killed with ``kill -9`` can be
recovered later by another process: every action recorded and not undone is undone by
replaying its steps (idempotent shell commands over SSH, or a BMC power-on).
"""

from __future__ import annotations

from pathlib import Path

import structlog

from chaos.errors import Conflict, FaultsLeftInjected, InvalidInput
from chaos.faults.base import FaultContext, UndoStep, run_undo_steps
from chaos.model import Topology
from chaos.journal import Journal, JournalError, read_events
from chaos.journal.events import FaultUndone, FaultUndoRecorded
from chaos.transport.ssh import SshPool

log = structlog.get_logger("recover")


def pending_undos(journal_path: Path) -> dict[str, list[UndoStep]]:
    """Actions whose undo was recorded and never completed, with their steps (read through the
    journal's models: a record that does not fit them is an error naming its line)."""
    recorded: dict[str, list[UndoStep]] = {}
    done: set[str] = set()
    try:
        for event in read_events(journal_path):
            if isinstance(event, FaultUndoRecorded):
                recorded[event.action_id] = [UndoStep.model_validate(s.model_dump()) for s in event.undo]
            elif isinstance(event, FaultUndone) and event.ok:
                done.add(event.action_id)
    except JournalError as exc:
        raise InvalidInput(exc.message, hint="the journal was changed or damaged; undo by hand what it lists") from None
    return {aid: steps for aid, steps in recorded.items() if aid not in done}


def run_folder(reports_dir: Path, run: str) -> Path:
    path = Path(run)
    if not (path / "journal.jsonl").exists():
        path = reports_dir / run
    if not (path / "journal.jsonl").exists():
        raise Conflict(f"no run {run!r}: neither {run}/journal.jsonl nor {reports_dir / run}/journal.jsonl exists")
    return path


async def recover(run_dir: Path) -> list[str]:
    """Undo everything the run left injected; returns one line per action undone."""
    pending = pending_undos(run_dir / "journal.jsonl")
    if not pending:
        return []
    topology = Topology.model_validate_json((run_dir / "topology.json").read_text())
    done: list[str] = []
    failures: list[str] = []
    with Journal(run_dir / "journal.jsonl") as journal:
        async with SshPool(topology.nodes) as ssh:
            ctx = FaultContext(topology=topology, ssh=ssh, run_id=run_dir.name)
            for action_id, steps in sorted(pending.items()):
                try:
                    details = await run_undo_steps(ctx, steps)
                except Exception as exc:
                    failures.append(f"{action_id}: {exc}")
                    journal.write("fault.undone", action_id=action_id, ok=False, detail=str(exc), by="recover")
                    continue
                journal.write("fault.undone", action_id=action_id, ok=True, detail="; ".join(details), by="recover")
                done.append(f"{action_id}: undone ({len(steps)} step(s))")
                log.info("recovered", action_id=action_id)
    if failures:
        raise FaultsLeftInjected("could not undo: " + "; ".join(failures), actions=sorted(f.split(":")[0] for f in failures),
                                 hint=f"run `chaos recover {run_dir.name}` again once the nodes answer")
    return done


MAX_RUNS = 100_000  # bounded scan of the reports folder


def pending_runs(reports_dir: Path) -> tuple[list[tuple[Path, list[str]]], list[tuple[Path, str]]]:
    """Run folders under ``reports_dir`` with undo steps pending (oldest first, with their action
    ids), and those whose journal cannot be read (with the reason)."""
    pending: list[tuple[Path, list[str]]] = []
    unreadable: list[tuple[Path, str]] = []
    if not reports_dir.is_dir():
        return pending, unreadable
    folders = sorted(p for p in reports_dir.iterdir() if (p / "journal.jsonl").is_file())[:MAX_RUNS]
    for folder in folders:
        try:
            actions = pending_undos(folder / "journal.jsonl")
        except (InvalidInput, OSError) as exc:
            unreadable.append((folder, getattr(exc, "message", str(exc))))
            continue
        if actions:
            pending.append((folder, sorted(actions)))
    return pending, unreadable
