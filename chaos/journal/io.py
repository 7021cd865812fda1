"""Writing and reading a journal: one JSON object per line, appended and flushed as the run goes.

The journal is the only record of a run; metrics, the verdict and every report are computed
from it and can be recomputed. The first line says the schema version (``JournalHeader``);
every other line is one event of ``chaos.journal.events``. ``write`` validates an event
against its model before it reaches the file; ``read_events`` gives models, ``read_journal`` the
same events as plain dicts (what the analysis indexes). A journal of this schema version written
before the header existed still loads; a last line cut short by a crash is skipped.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from chaos.errors import InvalidInput

from chaos.journal.events import EVENT_MODELS, SCHEMA_VERSION, Event, JournalHeader, parse_event


class JournalError(InvalidInput):
    """A journal line that is not an event of this schema: which line, and why (exit 3)."""


class Journal:
    """Append-only, flushed on every event; safe to call from threads and asyncio tasks."""

    def __init__(self, path: Path, *, tool_version: str | None = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not path.exists() or path.stat().st_size == 0
        if not fresh:
            _complete_last_line(path)
        self._file = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives with the run
        self._lock = threading.Lock()
        if fresh:
            self._append(JournalHeader(t=time.time(), schema_version=SCHEMA_VERSION, tool_version=tool_version), sync=True)

    def write(self, kind: str, t: float | None = None, **fields: Any) -> dict[str, Any]:
        """Validate and append one event; returns it as written. An unknown kind or a field its
        model does not have is a bug of the writer: ValueError, nothing written."""
        event = _validated(kind, t, fields)
        self._write_line(_line(event), sync=_durable(kind))
        return event

    def write_all(self, events: Sequence[tuple[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
        """Validate and append several events (kind, fields) with one write and at most one
        fsync; returns them as written. Nothing is written unless every one is valid.

        What a wave of faults journals its undo records with: each must be on disk before its
        injection, and one fsync per record, one after the other on the event loop, held the
        wave's injections back by as many fsyncs (50 in a wave of 50). One fsync after all of
        them keeps the guarantee for every injection of the wave, which all start after it."""
        written = [_validated(kind, None, dict(fields)) for kind, fields in events]
        with self._lock:
            self._file.write("".join(_line(event) + "\n" for event in written))
            self._file.flush()
            if any(_durable(event["kind"]) for event in written):
                os.fsync(self._file.fileno())
        return written

    def write_event(self, event: Event) -> None:
        """Append a model (a plugin's, say) as it is."""
        self._append(event, sync=_durable(event.kind))

    def _append(self, event: Event, *, sync: bool) -> None:
        self._write_line(event.model_dump_json(exclude_none=True), sync=sync)

    def _write_line(self, line: str, *, sync: bool) -> None:
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()
            if sync:
                os.fsync(self._file.fileno())  # what recovery depends on must reach the disk

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _validated(kind: str, t: float | None, fields: dict[str, Any]) -> dict[str, Any]:
    """The event of ``kind`` with ``fields``, checked against its model (ValueError if it does not fit)."""
    model = EVENT_MODELS.get(kind)
    if model is None:
        raise ValueError(f"journal event kind {kind!r} has no model in chaos.journal.events")
    event = {"t": time.time() if t is None else t, "kind": kind, **fields}
    try:
        model.model_validate(event)
    except ValidationError as exc:
        raise ValueError(f"journal event {kind}: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None
    return event


def _line(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), default=str)


def _durable(kind: str) -> bool:
    """Events recovery depends on (the faults' and the run's) are fsynced before the writer goes on."""
    return kind.startswith(("fault.", "run."))


def _complete_last_line(path: Path) -> None:
    """Before appending to a journal whose last line was cut short (a run killed mid-write):
    end that line if it is a whole JSON object, else drop it. Appending after a torn line would
    leave it in the middle of the file, where it is damage (an error), not a crash's trace."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - 1))
        if size == 0 or f.read(1) == b"\n":
            return
        f.seek(max(0, size - (1 << 20)))  # a line is far shorter than a megabyte
        tail = f.read()
        start = size - len(tail) + tail.rfind(b"\n") + 1
        torn = tail[tail.rfind(b"\n") + 1:]
        if _decode(torn)[1] is None:
            f.write(b"\n")
        else:
            f.truncate(start)


def _decode(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """A journal line's object, or None and why it is not one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"is not UTF-8 text (byte {exc.start + 1})"
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        return None, f"is not JSON ({getattr(exc, 'msg', 'nested too deeply')})"
    if not isinstance(data, dict):
        return None, "is not a JSON object"
    return data, None


def _lines(path: Path, damaged: list[JournalError] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of every JSON object line; a torn last line is skipped.

    A line that is not a JSON object with more lines after it is damage, not a crash's trace:
    JournalError naming it, or, when ``damaged`` is given, the error is added there and the line
    passed over (what recovery uses to act on the readable part)."""
    with open(path, "rb") as f:
        pending: JournalError | None = None  # a bad line, damage unless it turns out to be the last
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            if pending is not None:
                _damage(pending, damaged)
                pending = None
            data, why = _decode(raw.strip())
            if data is None:
                pending = JournalError(f"{path}:{number}: the line {why}: the journal is damaged there")
                continue
            yield number, data


def _damage(error: JournalError, damaged: list[JournalError] | None) -> None:
    if damaged is None:
        raise error
    damaged.append(error)


def read_events(path: Path, *, damaged: list[JournalError] | None = None) -> Iterator[Event]:
    """The journal's events as models (the header included), checked against the schema.

    Raises JournalError naming the line for a damaged line (not the last), an event of a known
    kind that does not fit its model, or a journal of another schema version. With ``damaged``,
    the first two are collected there instead and the rest of the journal is still read.
    Kinds this tool does not know are passed over (a newer tool's, a plugin's that is not
    installed)."""
    for number, data in _lines(path, damaged):
        if data.get("kind") == "journal" and data.get("schema_version") not in (None, SCHEMA_VERSION):
            raise JournalError(
                f"{path}:{number}: journal schema version {data.get('schema_version')!r}; this chaos reads "
                f"version {SCHEMA_VERSION}"
            )
        try:
            event = parse_event(data)
        except (ValidationError, ValueError, TypeError) as exc:
            detail = exc.errors()[0] if isinstance(exc, ValidationError) else None
            why = f"{'.'.join(map(str, detail['loc']))}: {detail['msg']}" if detail else str(exc)
            _damage(JournalError(f"{path}:{number}: not a valid {str(data.get('kind'))[:60]!r} event: {why}"), damaged)
            continue
        if event is not None:
            yield event


def read_journal(path: Path) -> Iterator[dict[str, Any]]:
    """The journal's events (header left out) as dicts, each validated against its model."""
    for event in read_events(path):
        if not isinstance(event, JournalHeader):
            yield event.model_dump(exclude_unset=True)  # the fields as written (a None stays None)
