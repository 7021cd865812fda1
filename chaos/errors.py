"""One exception hierarchy for the whole tool.

Every error a user can cause or meet carries its exit code and a message that says what is
wrong and what to do. The CLI prints the message and exits with the code; it never shows a
traceback for a ``ChaosError``.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of the ``chaos`` command (documented in the README)."""

    OK = 0  # success; for `chaos run`: the steady-state hypothesis held
    DEVIATED = 1  # the run completed but a tolerance of the hypothesis failed
    USAGE = 2  # wrong command-line arguments
    INVALID_INPUT = 3  # an experiment, inventory or configuration file is invalid
    ABORTED = 4  # a safeguard aborted the run (everything was rolled back)
    INFRASTRUCTURE = 5  # a node, SSH, the API or the lab failed or could not be reached
    PREREQUISITES = 6  # not root, a required program is missing, the kernel lacks a feature
    CONFLICT = 7  # the state does not allow it: a lab exists already, no lab is running, ...
    STEADY_STATE_BROKEN = 8  # the hypothesis did not hold before injection: nothing injected
    LEFT_INJECTED = 9  # an undo failed: a fault may still be in place; `chaos recover RUN` undoes it
    INCONCLUSIVE = 10  # a tolerance failed, but only where the tool or the lab was saturated (see Run health)
    INTERNAL = 70  # a bug in the tool (EX_SOFTWARE); the message says where to look
    INTERRUPTED = 130  # SIGINT or SIGTERM; everything was rolled back
    BROKEN_PIPE = 141  # the reader of stdout went away (`| head`), as a program killed by SIGPIPE


class ChaosError(Exception):
    """Base of every error the CLI turns into a message and an exit code."""

    exit_code: ExitCode = ExitCode.INFRASTRUCTURE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class UsageError(ChaosError):
    """The command line asks for something that cannot work (flags that do not fit together)."""

    exit_code = ExitCode.USAGE


class InvalidInput(ChaosError):
    """A file or value supplied by the user is wrong."""

    exit_code = ExitCode.INVALID_INPUT


class Prerequisites(ChaosError):
    """The machine lacks something the tool needs (root, a program, a kernel feature)."""

    exit_code = ExitCode.PREREQUISITES


class Conflict(ChaosError):
    """The current state forbids the action (a lab already up, none running, ...)."""

    exit_code = ExitCode.CONFLICT


class InfrastructureError(ChaosError):
    """A node, SSH, the API or the lab failed."""

    exit_code = ExitCode.INFRASTRUCTURE


class SafeguardAbort(ChaosError):
    """A safeguard stopped the run; everything injected has been rolled back."""

    exit_code = ExitCode.ABORTED


class SteadyStateBroken(ChaosError):
    """The hypothesis failed before injection, so nothing was injected."""

    exit_code = ExitCode.STEADY_STATE_BROKEN


class Interrupted(ChaosError):
    """SIGINT or SIGTERM arrived; rollbacks ran before exiting."""

    exit_code = ExitCode.INTERRUPTED


ROLLBACK_CLAIMS = ("; everything was rolled back", "; every injected fault was rolled back", " (everything was rolled back)")


def without_rollback_claim(text: str) -> str:
    """``text`` without its claim that everything was rolled back: abort and interrupt messages
    are worded before the rollback runs, and must not be repeated once an undo failed."""
    for claim in ROLLBACK_CLAIMS:
        text = text.replace(claim, "")
    return text


class FaultsLeftInjected(InfrastructureError):
    """Undoing a fault failed (and so did replaying its journaled steps): it may still be in
    place. Its own exit code, so that nobody reads a run that left a fault behind as one that
    merely failed to reach a node; the message names the faults and ``chaos recover RUN``."""

    exit_code = ExitCode.LEFT_INJECTED

    def __init__(self, message: str, *, actions: list[str], hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.actions = actions
