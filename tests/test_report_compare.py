"""``chaos report`` over several runs: re-rendering, the comparison, and its refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from chaos.cli import main
from chaos.report.compare import classify, compare_runs
from chaos.report.run import load_run
from tests.test_report_journals import T0, RouterPlan, synth_run

LAB_RUNS = Path(__file__).parent / "data" / "runs"


def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    """An older run with short outages and no drops; a newer one with longer outages, a dropped
    session and more answered-again sessions lost: worse on outage and drops."""
    old = synth_run(tmp_path / "reports" / "run-old", [RouterPlan(outage=2.0), RouterPlan(outage=3.0)], start=T0)
    new = synth_run(tmp_path / "reports" / "run-new", [RouterPlan(outage=4.0, tcp_drop=True), RouterPlan(outage=3.0)],
                    start=T0 + 86400)
    return old, new


def test_classify_is_direction_aware() -> None:
    assert classify(4.0, 2.0, lower_is_better=True, seconds=True)[0] == "better"
    assert classify(2.0, 4.0, lower_is_better=True, seconds=True)[0] == "worse"
    assert classify(2, 4, lower_is_better=False, seconds=False)[0] == "better"  # e.g. conntrack_replicated
    assert classify(2.0, 2.05, lower_is_better=True, seconds=True)[0] == "same"  # within 5 %: probe jitter
    assert classify(0, 1, lower_is_better=True, seconds=False)[0] == "worse"  # counts are exact
    assert classify(None, 1.0, lower_is_better=True, seconds=True)[0] == "n/a"
    assert classify(1, 2, lower_is_better=None, seconds=False)[0] == "changed"


def test_comparison_shows_better_and_worse(tmp_path: Path) -> None:
    old, new = two_runs(tmp_path)
    # given newest first: the comparison orders by start time anyway
    c = compare_runs([load_run(new), load_run(old)])
    assert [r.run_dir for r in c.runs] == [old, new]
    by = {t.name: t for t in c.trends}
    assert by["max(outage_s)"].values == [pytest.approx(3.0), pytest.approx(4.0)]
    assert by["max(outage_s)"].change == "worse"
    assert by["p50(outage_s)"].change == "worse"  # 2.0 -> 3.0 (nearest rank)
    assert by["sum(tcp_dropped)"].values == [0, 1] and by["sum(tcp_dropped)"].change == "worse"
    assert by["failed tolerances"].change == "worse"
    reverse = compare_runs([load_run(old), load_run(new)])
    assert {t.name for t in reverse.by_change("worse")} == {t.name for t in c.by_change("worse")}


def test_comparison_better_when_fixed(tmp_path: Path) -> None:
    bad = synth_run(tmp_path / "a", [RouterPlan(outage=8.0, tcp_drop=True)], start=T0)
    good = synth_run(tmp_path / "b", [RouterPlan(outage=1.0)], start=T0 + 3600)
    c = compare_runs([load_run(bad), load_run(good)])
    by = {t.name: t for t in c.trends}
    assert by["max(outage_s)"].change == "better"
    assert by["sum(tcp_dropped)"].change == "better"
    assert by["failed tolerances"].change == "better"
    assert c.by_change("worse") == []


def test_chaos_report_cli_compares_two_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = two_runs(tmp_path)
    monkeypatch.setenv("CHAOS_REPORTS_DIR", str(tmp_path / "reports"))
    code = main(["report", "run-new", str(old)])  # a run id and a folder path
    out = capsys.readouterr().out
    assert code == 0
    for folder in (old, new):
        for name in ("report.html", "report.md", "junit.xml", "summary.json"):
            assert str(folder / name) in out and (folder / name).is_file()
    assert (new / "comparison.md").is_file() and (new / "comparison.html").is_file()
    line = next(x for x in out.splitlines() if x.startswith("max(outage_s)"))
    assert "3.000 s" in line and "4.000 s" in line and line.rstrip().endswith("WORSE ▼")
    assert "worse: " in out and "max(outage_s)" in out.split("worse: ", 1)[1].splitlines()[0]
    md = (new / "comparison.md").read_text()
    assert "| `max(outage_s)` | 3.000 s | 4.000 s |" in md and "WORSE" in md
    html = (new / "comparison.html").read_text()
    assert 'data-metric="max(outage_s)" data-change="worse"' in html


def test_chaos_report_out_dir_and_lab_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two real lab runs of the same experiment file (copied: the second is the same journal)."""
    src = LAB_RUNS / "20261125T140923Z-keepalived-kill-35cb60"
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(src, a)
    shutil.copytree(src, b)
    out = tmp_path / "cmp"
    assert main(["report", str(a), str(b), "--out", str(out)]) == 0
    assert (out / "comparison.md").is_file() and not (b / "comparison.md").exists()
    text = capsys.readouterr().out
    assert "worse: nothing" in text and "better: nothing" in text


def test_different_experiments_refused_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kill = LAB_RUNS / "20261125T140923Z-keepalived-kill-35cb60"
    term = LAB_RUNS / "20261125T140846Z-keepalived-term-1b7b4c"
    a, b = tmp_path / "kill", tmp_path / "term"
    shutil.copytree(kill, a)
    shutil.copytree(term, b)
    assert main(["report", str(a), str(b)]) == 3
    err = capsys.readouterr().err
    assert "different experiments" in err and "--force" in err and "Traceback" not in err
    assert not (a / "report.html").exists()  # nothing written when refused
    assert main(["report", str(a), str(b), "--force", "--out", str(tmp_path / "x")]) == 0
    assert (tmp_path / "x" / "comparison.html").is_file()


def test_missing_run_is_exit_7(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    real = synth_run(tmp_path / "reports" / "r1", [RouterPlan()])
    assert main(["report", "--reports-dir", str(tmp_path / "reports"), "r1", "no-such-run"]) == 7
    err = capsys.readouterr().err
    assert "no run 'no-such-run'" in err and "Traceback" not in err
    assert not (real / "report.html").exists()
