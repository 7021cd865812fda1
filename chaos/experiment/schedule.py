"""When an experiment runs unattended: the ``schedule:`` section and the arithmetic of firings.

Cron expressions are evaluated by cronsim (the same Debian-cron semantics as before: when both
day fields are restricted a day matches if either does; daylight-saving gaps and repeats are
handled as Debian cron handles them), in the schedule's own time zone. The file format keeps
five fields: a minute is the finest grain a schedule can ask for, on purpose (a chaos run every
few seconds is a load test, not a schedule).

Everything here is a pure function of its arguments (a time is always passed in), so the
operator can run it against a real or an injected clock and tests can check it exactly.
"""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, time, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    model_validator,
)
from pydantic_core import PydanticCustomError

from chaos.experiment.durations import Duration, NonNegativeDuration

Text = Annotated[str, Strict()]
Concurrency = Literal["forbid", "queue"]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[str, ...] = Weekday.__args__  # type: ignore[attr-defined]

# Aliases people know from crontab(5); cronsim reads five or six fields only.
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
FIELDS = "minute hour day-of-month month day-of-week"
_REFERENCE = datetime(2026, 1, 1, tzinfo=UTC)


def cron_fields(expression: str) -> str:
    """The five cron fields of ``expression`` (macros expanded); ValueError says what is wrong."""
    if not isinstance(expression, str):
        raise ValueError(f'expected a cron expression in quotes, such as "0 3 * * 1-5", got {expression!r}')
    text = expression.strip()
    if text.startswith("@"):
        if text.lower() not in MACROS:
            raise ValueError(f"unknown cron macro {text!r} (choose one of: {', '.join(MACROS)})")
        return MACROS[text.lower()]
    parts = text.split()
    if len(parts) != 5:
        raise ValueError(f"a cron schedule has 5 fields ({FIELDS}), {expression!r} has {len(parts)}")
    try:
        CronSim(" ".join(parts), _REFERENCE)
    except CronSimError as exc:  # "Bad hour": name the field and what the fields are
        what = str(exc).removeprefix("Bad ").strip() or "expression"
        never = " or a day that no month given has: it would never fire" if what == "day-of-month" else ""
        raise ValueError(
            f"invalid cron expression {expression!r}: bad {what} field{never} (fields: {FIELDS}; "
            "numbers, ranges 1-5, lists 1,15, steps */15, names jan and mon)"
        ) from None
    return " ".join(parts)


def _cron(value: str) -> str:
    try:
        cron_fields(value)
    except ValueError as exc:
        raise PydanticCustomError("cron", "{reason}", {"reason": str(exc)}) from None
    return value


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise PydanticCustomError(
            "timezone", "{reason}", {"reason": f"unknown time zone {value!r} (an IANA name such as UTC or Europe/Berlin)"}
        ) from None
    return value


_TIME_OF_DAY = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def _instant_or_time(value: object) -> object:
    """``"09:00"`` stays text (a time of day); a date-time in any ISO form becomes a datetime."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and not _TIME_OF_DAY.match(value.strip()):
        try:
            return datetime.fromisoformat(value.strip())
        except ValueError:
            raise PydanticCustomError(
                "blackout_time", "{reason}",
                {"reason": f"{value!r} is neither a time of day (HH:MM) nor a date-time (2026-12-20T00:00)"},
            ) from None
    return value.strip() if isinstance(value, str) else value


BlackoutEdge = Annotated[str | datetime, BeforeValidator(_instant_or_time)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Blackout(_Model):
    """A period in which no firing starts: weekly hours (``start``/``end`` as HH:MM, optionally on
    some ``days``) or one fixed span (``start``/``end`` as date-times, a freeze period)."""

    name: Text = ""
    days: tuple[Weekday, ...] | None = Field(default=None, min_length=1, description="weekly windows only")
    start: BlackoutEdge
    end: BlackoutEdge

    @model_validator(mode="after")
    def _shape(self) -> Blackout:
        weekly = isinstance(self.start, str), isinstance(self.end, str)
        if weekly[0] != weekly[1]:
            raise PydanticCustomError(
                "blackout", "{reason}", {"reason": "start and end must both be times of day (HH:MM) or both date-times"}
            )
        if not weekly[0]:
            if self.days is not None:
                raise PydanticCustomError("blackout", "{reason}", {"reason": "days applies to weekly windows (HH:MM) only"})
            if _aware(self.end, UTC) <= _aware(self.start, UTC):  # type: ignore[arg-type]
                raise PydanticCustomError("blackout", "{reason}", {"reason": "end must be after start"})
        elif self.start == self.end:
            raise PydanticCustomError("blackout", "{reason}", {"reason": "start and end are the same time: an empty window"})
        return self

    def label(self) -> str:
        if self.name:
            return self.name
        days = f" {','.join(self.days)}" if self.days else ""
        return f"{_edge(self.start)}-{_edge(self.end)}{days}"

    def contains(self, moment: datetime, tz: ZoneInfo) -> bool:
        """Whether ``moment`` (aware) falls in the window; naive date-times are in ``tz``."""
        if isinstance(self.start, datetime) and isinstance(self.end, datetime):
            return _aware(self.start, tz) <= moment < _aware(self.end, tz)
        local = moment.astimezone(tz)
        start, end = _clock(str(self.start)), _clock(str(self.end))
        now = local.time().replace(tzinfo=None)
        if start < end:
            inside, day = start <= now < end, local
        elif now >= start:  # crosses midnight: the window belongs to the day it started on
            inside, day = True, local
        else:
            inside, day = now < end, local - timedelta(days=1)
        return inside and (self.days is None or WEEKDAYS[day.weekday()] in self.days)


def _clock(text: str) -> time:
    hour, minute = text.split(":")
    return time(int(hour), int(minute))


def _edge(value: str | datetime) -> str:
    return value if isinstance(value, str) else value.isoformat(timespec="minutes")


def _aware(value: datetime, tz: Any) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=tz)


def _shorthand(value: object) -> object:
    """``schedule: "0 3 * * 1-5"`` is short for ``schedule: {cron: "0 3 * * 1-5"}``."""
    return {"cron": value} if isinstance(value, str) else value


class Schedule(_Model):
    """When the operator (``chaos serve``) runs the experiment."""

    cron: Annotated[Text, AfterValidator(_cron)] = Field(description=f"five fields: {FIELDS}, or a macro such as @daily")
    timezone: Annotated[Text, AfterValidator(_timezone)] = Field(default="UTC", description="the cron's time zone (IANA)")
    jitter: NonNegativeDuration = Field(
        default=0.0, description="each firing starts up to this much later, at random, so schedules spread out"
    )
    starting_deadline: Duration = Field(
        default=300.0, description="a firing that cannot start within this of its time is recorded as missed"
    )
    concurrency: Concurrency = Field(
        default="forbid",
        description="a firing that overlaps a run on the same routers or nodes: forbid skips it, queue waits",
    )
    blackouts: tuple[Blackout, ...] = Field(default=(), description="periods in which no firing starts")

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def next_after(self, moment: datetime) -> datetime:
        """The first cron time strictly after ``moment`` (aware), in UTC."""
        return next_cron_time(self.cron, self.zone, moment)

    def times_between(self, start: datetime, end: datetime, limit: int = 1000) -> list[datetime]:
        """Cron times in (start, end], at most ``limit`` of them (the earliest)."""
        out: list[datetime] = []
        moment = start
        while len(out) < limit:
            moment = self.next_after(moment)
            if moment > end:
                break
            out.append(moment)
        return out

    def jitter_for(self, key: str, scheduled: datetime) -> float:
        """The delay of one firing: random, but the same for the same firing after a restart."""
        if not self.jitter:
            return 0.0
        return random.Random(f"{key}|{scheduled.isoformat()}").uniform(0.0, self.jitter)

    def blackout_at(self, moment: datetime, extra: tuple[Blackout, ...] = ()) -> Blackout | None:
        """The blackout (of this schedule, or one of ``extra``: the operator's freezes) covering ``moment``."""
        return next((b for b in (*self.blackouts, *extra) if b.contains(moment, self.zone)), None)

    def describe(self) -> str:
        parts = [f"cron {self.cron!r} ({self.timezone})"]
        if self.jitter:
            parts.append(f"jitter {self.jitter:g}s")
        parts.append(f"concurrency {self.concurrency}")
        if self.blackouts:
            parts.append(f"{len(self.blackouts)} blackout(s)")
        return ", ".join(parts)

    def explain(self) -> str:
        """The cron in words ("At 03:00 on every day-of-week from Monday through Friday")."""
        try:
            return CronSim(cron_fields(self.cron), _REFERENCE).explain()
        except Exception:  # noqa: BLE001 - explain() is a nicety; the expression itself is valid
            return self.cron


def next_cron_time(cron: str, zone: ZoneInfo, moment: datetime) -> datetime:
    """The first time ``cron`` matches strictly after ``moment`` (aware), in UTC."""
    local = moment.astimezone(zone)
    return next(CronSim(cron_fields(cron), local)).astimezone(UTC)


ScheduleField = Annotated[Schedule, BeforeValidator(_shorthand)]
"""The experiment's ``schedule:`` key: a mapping, or a cron text as its shorthand."""
