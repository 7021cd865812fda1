"""The operator: one asyncio process that fires schedules, runs experiments, and serves it all.

Its life, in order: take the state directory's lock (a second operator on it is refused),
open the state database, start listening (health answers at once, readiness waits), recover
the runs a crash left unfinished (undo from their journals) *before anything else runs*,
record the firings it missed while it was down, and only then schedule. One TaskGroup owns
every task: the firing loop, the notifier, and each run. SIGTERM or SIGINT aborts every run
through its abort signal (each rolls back, as ``chaos run`` does on Ctrl-C), waits for them,
and exits 130.

A firing is judged in this order: paused, in a blackout, later than its starting deadline
(missed), overlapping a run of the same experiment (``forbid``: skipped; ``queue``: waits for
it). A run that starts claims leases on what its plan disturbs; under ``forbid`` a lease held
by another run (of this operator, another one, or ``chaos run`` in a terminal) makes it end as
``skipped`` with the holder named; under ``queue`` it waits up to the deadline.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from chaos.errors import ChaosError, Conflict, ExitCode
from chaos.experiment.schedule import Schedule
from chaos.log import get_logger
from chaos.operator.catalog import Catalog, Entry
from chaos.operator.clock import Clock
from chaos.operator.config import ServeConfig
from chaos.operator.metrics import OperatorMetrics, run_figures
from chaos.operator.notify import Notice, Notifier
from chaos.runner.control import AbortSignal, RunTrigger
from chaos.runner.execute import new_run_id, run_experiment, verdict_for
from chaos.settings import Settings
from chaos.state.leases import finish_despite_cancel
from chaos.state.store import RunRow, Store

log = get_logger("operator")

MISSED_RECORDS = 50  # firings recorded one by one as missed after a long downtime; the rest are counted
SHUTDOWN_NOTIFY_DRAIN = 5.0
ATTENTION = frozenset({"deviated", "inconclusive", "aborted", "error", "interrupted", "steady-state-broken", "invalid", "left-injected"})


@dataclass
class ScheduleState:
    key: str
    schedule: Schedule
    next_at: datetime  # the cron time
    due_at: datetime  # ... plus jitter: when it starts

    @classmethod
    def after(cls, key: str, schedule: Schedule, moment: datetime) -> ScheduleState:
        return cls.at(key, schedule, schedule.next_after(moment))

    @classmethod
    def at(cls, key: str, schedule: Schedule, when: datetime) -> ScheduleState:
        return cls(key, schedule, when, when + timedelta(seconds=schedule.jitter_for(key, when)))


@dataclass
class Queued:
    firing_id: int
    scheduled: datetime
    due: datetime


@dataclass
class RunHandle:
    """A run the operator started: what the API and the dashboard show while it goes on."""

    run_id: str
    experiment: str
    trigger: RunTrigger
    abort: AbortSignal
    created: float
    firing_id: int | None = None
    state: str = "waiting"  # waiting (for a worker) | running
    progress: dict[str, Any] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None

    def view(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "experiment": self.experiment, "state": self.state,
                "trigger": self.trigger.kind, "triggered_by": self.trigger.by, "created": self.created,
                "progress": dict(self.progress), "abort_requested_by": self.abort.by}


class StateLock:
    """One operator per state directory: an flock that the kernel drops when the process dies,
    so a crashed operator never blocks its successor."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "serve.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise Conflict(f"another operator serves the state directory {self.path.parent} ({holder})",
                           hint="stop it first, or give this one its own --state-dir (several operators share "
                                "history and leases through one --database-url)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{datetime.now(UTC).isoformat(timespec='seconds')}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Operator:
    def __init__(self, config: ServeConfig, settings: Settings, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or Clock()
        self.settings = settings.model_copy(update={"reports_dir": config.runs_dir, "state_dir": config.state_dir})
        self.instance_id = f"{socket.gethostname()}:{config.state_dir.resolve()}"
        self.catalog = Catalog(config.experiments)
        self.metrics = OperatorMetrics()
        self.notifier = Notifier(config.webhooks)
        self.schedules: dict[str, ScheduleState] = {}
        self.queued: dict[str, Queued] = {}
        self.runs: dict[str, RunHandle] = {}
        self.paused: dict[str, dict[str, Any]] = {}
        self.store: Store | None = None
        self.ready = False
        self.started_at = time.time()
        self.recovered: list[str] = []
        self.stop_reason: str | None = None
        self.wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._slots = asyncio.Semaphore(config.workers)
        self._tg: asyncio.TaskGroup | None = None
        self._next_scan = 0.0

    # ================================================================== life
    async def serve(self, on_listening: Any = None) -> int:
        """Run until SIGTERM/SIGINT; returns the exit code (130 after a signal)."""
        from chaos.operator.server import start_http

        lock = StateLock(self.config.state_dir)
        lock.acquire()
        self.config.runs_dir.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        try:
            db_url = self.config.database_url.get_secret_value() if self.config.database_url else None
            self.store = await Store.open(self.config.state_dir, db_url, site=self.config.site, owner=self.instance_id)
            http = await start_http(self)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop, sig.name)
            log.info("operator listening", url=http.url, state_dir=str(self.config.state_dir),
                     database=self.store.db.display_url, workers=self.config.workers, site=self.config.site)
            if on_listening is not None:
                on_listening(http.url)
            try:
                async with asyncio.TaskGroup() as tg:
                    self._tg = tg
                    notifier = tg.create_task(self.notifier.run(), name="notifier")
                    await self._recover()
                    await self._load_catalog()
                    await self._catch_up()
                    self.ready = True
                    log.info("operator ready", schedules=len(self.schedules), experiments=len(self.catalog.entries))
                    firing = tg.create_task(self._firing_loop(), name="firing-loop")
                    await self._stop.wait()
                    firing.cancel()
                    await self._abort_all()
                    await self.notifier.drain(SHUTDOWN_NOTIFY_DRAIN)
                    notifier.cancel()
            finally:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
                await http.close()
        finally:
            if self.store is not None:
                await self.store.close()
            lock.release()
        log.info("operator stopped", reason=self.stop_reason)
        return int(ExitCode.INTERRUPTED) if self.stop_reason else int(ExitCode.OK)

    def stop(self, reason: str = "stop") -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            log.warning("operator stopping: aborting running runs (they roll back)", signal=reason, runs=len(self.runs))
            self._stop.set()

    async def _abort_all(self) -> None:
        for handle in list(self.runs.values()):
            handle.abort.request(self.stop_reason or "SIGTERM", "the operator is stopping", interrupt=True)
        tasks = [h.task for h in self.runs.values() if h.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # ================================================================== recovery
    async def _recover(self) -> None:
        """Undo what runs of this operator left injected when it died, before anything runs."""
        from chaos.operator.recovery import recover_unfinished

        assert self.store is not None
        self.recovered = await recover_unfinished(self.store, self.config.runs_dir, self.instance_id)

    # ================================================================== schedules
    async def _load_catalog(self) -> None:
        self.catalog.scan()
        await self._refresh_pauses()
        now = self.clock.now()
        for key in list(self.catalog.entries):
            self._schedule_changed(key, now)

    def _schedule_changed(self, key: str, now: datetime) -> None:
        entry = self.catalog.get(key)
        schedule = entry.experiment.schedule if entry is not None and entry.experiment is not None else None
        if entry is not None:
            self.metrics.valid.labels(key).set(1.0 if entry.valid else 0.0)
        if schedule is None:
            if self.schedules.pop(key, None) is not None:
                log.info("schedule removed", experiment=key)
            if entry is None:
                self.metrics.forget(key)
            else:
                self.metrics.next_fire.labels(key).set(0)
            return
        current = self.schedules.get(key)
        if current is not None and current.schedule == schedule:
            return
        self.schedules[key] = ScheduleState.after(key, schedule, now)
        self.metrics.next_fire.labels(key).set(self.schedules[key].due_at.timestamp())
        log.info("schedule set", experiment=key, schedule=schedule.describe(),
                 next=self.schedules[key].due_at.isoformat(timespec="seconds"))

    async def _catch_up(self) -> None:
        """Firings that fell while the operator was down: missed beyond their deadline; the last
        one still within it fires now (late, and the lag is recorded)."""
        assert self.store is not None
        now = self.clock.now()
        for key, state in list(self.schedules.items()):
            last = await self.store.last_firing(key)
            if last is None:
                continue
            times = state.schedule.times_between(datetime.fromtimestamp(last, UTC), now, limit=10_000)
            if not times:
                continue
            for when in times[:-1][-MISSED_RECORDS:]:
                await self._record(key, ScheduleState.at(key, state.schedule, when), "missed",
                                   "the operator was not running at this time", now)
            if len(times) - 1 > MISSED_RECORDS:
                log.warning("more firings were missed than are recorded", experiment=key, missed=len(times) - 1)
            self.schedules[key] = ScheduleState.at(key, state.schedule, times[-1])  # judged by the loop

    async def _firing_loop(self) -> None:
        while True:
            now = self.clock.now()
            if time.monotonic() >= self._next_scan:
                await self._rescan(now)
            due = sorted((s for s in self.schedules.values() if s.due_at <= now), key=lambda s: (s.due_at, s.key))
            for state in due:
                try:
                    await self._fire(state, now)
                except ChaosError as exc:  # the database failed mid-firing: this firing is lost, not the loop
                    log.error("firing failed", experiment=state.key, error=exc.message)
                following = ScheduleState.after(state.key, state.schedule, state.next_at)
                if self.schedules.get(state.key) is state:
                    self.schedules[state.key] = following
                    self.metrics.next_fire.labels(state.key).set(following.due_at.timestamp())
            self.wake.clear()
            earliest = min((s.due_at for s in self.schedules.values()), default=now + timedelta(hours=1))
            scan_at = now + timedelta(seconds=max(0.0, self._next_scan - time.monotonic()) * self.clock.scale)
            await self.clock.sleep_until(min(earliest, scan_at), self.wake)

    async def _rescan(self, now: datetime) -> None:
        self._next_scan = time.monotonic() + self.config.reload_interval
        changes = await asyncio.to_thread(self.catalog.scan)
        for key in (*changes.changed, *changes.removed, *changes.broken):
            self._schedule_changed(key, now)
        try:
            await self._refresh_pauses()  # another operator of the site may have paused
        except ChaosError as exc:
            log.warning("cannot read pauses", error=exc.message)

    async def _refresh_pauses(self) -> None:
        assert self.store is not None
        self.paused = await self.store.pauses()
        self.metrics.paused.labels("*").set(1.0 if "*" in self.paused else 0.0)
        for key in self.catalog.entries:
            self.metrics.paused.labels(key).set(1.0 if key in self.paused else 0.0)

    def pause_of(self, key: str) -> dict[str, Any] | None:
        return self.paused.get("*") or self.paused.get(key)

    # ================================================================== one firing
    async def _fire(self, state: ScheduleState, now: datetime) -> None:
        entry = self.catalog.get(state.key)
        if entry is None or entry.experiment is None:
            return
        lag = (now - state.due_at).total_seconds()
        running = next((h for h in self.runs.values() if h.experiment == state.key), None)
        pause = self.pause_of(state.key)
        blackout = state.schedule.blackout_at(state.due_at, self.config.freezes)
        if pause is not None:
            outcome, reason = "skipped", f"paused by {pause['paused_by']}" + (f": {pause['reason']}" if pause["reason"] else "")
        elif blackout is not None:
            outcome, reason = "skipped", f"blackout {blackout.label()}"
        elif lag > state.schedule.starting_deadline:
            outcome, reason = "missed", f"{lag:.0f}s late, beyond the starting deadline ({state.schedule.starting_deadline:g}s)"
        elif running is not None and (state.schedule.concurrency == "forbid" or state.key in self.queued):
            outcome, reason = "skipped", f"run {running.run_id} of this experiment is still running (concurrency: " \
                                         f"{state.schedule.concurrency}{', one firing queued already' if state.key in self.queued else ''})"
        elif running is not None:
            outcome, reason = "queued", f"waits for run {running.run_id} of this experiment"
        else:
            outcome, reason = "started", ""
        firing_id = await self._record(state.key, state, outcome, reason, now)
        if firing_id is None:
            return
        if outcome == "started":
            self._start_scheduled(entry, state, firing_id, now)
        elif outcome == "queued":
            self.queued[state.key] = Queued(firing_id, state.next_at, state.due_at)

    async def _record(self, key: str, state: ScheduleState, outcome: str, reason: str, now: datetime) -> int | None:
        """Claim the firing in the store (None: another operator of the site claimed it first)."""
        assert self.store is not None
        try:
            firing_id = await self.store.claim_firing(
                key, state.next_at.timestamp(), state.due_at.timestamp(), outcome=outcome, reason=reason,
                operator=self.instance_id)
        except ChaosError as exc:
            log.error("cannot record the firing; it does not run", experiment=key, error=exc.message)
            return None
        if firing_id is None:
            log.info("firing claimed by another operator of the site", experiment=key)
            return None
        fired = self.clock.now()  # not `now`: firings due together are claimed one after the other
        lag_real = self.clock.real_seconds((fired - state.due_at).total_seconds())
        await self.store.update_firing(firing_id, fired_at=fired.timestamp(), lag_s=round(lag_real, 4))
        if outcome != "started":  # a started firing is counted when its run ends (it may be skipped by a lease)
            self.metrics.firings.labels(key, outcome).inc()
            log.info(f"firing {outcome}", experiment=key, reason=reason, scheduled=state.next_at.isoformat(timespec="seconds"))
        else:
            log.info("firing", experiment=key, scheduled=state.next_at.isoformat(timespec="seconds"), lag_s=round(lag_real, 3))
        if outcome == "missed":
            self.notifier.notify(Notice("missed", key, f"firing of {state.next_at.isoformat(timespec='minutes')} missed", reason))
        return firing_id

    def _start_scheduled(self, entry: Entry, state: ScheduleState, firing_id: int, now: datetime) -> RunHandle:
        schedule = state.schedule
        lag = (now - state.due_at).total_seconds()
        remaining = self.clock.real_seconds(max(0.0, schedule.starting_deadline - lag))
        trigger = RunTrigger(kind="schedule", by="schedule", scheduled_for=state.next_at.timestamp(),
                             operator=self.instance_id, site=self.config.site)
        return self._start(entry, trigger, firing_id=firing_id,
                           lease_wait=remaining if schedule.concurrency == "queue" else 0.0, slot_wait=remaining)

    # ================================================================== runs
    def trigger_now(self, key: str, by: str) -> RunHandle:
        """A manual run (the API): no schedule needed; leases are honoured (it is skipped if its
        plan needs what another run holds)."""
        entry = self.catalog.get(key)
        if entry is None:
            raise Conflict(f"no experiment {key!r}")
        if entry.experiment is None:
            raise Conflict(f"experiment {key!r} has never validated: {entry.problems[0] if entry.problems else ''}")
        if not self.ready or self._stop.is_set():
            raise Conflict("the operator is not ready (recovering, or stopping)")
        trigger = RunTrigger(kind="manual", by=by, operator=self.instance_id, site=self.config.site)
        return self._start(entry, trigger, lease_wait=0.0, slot_wait=None)

    def _start(self, entry: Entry, trigger: RunTrigger, *, firing_id: int | None = None,
               lease_wait: float, slot_wait: float | None) -> RunHandle:
        assert self._tg is not None and self.store is not None
        run_id = new_run_id(entry.path)
        handle = RunHandle(run_id, entry.key, trigger, AbortSignal(), time.time(), firing_id)
        self.runs[run_id] = handle
        self.store.leases.reserve_turn(run_id)  # same-moment firings claim leases in firing order
        handle.task = self._tg.create_task(self._execute(handle, entry, lease_wait, slot_wait), name=f"run-{run_id}")
        return handle

    async def _execute(self, handle: RunHandle, entry: Entry, lease_wait: float, slot_wait: float | None) -> None:
        """One run, start to index; never raises (a run's failure must not stop the operator)."""
        assert self.store is not None and entry.experiment is not None
        loaded = (entry.experiment, entry.text)
        row: RunRow | None = None
        try:
            try:
                async with asyncio.timeout(slot_wait):
                    await self._slots.acquire()
            except TimeoutError:
                await self._firing_outcome(handle, "missed", "no free worker within the starting deadline "
                                                             f"(workers: {self.config.workers})")
                return
            try:
                handle.state = "running"
                self.metrics.in_progress.labels(handle.experiment).inc()
                await self.store.upsert_run(RunRow(
                    run_id=handle.run_id, experiment=handle.experiment, title=entry.experiment.title, site=self.config.site,
                    trigger=handle.trigger.kind, triggered_by=handle.trigger.by, scheduled_for=handle.trigger.scheduled_for,
                    started_at=time.time(), status="running", report_dir=str((self.config.runs_dir / handle.run_id).resolve()),
                    operator=self.instance_id))
                code, run_dir = await run_experiment(
                    entry.path, self.settings, run_id=handle.run_id, trigger=handle.trigger, abort=handle.abort,
                    leases=self.store.leases, lease_wait=lease_wait, on_progress=handle.progress.update,
                    handle_signals=False, loaded=loaded)
            finally:
                self._slots.release()
                self.metrics.in_progress.labels(handle.experiment).dec()
            assert run_dir is not None
            row = await self.store.index_folder(run_dir)
        except asyncio.CancelledError:
            raise
        except ChaosError as exc:  # before the run folder existed (no lab, a database failure, ...)
            row = await self._failed_row(handle, verdict_for(exc.exit_code), exc.exit_code, exc.message)
        except Exception as exc:  # noqa: BLE001 - a bug in one run must not take the operator down
            log.exception("run failed with an internal error", run_id=handle.run_id)
            row = await self._failed_row(handle, "error", int(ExitCode.INTERNAL), f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self.store.leases.settle_turn(handle.run_id)
            self.runs.pop(handle.run_id, None)
            if row is not None:
                await finish_despite_cancel(self._after_run_logged(handle, row))

    async def _after_run_logged(self, handle: RunHandle, row: RunRow) -> None:
        try:
            await self._after_run(handle, row)
        except Exception:  # noqa: BLE001 - bookkeeping after a run must not take the operator down
            log.exception("after-run bookkeeping failed", run_id=row.run_id)

    async def _failed_row(self, handle: RunHandle, verdict: str, code: int, reason: str) -> RunRow | None:
        assert self.store is not None
        log.error("run ended before it began", run_id=handle.run_id, verdict=verdict, reason=reason)
        row = RunRow(run_id=handle.run_id, experiment=handle.experiment, site=self.config.site, trigger=handle.trigger.kind,
                     triggered_by=handle.trigger.by, scheduled_for=handle.trigger.scheduled_for, started_at=handle.created,
                     finished_at=time.time(), status="finished", verdict=verdict, exit_code=code, reason=reason,
                     report_dir=str((self.config.runs_dir / handle.run_id).resolve()), operator=self.instance_id)
        try:
            await self.store.upsert_run(row)
        except ChaosError as exc:
            log.error("cannot record the run", run_id=handle.run_id, error=exc.message)
        return row

    async def _after_run(self, handle: RunHandle, row: RunRow) -> None:
        """Metrics, the firing's outcome, a notification, the queued firing, retention."""
        assert self.store is not None
        run_dir = Path(row.report_dir)
        figures = await asyncio.to_thread(run_figures, run_dir) if run_dir.is_dir() else None
        if figures is not None:
            self.metrics.observe(row, figures)
        else:
            self.metrics.runs.labels(row.experiment, row.verdict or "error", row.trigger).inc()
        if handle.firing_id is not None:
            if row.verdict == "skipped":
                await self._firing_outcome(handle, "skipped", row.reason or "a lease was held")
            else:
                self.metrics.firings.labels(handle.experiment, "started").inc()
                await self.store.update_firing(handle.firing_id, run_id=row.run_id)
        if row.verdict in ATTENTION:
            self.notifier.notify(Notice(
                row.verdict or "error", row.experiment, f"run {row.run_id} {row.verdict}",
                detail=(row.reason or "") + (f" (aborted by {row.aborted_by})" if row.aborted_by else ""),
                link=f"{self.public_url}/runs/{row.run_id}" if self.public_url else None))
        log.info("run finished", run_id=row.run_id, experiment=row.experiment, verdict=row.verdict, exit_code=row.exit_code)
        await self._start_queued(handle.experiment)
        retention = self.config.retention
        if retention.keep_per_experiment or retention.max_age:
            try:
                await self.store.prune(self.config.runs_dir, keep_per_experiment=retention.keep_per_experiment,
                                       max_age_s=retention.max_age)
            except ChaosError as exc:
                log.warning("retention failed", error=exc.message)

    async def _firing_outcome(self, handle: RunHandle, outcome: str, reason: str) -> None:
        assert self.store is not None
        self.metrics.firings.labels(handle.experiment, outcome).inc()
        if handle.firing_id is not None:
            await self.store.update_firing(handle.firing_id, outcome=outcome, reason=reason, run_id=handle.run_id)
        log.info(f"firing {outcome}", experiment=handle.experiment, run_id=handle.run_id, reason=reason)

    async def _start_queued(self, key: str) -> None:
        queued = self.queued.pop(key, None)
        entry = self.catalog.get(key)
        state = self.schedules.get(key)
        if queued is None or entry is None or entry.experiment is None or state is None or self._stop.is_set():
            return
        now = self.clock.now()
        lag = (now - queued.due).total_seconds()
        assert self.store is not None
        if lag > state.schedule.starting_deadline:
            await self.store.update_firing(queued.firing_id, outcome="missed",
                                           reason=f"queued {lag:.0f}s, beyond the starting deadline")
            self.metrics.firings.labels(key, "missed").inc()
            return
        await self.store.update_firing(queued.firing_id, outcome="started", reason="started after the run it queued behind")
        self._start_scheduled(entry, ScheduleState(key, state.schedule, queued.scheduled, queued.due), queued.firing_id, now)

    # ================================================================== for the API
    public_url: str | None = None

    def abort(self, run_id: str, by: str, reason: str) -> bool:
        handle = self.runs.get(run_id)
        if handle is None:
            raise Conflict(f"no running run {run_id!r}")
        return handle.abort.request(by, reason)

    async def pause(self, key: str, by: str, reason: str) -> None:
        assert self.store is not None
        if key != "*" and self.catalog.get(key) is None:
            raise Conflict(f"no experiment {key!r}")
        await self.store.pause(key, by=by, reason=reason)
        await self._refresh_pauses()

    async def resume(self, key: str) -> bool:
        assert self.store is not None
        done = await self.store.resume(key)
        await self._refresh_pauses()
        self.wake.set()
        return done

    def experiment_view(self, key: str, last: RunRow | None) -> dict[str, Any]:
        entry = self.catalog.get(key)
        assert entry is not None
        exp = entry.experiment
        state = self.schedules.get(key)
        pause = self.pause_of(key)
        return {
            "key": key,
            "file": entry.path.name,
            "title": exp.title if exp else None,
            "description": exp.description if exp else None,
            "valid": entry.valid,
            "runnable": entry.runnable,
            "problems": entry.problems,
            "loaded_at": entry.loaded_at,
            "summary": exp.summary() if exp else None,
            "schedule": None if exp is None or exp.schedule is None else {
                **exp.schedule.model_dump(mode="json"), "explain": exp.schedule.explain()},
            "next_fire": state.due_at.timestamp() if state else None,
            "paused": pause is not None,
            "paused_by": pause["paused_by"] if pause else None,
            "pause_reason": pause["reason"] if pause else None,
            "queued": key in self.queued,
            "running": [h.run_id for h in self.runs.values() if h.experiment == key],
            "last_run": None if last is None else {"run_id": last.run_id, "verdict": last.verdict,
                                                   "started_at": last.started_at, "finished_at": last.finished_at},
        }
