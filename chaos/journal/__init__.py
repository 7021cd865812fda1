"""The run journal: typed events (``events``) and the file they live in (``io``).

A leaf package: it imports nothing of the tool but its errors (and pydantic), so every part (runner, faults,
probes, analysis, reports, operator) can depend on it without depending on each other.
"""

from chaos.journal.events import EVENT_MODELS, SCHEMA_VERSION, Event, JournalHeader, parse_event, register_event
from chaos.journal.io import Journal, JournalError, read_events, read_journal

__all__ = [
    "EVENT_MODELS", "SCHEMA_VERSION", "Event", "Journal", "JournalError", "JournalHeader", "parse_event",
    "read_events", "read_journal", "register_event",
]
