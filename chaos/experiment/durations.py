"""How experiment files write time: durations ("20ms", "1.5s", "10m") and cron schedules.

Both are parsed once, when a file is validated, so a typo in a schedule or a hold time is
reported with the file's line before anything runs, and the rest of the tool only ever sees
float seconds and sets of integers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_RE = re.compile(r"^\s*(?P<number>\d+(?:\.\d+)?|\.\d+)\s*(?P<unit>ms|s|m|h)?\s*$")


def parse_duration(value: object, *, allow_zero: bool = False) -> float:
    """Seconds from ``"20ms"``, ``"1.5s"``, ``"10m"``, ``"1h"`` or a bare number of seconds.

    Negative values are never allowed and zero only where ``allow_zero`` says so: a zero
    probe interval or hold time is a typo, not a wish. Raises ``ValueError`` with the reason.
    """
    if isinstance(value, bool):  # bool is an int: `duration: yes` is not a duration
        raise ValueError(f"expected a duration such as 20ms, 1.5s, 10m or 1h, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION_RE.match(value)
        if not match:
            if value.strip().startswith("-"):
                raise ValueError(f"a duration cannot be negative, got {value!r}")
            raise ValueError(
                f"{value!r} is not a duration: write a number with one unit (ms, s, m, h), "
                "such as 20ms, 1.5s, 10m or 1h, or a bare number of seconds"
            )
        seconds = float(match["number"]) * _UNITS[match["unit"] or "s"]
    else:
        raise ValueError(f"expected a duration such as 20ms, 1.5s, 10m or 1h, got {type(value).__name__}")
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"a duration must be a finite number of seconds, got {value!r}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    if seconds == 0 and not allow_zero:
        raise ValueError(f"a duration must be greater than zero here, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest way to write ``seconds`` back in the file syntax (for summaries)."""
    if seconds == 0:
        return "0s"
    for unit, factor in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= factor and (seconds / factor).is_integer():
            return f"{int(seconds / factor)}{unit}"
    if seconds < 1:
        ms = seconds * 1000
        return f"{int(ms)}ms" if ms.is_integer() else f"{ms:g}ms"
    return f"{seconds:g}s"


def _positive(value: object) -> float:
    return parse_duration(value)


def _non_negative(value: object) -> float:
    return parse_duration(value, allow_zero=True)


_as_text = PlainSerializer(format_duration, return_type=str, when_used="json")

Duration = Annotated[float, BeforeValidator(_positive), _as_text]
"""A duration greater than zero, as float seconds."""

NonNegativeDuration = Annotated[float, BeforeValidator(_non_negative), _as_text]
"""A duration that may be zero (a warmup or settle time that is skipped)."""


# --------------------------------------------------------------------------- cron
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = {m: i for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), start=1)}
_DAYS = {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())}


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int]


_FIELDS = (
    _Field("minute", 0, 59, {}),
    _Field("hour", 0, 23, {}),
    _Field("day of month", 1, 31, {}),
    _Field("month", 1, 12, _MONTHS),
    _Field("day of week", 0, 7, _DAYS),  # 7 is Sunday too, as in Vixie cron
)


@dataclass(frozen=True)
class CronSchedule:
    """A parsed 5-field cron expression (minute hour day-of-month month day-of-week).

    As in Vixie cron, when both day fields are restricted a day matches if either does.
    """

    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days_of_month: frozenset[int]
    months: frozenset[int]
    days_of_week: frozenset[int]  # 0 = Sunday; a 7 in the file is stored as 0
    day_of_month_restricted: bool
    day_of_week_restricted: bool

    def _day_matches(self, day: datetime) -> bool:
        if day.month not in self.months:
            return False
        dom = day.day in self.days_of_month
        dow = (day.isoweekday() % 7) in self.days_of_week
        if self.day_of_month_restricted and self.day_of_week_restricted:
            return dom or dow
        return dom and dow

    def matches(self, moment: datetime) -> bool:
        return self._day_matches(moment) and moment.hour in self.hours and moment.minute in self.minutes

    def next_after(self, moment: datetime, *, horizon_days: int = 366 * 5) -> datetime | None:
        """The first whole minute strictly after ``moment`` that matches, within the horizon.

        None when nothing matches in the horizon (for example "0 0 31 2 *", February 31st).
        """
        start = moment.replace(second=0, microsecond=0) + timedelta(minutes=1)
        day = start.replace(hour=0, minute=0)
        for _ in range(horizon_days + 1):
            if self._day_matches(day):
                for hour in sorted(self.hours):
                    for minute in sorted(self.minutes):
                        candidate = day.replace(hour=hour, minute=minute)
                        if candidate >= start:
                            return candidate
            day += timedelta(days=1)
        return None


def _value(text: str, spec: _Field) -> int:
    key = text.lower()
    if key in spec.names:
        return spec.names[key]
    if not text.isdigit():
        choices = f" or a name ({', '.join(spec.names)})" if spec.names else ""
        raise ValueError(f"{spec.name} field: {text!r} is not a number{choices}")
    number = int(text)
    if not spec.low <= number <= spec.high:
        raise ValueError(f"{spec.name} field: {number} is outside {spec.low}-{spec.high}")
    return number


def _parse_field(text: str, spec: _Field) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise ValueError(f"{spec.name} field: empty item in {text!r}")
        base, _, step_text = part.partition("/")
        step = 1
        if step_text or part.endswith("/"):
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"{spec.name} field: step {step_text!r} must be a positive integer")
            step = int(step_text)
        if base == "*":
            low, high = spec.low, spec.high
        elif "-" in base:
            first, _, last = base.partition("-")
            low, high = _value(first, spec), _value(last, spec)
            if low > high:
                raise ValueError(f"{spec.name} field: range {base!r} goes backwards")
        else:
            low = _value(base, spec)
            high = spec.high if step_text else low  # "5/15" means 5, 20, 35, 50
        values.update(range(low, high + 1, step))
    return frozenset(values)


def parse_cron(expression: str) -> CronSchedule:
    """Parse a 5-field cron expression or a macro (@daily, @hourly, ...); ValueError says why."""
    if not isinstance(expression, str):
        raise ValueError(f"expected a cron expression in quotes, such as \"0 3 * * 1-5\", got {expression!r}")
    text = _MACROS.get(expression.strip().lower(), expression)
    if text.strip().startswith("@"):
        raise ValueError(f"unknown cron macro {expression.strip()!r} (choose one of: {', '.join(_MACROS)})")
    parts = text.split()
    if len(parts) != 5:
        raise ValueError(
            f"a cron schedule has 5 fields (minute hour day-of-month month day-of-week), "
            f"{expression!r} has {len(parts)}"
        )
    minutes, hours, doms, months, dows = (_parse_field(p, s) for p, s in zip(parts, _FIELDS, strict=True))
    return CronSchedule(
        expression=expression,
        minutes=minutes,
        hours=hours,
        days_of_month=doms,
        months=months,
        days_of_week=frozenset(d % 7 for d in dows),
        day_of_month_restricted=not parts[2].startswith("*"),
        day_of_week_restricted=not parts[4].startswith("*"),
    )
