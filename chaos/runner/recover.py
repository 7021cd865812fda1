"""Finish what an interrupted or killed run left injected, from its journal alone.

Every undo is journaled before its injection (``fault.undo_recorded``), and the run folder
keeps the topology the run used (``topology.json``), so a run killed with ``kill -9`` can be
recovered later by another process: every action recorded and not undone is undone by
replaying its steps (idempotent shell commands over SSH, or a BMC power-on).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import structlog

from chaos.errors import Conflict, FaultsLeftInjected, InvalidInput
from chaos.faults.base import FaultContext, UndoStep, run_undo_steps
from chaos.model import Topology
from chaos.journal import Journal, JournalError, read_events
from chaos.journal.events import FaultUndone, FaultUndoRecorded, undo_digest
from chaos.transport.ssh import SshPool

log = structlog.get_logger("recover")


class JournalDamaged(InvalidInput):
    """The journal has damaged lines: what its readable lines list was undone (``done``), what
    the damaged ones held is unknown (exit 3)."""

    def __init__(self, message: str, *, hint: str, done: list[str]) -> None:
        super().__init__(message, hint=hint)
        self.done = done


def pending_undos(journal_path: Path, damaged: list[JournalError] | None = None) -> dict[str, list[UndoStep]]:
    """Actions whose undo was recorded and never completed, with their steps (read through the
    journal's models: a record that does not fit them is an error naming its line, or, with
    ``damaged``, collected there while the readable lines are still used)."""
    recorded: dict[str, list[UndoStep]] = {}
    done: set[str] = set()
    try:
        for event in read_events(journal_path, damaged=damaged):
            if isinstance(event, FaultUndoRecorded):
                if event.undo_sha256 is not None and undo_digest(event.undo) != event.undo_sha256:
                    error = JournalError(f"{journal_path}: the undo steps of action {event.action_id} do not match "
                                         "their checksum (undo_sha256): changed since they were written; not run")
                    if damaged is None:
                        raise error
                    damaged.append(error)
                    continue
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
    """Undo everything the run left injected; returns one line per action undone.

    A journal with damaged lines does not stop the undo of what its readable lines list (a
    damaged ``fault.undone`` line at worst repeats an idempotent undo); ``JournalDamaged`` then
    says which lines could not be read, carrying what was undone."""
    damaged: list[JournalError] = []
    pending = pending_undos(run_dir / "journal.jsonl", damaged)
    done = await _undo(run_dir, pending) if pending else []
    if damaged:
        lines = "\n".join(f"  {d.message}" for d in damaged[:10]) + (f"\n  ... and {len(damaged) - 10} more" if len(damaged) > 10 else "")
        raise JournalDamaged(
            f"{run_dir / 'journal.jsonl'}: {len(damaged)} damaged line(s); undid what the readable lines list "
            f"({len(done)} action(s)):\n{lines}",
            hint="a damaged line may have recorded an injection: check the nodes of this run by hand "
            "(chaos discover shows the routers' replicas)",
            done=done,
        )
    return done


def _topology(run_dir: Path) -> Topology:
    try:
        return Topology.model_validate_json((run_dir / "topology.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
        raise InvalidInput(f"{run_dir / 'topology.json'}: cannot be read: {reason}",
                           hint="recover needs the topology the run used to reach its nodes") from None


async def _undo(run_dir: Path, pending: dict[str, list[UndoStep]]) -> list[str]:
    topology = _topology(run_dir)
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


def pending_runs(
    reports_dir: Path, also: Sequence[Path] = ()
) -> tuple[list[tuple[Path, list[str]]], list[tuple[Path, str]]]:
    """Run folders under ``reports_dir``, and the folders ``also`` names (the run history's, which
    may lie elsewhere), with undo steps pending (oldest first by run id, with their action ids),
    and those whose journal cannot be read (with the reason). A folder is read once however it
    was found."""
    pending: list[tuple[Path, list[str]]] = []
    unreadable: list[tuple[Path, str]] = []
    found = {p.resolve() for p in reports_dir.iterdir()} if reports_dir.is_dir() else set()
    found |= {p.resolve() for p in also}
    folders = sorted((p for p in found if (p / "journal.jsonl").is_file()), key=lambda p: (p.name, str(p)))[:MAX_RUNS]
    for folder in folders:
        try:
            actions = pending_undos(folder / "journal.jsonl")
        except (InvalidInput, OSError) as exc:
            unreadable.append((folder, getattr(exc, "message", str(exc))))
            continue
        if actions:
            pending.append((folder, sorted(actions)))
    return pending, unreadable
