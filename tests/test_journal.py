"""The journal's models: writers are checked, readers get models, the doc lists every field."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from chaos.errors import InvalidInput
from chaos.journal import SCHEMA_VERSION, Journal, JournalError, read_events, read_journal
from chaos.journal.events import BUILTIN_EVENTS, FaultUndoRecorded, JournalHeader

DOC = Path(__file__).resolve().parent.parent / "docs" / "journal.md"
RUNS = Path(__file__).resolve().parent / "data" / "runs"


def test_every_kind_and_field_is_documented() -> None:
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([a-z_.]+)` \| (.*) \|$", DOC.read_text(), re.M)}
    for model in BUILTIN_EVENTS:
        kind = model.model_fields["kind"].default
        if kind == "journal":
            continue
        assert kind in rows, f"docs/journal.md has no row for {kind}"
        for field in model.model_fields:
            if field not in ("t", "kind"):
                assert f"`{field}`" in rows[kind], f"docs/journal.md: {kind} does not mention {field}"


def test_the_writer_refuses_what_no_model_allows(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    with Journal(path, tool_version="t") as journal:
        journal.write("fault.verified", action_id="a1", took=True, detail="ok")
        with pytest.raises(ValueError, match="no model"):
            journal.write("fault.vanished", action_id="a1")
        with pytest.raises(ValueError, match="took"):
            journal.write("fault.verified", action_id="a1", took="maybe")
        with pytest.raises(ValueError, match="colour.*Extra inputs"):
            journal.write("fault.verified", action_id="a1", took=True, colour="red")
    lines = path.read_text().splitlines()
    assert len(lines) == 2  # the header and the one valid event; nothing of the refused ones
    header, event = (json.loads(line) for line in lines)
    assert header == {"t": header["t"], "kind": "journal", "schema_version": SCHEMA_VERSION, "tool_version": "t"}
    assert event["kind"] == "fault.verified"
    assert [type(e) for e in read_events(path)][0] is JournalHeader
    assert [e["kind"] for e in read_journal(path)] == ["fault.verified"]  # dict readers never see the header


def test_events_written_together_are_all_valid_or_none_is_written(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    with Journal(path) as journal:
        with pytest.raises(ValueError, match="took"):
            journal.write_all([("fault.verified", {"action_id": "a1", "took": True}),
                               ("fault.verified", {"action_id": "a2", "took": "maybe"})])
        written = journal.write_all([("fault.verified", {"action_id": "a1", "took": True}),
                                     ("fault.undone", {"action_id": "a1", "ok": True})])
    assert [e["kind"] for e in written] == ["fault.verified", "fault.undone"]
    assert [(e["kind"], e["action_id"]) for e in read_journal(path)] == [("fault.verified", "a1"), ("fault.undone", "a1")]


def test_a_reopened_journal_gets_no_second_header(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    with Journal(path) as journal:
        journal.write("fault.verified", action_id="a1", took=True)
    with Journal(path) as journal:  # chaos recover appends to a run's journal
        journal.write("fault.undone", action_id="a1", ok=True, by="recover")
    kinds = [json.loads(line)["kind"] for line in path.read_text().splitlines()]
    assert kinds == ["journal", "fault.verified", "fault.undone"]


@pytest.mark.parametrize("run", sorted(p.name for p in RUNS.iterdir()))
def test_real_runs_of_this_schema_still_load(run: str) -> None:
    """Journals written by real lab runs before the header existed validate line by line."""
    events = list(read_events(RUNS / run / "journal.jsonl"))
    assert len(events) > 50 and any(isinstance(e, FaultUndoRecorded) for e in events)


def test_a_damaged_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_text(
        '{"t": 1, "kind": "journal", "schema_version": 1}\n'
        '{"t": 2, "kind": "fault.undone", "action_id": "a1", "ok": "perhaps"}\n'
    )
    with pytest.raises(JournalError, match=r"journal.jsonl:2: not a valid 'fault.undone' event: ok") as err:
        list(read_events(path))
    assert isinstance(err.value, InvalidInput)  # exit 3, a sentence
    path.write_text('{"t": 1, "kind": "journal", "schema_version": 99}\n')
    with pytest.raises(JournalError, match="schema version 99"):
        list(read_events(path))
    path.write_text('{"t": 1, "kind": "fault.verified", "action_id": "a", "took": true}\n{"t": 2, "kind": "fau')
    assert [e["kind"] for e in read_journal(path)] == ["fault.verified"]  # a torn last line is skipped
    path.write_text('{"t": 1, "kind": "somebody.elses", "x": 1}\n')
    assert list(read_journal(path)) == []  # an unknown kind is passed over
