"""Synthetic journal events for tests, built through the journal's own models.

A test's hand-made event is validated against ``chaos.journal.events`` like a real writer's,
so a synthetic journal cannot drift from what the runner writes: an unknown field, a missing
one or a wrong type fails the test that made it.
"""

from __future__ import annotations

from typing import Any

from chaos.journal import EVENT_MODELS


def event(t: float, kind: str, **fields: Any) -> dict[str, Any]:
    """One event as the journal would hold it (the fields given; validated by its model)."""
    data = {"t": t, "kind": kind, **fields}
    EVENT_MODELS[kind].model_validate(data)
    return data
