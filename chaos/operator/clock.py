"""The operator's clock: real time, or (for tests only) real time running faster.

Schedules are minutes apart at the finest, so a test that watches "three minutes of a schedule
that fires every minute" would take three minutes. ``ScaledClock`` lets such a test run the
operator's idea of time ``scale`` times faster than the wall clock: cron times, jitter,
deadlines and blackouts are all judged on it, while runs themselves take the real time they
take. It is reached only through the environment variable ``CHAOS_SERVE_CLOCK_SCALE`` (an
internal hook, not part of the file format or the documented flags).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from datetime import UTC, datetime


class Clock:
    """Wall-clock time, in aware UTC datetimes."""

    scale = 1.0

    def now(self) -> datetime:
        return datetime.now(UTC)

    def real_seconds(self, virtual_seconds: float) -> float:
        """How long ``virtual_seconds`` of this clock last on the wall clock."""
        return virtual_seconds / self.scale

    async def sleep_until(self, when: datetime, wake: asyncio.Event) -> None:
        """Sleep until ``when`` or until ``wake`` is set, whichever comes first."""
        delay = self.real_seconds((when - self.now()).total_seconds())
        if delay <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await wake.wait()


class ScaledClock(Clock):
    """Agrees with the wall clock at ``origin`` (default: now) and runs ``scale`` times faster.
    Processes given the same origin agree on the time (two operators sharing a database)."""

    def __init__(self, scale: float, origin: float | None = None) -> None:
        if not 0 < scale <= 3600:
            raise ValueError(f"clock scale {scale!r} must be in (0, 3600]")
        self.scale = scale
        self._origin = time.time() if origin is None else origin

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._origin + (time.time() - self._origin) * self.scale, UTC)


def clock_from_environment() -> Clock:
    scale = os.environ.get("CHAOS_SERVE_CLOCK_SCALE")
    origin = os.environ.get("CHAOS_SERVE_CLOCK_ORIGIN")
    return ScaledClock(float(scale), float(origin) if origin else None) if scale else Clock()
