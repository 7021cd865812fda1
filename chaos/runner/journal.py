"""The run journal: one JSON object per line, appended and flushed as the run goes.

The journal is the only record of a run; metrics, the verdict and every report are computed
from it and can be recomputed. Each line is an event ``{"t": <unix time>, "kind": <kind>,
...fields}``. ``t`` is ``time.time()`` of the runner's host, the one clock every component of
a run uses, so events and samples line up.

Event kinds (fields beyond ``t`` and ``kind``):

- ``run.started``: run_id, experiment (path), title, tool_version, target (lab name or cloud),
  backend (what runs the routers and Neutron's version, when the target says: a lab's
  "emulated (Neutron 29.0.0 (emulated))" or "neutron (Neutron 21.0.0 (Debian ...))"),
  safeguards (dict), tolerances (name -> {max|min|equals, phase}), hypothesis (title), and
  trigger ({kind: "schedule" | "manual" | "cli", by, scheduled_for, operator, site}) when the
  operator or the CLI's history recorded who started it, and overrides ({"target.<key>": {from,
  to}}) when ``chaos run``'s target flags changed the experiment's target (the run folder's
  experiment.yaml is the file as written)
- ``run.abort_requested``: by (who asked: an API token's name, "SIGTERM"), reason, interrupt
  (bool: the operator itself is stopping); the rollback follows
- ``run.plan``: routers (every router the plan disturbs: the hypothesis covers them), targets
  (the routers the selection chose), waves (lists of action ids), actions: list of {action_id,
  fault, node, router_id, router_name, replica_role, affected_routers, inject: [cmd], undo: [step]}
- ``run.preflight``: ok (bool), checks: the warnings and failures of chaos doctor's checks on the
  plan's nodes ({node, check, status, detail, fix}); a failure ends the run before injecting
- ``fault.undo_recorded``: action_id, fault, router_id, node, undo: [{via, node, command}] (written
  *before* the injection, so ``chaos recover`` can undo what a killed run left behind)
- ``fault.injected``: action_id, fault, router_id, node, detail, inject_s; ``t`` is when injecting
  started (a graceful evacuation hands over inside the injection)
- ``fault.inject_failed``: action_id, fault, router_id, node, error (the injection failed: the
  action counts as not injected; its undo still runs, and the run ends with the error's code)
- ``fault.verified``: action_id, took (bool), detail
- ``fault.undone``: action_id, ok (bool), detail, by ("recover" when ``chaos recover`` did it);
  keepalived faults add restarted_by ("agent": Neutron's L3 agent respawned it; "tool": the
  undo started it after respawn_wait)
- ``fault.recovered``: action_id, ok (bool), detail (the node or replica back to health)
- ``probe.icmp``: router_id, address, sent: [t...], rtt: [seconds or null...] (a batch of echo
  requests to one floating IP; null = no reply within the probe's timeout), seq (of the first
  request; the rest follow), interval, timeout, ident, send_errors ([[index, errno], ...])
- ``probe.tcp``: router_id, session (id), direction ("inbound" | "outbound"), address,
  event ("opened" | "stall" | "resumed" | "reset" | "timeout" | "closed" | "failed" (never
  opened) | "skipped" (session null, with a reason)), detail; ``since`` on stall and resumed,
  ``length`` on resumed, ``sent``/``echoed`` on end events
- ``probe.newconn``: router_id, direction, address, port, service ("echo" | "ssh" |
  "listener"), ok (bool; null for a path that cannot be probed, with error "skipped" and a
  detail), latency (seconds or null), error, phase ("connect" | "exchange"), started
- ``probe.skipped``: probe (a catalog probe name: "icmp", "arp", "conntrack", ...), router_id
  (null: every router), reason: the probe cannot run on this target (``probe.tcp`` and
  ``probe.newconn`` say the same per path with their own "skipped" events); the tolerances
  that need it are reported as skipped with that reason
- ``observe.replica``: router_id, node, state ("primary" | "backup" | ...), holds (bool: the
  replica holds the router's addresses), reachable (bool), source ("monitor" | "poll")
- ``conntrack.snapshot``: router_id, node, phase ("before" | "after"), flows: [{proto, src, dst,
  sport, dport, state, ...}] (the kernel's table; null when the listing failed, with error),
  cache: the same for conntrackd's external cache (null without conntrackd, or with
  cache_error), detail
- ``arp.garp``: router_id, address, mac, op, interface, port (lab only: where the external
  network learned the MAC)
- ``tcp.reset_seen``: router_id, src, sport, dst, dport, mac, interface, port (lab only): a TCP
  reset that reached the vantage point from one of the router's addresses, and who sent it
- ``api.ha_state``: router_id, node, ha_state, agent_alive (one row per hosting agent per poll;
  the rows of one poll share its start time)
- ``hypothesis.check``: phase ("before" | "during" | "after"), tolerance, scope, value, ok;
  skipped (true) and reason when the tolerance's probe could not run on this target
- ``run.finished``: verdict ("held" | "deviated" | "aborted" | "interrupted" |
  "steady-state-broken" | "skipped" (another run held a lease the plan needed; nothing was
  injected) | "invalid" | "error"), exit_code, reason; ``by: "recover"`` when the operator closed
  the journal of a run it recovered after a crash
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class Journal:
    """Append-only, flushed on every event; safe to call from threads and asyncio tasks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives with the run
        self._lock = threading.Lock()

    def write(self, kind: str, t: float | None = None, **fields: Any) -> dict[str, Any]:
        event = {"t": time.time() if t is None else t, "kind": kind, **fields}
        line = json.dumps(event, separators=(",", ":"), default=str)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()
            if kind.startswith(("fault.", "run.")):
                os.fsync(self._file.fileno())  # what recovery depends on must reach the disk
        return event

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_journal(path: Path) -> Iterator[dict[str, Any]]:
    """Events of a journal; a last line cut short by a crash is skipped."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue
