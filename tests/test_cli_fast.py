"""``chaos run``, ``chaos recover`` and ``chaos doctor`` end to end, in process, on the fake
network node: the exit codes and messages the README documents, the journal's verdict, and
that the model holds nothing injected afterwards. (A subprocess could not reach the fake, so
these call ``chaos.cli.main``; tests/test_engine.py runs the same paths against the lab.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chaos import cli
from chaos.errors import ExitCode
from chaos.journal import read_journal
from chaos.log import configure_logging
from chaos.transport import node_commands as nc
from tests import fakenode
from tests.fakenode import FakeNetwork

FakeFactory = Callable[..., FakeNetwork]
TERM = "  type: keepalived-kill\n  replica: primary\n  params: {signal: TERM, respawn_wait: 1s}"
LINK_DOWN = "  type: ha-link-down\n  replica: primary\n  duration: 0.3s"


@pytest.fixture
def chaos(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """``chaos(*argv)`` -> (exit code, stdout, stderr), with reports and lab root under tmp_path."""
    monkeypatch.setenv("CHAOS_REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.setenv("CHAOS_LAB_ROOT", str(tmp_path / "labs"))
    configure_logging("console", "warning")  # onto this test's captured stderr (the CLI reconfigures it)

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:  # argparse's usage errors
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def write(tmp_path: Path, net: FakeNetwork, fault: str, **options: Any) -> Path:
    (tmp_path / "inv.yaml").write_text(fakenode.inventory_yaml(net.topology))
    path = tmp_path / "exp.yaml"
    path.write_text(fakenode.experiment_yaml("inv.yaml", fault, **options))
    return path


def journal_of(stdout: str) -> list[dict[str, Any]]:
    return list(read_journal(Path(stdout.strip().splitlines()[-1]) / "journal.jsonl"))


def finished(events: list[dict[str, Any]]) -> dict[str, Any]:
    return next(e for e in events if e["kind"] == "run.finished")


def fault_commands(net: FakeNetwork) -> list[nc.Intent]:
    """What changed a node: every command but the read-only ones."""
    reads = (nc.GroundTruth, nc.Preflight, nc.BootId, nc.PidsAlive, nc.KeepalivedPids, nc.KeepalivedInstances,
             nc.VrrpRulesCount, nc.ConntrackTables, nc.FollowReplicas, nc.KeepalivedVrids)
    return [i for _, _, i in net.log if not isinstance(i, reads)]


# --------------------------------------------------------------------------- chaos run
def test_a_run_that_holds_exits_0_and_leaves_nothing_injected(fake_network: FakeFactory, tmp_path: Path, chaos: Any) -> None:
    net = fake_network(fakenode.topology(check_interval=0.3))
    code, out, err = chaos("run", str(write(tmp_path, net, TERM, mode="fixed", value=2)))
    assert code == ExitCode.OK, err
    assert "verdict: held" in out
    events = journal_of(out)
    assert finished(events)["verdict"] == "held"
    undone = [e for e in events if e["kind"] == "fault.undone"]
    assert len(undone) == 2 and {e["restarted_by"] for e in undone} == {"agent"}  # the modelled agent respawned them
    assert net.injected() == []


def test_a_failed_injection_exits_5_with_the_nodes_message(fake_network: FakeFactory, tmp_path: Path, chaos: Any) -> None:
    net = fake_network()
    net.fail(intent=nc.HaLinkSet, when=lambda i: i.action == nc.LinkAction.DOWN, times=1, status=2,
             stderr="RTNETLINK answers: Operation not permitted")
    code, out, err = chaos("run", str(write(tmp_path, net, LINK_DOWN)))
    assert code == ExitCode.INFRASTRUCTURE, err
    assert "Operation not permitted" in err and "internal error" not in err and "Traceback" not in err
    assert finished(journal_of(out))["verdict"] == "error"
    assert net.injected() == []


def test_a_runtime_safeguard_abort_exits_4(fake_network: FakeFactory, tmp_path: Path, chaos: Any) -> None:
    net = fake_network(timing=fakenode.Timing(master_down=60))
    path = write(tmp_path, net, LINK_DOWN.replace("0.3s", "20s"),
                 safeguards="  abort_when_routers_without_primary: 1\n  grace: 0.5s")
    code, out, err = chaos("run", str(path))
    assert code == ExitCode.ABORTED, err
    assert "had no primary for more than 0.5s" in err
    assert finished(journal_of(out))["verdict"] == "aborted"
    assert net.injected() == []


def test_a_broken_steady_state_exits_8_and_injects_nothing(fake_network: FakeFactory, tmp_path: Path, chaos: Any) -> None:
    net = fake_network()
    router = net.topology.routers[0]
    first = net.replica(router.id, router.replicas[0].node)  # partitioned by someone else: two primaries
    first.rules.append(fakenode.Rule("INPUT", first.ha_device, "not-ours"))
    net.promote(net.replica(router.id, router.replicas[1].node), net.clock())
    assert len(net.holders(router.id)) == 2
    path = write(tmp_path, net, LINK_DOWN.replace("primary", "any"), tolerances="primaries_before: {equals: 1, phase: before}",
                 warmup="0.2s")
    code, out, err = chaos("run", str(path))
    assert code == ExitCode.STEADY_STATE_BROKEN, err
    assert fault_commands(net) == []


def test_a_plan_that_needs_a_missing_primary_is_refused_with_4(fake_network: FakeFactory, tmp_path: Path, chaos: Any) -> None:
    net = fake_network()
    net.nodes["network-1"].reachable = False  # its primaries cannot be seen: those routers show none
    code, out, err = chaos("run", str(write(tmp_path, net, LINK_DOWN)))
    assert code == ExitCode.ABORTED, err
    assert "has 0 primaries" in err and fault_commands(net) == []


def test_preflight_failure_exits_6_and_injects_nothing(fake_network: FakeFactory, tmp_path: Path, chaos: Any) -> None:
    net = fake_network()
    for node in net.nodes.values():
        node.programs["keepalived"] = None
    code, out, err = chaos("run", str(write(tmp_path, net, TERM, mode="one")))
    assert code == ExitCode.PREREQUISITES, err
    assert "keepalived does not run" in err and "nothing was injected" in err
    assert fault_commands(net) == []


def test_dry_run_prints_the_commands_and_changes_nothing(fake_network: FakeFactory, tmp_path: Path, chaos: Any) -> None:
    net = fake_network()
    code, out, err = chaos("run", "--dry-run", str(write(tmp_path, net, LINK_DOWN)))
    assert code == ExitCode.OK, err
    assert "link set dev" in out and "4 action(s)" in out
    assert fault_commands(net) == [] and net.injected() == []


@pytest.mark.parametrize(("content", "code", "words"), [
    (None, ExitCode.INVALID_INPUT, "no such"),
    ("title: [unclosed\n", ExitCode.INVALID_INPUT, "exp.yaml:2"),
    ("title: t\nfault: {type: keepalived-bite}\n", ExitCode.INVALID_INPUT, "keepalived-bite"),
])
def test_bad_experiment_files_exit_3_with_the_file(tmp_path: Path, chaos: Any, content: str | None, code: int, words: str) -> None:
    path = tmp_path / "exp.yaml"
    if content is not None:
        path.write_text(content)
    got, out, err = chaos("run", str(path))
    assert got == code, err
    assert words in err and "Traceback" not in err


def test_a_missing_inventory_exits_3(fake_network: FakeFactory, tmp_path: Path, chaos: Any) -> None:
    net = fake_network()
    path = write(tmp_path, net, LINK_DOWN)
    (tmp_path / "inv.yaml").unlink()
    code, _, err = chaos("run", str(path))
    assert code == ExitCode.INVALID_INPUT and "inv.yaml" in err


def test_a_lab_target_without_a_lab_exits_7(tmp_path: Path, chaos: Any) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(fakenode.experiment_yaml("x", LINK_DOWN).replace("  source: inventory\n  inventory: x\n", "  source: lab\n"))
    code, _, err = chaos("run", str(path))
    assert code == ExitCode.CONFLICT, err
    assert "chaos lab up" in err


def test_usage_errors_exit_2(chaos: Any) -> None:
    code, _, err = chaos("run")
    assert code == ExitCode.USAGE and "usage" in err
    code, _, err = chaos("recover")
    assert code == ExitCode.USAGE


def test_a_bug_is_an_internal_error_70_and_still_rolls_back(fake_network: FakeFactory, tmp_path: Path, chaos: Any) -> None:
    net = fake_network()
    net.fail(intent=nc.GroundTruth, when=lambda i: len(i.replicas) == 1, times=1, how="raise", exc=KeyError("bug"))
    code, out, err = chaos("run", str(write(tmp_path, net, LINK_DOWN)))
    assert code == ExitCode.INTERNAL, err
    assert "internal error" in out
    assert finished(journal_of(out))["verdict"] == "error"
    assert net.injected() == []


# --------------------------------------------------------------------------- chaos recover
def crashed_run(net: FakeNetwork, tmp_path: Path, fault: str) -> Path:
    return fakenode.crashed_run(net, write(tmp_path, net, fault), tmp_path / "reports")


@pytest.mark.parametrize("fault", [
    "  type: ha-link-down\n  replica: primary\n  duration: 60s",
    "  type: vrrp-partition\n  replica: backup\n  duration: 60s",
    "  type: keepalived-kill\n  replica: primary\n  params: {signal: STOP}\n  duration: 60s",
])
def test_recover_undoes_a_killed_run_from_its_journal(
    fake_network: FakeFactory, tmp_path: Path, chaos: Any, fault: str
) -> None:
    net = fake_network()
    run_dir = crashed_run(net, tmp_path, fault)
    left = net.injected()
    assert len([x for x in left if "dead-man" in x]) == 4 and len(left) > 4  # the faults and their armed dead-men
    code, out, err = chaos("recover", run_dir.name)  # by run id, found under CHAOS_REPORTS_DIR
    assert code == ExitCode.OK, err
    assert out.count("undone") == 4
    assert net.injected() == []  # the faults undone, the dead-men cancelled by their markers
    undone = [e for e in read_journal(run_dir / "journal.jsonl") if e["kind"] == "fault.undone"]
    assert len(undone) == 4 and all(e["ok"] and e["by"] == "recover" for e in undone)
    code, out, _ = chaos("recover", str(run_dir))  # again: nothing left
    assert code == ExitCode.OK and "nothing left injected" in out


def test_recover_with_a_node_down_exits_9_then_finishes_when_it_answers(
    fake_network: FakeFactory, tmp_path: Path, chaos: Any
) -> None:
    net = fake_network()
    run_dir = crashed_run(net, tmp_path, "  type: ha-link-down\n  replica: primary\n  duration: 60s")
    net.nodes["network-2"].reachable = False
    code, out, err = chaos("recover", str(run_dir))
    assert code == ExitCode.LEFT_INJECTED, err  # a fault is still in place: not a mere infrastructure error
    assert "network-2: cannot reach" in err and "chaos recover" in err
    assert [x for x in net.injected() if x.startswith("network-2")]
    assert not [x for x in net.injected() if not x.startswith("network-2")]  # the others were undone
    net.nodes["network-2"].reachable = True
    code, out, err = chaos("recover", str(run_dir))
    assert code == ExitCode.OK, err
    assert out.count("undone") == 1 and net.injected() == []


def test_an_undo_that_keeps_failing_exits_9_and_every_output_says_what_is_left(
    fake_network: FakeFactory, tmp_path: Path, chaos: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14, part 4: the run's own exit code and verdict, no claim that all was rolled back,
    the reports list the fault and the command; after ``chaos recover`` they say nothing is left."""
    from chaos.analysis.summary import load_summary
    from chaos.faults.ha_link_down import HaLinkDown

    monkeypatch.setattr(HaLinkDown, "recovery_deadline", 0.5)  # this test is about what follows the deadline
    net = fake_network()
    failing = net.fail(intent=nc.HaLinkSet, when=lambda i: i.action == nc.LinkAction.UP, times=None, how="lost")
    code, out, err = chaos("run", str(write(tmp_path, net, LINK_DOWN, mode="one")))
    assert code == ExitCode.LEFT_INJECTED, out + err
    run_dir = Path(out.strip().splitlines()[-1])
    assert finished(journal_of(out))["verdict"] == "left-injected"
    assert "verdict: left-injected" in out and f"chaos recover {run_dir.name}" in out and "STILL INJECTED" in out
    assert "could not be undone" in out + err and "rolled back" not in out + err, out + err
    summary = load_summary(run_dir / "summary.json")
    assert [x.fault for x in summary.left_injected] == ["ha-link-down"]
    assert summary.left_injected[0].command == f"chaos recover {run_dir.name}"
    md, html = (run_dir / "report.md").read_text(), (run_dir / "report.html").read_text()
    assert "## Still injected" in md and f"chaos recover {run_dir.name}" in md and "replay failed" in md
    # The fault's dead-man is armed: every output says when the node undoes it by itself.
    injected = next(e for e in journal_of(out) if e["kind"] == "fault.injected")
    assert injected["deadman_at"] == pytest.approx(injected["t"] + injected["inject_s"] + 0.3, abs=0.01)
    assert summary.left_injected[0].deadman_at == injected["deadman_at"]
    promise = summary.left_injected[0].deadman()
    assert promise.startswith("a dead-man on network-") and promise.endswith("UTC if the node is up")
    assert promise in out and promise in md and promise in html
    assert 'id="left-injected"' in html and f"chaos recover {run_dir.name}" in html
    # (the fake's dead-man, armed for the fault's duration, may have undone it meanwhile: the
    # tool cannot know that, so it still says left injected; recover's replay is idempotent)
    net.failures.remove(failing)  # the node answers again
    code, out, err = chaos("recover", run_dir.name)
    assert code == ExitCode.OK, err
    assert net.injected() == []
    assert [e["by"] for e in read_journal(run_dir / "journal.jsonl") if e["kind"] == "fault.undone" and e["ok"]] == ["recover"]
    assert load_summary(run_dir / "summary.json").left_injected == []  # re-rendered after the recovery
    assert "Still injected" not in (run_dir / "report.md").read_text()


def test_recover_pending_undoes_every_killed_run_and_leaves_a_live_one_alone(
    fake_network: FakeFactory, tmp_path: Path, chaos: Any
) -> None:
    import os
    import time

    net = fake_network()
    killed = crashed_run(net, tmp_path, "  type: ha-link-down\n  replica: primary\n  duration: 60s")
    old = time.time() - 600
    os.utime(killed / "journal.jsonl", (old, old))  # killed ten minutes ago
    live = tmp_path / "reports" / "20270101T000001Z-live-000001"
    live.mkdir()
    (live / "topology.json").write_text((killed / "topology.json").read_text())
    # A run still going: its undo recorded a moment ago, no run.finished.
    (live / "journal.jsonl").write_text("".join(
        line + "\n" for line in (killed / "journal.jsonl").read_text().splitlines()
        if '"fault.injected"' not in line))
    (tmp_path / "reports" / "not-a-run").mkdir()  # ignored: no journal
    code, out, err = chaos("recover", "--pending")
    assert code == ExitCode.LEFT_INJECTED, out + err  # the live run's actions are still pending
    assert f"{killed.name}: 4 action(s) pending" in out and out.count("undone") == 4
    assert f"{live.name}: 4 action(s) pending" in out and "left alone" in out
    assert "1 of 2 run(s) recovered" in out
    assert net.injected() == []  # the live run's "faults" were the killed run's: undone, and not touched twice
    os.utime(live / "journal.jsonl", (old, old))
    code, out, err = chaos("recover", "--pending")
    assert code == ExitCode.OK, out + err
    assert f"{live.name}: 4 action(s) pending" in out and killed.name not in out
    code, out, err = chaos("recover", "--pending")
    assert code == ExitCode.OK and "no run has undo steps pending" in out
    code, _, err = chaos("recover", "--pending", killed.name)
    assert code == ExitCode.USAGE and "not both" in err


def test_recover_of_an_unknown_run_exits_7(chaos: Any) -> None:
    code, _, err = chaos("recover", "no-such-run")
    assert code == ExitCode.CONFLICT and "no run 'no-such-run'" in err


# --------------------------------------------------------------------------- chaos doctor
def test_doctor_names_what_to_fix_and_exits_6(fake_network: FakeFactory, tmp_path: Path, chaos: Any) -> None:
    net = fake_network()
    (tmp_path / "inv.yaml").write_text(fakenode.inventory_yaml(net.topology))
    code, out, err = chaos("doctor", "--inventory", str(tmp_path / "inv.yaml"), "--json")
    assert code == ExitCode.OK, out + err
    net.nodes["network-2"].uid = 1000
    rep = net.replica(net.topology.routers[0].id, "network-1")
    for proc in rep.node.keepalived_of(rep.router_id):
        rep.node.end(proc)
    code, out, err = chaos("doctor", "--inventory", str(tmp_path / "inv.yaml"), "--json")
    assert code == ExitCode.PREREQUISITES, out + err
    checks = json.loads(out)
    failed = {(c["node"], c["check"]) for c in (checks["checks"] if isinstance(checks, dict) else checks) if c["status"] == "fail"}
    assert ("network-2", "root") in failed
    assert ("network-1", f"replica {rep.router_id[:8]}") in failed


async def test_an_abort_whose_undo_fails_does_not_claim_a_rollback(
    fake_network: FakeFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An abort through the operator's API, the fault's undo failing for good: the run used to
    end "aborted: ...; every injected fault was rolled back" (exit 4). The journal is the judge:
    verdict left-injected, exit 9, the reason names the fault and `chaos recover RUN`."""
    from chaos.faults.ha_link_down import HaLinkDown
    from chaos.runner.control import AbortSignal
    from chaos.runner.execute import run_experiment
    from chaos.settings import Settings

    monkeypatch.setattr(HaLinkDown, "recovery_deadline", 0.5)
    net = fake_network()
    net.fail(intent=nc.HaLinkSet, when=lambda i: i.action == nc.LinkAction.UP, times=None, how="lost")
    abort = AbortSignal()

    def on_progress(progress: dict[str, Any]) -> None:
        if str(progress.get("injected", "")).startswith("1/"):  # the fault is in: abort it
            abort.request("ops", "enough")

    settings = Settings(reports_dir=tmp_path / "reports", state_dir=tmp_path / "state")
    code, run_dir = await run_experiment(write(tmp_path, net, LINK_DOWN.replace("0.3s", "20s"), mode="one"), settings,
                                         abort=abort, on_progress=on_progress, handle_signals=False)
    assert abort.requested
    assert code == ExitCode.LEFT_INJECTED
    assert run_dir is not None
    end = finished(list(read_journal(run_dir / "journal.jsonl")))
    assert end["verdict"] == "left-injected" and end["exit_code"] == 9
    assert "rolled back" not in end["reason"] and f"chaos recover {run_dir.name}" in end["reason"], end["reason"]
    assert "aborted by ops" in end["reason"]


@pytest.mark.parametrize("edit", ["older-journal", "tampered"])
def test_recover_checks_the_undo_steps_against_their_digest(
    fake_network: FakeFactory, tmp_path: Path, chaos: Any, edit: str
) -> None:
    """recover runs the journaled undo commands as root: a step changed after it was written
    (still valid JSON) is refused, never run; a journal from before the digest still recovers."""
    net = fake_network()
    run_dir = crashed_run(net, tmp_path, "  type: ha-link-down\n  replica: primary\n  duration: 60s")
    path = run_dir / "journal.jsonl"
    lines = []
    for line in path.read_text().splitlines():
        event = json.loads(line)
        if event["kind"] == "fault.undo_recorded":
            if edit == "older-journal":
                del event["undo_sha256"]
            else:
                event["undo"][0]["command"] += "; touch /tmp/pwned"
        lines.append(json.dumps(event))
    path.write_text("\n".join(lines) + "\n")
    code, out, err = chaos("recover", str(run_dir))
    if edit == "older-journal":
        assert code == ExitCode.OK, err
        assert net.injected() == []
    else:
        assert code != ExitCode.OK and "undo_sha256" in err + out, (code, out, err)
        assert not net.unmodelled, f"the changed command reached a node: {net.unmodelled}"
        assert net.injected(), "nothing was undone with steps that do not match their digest"


def test_recover_pending_finds_a_killed_run_written_outside_the_reports_folder(
    fake_network: FakeFactory, tmp_path: Path, chaos: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run history knows every CLI run from its start (status running, its folder), so a
    run written with --reports-dir elsewhere and killed is still found by --pending."""
    import asyncio
    import os

    from chaos.faults.keepalived_kill import KeepalivedKill
    from chaos.settings import Settings
    from chaos.state.store import Store

    async def history() -> list[Any]:
        store = await Store.open(Path(os.environ["CHAOS_STATE_DIR"]))
        try:
            return await store.list_runs(limit=1000)
        finally:
            await store.close()

    seen: list[Any] = []
    took = KeepalivedKill.took

    async def took_while_looking_at_the_history(self: KeepalivedKill) -> tuple[bool, str]:
        seen.extend(r for r in await history() if r.run_id == self.ctx.run_id)
        return await took(self)

    monkeypatch.setattr(KeepalivedKill, "took", took_while_looking_at_the_history)
    net = fake_network(fakenode.topology(check_interval=0.3))
    elsewhere = tmp_path / "elsewhere"
    code, out, err = chaos("run", "--reports-dir", str(elsewhere), str(write(tmp_path, net, TERM, mode="one")))
    assert code == ExitCode.OK, out + err
    run_dir = Path(out.strip().splitlines()[-1])
    assert seen and seen[0].status == "running" and Path(seen[0].report_dir) == run_dir.resolve()  # during the run
    (row,) = [r for r in asyncio.run(history()) if r.run_id == run_dir.name]
    assert row.status == "finished" and row.verdict == "held"  # indexed when it ended

    # A run killed outright leaves its row running; its folder is outside the reports folder.
    killed = fakenode.crashed_run(net, write(tmp_path, net, LINK_DOWN), elsewhere)
    async def mark_running() -> None:
        store = await Store.open(Path(os.environ["CHAOS_STATE_DIR"]))
        try:
            await store.upsert_run(row.model_copy(update={"run_id": killed.name, "status": "running", "verdict": None,
                                                          "report_dir": str(killed.resolve())}))
        finally:
            await store.close()

    asyncio.run(mark_running())
    os.utime(killed / "journal.jsonl", (0, 0))  # long quiet: not a run still going
    assert Settings().reports_dir.resolve() != elsewhere.resolve()
    code, out, err = chaos("recover", "--pending")
    assert code == ExitCode.OK, out + err
    assert f"{killed.name}: 4 action(s) pending" in out and out.count("undone") == 4 and run_dir.name not in out
    assert net.injected() == []


def test_a_deviation_measured_while_the_runner_was_saturated_is_inconclusive_exit_10(
    fake_network: FakeFactory, tmp_path: Path, chaos: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14, part 6, end to end: the runner's event loop is really blocked while the fault
    acts (as a saturated host would), the run's health sampler sees it, and a tolerance that fails
    only then makes the run inconclusive (exit 10), never the cloud's deviation; the reports say
    what was saturated."""
    import time as clock

    from chaos.faults.ha_link_down import HaLinkDown

    took = HaLinkDown.took

    async def blocked_then_took(self: HaLinkDown) -> tuple[bool, str]:
        clock.sleep(0.4)  # nothing else on the loop runs meanwhile: not the probes, not the observer
        return await took(self)

    monkeypatch.setattr(HaLinkDown, "took", blocked_then_took)
    net = fake_network()
    path = write(tmp_path, net, LINK_DOWN, mode="one", tolerances="primaries_after: {equals: 1}\n    failover_s: {max: 0}")
    code, out, err = chaos("run", str(path))
    assert code == ExitCode.INCONCLUSIVE, out + err
    assert "verdict: inconclusive" in out
    events = journal_of(out)
    assert finished(events)["verdict"] == "inconclusive" and finished(events)["exit_code"] == 10
    assert any((e.get("loop_lag_max") or 0) >= 0.3 for e in events if e["kind"] == "run.health")
    run_dir = Path(out.strip().splitlines()[-1])
    md, html = (run_dir / "report.md").read_text(), (run_dir / "report.html").read_text()
    assert "## Run health" in md and "⚠ measured while saturated" in md and "event loop woke up to" in md
    assert 'id="health"' in html and 'data-saturated="true"' in html
    assert net.injected() == []
    # Measured while the tool kept up, the same failure is the cloud's: deviated, exit 1. (The
    # limits are lifted: this host may be loaded by other work, which the run would rightly flag.)
    from chaos.probes import health

    monkeypatch.setattr(HaLinkDown, "took", took)
    for key in health.LIMITS:
        monkeypatch.setitem(health.LIMITS, key, 1e9)  # type: ignore[index]
    code, out, err = chaos("run", str(path))
    assert code == ExitCode.DEVIATED and "verdict: deviated" in out, out + err


def test_ctrl_c_inside_concurrent_work_is_an_interruption_not_an_internal_error(
    tmp_path: Path, chaos: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KeyboardInterrupt that reaches the CLI wrapped in a TaskGroup's exception group (Ctrl-C
    while several nodes were being asked) exits 130 like a plain one, not 70."""
    from chaos.runner import execute

    def interrupted(*_: Any, **__: Any) -> int:
        raise BaseExceptionGroup("unhandled errors in a TaskGroup", [KeyboardInterrupt()])

    monkeypatch.setattr(execute, "run", interrupted)
    code, _, err = chaos("run", "--dry-run", str(tmp_path / "any.yaml"))
    assert code == ExitCode.INTERRUPTED and "chaos: interrupted" in err and "internal error" not in err, err
