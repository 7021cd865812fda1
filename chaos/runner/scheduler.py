"""Run a planned experiment: probes in the background, faults in waves, rollback guaranteed.

Structured concurrency throughout: one TaskGroup owns the probes, the replica observer (which
also enforces the runtime safeguards) and the fault waves; every network await has a timeout;
whatever was injected and not yet undone is rolled back in ``finally`` by a task that neither a
safeguard abort, an error, a second Ctrl-C nor SIGTERM can skip. Each undo is journaled before
its injection, so ``chaos recover`` can finish the job if this process is killed outright.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from chaos.errors import (
    ChaosError,
    FaultsLeftInjected,
    Interrupted,
    SafeguardAbort,
    SteadyStateBroken,
    without_rollback_claim,
)
from chaos.faults.base import Fault, FaultContext, run_undo_steps
from chaos.model import Router, Topology
from chaos.probes.conntrack import ConntrackProbe
from chaos.probes.primary import PrimaryObserver
from chaos.probes.replicas import ReplicaObservation, observe
from chaos.journal import Journal
from chaos.journal.events import undo_digest
from chaos.experiment.schema import Safeguards
from chaos.runner.plan import Plan, PlannedAction

log = structlog.get_logger("runner")

OBSERVE_TIMEOUT = 15.0
UNDO_TIMEOUT = 60.0  # the replay of a failed undo's journaled steps
RECOVERED_GRACE = 15.0  # beyond a fault's recovery deadline, for its own poll to answer why not
OBSERVE_FAILURES_TO_ABORT = 3  # and no good observation for safeguards.grace: the safeguards are blind
# How often the ground truth of a node is polled while the streaming observer follows it. The
# poll forks several processes per replica on the node; at the fast interval (0.5 s) one poll of
# 100 routers took 3.6 s of both cores of the bench host, so the polls ran back to back and the
# nodes never rested (bench/README.md, scale_bench.py). The stream already says every change as
# the kernel makes it, so on a followed node the poll is only a cross-check: that the
# ground-truth path still answers (a broken one still aborts the run, failing closed) and that
# the stream has not missed a change (logged when the two still disagree a cross-check later).
# 5 s keeps that cost a small share of the node's time while a missed change is still named
# within seconds; it is also HEARTBEAT_TIMEOUT, the observer's bound for noticing a dead
# stream, after which that node is polled at the fast interval again. The nodes' cross-checks
# are spread over the interval, one node at a time.
CROSS_CHECK_INTERVAL = 5.0


class Progress:
    """Counters the terminal shows while a run goes on."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.injected = 0
        self.undone = 0
        self.recovered = 0
        self.without_primary: set[str] = set()
        self.split_brain: set[str] = set()


class Scheduler:
    def __init__(
        self,
        *,
        topology: Topology,
        plan: Plan,
        faults: dict[str, Fault],
        ctx: FaultContext,
        journal: Journal,
        safeguards: Safeguards,
        warmup: float,
        settle: float,
        observe_interval: float,
        probes: list[Callable[[asyncio.Event, float], Awaitable[None]]],
        steady_state_check: Callable[[str], tuple[bool, str]] | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        observer: PrimaryObserver | None = None,
        conntrack: ConntrackProbe | None = None,
        ready: Sequence[asyncio.Event] = (),
        handle_signals: bool = True,
    ) -> None:
        self.topology = topology
        self.plan = plan
        self.faults = faults
        self.ctx = ctx
        self.journal = journal
        self.safeguards = safeguards
        self.warmup = warmup
        self.settle = settle
        self.observe_interval = observe_interval
        self.probes = probes
        self.steady_state_check = steady_state_check
        self.on_progress = on_progress
        self.observer = observer
        self.conntrack = conntrack
        # Probes that must be in place before anything is injected (held TCP sessions opened,
        # the observer's first snapshot taken); the polling fallback covers a slow one.
        self.ready = [*ready, *([observer.ready] if observer is not None else [])]
        self.active: dict[str, Fault] = {}
        self.progress = Progress(len(plan.actions))
        self.routers: list[Router] = [r for r in topology.routers if r.id in set(plan.routers) | _affected(plan)]
        self.interrupted: str | None = None
        self.injection_started = False
        # False in the operator: several runs share its loop, SIGTERM is its to handle (it aborts
        # each run, which cancels this task; the rollback below runs all the same)
        self.handle_signals = handle_signals

    # ------------------------------------------------------------------ entry point
    async def run(self) -> None:
        """Raises SafeguardAbort, SteadyStateBroken or Interrupted; returns when the run completed.

        Whatever ended the run, a fault whose undo (and its replay) failed is still in place:
        that is raised as FaultsLeftInjected naming it (exit 9), never hidden behind a
        verdict or an abort that says everything was rolled back.
        """
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()
        assert main is not None

        def on_signal(signame: str) -> None:
            if self.interrupted is None:
                self.interrupted = signame
                log.warning("signal received: rolling back", signal=signame)
                main.cancel()

        signals = (signal.SIGINT, signal.SIGTERM) if self.handle_signals else ()
        for sig in signals:
            loop.add_signal_handler(sig, on_signal, sig.name)
        failure: ChaosError | None = None
        try:
            await self._run_guarded()
        except asyncio.CancelledError:
            if self.interrupted is None:
                raise
            main.uncancel()  # consumed: the timeouts of what follows (lease release, ...) must work
        except ChaosError as exc:
            failure = exc
        finally:
            await self._rollback_uncancellable()
            for sig in signals:
                loop.remove_signal_handler(sig)
        if self.active:
            left = ", ".join(f"{a} ({f.type} on {f.node.name})" for a, f in sorted(self.active.items()))
            raise FaultsLeftInjected(
                f"{len(self.active)} fault(s) could not be undone and may still be in place: {left}"
                + (f"; the run had stopped: {without_rollback_claim(failure.message)}" if failure is not None else ""),
                hint=f"`chaos recover {self.ctx.run_id}` replays their undo once the nodes answer; "
                "a fault that armed a dead-man on its node (fault.injected in the journal names it) is also undone "
                "by it at its deadline",
                actions=sorted(self.active),
            ) from failure
        if failure is not None:
            raise failure
        if self.interrupted is not None:
            raise Interrupted(f"interrupted by {self.interrupted}; every injected fault was rolled back")

    async def _run_guarded(self) -> None:
        limit = self.safeguards.max_run_duration
        try:
            async with asyncio.timeout(limit):
                await self._run_tasks(limit)
        except TimeoutError:
            raise SafeguardAbort(
                f"the run exceeded safeguards.max_run_duration ({limit:g}s); everything was rolled back"
            ) from None

    async def _run_tasks(self, limit: float) -> None:
        stop = asyncio.Event()
        # The error to raise is picked inside ``except*`` and raised after it: an exception raised
        # inside an ``except*`` clause leaves it wrapped in a new ExceptionGroup, which the CLI
        # would report as an internal error (exit 70) instead of the error's own exit code.
        error: BaseException | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                for probe in self.probes:
                    tg.create_task(probe(stop, limit))
                if self.observer is not None:
                    tg.create_task(self.observer.run(stop, limit))
                observer = tg.create_task(self._observe(stop))
                await self._waves()
                await _sleep_unless(stop, self.settle)
                stop.set()
                await observer
        except* SafeguardAbort as group:
            error = _first_leaf(group)
        except* SteadyStateBroken as group:
            error = error or _first_leaf(group)
        except* ChaosError as group:  # a node or the BMC failed under a fault: report it plainly
            error = error or _first_leaf(group)
        if error is not None:
            raise error from None

    # ------------------------------------------------------------------ faults
    async def _waves(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(OBSERVE_TIMEOUT):
                for event in self.ready:
                    await event.wait()
        await self._prepare_connections()
        await asyncio.sleep(self.warmup)
        if self.steady_state_check is not None:
            ok, detail = self.steady_state_check("before")
            if not ok:
                raise SteadyStateBroken(f"the steady-state hypothesis did not hold before injection: {detail}")
        if self.conntrack is not None:
            await self.conntrack.snapshot("before")
        self.injection_started = True
        for number, wave in enumerate(self.plan.waves, start=1):
            log.info("wave", number=number, actions=len(wave))
            actions = [self.plan.action(action_id) for action_id in wave]
            self._record_undo(actions)
            async with asyncio.TaskGroup() as tg:
                for action in actions:
                    tg.create_task(self._action(action))
        if self.conntrack is not None:
            await self.conntrack.snapshot("after")

    async def _prepare_connections(self) -> None:
        """Open, before the first wave, the SSH connections the busiest wave needs on each node
        (``SshPool.prepare``), so no injection waits for a key exchange in the middle of its
        wave. Only a head start: a node that cannot be reached now fails its injection later,
        with that injection's own error, so a failure here is logged and the run goes on."""
        busiest: dict[str, int] = {}
        for wave in self.plan.waves:
            on_node: dict[str, int] = {}
            for action_id in wave:
                node = self.plan.action(action_id).node
                on_node[node] = on_node.get(node, 0) + 1
            for node, count in on_node.items():
                busiest[node] = max(busiest.get(node, 0), count)
        try:
            async with asyncio.timeout(OBSERVE_TIMEOUT), asyncio.TaskGroup() as tg:
                for node, count in sorted(busiest.items()):
                    tg.create_task(self.ctx.ssh.prepare(node, count))
        except* (ChaosError, TimeoutError) as group:
            log.warning("could not open the connections ahead of the waves", error=str(_first_leaf(group)))

    def _record_undo(self, actions: Sequence[PlannedAction]) -> None:
        """Journal the undo of every action of a wave, durably, before any of them is injected.

        One write and one fsync for the wave (``Journal.write_all``) instead of one fsync per
        action, each on the event loop before its own injection: those held the wave's last
        injections back by as many fsyncs as the wave has actions. The guarantee is the same
        for each action: its undo is on disk before its injection starts (``chaos recover``
        can undo whatever a killed run injected). The actions are active from here on, so a
        rollback undoes them even if it comes before their injection (undo is idempotent).
        """
        records = []
        for action in actions:
            undo = [step.model_dump() for step in self.faults[action.action_id].undo_steps()]
            records.append(("fault.undo_recorded", {
                "action_id": action.action_id, "fault": action.fault, "router_id": action.router_id,
                "node": action.node, "undo": undo, "undo_sha256": undo_digest(undo),
            }))
        self.journal.write_all(records)
        for action in actions:
            self.active[action.action_id] = self.faults[action.action_id]

    async def _action(self, action: PlannedAction) -> None:
        """Inject one action (its undo is journaled already, ``_record_undo``), verify, hold, undo,
        wait for recovery."""
        fault = self.faults[action.action_id]
        common = {"action_id": action.action_id, "fault": action.fault, "router_id": action.router_id, "node": action.node}
        # The fault starts to act when injection starts (a graceful evacuation hands the primary
        # over inside inject()), so that is the time the journal gives it.
        started = time.time()
        try:
            detail = await fault.inject()
        except ChaosError as exc:
            # Not injected (or not all of it): say so in the journal, and end the run with the
            # error's own exit code. The action stays active, so its idempotent undo still runs.
            self.journal.write("fault.inject_failed", t=started, **common, error=exc.message)
            raise type(exc)(f"injecting {action.fault} on {action.node} failed: {exc.message}", hint=exc.hint) from None
        injected = time.time()
        deadline = fault.deadman_deadline()  # armed within the injection: no earlier than its end plus the deadline
        self.journal.write("fault.injected", t=started, **common, detail=detail, inject_s=round(injected - started, 6),
                           **({"deadman_at": round(injected + deadline, 3)} if deadline is not None else {}))
        self.progress.injected += 1
        self._report()
        took, why = await fault.took()
        self.journal.write("fault.verified", action_id=action.action_id, took=took, detail=why)
        if fault.duration:  # the dead-man on the node undoes it too, should this runner die meanwhile
            await asyncio.sleep(fault.duration)
        await self._undo(action.action_id)
        ok, why = await self._wait_recovered(fault)
        self.journal.write("fault.recovered", action_id=action.action_id, ok=ok, detail=why)
        if ok:
            self.progress.recovered += 1
        self._report()

    async def _undo(self, action_id: str) -> None:
        fault = self.active.get(action_id)
        if fault is None:
            return
        try:
            async with asyncio.timeout(fault.undo_timeout):
                detail = await fault.undo()
            ok = True
        except Exception as exc:  # fall back to the journaled steps
            log.error("undo failed; replaying its steps", action_id=action_id, error=str(exc))
            try:
                async with asyncio.timeout(UNDO_TIMEOUT):
                    detail = "; ".join(await run_undo_steps(self.ctx, fault.undo_steps()))
                ok = True
            except Exception as exc2:
                detail, ok = f"undo failed: {exc}; replay failed: {exc2}", False
        self.journal.write("fault.undone", action_id=action_id, ok=ok, detail=detail, **fault.outcome)
        if ok:
            self.active.pop(action_id, None)
            self.progress.undone += 1

    async def _wait_recovered(self, fault: Fault) -> tuple[bool, str]:
        """Ask the fault until it says recovered, within its ``recovery_deadline`` in all.

        Each ``recovered()`` polls for a bounded time of its own, which may be the whole
        deadline (gateway-reboot waits its boot_timeout). The bound around a call is therefore
        the time left plus ``RECOVERED_GRACE``: the fault's own poll ends first and says what it
        was waiting for, instead of this timeout cutting it off with "no answer in time".
        """
        deadline = time.monotonic() + fault.recovery_deadline
        why = "not checked"
        while True:
            try:
                async with asyncio.timeout(max(0.5, deadline - time.monotonic()) + RECOVERED_GRACE):
                    ok, why = await fault.recovered()
            except TimeoutError:
                ok, why = False, f"recovered() gave no answer within {fault.recovery_deadline + RECOVERED_GRACE:g}s"
            except Exception as exc:  # a node still booting, say
                ok, why = False, str(exc) or type(exc).__name__
            if ok:
                return True, why
            if time.monotonic() >= deadline:
                return False, f"not recovered within {fault.recovery_deadline:g}s: {why}"
            await asyncio.sleep(0.5)

    async def _rollback_uncancellable(self) -> None:
        if not self.active:
            return
        task = asyncio.ensure_future(self._rollback())
        while not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)
        task.result()

    async def _rollback(self) -> None:
        log.warning("rolling back", actions=sorted(self.active))
        async with asyncio.TaskGroup() as tg:
            for action_id in list(self.active):
                tg.create_task(self._undo(action_id))

    # ------------------------------------------------------------------ observer + safeguards
    async def _observe(self, stop: asyncio.Event) -> None:
        """Poll the ground truth, journal every change per replica, enforce the runtime safeguards.

        Every ``observe_interval`` the safeguards are evaluated over every router. A replica
        the streaming observer follows (``PrimaryObserver.follows``: its node's stream is live)
        is judged by the stream, which sees each change as the kernel makes it; the poll asks
        only the nodes with a replica the stream does not follow (no observer, a stream down or
        not yet up), at the fast interval. The followed nodes are polled every
        ``CROSS_CHECK_INTERVAL`` only (see there why); such a poll is a cross-check, never a
        source for a followed replica (one source per replica in the journal and in the
        safeguards).

        An observation that fails (a node that does not answer is not a failure: it is observed
        as unreachable) leaves the safeguards blind. One failure is tolerated; failures in a row
        for longer than ``safeguards.grace`` (and at least ``OBSERVE_FAILURES_TO_ABORT`` of them)
        abort the run, so a broken observer fails closed instead of switching the safeguards off.
        A router whose replicas the streams follow is still judged while the poll fails.
        """
        last: dict[tuple[str, str], tuple[Any, bool]] = {}
        without_since: dict[str, float] = {}
        threshold = self.safeguards.abort_when_routers_without_primary
        failures = 0
        failing_since: float | None = None
        replicas = [(r.id, rep.node) for r in self.routers for rep in r.replicas]
        followed_before: set[tuple[str, str]] = set()
        disagreeing: set[tuple[str, str]] = set()
        # Each node's cross-check at its own moment, spread over the interval: the whole fleet's
        # poll in one burst would hold the nodes (and a shared host) for a second or more.
        nodes = sorted({node for _, node in replicas})
        first = time.monotonic()
        next_check = {node: first + i * CROSS_CHECK_INTERVAL / len(nodes) for i, node in enumerate(nodes)}
        while not stop.is_set():
            started = time.monotonic()
            followed = {key for key in replicas if self._followed(*key)}
            # A replica the stream has just stopped following: its last poll may be a
            # cross-check's, seconds old; the first poll now says where it stands.
            for key in followed_before - followed:
                last.pop(key, None)
            followed_before = followed
            polled = {node for node, at in next_check.items() if started >= at}
            for node in polled:
                next_check[node] = started + CROSS_CHECK_INTERVAL
            polled |= {node for rid, node in replicas if (rid, node) not in followed}
            observations: dict[str, list[ReplicaObservation]] = {}
            if polled:
                try:
                    async with asyncio.timeout(OBSERVE_TIMEOUT):
                        observations = await observe(self.ctx.ssh, self.topology, self.routers, nodes=polled)
                except (TimeoutError, Exception) as exc:
                    leaf = _first_leaf(exc) if isinstance(exc, BaseExceptionGroup) else exc
                    error = str(leaf) or type(leaf).__name__
                    log.warning("observation failed", error=error)
                    failures += 1
                    failing_since = started if failing_since is None else failing_since
                    blind = time.monotonic() - failing_since
                    if failures >= OBSERVE_FAILURES_TO_ABORT and blind > self.safeguards.grace:
                        raise SafeguardAbort(
                            f"the replica observer failed {failures} times in a row for {blind:.1f}s (last: {error}): "
                            f"the runtime safeguards cannot be enforced without it (safeguards.grace: "
                            f"{self.safeguards.grace:g}s); everything was rolled back"
                        ) from None
                else:
                    failures, failing_since = 0, None
            now = time.time()
            polled_now = {(o.router_id, o.node): o for obs in observations.values() for o in obs}
            if self.observer is not None:
                disagreeing = self._cross_check(polled_now, disagreeing)
            for key, o in polled_now.items():
                value = (o.state, o.holds_addresses)
                # One source per replica in the journal: where the streaming observer follows
                # a node, a poll taken before a change but written after it would flip the
                # holder timeline back.
                if last.get(key) != value and not self._followed(*key):
                    self.journal.write(
                        "observe.replica", t=now, router_id=o.router_id, node=o.node, state=o.state,
                        holds=o.holds_addresses, reachable=o.reachable, source="poll",
                    )
                last[key] = value
            for router in self.routers:
                holders = self._holders(router, polled_now)
                if holders is None:
                    continue  # a replica neither streamed nor polled this time: no verdict
                rid = router.id
                if holders:
                    without_since.pop(rid, None)
                    self.progress.without_primary.discard(rid)
                else:
                    without_since.setdefault(rid, now)
                    self.progress.without_primary.add(rid)
                if len(holders) > 1:
                    self.progress.split_brain.add(rid)
                else:
                    self.progress.split_brain.discard(rid)
            if threshold is not None and self.injection_started:
                long_without = [rid for rid, since in without_since.items() if now - since > self.safeguards.grace]
                if len(long_without) >= threshold:
                    raise SafeguardAbort(
                        f"{len(long_without)} router(s) had no primary for more than {self.safeguards.grace:g}s "
                        f"(safeguards.abort_when_routers_without_primary: {threshold}); everything was rolled back"
                    )
            self._report()
            await _sleep_unless(stop, max(0.0, self.observe_interval - (time.monotonic() - started)))

    def _followed(self, router_id: str, node: str) -> bool:
        return self.observer is not None and self.observer.follows(router_id, node)

    def _holders(self, router: Router, polled: dict[tuple[str, str], ReplicaObservation]) -> list[str] | None:
        """Nodes holding the router's addresses: the stream's word for a replica it follows, this
        poll's for the others; None when a replica has neither (its poll failed)."""
        holders = []
        for rep in router.replicas:
            if self._followed(router.id, rep.node):
                assert self.observer is not None
                holds = self.observer.holds(router.id, rep.node)
            elif (o := polled.get((router.id, rep.node))) is not None:
                holds = o.holds_addresses
            else:
                return None
            if holds:
                holders.append(rep.node)
        return holders

    def _cross_check(
        self, polled: dict[tuple[str, str], ReplicaObservation], before: set[tuple[str, str]]
    ) -> set[tuple[str, str]]:
        """Compare a poll with the stream for the replicas it follows; returns the replicas that
        disagree (``before``: those that did at their previous poll). A disagreement in one
        cross-check is expected (the poll and the stream look at different instants of a
        failover); one still there at the next (``CROSS_CHECK_INTERVAL`` later) is a stream that
        missed a change, and is logged."""
        assert self.observer is not None
        now = {
            key for key, o in polled.items()
            if o.reachable and self._followed(*key) and self.observer.holds(*key) != o.holds_addresses
        }
        for rid, node in sorted(now & before):
            log.warning("the replica stream and the ground-truth poll disagree twice in a row", router_id=rid,
                        node=node, stream_holds=self.observer.holds(rid, node), poll_holds=polled[(rid, node)].holds_addresses)
        return (before - polled.keys()) | now

    def _report(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.progress)


def _first_leaf(group: BaseExceptionGroup) -> BaseException:  # type: ignore[type-arg]
    """The first error inside (possibly nested) exception groups: a wave's TaskGroup sits
    inside the run's, so a fault's error arrives wrapped twice."""
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


def _affected(plan: Plan) -> set[str]:
    return {rid for a in plan.actions for rid in a.affected_routers}


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
