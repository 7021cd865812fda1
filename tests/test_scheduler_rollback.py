"""The scheduler rolls back on every error path, and its runtime safeguards fire: on the fake
network node (tests/fakenode.py), so each path runs in the quick tier with the real planner,
faults, undo, journal and observer. After every run the model must hold nothing injected.

The same paths run against the lab in tests/test_engine.py (a signal mid-fault, kill -9 and
recover, a failed injection); here each one is provoked exactly, including those the lab cannot
provoke on demand: a took() that raises, an undo that fails once or for good, an observer that
keeps failing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chaos.errors import ChaosError, InfrastructureError, Interrupted, SafeguardAbort
from chaos.experiment.load import load_experiment
from chaos.experiment.schema import Experiment, Safeguards
from chaos.faults.base import FaultContext
from chaos.faults.vrrp_partition import VrrpPartition
from chaos.journal import Journal, read_journal
from chaos.probes.primary import PrimaryObserver
from chaos.runner import scheduler as scheduler_module
from chaos.runner.execute import make_plan
from chaos.runner.scheduler import Scheduler
from chaos.transport import node_commands as nc
from tests import fakenode
from tests.fakenode import FakeNetwork, Timing

FakeFactory = Callable[..., FakeNetwork]


def experiment(tmp_path: Path, net: FakeNetwork, fault: str, **options: Any) -> Experiment:
    (tmp_path / "inv.yaml").write_text(fakenode.inventory_yaml(net.topology))
    path = tmp_path / "exp.yaml"
    path.write_text(fakenode.experiment_yaml("inv.yaml", fault, **options))
    return load_experiment(path)


async def run_scheduler(
    net: FakeNetwork,
    exp: Experiment,
    tmp_path: Path,
    *,
    safeguards: Safeguards | None = None,
    observer: bool = False,
    recovery_timeout: float = 5.0,
    observe_interval: float = 0.05,
    handle_signals: bool = True,
) -> tuple[BaseException | None, list[dict[str, Any]]]:
    """Plan with the real planner, run the scheduler; (the error it ended with, the journal)."""
    topology = net.topology
    path = tmp_path / "journal.jsonl"
    error: BaseException | None = None
    with Journal(path) as journal:
        async with net.pool()(topology.nodes) as ssh:
            ctx = FaultContext(topology=topology, ssh=ssh, run_id="run1")
            plan, faults, _ = await make_plan(exp, topology, ssh, ctx)
            for fault in faults.values():
                fault.recovery_deadline = recovery_timeout  # a short deadline: these tests are about what follows it
            watched = [r for r in topology.routers if r.id in set(plan.routers)]
            scheduler = Scheduler(
                topology=topology, plan=plan, faults=faults, ctx=ctx, journal=journal,
                safeguards=safeguards or exp.safeguards, warmup=0, settle=0,
                observe_interval=observe_interval, probes=[],
                observer=PrimaryObserver(ssh, topology, watched, journal) if observer else None,
                handle_signals=handle_signals,
            )
            try:
                await scheduler.run()
            except ChaosError as exc:
                error = exc
    return error, list(read_journal(path))


def kinds(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["kind"] == kind]


LINK_DOWN = "  type: ha-link-down\n  replica: primary\n  duration: 0.3s"
PARTITION = "  type: vrrp-partition\n  replica: backup\n  duration: 0.3s"
STOP = "  type: keepalived-kill\n  replica: primary\n  params: {signal: STOP}\n  duration: 0.3s"


async def test_a_clean_run_undoes_everything_and_cancels_its_dead_men(fake_network: FakeFactory, tmp_path: Path) -> None:
    net = fake_network()
    error, events = await run_scheduler(net, experiment(tmp_path, net, LINK_DOWN), tmp_path)
    assert error is None
    assert len(kinds(events, "fault.injected")) == 4 and all(e["took"] for e in kinds(events, "fault.verified"))
    assert all(e["ok"] for e in kinds(events, "fault.undone")) and all(e["ok"] for e in kinds(events, "fault.recovered"))
    assert net.injected() == []
    # The dead-men were cancelled by pid, not left to fire: one cancel per action, each saying so.
    cancels = [(n, i) for n, _, i in net.log if isinstance(i, nc.DeadmanCancel)]
    assert len(cancels) == 4 and all(i.pid is not None for _, i in cancels)


async def test_a_waves_undo_records_are_made_durable_by_one_fsync_before_any_of_its_injections(
    fake_network: FakeFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One fsync per undo record, serially before each injection, held a wave of 50 back by 50
    fsyncs: the wave's records are written together and made durable by one fsync, and only
    then does any of its injections start."""
    net = fake_network()
    journal_path = tmp_path / "journal.jsonl"
    fsyncs: list[tuple[int, int]] = []  # (undo records in the file, commands the nodes had answered)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        fsyncs.append((journal_path.read_text().count('"kind":"fault.undo_recorded"'), len(net.log)))

    monkeypatch.setattr(os, "fsync", fsync)
    exp = experiment(tmp_path, net, LINK_DOWN, safeguards="  max_concurrent_routers: 10")
    error, events = await run_scheduler(net, exp, tmp_path)
    assert error is None
    recorded, injected = kinds(events, "fault.undo_recorded"), kinds(events, "fault.injected")
    assert len(recorded) == len(injected) == 4  # one wave of four
    assert max(e["t"] for e in recorded) <= min(e["t"] for e in injected)
    first_injection = next(i for i, (_, _, intent) in enumerate(net.log) if isinstance(intent, nc.DeadmanSchedule))
    counts = [count for count, answered in fsyncs if answered <= first_injection]
    assert counts[-1] == 4, fsyncs  # all four durable before the first injection command
    assert not any(0 < count < 4 for count in counts), f"an fsync per record: {fsyncs}"
    assert net.injected() == []


async def test_a_failed_injection_is_rolled_back_with_its_dead_man(fake_network: FakeFactory, tmp_path: Path) -> None:
    net = fake_network()
    net.fail(intent=nc.HaLinkSet, when=lambda i: i.action == nc.LinkAction.DOWN, times=1, status=2,
             stderr="RTNETLINK answers: Operation not permitted")
    error, events = await run_scheduler(net, experiment(tmp_path, net, LINK_DOWN), tmp_path)
    assert isinstance(error, InfrastructureError)
    assert "injecting ha-link-down on" in error.message and "Operation not permitted" in error.message
    failed = kinds(events, "fault.inject_failed")
    assert len(failed) == 1 and "command exited 2" in failed[0]["error"]
    undone = {e["action_id"]: e["ok"] for e in kinds(events, "fault.undone")}
    assert failed[0]["action_id"] in undone and all(undone.values())  # its idempotent undo ran all the same
    assert net.injected() == []  # the armed dead-man of the failed action was cancelled too


async def test_a_took_check_that_raises_still_rolls_back(fake_network: FakeFactory, tmp_path: Path) -> None:
    net = fake_network()
    net.fail(intent=nc.GroundTruth, when=lambda i: len(i.replicas) == 1, times=1, how="raise",
             exc=RuntimeError("parser exploded"))
    with pytest.raises(ExceptionGroup) as caught:  # not a ChaosError: it reaches the caller as the bug it is
        await run_scheduler(net, experiment(tmp_path, net, LINK_DOWN, mode="one"), tmp_path)
    assert "parser exploded" in str(caught.value.exceptions[0])
    assert net.injected() == []


async def test_a_took_check_that_says_no_is_journaled_and_the_fault_still_undone(
    fake_network: FakeFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(VrrpPartition, "took_timeout", 0.3)
    net = fake_network()
    rule = net.fail(intent=nc.VrrpRulesCount, times=None, how="timeout")
    exp = experiment(tmp_path, net, PARTITION, mode="one")

    async def heal() -> None:  # the count answers again once took() has given up
        while not any(isinstance(i, nc.VrrpRulesCount) for _, _, i in net.log) and rule.hits < 3:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        net.failures.remove(rule)

    async with asyncio.TaskGroup() as tg:
        healer = tg.create_task(heal())
        error, events = await run_scheduler(net, exp, tmp_path)
        await healer
    assert error is None
    verified = kinds(events, "fault.verified")
    assert len(verified) == 1 and verified[0]["took"] is False and "timed out" in verified[0]["detail"]
    assert kinds(events, "fault.undone")[0]["ok"] and net.injected() == []


async def test_an_undo_that_fails_once_is_replayed_from_its_steps(fake_network: FakeFactory, tmp_path: Path) -> None:
    net = fake_network()
    net.fail(intent=nc.HaLinkSet, when=lambda i: i.action == nc.LinkAction.UP, times=1, how="lost")
    error, events = await run_scheduler(net, experiment(tmp_path, net, LINK_DOWN, mode="one"), tmp_path)
    assert error is None
    undone = kinds(events, "fault.undone")
    assert len(undone) == 1 and undone[0]["ok"]
    # The replay came through the journaled steps: plain text, recognised by the fake.
    ups = [t for _, t, i in net.log if isinstance(i, nc.HaLinkSet) and i.action == nc.LinkAction.UP]
    assert len(ups) == 1 and not isinstance(ups[0], nc.NodeCommand)
    assert net.injected() == []


async def test_an_undo_that_keeps_failing_is_reported_and_the_dead_man_undoes_it(
    fake_network: FakeFactory, tmp_path: Path
) -> None:
    net = fake_network()
    net.fail(intent=nc.HaLinkSet, when=lambda i: i.action == nc.LinkAction.UP, times=None, how="lost")
    error, events = await run_scheduler(net, experiment(tmp_path, net, LINK_DOWN, mode="one"), tmp_path,
                                        recovery_timeout=0.5)
    undone = kinds(events, "fault.undone")
    assert undone and not any(e["ok"] for e in undone)
    assert "undo failed" in undone[-1]["detail"] and "replay failed" in undone[-1]["detail"]
    assert isinstance(error, InfrastructureError) and "1 fault(s) could not be undone" in error.message
    assert "chaos recover run1" in str(error)
    # Nothing of the tool could undo it: the node-side dead-man, still armed, does when it fires.
    assert any("dead-man" in x for x in net.injected()) or net.injected() == []
    deadline = time.monotonic() + 2
    while net.injected() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert net.injected() == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_a_signal_mid_fault_rolls_back(fake_network: FakeFactory, tmp_path: Path, sig: signal.Signals) -> None:
    net = fake_network()
    sent: list[float] = []

    def signal_once(intent: Any) -> bool:  # the first took() check sends the signal, mid-fault
        if not sent:
            sent.append(time.monotonic())
            os.kill(os.getpid(), sig)
        return False

    net.fail(intent=nc.GroundTruth, when=lambda i: len(i.replicas) == 1 and signal_once(i), times=None)
    exp = experiment(tmp_path, net, LINK_DOWN.replace("0.3s", "30s"))
    started = time.monotonic()
    error, events = await run_scheduler(net, exp, tmp_path)
    assert isinstance(error, Interrupted) and sig.name in error.message
    assert time.monotonic() - started < 10  # not the fault's 30 s
    assert kinds(events, "fault.injected") and all(e["ok"] for e in kinds(events, "fault.undone"))
    assert {e["action_id"] for e in kinds(events, "fault.undone")} == {e["action_id"] for e in kinds(events, "fault.injected")}
    assert net.injected() == []


async def test_max_run_duration_aborts_and_rolls_back(fake_network: FakeFactory, tmp_path: Path) -> None:
    net = fake_network()
    exp = experiment(tmp_path, net, LINK_DOWN.replace("0.3s", "30s"))
    error, events = await run_scheduler(net, exp, tmp_path, safeguards=Safeguards(max_nodes_at_once=3, max_run_duration=0.6))
    assert isinstance(error, SafeguardAbort) and "max_run_duration" in error.message
    assert kinds(events, "fault.injected") and all(e["ok"] for e in kinds(events, "fault.undone"))
    assert net.injected() == []


@pytest.mark.parametrize("observer", [False, True], ids=["polled", "streamed"])
async def test_routers_without_a_primary_abort_the_run(fake_network: FakeFactory, tmp_path: Path, observer: bool) -> None:
    # No failover within the run (Master_Down_Interval of a minute): the routers whose primary
    # lost its link stay without one, and the safeguard stops the run after grace. Streamed,
    # the ground truth is polled only every CROSS_CHECK_INTERVAL: the stream's word is enough.
    net = fake_network(timing=Timing(master_down=60))
    exp = experiment(tmp_path, net, LINK_DOWN.replace("0.3s", "30s"))
    guards = Safeguards(max_nodes_at_once=3, abort_when_routers_without_primary=2, grace=0.3, max_run_duration=20)
    started = time.monotonic()
    error, events = await run_scheduler(net, exp, tmp_path, safeguards=guards, observer=observer)
    assert isinstance(error, SafeguardAbort) and "had no primary for more than 0.3s" in error.message
    assert time.monotonic() - started < 10
    assert net.injected() == []


async def test_routers_that_fail_over_do_not_trip_the_safeguard(fake_network: FakeFactory, tmp_path: Path) -> None:
    net = fake_network(timing=Timing(master_down=0.1))
    exp = experiment(tmp_path, net, LINK_DOWN.replace("0.3s", "1s"))
    guards = Safeguards(max_nodes_at_once=3, abort_when_routers_without_primary=1, grace=0.5, max_run_duration=20)
    error, events = await run_scheduler(net, exp, tmp_path, safeguards=guards, observer=True)
    assert error is None
    assert net.injected() == []


async def test_the_ground_truth_is_polled_rarely_where_the_stream_follows_and_fast_where_it_is_down(
    fake_network: FakeFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The poll forks a dozen processes per replica on the node: at 100 routers, polled every
    0.5 s beside the stream that already follows every replica, it kept the bench host 95 %
    busy before the first injection. Where a node's stream is live it is a cross-check every
    CROSS_CHECK_INTERVAL; a node whose stream is down is polled at the fast interval."""
    monkeypatch.setattr(scheduler_module, "CROSS_CHECK_INTERVAL", 1.0)
    monkeypatch.setattr(scheduler_module, "OBSERVE_TIMEOUT", 1.0)  # the wait for network-3's first snapshot, which never comes
    net = fake_network()
    net.fail(node="network-3", intent=nc.FollowReplicas, times=None, how="lost")
    exp = experiment(tmp_path, net, LINK_DOWN.replace("0.3s", "3s"))
    error, events = await run_scheduler(net, exp, tmp_path, observer=True, observe_interval=0.05)
    assert error is None, error
    hosted = {n.name: sum(rep.node == n.name for r in net.topology.routers for rep in r.replicas) for n in net.topology.nodes}
    polls: dict[str, list[int]] = {name: [] for name in hosted}
    for i, (node, _, intent) in enumerate(net.log):  # the observer's polls: every replica a node hosts
        if isinstance(intent, nc.GroundTruth) and len(intent.replicas) == hosted[node] > 1:
            polls[node].append(i)
    # The run's span in polls of the node without a stream (every 0.05 s): the streamed nodes
    # were polled about once a second (each a cross-check), the other at every tick.
    assert len(polls["network-3"]) >= 40, polls
    for node in ("network-1", "network-2"):
        assert 1 <= len(polls[node]) <= len(polls["network-3"]) // 8, (node, {n: len(p) for n, p in polls.items()})
    # The streamed nodes' replicas are journaled by the stream once it is up; network-3's by the poll.
    sources = {(e["node"], e["source"]) for e in kinds(events, "observe.replica")}
    assert ("network-3", "poll") in sources and ("network-3", "monitor") in sources  # the stream's loss says unreachable
    assert ("network-1", "monitor") in sources
    assert net.injected() == []


async def test_an_observer_that_keeps_failing_aborts_the_run(fake_network: FakeFactory, tmp_path: Path) -> None:
    """The broad except in the observer used to turn the safeguard off: now it aborts, with rollback."""
    net = fake_network()
    exp = experiment(tmp_path, net, LINK_DOWN.replace("0.3s", "30s"))
    guards = Safeguards(max_nodes_at_once=3, abort_when_routers_without_primary=4, grace=0.4, max_run_duration=20)
    # The observer's poll (every hosted replica at once) breaks after the injection; the faults'
    # own checks (one replica each) still answer.
    net.fail(intent=nc.GroundTruth, when=lambda i: len(i.replicas) > 1 and net_injected(net), times=None, how="raise",
             exc=ValueError("garbled ground truth"))
    started = time.monotonic()
    error, events = await run_scheduler(net, exp, tmp_path, safeguards=guards)
    assert isinstance(error, SafeguardAbort), error
    assert "the replica observer failed" in error.message and "garbled ground truth" in error.message
    assert time.monotonic() - started < 10
    assert kinds(events, "fault.injected") and all(e["ok"] for e in kinds(events, "fault.undone"))
    assert net.injected() == []


def net_injected(net: FakeNetwork) -> bool:
    return any(isinstance(i, nc.HaLinkSet) and i.action == nc.LinkAction.DOWN for _, _, i in net.log)


async def test_one_failed_observation_is_tolerated(fake_network: FakeFactory, tmp_path: Path) -> None:
    net = fake_network()
    exp = experiment(tmp_path, net, LINK_DOWN.replace("0.3s", "1s"))
    net.fail(intent=nc.GroundTruth, when=lambda i: len(i.replicas) > 1 and net_injected(net), times=2, how="raise",
             exc=ValueError("one bad poll"))
    guards = Safeguards(max_nodes_at_once=3, abort_when_routers_without_primary=4, grace=0.3, max_run_duration=20)
    error, _ = await run_scheduler(net, exp, tmp_path, safeguards=guards)
    assert error is None, error
    assert scheduler_module.OBSERVE_FAILURES_TO_ABORT == 3
    assert net.injected() == []


async def test_a_recovery_that_never_comes_is_journaled_with_the_faults_own_reason(
    fake_network: FakeFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault whose ``recovered()`` polls for its whole recovery deadline (gateway-reboot waits
    its boot_timeout) must be let to answer: the journal says what it waited for, not that the
    scheduler's own bound cut it off ("no answer in time" hid the cause of a flaky run)."""
    from chaos.faults.ha_link_down import HaLinkDown

    monkeypatch.setattr(HaLinkDown, "recover_timeout", 0.6)  # the fault's poll takes the whole deadline
    net = fake_network()
    undone = False

    def after_the_undo(intent: nc.Intent) -> bool:  # the replica's state cannot be read once the link is back
        nonlocal undone
        if isinstance(intent, nc.HaLinkSet):
            undone = undone or intent.action == nc.LinkAction.UP
            return False
        return undone and isinstance(intent, nc.GroundTruth) and len(intent.replicas) == 1

    net.fail(intent=(nc.GroundTruth, nc.HaLinkSet), when=after_the_undo, times=None, status=3,
             stderr="replica state unreadable")
    error, events = await run_scheduler(net, experiment(tmp_path, net, LINK_DOWN, mode="one"), tmp_path,
                                        recovery_timeout=0.6)
    assert error is None
    (recovered,) = kinds(events, "fault.recovered")
    assert not recovered["ok"]
    assert recovered["detail"].startswith("not recovered within 0.6s: ") and "replica state unreadable" in recovered["detail"]
    assert "no answer" not in recovered["detail"], recovered["detail"]
    assert net.injected() == []


async def test_a_poll_that_times_out_names_each_answer_it_got_and_when() -> None:
    from chaos.faults.base import poll

    answers = iter(["node does not answer yet"] * 3 + ["2 replica(s) not yet running"] * 2)

    async def check() -> tuple[bool, str]:
        return False, next(answers, "1 router without exactly one primary")

    ok, detail = await poll(check, 0.35, interval=0.05)
    assert not ok
    last, before = detail.split("; before: ")
    assert last.startswith("1 router without exactly one primary (from ")
    assert before.startswith("2 replica(s) not yet running (from ") and "; node does not answer yet (from 0.0s)" in before
    answers = iter([(False, "booting"), (True, "back")])
    assert await poll(lambda: asyncio.sleep(0, next(answers)), 1, interval=0.01) == (True, "back")


async def test_the_undo_of_keepalived_kill_gets_its_respawn_wait_beyond_the_usual_undo_bound(
    fake_network: FakeFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner's bound on an undo (60 s) was shorter than keepalived-kill's default
    respawn_wait (the agent's 60 s interval + 15 s): the live undo was cut off before the agent's
    respawn, its steps replayed, and who restarted keepalived was lost. Scaled down here: a 0.4 s
    bound, a 1 s respawn_wait, an agent that respawns within 0.7 s."""
    from chaos.faults.base import Fault

    monkeypatch.setattr(Fault, "undo_timeout", 0.4)
    net = fake_network(fakenode.topology(check_interval=0.7))
    term = "  type: keepalived-kill\n  replica: primary\n  params: {signal: TERM, respawn_wait: 1s}"
    error, events = await run_scheduler(net, experiment(tmp_path, net, term, mode="one"), tmp_path)
    assert error is None
    (undone,) = kinds(events, "fault.undone")
    assert undone["ok"] and undone["restarted_by"] == "agent", undone
    assert net.injected() == []
