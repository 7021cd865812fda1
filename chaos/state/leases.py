"""Leases kept in the state database, so every process that shares it honours them.

A lease row names a key (``router:<id>``, ``node:<target>/<name>``), its holder (the run id), a
mode and an expiry. Taking leases is one transaction that locks the table (SQLite: ``BEGIN
IMMEDIATE``; PostgreSQL: ``LOCK TABLE``), drops expired rows, checks for conflicts and inserts
all claims or none. A holder renews its rows while it runs; a process killed outright stops
renewing, and its leases lapse after ``ttl`` seconds, so a crash never locks a router forever.

Inside one operator, runs that fire at the same moment claim in firing order (``reserve_turn``):
which of two overlapping firings runs and which is skipped does not depend on which one's
planning happened to finish first.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, insert, select, update

from chaos.errors import ChaosError
from chaos.log import get_logger
from chaos.runner.leases import LeaseClaim, LeaseConflict
from chaos.state.db import Database
from chaos.state.tables import leases

log = get_logger("leases")

TTL = 30.0
TURN_TIMEOUT = 60.0  # the longest a run waits for an earlier firing to finish claiming


class LeaseStore:
    """The ``LeaseProvider`` of ``chaos run`` and ``chaos serve``."""

    def __init__(self, db: Database, owner: str, *, ttl: float = TTL) -> None:
        self.db = db
        self.owner = owner
        self.ttl = ttl
        self._turns: dict[str, asyncio.Event] = {}  # run id -> settled, in firing order

    # ------------------------------------------------------------------ firing order
    def reserve_turn(self, run_id: str) -> None:
        """Queue ``run_id`` behind the runs already waiting to claim (call when it fires)."""
        self._turns[run_id] = asyncio.Event()

    def settle_turn(self, run_id: str) -> None:
        """``run_id`` has claimed, failed to, or ended before claiming: let the next one go."""
        event = self._turns.pop(run_id, None)
        if event is not None:
            event.set()

    async def _wait_turn(self, run_id: str) -> None:
        earlier = []
        for rid, event in self._turns.items():
            if rid == run_id:
                break
            earlier.append(event)
        else:
            return  # no turn reserved: the CLI, or a manual trigger outside the order
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(TURN_TIMEOUT):
                for event in earlier:
                    await event.wait()

    # ------------------------------------------------------------------ the provider
    @asynccontextmanager
    async def hold(
        self, run_id: str, claims: Sequence[LeaseClaim], *, experiment: str, wait: float = 0.0
    ) -> AsyncIterator[None]:
        try:
            await self._wait_turn(run_id)
            deadline = time.monotonic() + max(0.0, wait)
            waited = False
            while True:
                conflicts = await self._try_acquire(run_id, claims, experiment)
                if not conflicts:
                    break
                if time.monotonic() >= deadline:
                    raise LeaseConflict(_describe(conflicts, claims, waited=wait if waited else 0.0),
                                        holders=sorted({c["holder"] for c in conflicts}))
                if not waited:
                    log.info("waiting for leases", run_id=run_id, held_by=sorted({c["holder"] for c in conflicts}))
                waited = True
                await asyncio.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        finally:
            self.settle_turn(run_id)
        renewer = asyncio.create_task(self._renew(run_id), name=f"lease-renew-{run_id}")
        try:
            yield
        finally:
            renewer.cancel()
            await finish_despite_cancel(self._stop_and_release(renewer, run_id))

    async def release(self, run_id: str) -> int:
        """Drop every lease of ``run_id`` (also used for runs recovered after a crash)."""
        async with self.db.transaction() as conn:
            result = await conn.execute(delete(leases).where(leases.c.holder == run_id))
        return int(result.rowcount or 0)

    async def held(self) -> list[dict[str, Any]]:
        """Every lease that has not expired, for the API and the dashboard."""
        async with self.db.transaction(write=False) as conn:
            rows = await conn.execute(select(leases).where(leases.c.expires_at >= time.time()).order_by(leases.c.key))
            return [dict(r._mapping) for r in rows]

    # ------------------------------------------------------------------ internals
    async def _try_acquire(self, run_id: str, claims: Sequence[LeaseClaim], experiment: str) -> list[dict[str, Any]]:
        now = time.time()
        wanted = {c.key: c for c in claims}
        async with self.db.transaction(exclusive="leases") as conn:
            await conn.execute(delete(leases).where(leases.c.expires_at < now))
            rows = await conn.execute(
                select(leases).where(leases.c.key.in_(list(wanted)), leases.c.holder != run_id)
            )
            conflicts = [
                dict(r._mapping) for r in rows
                if r.mode == "exclusive" or wanted[r.key].mode == "exclusive"
            ]
            if conflicts:
                return conflicts
            await conn.execute(delete(leases).where(leases.c.holder == run_id))
            if claims:
                await conn.execute(insert(leases), [
                    {"key": c.key, "holder": run_id, "mode": c.mode, "owner": self.owner, "experiment": experiment,
                     "acquired_at": now, "expires_at": now + self.ttl}
                    for c in claims
                ])
        log.info("leases taken", run_id=run_id, claims=len(claims))
        return []

    async def _renew(self, run_id: str) -> None:
        """Extend the leases while the run lasts; a failing database is logged, not fatal: the
        run is mid-fault and its rollback matters more than the lease (which then lapses)."""
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                async with self.db.transaction() as conn:
                    await conn.execute(
                        update(leases).where(leases.c.holder == run_id).values(expires_at=time.time() + self.ttl)
                    )
            except ChaosError as exc:
                log.warning("lease renewal failed", run_id=run_id, error=exc.message)

    async def _stop_and_release(self, renewer: asyncio.Task[None], run_id: str) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await renewer
        try:
            count = await self.release(run_id)
            log.info("leases released", run_id=run_id, count=count)
        except ChaosError as exc:  # they lapse after the ttl
            log.warning("lease release failed; the leases lapse by themselves", run_id=run_id, error=exc.message,
                        ttl_s=self.ttl)


async def finish_despite_cancel(work: Awaitable[None]) -> None:
    """Run ``work`` to its end even if the calling task is cancelled meanwhile (cleanup that a
    second Ctrl-C or an abort must not cut short); the cancellation is re-raised afterwards."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    task.result()
    if cancelled:
        raise asyncio.CancelledError


def _describe(conflicts: list[dict[str, Any]], claims: Sequence[LeaseClaim], *, waited: float) -> str:
    labels = {c.key: c.label for c in claims}
    parts = []
    for c in sorted(conflicts, key=lambda c: c["key"]):
        until = datetime.fromtimestamp(c["expires_at"], UTC).strftime("%H:%M:%S UTC")
        parts.append(f"{labels.get(c['key'], c['key'])} is leased ({c['mode']}) by run {c['holder']} "
                     f"of experiment {c['experiment']} ({c['owner']}, renewed until {until})")
    after = f" after waiting {waited:g}s" if waited else ""
    return "another run holds what this plan needs" + after + ": " + "; ".join(parts)
