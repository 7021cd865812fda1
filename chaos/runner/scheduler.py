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
from chaos.probes.replicas import observe
from chaos.journal import Journal
from chaos.journal.events import undo_digest
from chaos.experiment.schema import Safeguards
from chaos.runner.plan import Plan, PlannedAction

log = structlog.get_logger("runner")

OBSERVE_TIMEOUT = 15.0
UNDO_TIMEOUT = 60.0  # the replay of a failed undo's journaled steps
RECOVERED_GRACE = 15.0  # beyond a fault's recovery deadline, for its own poll to answer why not
OBSERVE_FAILURES_TO_ABORT = 3  # and no good observation for safeguards.grace: the safeguards are blind


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
            async with asyncio.TaskGroup() as tg:
                for action_id in wave:
                    tg.create_task(self._action(self.plan.action(action_id)))
        if self.conntrack is not None:
            await self.conntrack.snapshot("after")

    async def _action(self, action: PlannedAction) -> None:
        fault = self.faults[action.action_id]
        common = {"action_id": action.action_id, "fault": action.fault, "router_id": action.router_id, "node": action.node}
        undo = [s.model_dump() for s in fault.undo_steps()]
        self.journal.write("fault.undo_recorded", **common, undo=undo, undo_sha256=undo_digest(undo))
        self.active[action.action_id] = fault
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

        An observation that fails (a node that does not answer is not a failure: it is observed
        as unreachable) leaves the safeguards blind. One failure is tolerated; failures in a row
        for longer than ``safeguards.grace`` (and at least ``OBSERVE_FAILURES_TO_ABORT`` of them)
        abort the run, so a broken observer fails closed instead of switching the safeguards off.
        """
        last: dict[tuple[str, str], tuple[Any, bool]] = {}
        without_since: dict[str, float] = {}
        threshold = self.safeguards.abort_when_routers_without_primary
        failures = 0
        failing_since: float | None = None
        while not stop.is_set():
            started = time.monotonic()
            try:
                async with asyncio.timeout(OBSERVE_TIMEOUT):
                    observations = await observe(self.ctx.ssh, self.topology, self.routers)
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
                observations = {}
            else:
                failures, failing_since = 0, None
            now = time.time()
            for rid, obs in observations.items():
                followed = {o.node for o in obs if self.observer is not None and self.observer.reachable(o.node)}
                streamed = len(followed) == len(obs)
                for o in obs:
                    key = (rid, o.node)
                    value = (o.state, o.holds_addresses)
                    # One source per replica in the journal: where the streaming observer follows
                    # a node, a poll taken before a change but written after it would flip the
                    # holder timeline back.
                    if last.get(key) != value and o.node not in followed:
                        self.journal.write(
                            "observe.replica", t=now, router_id=rid, node=o.node, state=o.state,
                            holds=o.holds_addresses, reachable=o.reachable, source="poll",
                        )
                    last[key] = value
                if streamed:
                    assert self.observer is not None
                    holders = sorted(self.observer.holders(rid))
                else:
                    holders = [o.node for o in obs if o.holds_addresses]
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
