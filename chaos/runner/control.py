"""How a run is started and stopped from outside the engine: its trigger and its abort signal.

``chaos run`` and ``chaos serve`` drive the same engine (``run_experiment``); these are the two
things that differ between them. The trigger is journaled in ``run.started`` (the history index
reads it back from there); an abort is journaled as ``run.abort_requested`` with who asked, and
ends the run through its normal rollback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict

from chaos.errors import ChaosError, ExitCode, Interrupted


class RunTrigger(BaseModel):
    """Who or what started a run."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["schedule", "manual", "cli"] = "cli"
    by: str | None = None  # a token's name, "schedule", or user@host for the CLI
    scheduled_for: float | None = None  # the cron time of a scheduled run
    operator: str | None = None  # the operator instance that runs it
    site: str | None = None


class RunAborted(ChaosError):
    """Somebody aborted the run (the API, the dashboard's operator); it was rolled back."""

    exit_code = ExitCode.ABORTED


class AbortSignal:
    """Asks one run to stop. The first request wins; listeners are called at once, in the
    requesting task, so an abort needs no task of its own to reach the run."""

    def __init__(self) -> None:
        self.by: str | None = None
        self.reason: str = ""
        self.interrupt = False
        self._listeners: list[Callable[[], None]] = []

    @property
    def requested(self) -> bool:
        return self.by is not None

    def request(self, by: str, reason: str = "", *, interrupt: bool = False) -> bool:
        """``interrupt``: the operator itself is stopping (SIGTERM), which ends the run as
        interrupted (130) rather than aborted (4). False when an abort was requested already."""
        if self.requested:
            return False
        self.by, self.reason, self.interrupt = by, reason, interrupt
        for listener in list(self._listeners):
            listener()
        return True

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` on a request (at once if one was made already); returns the unsubscribe."""
        self._listeners.append(listener)
        if self.requested:
            listener()
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def error(self) -> ChaosError:
        why = f": {self.reason}" if self.reason else ""
        if self.interrupt:
            return Interrupted(f"interrupted by {self.by}{why}; every injected fault was rolled back")
        return RunAborted(f"aborted by {self.by}{why}; every injected fault was rolled back")
