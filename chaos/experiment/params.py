"""What a fault's parameters and a probe's settings are built from.

Every fault module and probe module owns the pydantic model of what an experiment file may say
about it (``fault.params``, ``probes.<name>``); they build it from these pieces so that every
section of a file behaves the same way: frozen, unknown keys refused, numbers strict (a quoted
number or a bool is not a number), durations written as ``20ms``, ``1.5s``, ``10m``.

This module imports nothing of the tool but durations: fault and probe modules, built in or from
a plugin, are loaded while the experiment schema is being built, so they must not import the
schema itself (``chaos.experiment.schema``) at import time. What they need is here.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Strict

from chaos.experiment.durations import Duration, NonNegativeDuration, format_duration

Int = Annotated[int, Strict()]
Number = Annotated[float, Strict()]  # strict float still takes an int; never a string or a bool
Text = Annotated[str, Strict()]
Bool = Annotated[bool, Strict()]


class Params(BaseModel):
    """Base of every section model: frozen, and an unknown key is an error (a typo is not ignored)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class NoParams(Params):
    """Faults and probes that take no parameters still accept an empty mapping (``params: {}``)."""


__all__ = ["Bool", "Duration", "Int", "NoParams", "NonNegativeDuration", "Number", "Params", "Text", "format_duration"]
