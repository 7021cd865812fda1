"""Fuzzing journals cut or damaged at random points, through ``chaos report`` and ``chaos recover``
(issue 14).

``chaos report``: a recorded run's journal (tests/data/runs) truncated at any byte, or with
bytes, a line or a JSON value damaged anywhere: the report is rendered or the command fails with
exit 3 and a message naming the journal and the line; never a traceback or exit 70.

``chaos recover``: a run killed mid-fault on the fake network node (tests/fakenode.py, as in
tests/test_cli_fast.py) whose journal is then cut or damaged: every action whose
``fault.undo_recorded`` line is still readable is undone on the nodes, whatever else is
damaged, and a damaged line (not a torn last one) makes the command exit 3 naming the line.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from chaos.cli import main
from chaos.errors import ExitCode
from chaos.journal import Journal, read_journal
from chaos.log import configure_logging
from tests import fakenode
from tests.fakenode import FakeNetwork
from tests.conftest import budget

ROOT = Path(__file__).resolve().parent.parent
RUNS = sorted(p for p in (ROOT / "tests/data/runs").iterdir() if (p / "journal.jsonl").is_file())
FUZZ = settings(deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
LINK_DOWN = "  type: ha-link-down\n  replica: primary\n  duration: 60s"


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CHAOS_REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.setenv("CHAOS_LAB_ROOT", str(tmp_path / "labs"))
    monkeypatch.setenv("CHAOS_STATE_DIR", str(tmp_path / "state"))


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        configure_logging("console", "warning")
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="fuzz-journal-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------- damage
DAMAGE = st.sampled_from(["cut", "bytes", "garbage-line", "drop-line", "value", "cut-and-append"])


def damage(raw: bytes, data: st.DataObject) -> bytes:
    """``raw`` (a journal) cut or damaged at a point hypothesis chooses (as a fraction of its
    length: a fresh journal's length varies with its timestamps, the choice must not)."""
    def offset(label: str) -> int:
        return len(raw) * data.draw(st.integers(0, 10_000), label=label) // 10_000

    kind = data.draw(DAMAGE, label="damage")
    lines = raw.split(b"\n")
    if kind == "cut":
        return raw[: offset("cut at")]
    if kind == "bytes":
        at = offset("at")
        junk = data.draw(st.sampled_from([b"\xff", b"\x00", b"\xc3", b"}", b"{", b'"', b"\n", b"\\", b"]"]), label="junk")
        width = data.draw(st.integers(0, 3), label="overwrite")
        return raw[:at] + junk + raw[at + width:]
    index = (len(lines) - 1) * data.draw(st.integers(0, 999), label="line") // 1000
    if kind == "garbage-line":
        lines[index] = data.draw(st.sampled_from([b"not json", b"[1, 2]", b"42", b'"x"', b"null", b"{}", b'{"kind": 5}',
                                                  b'{"kind": "fault.undone"}', b'{"t": "x", "kind": "run.started"}',
                                                  b"\xfe\xff{}", b"[" * 5000]), label="garbage")
    elif kind == "drop-line":
        del lines[index]
    elif kind == "value":  # one field of one event given a value of the wrong type
        try:
            event = json.loads(lines[index])
        except (ValueError, RecursionError):
            return raw
        if isinstance(event, dict) and event:
            key = data.draw(st.sampled_from(sorted(event)), label="field")
            event[key] = data.draw(st.one_of(st.none(), st.integers(-(2**70), 2**70), st.text(max_size=10),
                                             st.lists(st.integers(), max_size=2), st.booleans(),
                                             st.floats(allow_nan=False)), label="value")
            lines[index] = json.dumps(event).encode()
    elif kind == "cut-and-append":  # torn by a kill, then written to again (by recover, say)
        cut = offset("cut at")
        return raw[:cut] + b'{"t": 1.0, "kind": "fault.undone", "action_id": "zz", "ok": true}\n'
    return b"\n".join(lines)


def check_clear_failure(code: int, err: str, journal: Path) -> None:
    assert "Traceback" not in err and "internal error" not in err, err
    assert code != ExitCode.INTERNAL
    if code != ExitCode.OK:
        assert code == ExitCode.INVALID_INPUT, (code, err)
        # the journal and the line, or the action whose undo steps fail their checksum
        assert re.search(rf"{re.escape(str(journal))}(:\d+: |: the undo steps of action)", err), err


# --------------------------------------------------------------------------- chaos report
@settings(FUZZ, max_examples=budget(60))
@given(run=st.sampled_from(RUNS), data=st.data())
@example(run=RUNS[0], data=None)  # the untouched journal renders
def test_report_of_a_damaged_journal_renders_or_names_the_line(run: Path, data: st.DataObject | None) -> None:
    with scratch() as tmp:
        folder = tmp / run.name
        shutil.copytree(run, folder)
        journal = folder / "journal.jsonl"
        if data is not None:
            journal.write_bytes(damage(journal.read_bytes(), data))
        code, out, err = cli("report", str(folder))
        check_clear_failure(code, err, journal)
        if data is None:
            assert code == ExitCode.OK and f"{run.name}: held" in out


# --------------------------------------------------------------------------- chaos recover
def crashed_run(net: FakeNetwork, tmp: Path) -> Path:
    """A run killed mid-fault (tests/fakenode.py's crashed_run): undo recorded, fault injected."""
    (tmp / "inv.yaml").write_text(fakenode.inventory_yaml(net.topology))
    (tmp / "exp.yaml").write_text(fakenode.experiment_yaml("inv.yaml", LINK_DOWN))
    return fakenode.crashed_run(net, tmp / "exp.yaml", tmp / "reports")


def readable_undos(journal: Path) -> dict[str, tuple[str, str, bytes]]:
    """action id -> (router, node, line) of every fault.undo_recorded line that still parses whole."""
    out = {}
    lines = journal.read_bytes().split(b"\n")
    for raw in lines:
        try:
            event = json.loads(raw)
        except (ValueError, RecursionError):
            continue
        if isinstance(event, dict) and event.get("kind") == "fault.undo_recorded":
            try:
                out[event["action_id"]] = (event["router_id"], event["node"], raw.strip())
            except (KeyError, TypeError):
                continue
    return out


@settings(FUZZ, max_examples=budget(25))
@given(data=st.data())
def test_recover_undoes_what_the_readable_part_lists(data: st.DataObject) -> None:
    # a fake network per example, installed for this example only (fakenode.install patches the
    # pools once: a second install under the same monkeypatch would leave the first network's)
    with scratch() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHAOS_REPORTS_DIR", str(tmp / "reports"))
        net = fakenode.FakeNetwork(fakenode.topology())
        fakenode.install(mp, net)
        _recover_damaged(net, tmp, data)
        assert not net.unmodelled, f"commands the fake does not model: {net.unmodelled}"


def _recover_damaged(net: FakeNetwork, tmp: Path, data: st.DataObject) -> None:
    """A crashed run, its journal damaged, then `chaos recover` twice."""
    run_dir = crashed_run(net, tmp)
    journal = run_dir / "journal.jsonl"
    intact = readable_undos(journal)
    journal.write_bytes(damage(journal.read_bytes(), data))
    readable = {a: where for a, where in readable_undos(journal).items() if a in intact and intact[a] == where}
    code, out, err = cli("recover", str(run_dir))
    check_clear_failure(code, err, journal)
    left = net.injected()
    for router, node, _ in readable.values():  # whatever else is damaged, what is intact is undone
        assert not [x for x in left if x.startswith(f"{node}:") and router in x and "dead-man" not in x], (left, readable, out, err)
    if code == ExitCode.OK and len(readable) == len(intact):
        assert left == [], (left, out, err)
    # and the journal stays readable by the next recover (its own lines are whole)
    code2, _, err2 = cli("recover", str(run_dir))
    check_clear_failure(code2, err2, journal)


# --------------------------------------------------------------------------- regressions found
def test_non_utf8_bytes_in_a_journal_are_a_damaged_line_not_an_internal_error(tmp_path: Path) -> None:
    """Found by the report fuzzer: a byte that is not UTF-8 made reading the journal raise
    UnicodeDecodeError (exit 70); and a damaged line mid-file was skipped without a word."""
    folder = tmp_path / RUNS[0].name
    shutil.copytree(RUNS[0], folder)
    journal = folder / "journal.jsonl"
    lines = journal.read_bytes().split(b"\n")
    lines[3] = b"\xff" + lines[3]
    journal.write_bytes(b"\n".join(lines))
    code, _, err = cli("report", str(folder))
    assert code == ExitCode.INVALID_INPUT
    assert f"{journal}:4: the line is not UTF-8 text" in err


def test_a_torn_last_line_is_skipped_and_appending_first_removes_it(tmp_path: Path) -> None:
    """A journal cut mid-line by a kill, then appended to (recover writes fault.undone): the torn
    line must not end up mid-file, where it would read as damage."""
    journal = tmp_path / "journal.jsonl"
    with Journal(journal) as j:
        j.write("fault.undone", action_id="a1", ok=True)
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'{"t": 1.0, "kind": "fault.und')
    assert len(list(read_journal(journal))) == 1  # the torn last line is skipped
    with Journal(journal) as j:
        j.write("fault.undone", action_id="a2", ok=True)
    assert [e["action_id"] for e in read_journal(journal)] == ["a1", "a2"]
    journal.write_bytes(journal.read_bytes() + b'{"t": 2.0, "kind": "fault.undone", "action_id": "a3", "ok": true}')
    with Journal(journal) as j:  # a last line that is whole but lacks its newline is kept
        j.write("fault.undone", action_id="a4", ok=True)
    assert [e["action_id"] for e in read_journal(journal)] == ["a1", "a2", "a3", "a4"]


def test_recover_with_a_damaged_line_still_undoes_the_rest(
    fake_network: Callable[..., FakeNetwork], tmp_path: Path
) -> None:
    """Before: one line that did not fit its model stopped recover before it undid anything."""
    net = fake_network()
    run_dir = crashed_run(net, tmp_path)
    journal = run_dir / "journal.jsonl"
    lines = journal.read_text().splitlines()
    first_undo = next(i for i, line in enumerate(lines) if '"fault.undo_recorded"' in line)
    victim = json.loads(lines[first_undo])
    lines[first_undo] = json.dumps({**victim, "undo": "broken"})
    journal.write_text("\n".join(lines) + "\n")
    code, out, err = cli("recover", str(run_dir))
    assert code == ExitCode.INVALID_INPUT, err
    assert f"{journal}:{first_undo + 1}: not a valid 'fault.undo_recorded' event" in err
    assert out.count("undone") == 3  # the other three actions
    left = [x for x in net.injected() if "dead-man" not in x]
    assert left and all(x.startswith(f"{victim['node']}:") for x in left), left


def test_the_operators_start_scan_reads_past_a_damaged_journal(tmp_path: Path) -> None:
    """A damaged journal among the run folders must not stop ``chaos serve`` from starting: the
    scan for runs it left unfinished uses what can be read (the damaged run is then recovered
    as far as its readable part goes, and stays unfinished if that fails)."""
    from chaos.journal import Journal
    from chaos.operator.recovery import unfinished_folders

    for name, damaged, finished in (("a-damaged", True, False), ("b-clean", False, False), ("c-done", False, True)):
        folder = tmp_path / name
        folder.mkdir()
        with Journal(folder / "journal.jsonl") as journal:
            journal.write("run.started", run_id=name, experiment="x.yaml", trigger={"kind": "schedule", "operator": "op1"})
            if finished:
                journal.write("run.finished", verdict="held", exit_code=0, reason="")
        if damaged:
            with (folder / "journal.jsonl").open("ab") as f:
                f.write(b'{"t": 1, "kind": "fault.injected", "action_id": 7}\n{"t": 2, "kind": "run.plan"}\n')
    assert [f.name for f in unfinished_folders(tmp_path, "op1")] == ["a-damaged", "b-clean"]
    assert unfinished_folders(tmp_path, "op2") == []
