"""The history index and the operator's records: runs, firings, audit trail, pauses.

``index_row`` reads a run folder (its journal, and its summary when there is one) into the row
the ``runs`` table keeps, so the table can always be rebuilt from the folders (``chaos serve
--reindex``) and never says anything the journal does not.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from chaos.errors import InvalidInput
from chaos.log import get_logger
from chaos.journal import read_journal
from chaos.state.db import Database, database_url
from chaos.state.leases import LeaseStore
from chaos.state.tables import audit, firings, pauses, runs

log = get_logger("store")

Trigger = Literal["schedule", "manual", "cli"]
FIGURES = ("outage_s", "failover_s", "split_brain_s", "tcp_dropped")


class RunRow(BaseModel):
    """One run as the history shows it (the API's run object)."""

    model_config = ConfigDict(extra="ignore")

    run_id: str
    experiment: str
    title: str = ""
    site: str = "default"
    trigger: str
    triggered_by: str | None = None
    scheduled_for: float | None = None
    started_at: float
    finished_at: float | None = None
    status: str
    verdict: str | None = None
    exit_code: int | None = None
    reason: str | None = None
    outage_max_s: float | None = None
    failover_max_s: float | None = None
    figures: dict[str, dict[str, float | None]] = {}
    faults_injected: int = 0
    faults_undone: int = 0
    report_dir: str
    operator: str | None = None
    aborted_by: str | None = None

    @classmethod
    def from_db(cls, row: Mapping[str, Any]) -> RunRow:
        data = dict(row)
        data["figures"] = json.loads(data.get("figures") or "{}")
        return cls.model_validate(data)

    def to_db(self) -> dict[str, Any]:
        data = self.model_dump()
        data["figures"] = json.dumps(self.figures, separators=(",", ":"))
        return data

    @property
    def duration_s(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.started_at


class RunFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    experiment: str | None = None
    verdict: str | None = None
    trigger: str | None = None
    status: str | None = None
    since: float | None = None
    until: float | None = None


class Store:
    """History, firings, audit, pauses and leases on one database."""

    def __init__(self, db: Database, *, site: str = "default", owner: str = "") -> None:
        self.db = db
        self.site = site
        self.leases = LeaseStore(db, owner or f"cli:{os.uname().nodename}:{os.getpid()}")

    @classmethod
    async def open(cls, state_dir: Path, url: str | None = None, *, site: str = "default", owner: str = "") -> Store:
        db = Database(database_url(state_dir, url))
        try:
            await db.migrate()
        except BaseException:
            await db.close()
            raise
        return cls(db, site=site, owner=owner)

    async def close(self) -> None:
        await self.db.close()

    # ------------------------------------------------------------------ runs
    async def upsert_run(self, row: RunRow) -> None:
        data = row.to_db()
        async with self.db.transaction() as conn:
            found = await conn.execute(select(runs.c.run_id).where(runs.c.run_id == row.run_id))
            if found.first() is None:
                await conn.execute(insert(runs).values(**data))
            else:
                await conn.execute(update(runs).where(runs.c.run_id == row.run_id).values(**data))

    async def get_run(self, run_id: str) -> RunRow | None:
        async with self.db.transaction(write=False) as conn:
            row = (await conn.execute(select(runs).where(runs.c.run_id == run_id))).first()
        return RunRow.from_db(row._mapping) if row is not None else None

    async def list_runs(
        self, flt: RunFilter | None = None, *, limit: int = 50, before: tuple[float, str] | None = None
    ) -> list[RunRow]:
        """Newest first; ``before`` (started_at, run_id) of the last row seen gives the next page."""
        flt = flt or RunFilter()
        query = select(runs)
        for column, value in (("experiment", flt.experiment), ("verdict", flt.verdict),
                              ("trigger", flt.trigger), ("status", flt.status)):
            if value is not None:
                query = query.where(runs.c[column] == value)
        if flt.since is not None:
            query = query.where(runs.c.started_at >= flt.since)
        if flt.until is not None:
            query = query.where(runs.c.started_at < flt.until)
        if before is not None:
            query = query.where(or_(runs.c.started_at < before[0],
                                    and_(runs.c.started_at == before[0], runs.c.run_id < before[1])))
        query = query.order_by(runs.c.started_at.desc(), runs.c.run_id.desc()).limit(limit)
        async with self.db.transaction(write=False) as conn:
            return [RunRow.from_db(r._mapping) for r in await conn.execute(query)]

    async def count_runs(self) -> int:
        async with self.db.transaction(write=False) as conn:
            return int((await conn.execute(select(func.count()).select_from(runs))).scalar_one())

    async def latest_by_experiment(self) -> dict[str, RunRow]:
        """The newest run of each experiment (for the schedules table)."""
        newest = (select(runs.c.experiment, func.max(runs.c.started_at).label("t"))
                  .group_by(runs.c.experiment).subquery())
        query = select(runs).join(newest, and_(runs.c.experiment == newest.c.experiment, runs.c.started_at == newest.c.t))
        async with self.db.transaction(write=False) as conn:
            rows = [RunRow.from_db(r._mapping) for r in await conn.execute(query)]
        return {r.experiment: r for r in rows}

    async def trend(self, experiment: str, limit: int = 50) -> list[RunRow]:
        """The last finished runs of one experiment, oldest first (the dashboard's trend)."""
        query = (select(runs).where(runs.c.experiment == experiment, runs.c.status == "finished")
                 .order_by(runs.c.started_at.desc()).limit(limit))
        async with self.db.transaction(write=False) as conn:
            rows = [RunRow.from_db(r._mapping) for r in await conn.execute(query)]
        return rows[::-1]

    async def folders_to_recover(self, limit: int = 10_000) -> list[Path]:
        """The folders of runs the history says may hold faults: still ``running`` (a run killed
        before it was indexed as finished) or ended ``left-injected``; newest first. ``chaos
        recover --pending`` reads them beside the reports folder, so a run written elsewhere (the
        operator's runs folder, a ``--reports-dir``) is not missed."""
        query = (select(runs.c.report_dir).where(or_(runs.c.status == "running", runs.c.verdict == "left-injected"))
                 .order_by(runs.c.started_at.desc()).limit(limit))
        async with self.db.transaction(write=False) as conn:
            return [Path(r.report_dir) for r in await conn.execute(query) if r.report_dir]

    async def unfinished_runs(self, operator: str) -> list[RunRow]:
        query = select(runs).where(runs.c.operator == operator, runs.c.status == "running")
        async with self.db.transaction(write=False) as conn:
            return [RunRow.from_db(r._mapping) for r in await conn.execute(query)]

    async def index_folder(self, run_dir: Path, **overrides: Any) -> RunRow:
        row = index_row(run_dir, site=self.site, **overrides)
        await self.upsert_run(row)
        return row

    async def reindex(self, reports_dir: Path) -> int:
        """Rebuild the runs index from every run folder under ``reports_dir``."""
        count = 0
        for folder in sorted(p for p in reports_dir.iterdir() if (p / "journal.jsonl").is_file()):
            try:
                await self.index_folder(folder)
                count += 1
            except InvalidInput as exc:
                log.warning("run folder not indexed", folder=str(folder), error=exc.message)
        return count

    async def prune(self, reports_dir: Path, *, keep_per_experiment: int | None, max_age_s: float | None) -> list[str]:
        """Retention: drop finished runs beyond the newest ``keep_per_experiment`` of each
        experiment, and those older than ``max_age_s``; their folders go too, but only folders
        inside ``reports_dir`` (a CLI run's folder elsewhere is never deleted from here)."""
        doomed: list[RunRow] = []
        async with self.db.transaction() as conn:
            finished = [RunRow.from_db(r._mapping) for r in await conn.execute(
                select(runs).where(runs.c.status == "finished", runs.c.site == self.site)
                .order_by(runs.c.experiment, runs.c.started_at.desc()))]
        seen: dict[str, int] = {}
        cutoff = time.time() - max_age_s if max_age_s else None
        for row in finished:
            seen[row.experiment] = seen.get(row.experiment, 0) + 1
            if (keep_per_experiment and seen[row.experiment] > keep_per_experiment) or (cutoff and row.started_at < cutoff):
                doomed.append(row)
        root = reports_dir.resolve()
        removed = []
        for row in doomed:
            folder = Path(row.report_dir).resolve()
            if folder.parent == root and folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
            async with self.db.transaction() as conn:
                await conn.execute(delete(runs).where(runs.c.run_id == row.run_id))
            removed.append(row.run_id)
        if removed:
            log.info("retention removed runs", count=len(removed))
        return removed

    # ------------------------------------------------------------------ firings
    async def claim_firing(self, experiment: str, scheduled_for: float, due_at: float, *, outcome: str,
                           reason: str = "", operator: str) -> int | None:
        """Record a firing; None when another operator of the site claimed it first."""
        try:
            async with self.db.transaction() as conn:
                result = await conn.execute(insert(firings).values(
                    site=self.site, experiment=experiment, scheduled_for=scheduled_for, due_at=due_at,
                    outcome=outcome, reason=reason, operator=operator,
                ))
                return int(result.inserted_primary_key[0])
        except IntegrityError:
            return None

    async def update_firing(self, firing_id: int, **values: Any) -> None:
        async with self.db.transaction() as conn:
            await conn.execute(update(firings).where(firings.c.id == firing_id).values(**values))

    async def last_firing(self, experiment: str) -> float | None:
        async with self.db.transaction(write=False) as conn:
            value = (await conn.execute(select(func.max(firings.c.scheduled_for)).where(
                firings.c.site == self.site, firings.c.experiment == experiment))).scalar_one()
        return float(value) if value is not None else None

    async def list_firings(self, *, experiment: str | None = None, outcome: str | None = None,
                           limit: int = 100) -> list[dict[str, Any]]:
        query = select(firings).where(firings.c.site == self.site)
        if experiment:
            query = query.where(firings.c.experiment == experiment)
        if outcome:
            query = query.where(firings.c.outcome == outcome)
        query = query.order_by(firings.c.scheduled_for.desc(), firings.c.id.desc()).limit(limit)
        async with self.db.transaction(write=False) as conn:
            return [dict(r._mapping) for r in await conn.execute(query)]

    # ------------------------------------------------------------------ audit
    async def audit(self, *, who: str, role: str, action: str, target: str = "", detail: str = "",
                    remote: str = "", ok: bool = True) -> None:
        async with self.db.transaction() as conn:
            await conn.execute(insert(audit).values(at=time.time(), who=who, role=role, action=action, target=target,
                                                    detail=detail, remote=remote, ok=ok))

    async def list_audit(self, limit: int = 100) -> list[dict[str, Any]]:
        async with self.db.transaction(write=False) as conn:
            return [dict(r._mapping) for r in await conn.execute(select(audit).order_by(audit.c.id.desc()).limit(limit))]

    # ------------------------------------------------------------------ pauses
    async def pause(self, scope: str, *, by: str, reason: str = "") -> None:
        async with self.db.transaction() as conn:
            await conn.execute(delete(pauses).where(pauses.c.site == self.site, pauses.c.scope == scope))
            await conn.execute(insert(pauses).values(site=self.site, scope=scope, paused_by=by,
                                                     paused_at=time.time(), reason=reason))

    async def resume(self, scope: str) -> bool:
        async with self.db.transaction() as conn:
            result = await conn.execute(delete(pauses).where(pauses.c.site == self.site, pauses.c.scope == scope))
        return bool(result.rowcount)

    async def pauses(self) -> dict[str, dict[str, Any]]:
        async with self.db.transaction(write=False) as conn:
            rows = await conn.execute(select(pauses).where(pauses.c.site == self.site))
            return {r.scope: dict(r._mapping) for r in rows}


# ---------------------------------------------------------------------- a run folder as a row
def index_row(run_dir: Path, *, site: str = "default", **overrides: Any) -> RunRow:
    """The history row of a run folder, from its journal (and summary, recomputed if absent)."""
    journal = run_dir / "journal.jsonl"
    if not journal.is_file():
        raise InvalidInput(f"{run_dir}: no journal.jsonl: not a run folder")
    started: dict[str, Any] = {}
    finished: dict[str, Any] = {}
    aborted_by = None
    injected = undone = 0
    for event in read_journal(journal):
        kind = event.get("kind")
        if kind == "run.started":
            started = event
        elif kind == "run.finished":
            finished = event
        elif kind == "run.abort_requested":
            aborted_by = str(event.get("by") or "")
        elif kind == "fault.injected":
            injected += 1
        elif kind == "fault.undone" and event.get("ok"):
            undone += 1
    if not started:
        raise InvalidInput(f"{run_dir}: the journal has no run.started event")
    trigger = started.get("trigger") if isinstance(started.get("trigger"), dict) else {}
    figures = _figures(run_dir) if finished else {}
    row = RunRow(
        run_id=str(started.get("run_id") or run_dir.name),
        experiment=Path(str(started.get("experiment") or run_dir.name)).stem,
        title=str(started.get("title") or ""),
        site=str(trigger.get("site") or site),
        trigger=str(trigger.get("kind") or "cli"),
        triggered_by=trigger.get("by"),
        scheduled_for=trigger.get("scheduled_for"),
        started_at=float(started["t"]),
        finished_at=float(finished["t"]) if finished else None,
        status="finished" if finished else "running",
        verdict=finished.get("verdict") if finished else None,
        exit_code=finished.get("exit_code") if finished else None,
        reason=finished.get("reason") or None if finished else None,
        outage_max_s=(figures.get("outage_s") or {}).get("max"),
        failover_max_s=(figures.get("failover_s") or {}).get("max"),
        figures=figures,
        faults_injected=injected,
        faults_undone=undone,
        report_dir=str(run_dir.resolve()),
        operator=trigger.get("operator"),
        aborted_by=aborted_by,
    )
    return row.model_copy(update=overrides) if overrides else row


def _figures(run_dir: Path) -> dict[str, dict[str, float | None]]:
    """Key figures of the summary (written by the run; recomputed from the journal if missing)."""
    from chaos.analysis.summary import load_summary

    try:
        summary = load_summary(run_dir / "summary.json")
    except InvalidInput:
        from chaos.report.run import load_run

        summary = load_run(run_dir).summary
    out: dict[str, dict[str, float | None]] = {}
    for name in FIGURES:
        dist = summary.aggregates.get(name)
        if dist is not None and dist.count:
            out[name] = {"p50": _num(dist.p50), "p95": _num(dist.p95), "max": _num(dist.max)}
    return out


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
