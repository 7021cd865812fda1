"""How experiment files write time: durations ("20ms", "1.5s", "10m", "1h").

A duration is parsed once, when a file is validated, so a typo in a hold time is reported with
the file's line before anything runs, and the rest of the tool only ever sees float seconds.
Cron schedules are ``chaos.experiment.schedule``'s (cronsim evaluates them).
"""

from __future__ import annotations

import math
import re
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
