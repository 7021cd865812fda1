"""The broken-file suite and `chaos validate`: each file's problem at the right line and column.

Each file in tests/data/experiments/broken/ says what it must produce in `# expect:` lines
(`LINE:COL: path: start of the message`), so the expectation sits next to the mistake.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from chaos.errors import ExitCode, InvalidInput
from chaos.experiment.load import check_experiment, load_experiment
from tests.conftest import CHAOS_CLI

ROOT = Path(__file__).resolve().parent.parent
BROKEN = sorted((ROOT / "tests/data/experiments/broken").glob("*.yaml"))
SHIPPED = sorted((ROOT / "experiments").glob("*.yaml"))


def _expectations(path: Path) -> list[str]:
    return [line.split("expect:", 1)[1].strip() for line in path.read_text().splitlines() if line.startswith("# expect:")]


def _chaos(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chaos.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=60, check=False
    )


def test_the_suite_is_big_enough_and_every_file_says_what_it_expects() -> None:
    assert len(BROKEN) >= 15
    for path in BROKEN:
        assert _expectations(path), f"{path.name} has no '# expect:' line"


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.stem)
def test_broken_file_reports_the_expected_problem(path: Path) -> None:
    check = check_experiment(path)
    assert not check.ok and check.experiment is None
    reported = [str(p) for p in check.problems]
    for expected in _expectations(path):
        assert any(r.startswith(f"{path}:{expected}") for r in reported), f"expected {expected!r} in {reported}"
    assert len(reported) == len(_expectations(path)), f"unexpected extra problems: {reported}"


@pytest.mark.parametrize("path", BROKEN[:3], ids=lambda p: p.stem)
def test_load_experiment_raises_invalid_input_with_every_problem(path: Path) -> None:
    with pytest.raises(InvalidInput) as caught:
        load_experiment(path)
    assert caught.value.exit_code == ExitCode.INVALID_INPUT
    for expected in _expectations(path):
        assert f"{path}:{expected}" in caught.value.message


def test_cli_reports_every_problem_and_exits_3() -> None:
    many = ROOT / "tests/data/experiments/broken/many-problems.yaml"
    result = _chaos("validate", str(many.relative_to(ROOT)))
    assert result.returncode == ExitCode.INVALID_INPUT
    lines = result.stdout.strip().splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == [
        f"tests/data/experiments/broken/many-problems.yaml:{e.split(':')[0]}:{e.split(':')[1]}" for e in _expectations(many)
    ]
    assert "Traceback" not in result.stderr


def test_cli_on_yaml_errors_and_missing_files_gives_one_line_each_and_no_traceback() -> None:
    result = _chaos(
        "validate", "tests/data/experiments/broken/yaml-unclosed-bracket.yaml",
        "tests/data/experiments/broken/empty.yaml", "tests/data/experiments/no-such-file.yaml",
    )
    assert result.returncode == ExitCode.INVALID_INPUT
    lines = result.stdout.strip().splitlines()
    assert lines == [
        "tests/data/experiments/broken/yaml-unclosed-bracket.yaml:5:3: invalid YAML: while parsing a flow mapping "
        "expected ',' or '}', but got '<scalar>'",
        "tests/data/experiments/broken/empty.yaml:1:1: the file is empty: an experiment needs at least title, target, "
        "fault and steady_state_hypothesis",
        "tests/data/experiments/no-such-file.yaml: no such file",
    ]
    assert "3 of 3 files are invalid" in result.stderr and "Traceback" not in result.stderr


def test_cli_passes_the_shipped_experiments_with_a_summary_each() -> None:
    result = _chaos("validate", *[str(p.relative_to(ROOT)) for p in SHIPPED])
    assert result.returncode == ExitCode.OK, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(SHIPPED)
    for path, line in zip(SHIPPED, lines, strict=True):
        assert line.startswith(f"experiments/{path.name}: ok: targets ")
        assert "; injects " in line


CRON_MESSAGE = ("invalid cron expression '0 24 * * 1-5': bad hour field (fields: minute hour day-of-month month "
                "day-of-week; numbers, ranges 1-5, lists 1,15, steps */15, names jan and mon)")


def test_cli_one_invalid_file_among_valid_ones_fails_the_whole_run() -> None:
    result = _chaos("validate", "--json", "experiments/keepalived-term.yaml", "tests/data/experiments/broken/bad-cron.yaml")
    assert result.returncode == ExitCode.INVALID_INPUT
    report = json.loads(result.stdout)
    assert [r["ok"] for r in report] == [True, False]
    assert report[1]["problems"] == [
        {"line": 10, "column": 11, "path": "schedule", "message": CRON_MESSAGE}
    ]


def test_a_reader_that_goes_away_stops_the_output_quietly_with_141(tmp_path: Path) -> None:
    """`chaos validate ... | head -1`: the pipe's reader is gone before the output ends. The
    command stops as a program killed by SIGPIPE would (141), without Python's complaint about
    a flush at exit or an internal error (it was exit 70 with a BrokenPipeError)."""
    import os

    from chaos.errors import ExitCode

    read, write = os.pipe()
    os.close(read)  # nobody will read
    try:
        proc = subprocess.run([*CHAOS_CLI, "validate", str(ROOT / "experiments/gateway-reboot.yaml")],
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write)
    assert proc.returncode == ExitCode.BROKEN_PIPE == 141, proc.stderr
    assert proc.stderr == ""
