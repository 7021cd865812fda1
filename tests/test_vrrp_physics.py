"""The issue's "Done when": figures measured through the runner agree with VRRP physics.

Real runs through the ``chaos run`` CLI against labs at advert_int 1 (the shared lab) and 2,
with experiment files written here. What VRRP says (RFC 3768/5798, priority 50, nopreempt):

- ha-link-down: the primary drops its addresses at once (FAULT); the backup waits
  Master_Down_Interval = 3 x advert + skew since the LAST advert it heard, and that advert came
  0..advert before the link went down, so the outage lies in [2 x advert + skew, 3 x advert + skew].
- SIGTERM: a priority-0 advert hands over after Skew_Time (< 1 advert).
- SIGKILL: the addresses stay on the old primary; the backup takes them after
  Master_Down_Interval: two holders (split brain) until the agent respawns keepalived.
- vrrp-partition: every replica becomes primary: split brain while it lasts.

Resolution: the ICMP probe's interval (20 ms) plus its send jitter for outages; the replica
observer's 0.5 s poll for split_brain_s. A margin of 0.5 s covers ARP/GARP learning on the
fabric and a loaded CI host.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LabHandle, wait_lab_ready

CHAOS = [sys.executable, "-m", "chaos.cli"]
PRIORITY = 50
ICMP_INTERVAL = 0.02
MARGIN = 0.5


def skew(advert: float) -> float:
    return (256 - PRIORITY) / 256 * advert


def experiment(tmp: Path, name: str, fault: str, *, tcp: bool = True, settle: str = "4s", grace: str = "30s") -> Path:
    tcp_line = "  tcp: {sessions: 1, interval: 100ms, directions: [inbound, outbound], stall: 1s}\n" if tcp else ""
    path = tmp / f"{name}.yaml"
    path.write_text(
        f"""title: {name}
target:
  routers: {{name: "*"}}
  mode: one
  seed: 3
  source: lab
fault:
{fault}
safeguards:
  max_concurrent_routers: 1
  max_nodes_at_once: 1
  abort_when_routers_without_primary: 4
  grace: {grace}
  max_run_duration: 2m
probes:
  icmp: {{interval: 20ms, timeout: 1s}}
{tcp_line}  primary: {{}}
  warmup: 2s
  settle: {settle}
steady_state_hypothesis:
  title: one primary at the end
  tolerances:
    primaries_after: {{equals: 1}}
"""
    )
    return path


def run(lab: LabHandle, tmp: Path, path: Path) -> dict[str, Any]:
    """Run an experiment; the targeted router's metrics (with ``_run`` = the run folder)."""
    reports = tmp / "reports"
    proc = subprocess.run(
        [*CHAOS, "run", "--lab", lab.name, "--reports-dir", str(reports), str(path)],
        capture_output=True, text=True, timeout=150,
    )
    folders = sorted(reports.glob("*/summary.json"))
    assert folders, f"no summary written (exit {proc.returncode}): {proc.stdout}\n{proc.stderr[-3000:]}"
    summary = json.loads(folders[-1].read_text())
    targeted = [r for r in summary["routers"] if r["targeted"]]
    assert len(targeted) == 1, summary["routers"]
    metrics = dict(targeted[0]["metrics"])
    metrics["_run"] = str(folders[-1].parent)
    metrics["_missing"] = targeted[0]["missing"]
    metrics["_verdict"] = summary["verdict"]
    return metrics


def window(advert: float) -> tuple[float, float]:
    """[2 x advert + skew, 3 x advert + skew], widened by the probe's resolution and the margin."""
    lo = 2 * advert + skew(advert) - ICMP_INTERVAL - MARGIN
    hi = 3 * advert + skew(advert) + ICMP_INTERVAL + MARGIN
    return lo, hi


@pytest.fixture(scope="module")
def lab_p2(make_lab: Any) -> LabHandle:
    return make_lab("p2", advert_int=2, routers=2, respawn_interval=2.0, boot_delay=2.0)


@pytest.mark.lab
def test_ha_link_down_outage_is_master_down_interval_advert_1(lab: LabHandle, tmp_path: Path) -> None:
    wait_lab_ready(lab)
    try:
        m = run(lab, tmp_path, experiment(tmp_path, "link1", "  type: ha-link-down\n  replica: primary\n  duration: 6s"))
        lo, hi = window(1)
        assert m["outage_s"] is not None, m
        assert lo <= m["outage_s"] <= hi, (m["outage_s"], (lo, hi), m["_run"])
        assert m["split_brain_s"] == 0, m  # a clean failover: the old primary dropped its addresses at once
        assert m["failover_s"] is not None and m["failover_s"] <= hi + 0.5, m  # the poll adds up to 0.5 s
    finally:
        wait_lab_ready(lab, timeout=90)


@pytest.mark.lab
def test_advert_2_link_down_and_sigterm(lab_p2: LabHandle, tmp_path: Path) -> None:
    wait_lab_ready(lab_p2)
    link = run(lab_p2, tmp_path, experiment(tmp_path, "link2", "  type: ha-link-down\n  replica: primary\n  duration: 10s"))
    lo, hi = window(2)
    assert link["outage_s"] is not None and lo <= link["outage_s"] <= hi, (link["outage_s"], (lo, hi), link["_run"])
    assert link["split_brain_s"] == 0, link
    wait_lab_ready(lab_p2, timeout=90)
    term = run(lab_p2, tmp_path, experiment(
        tmp_path, "term2", "  type: keepalived-kill\n  replica: primary\n  params: {signal: TERM, respawn_wait: 3s}"))
    # priority 0 hands over after Skew_Time: well under one advert (seen 0.8 s at advert 2)
    assert term["outage_s"] is not None and term["outage_s"] < 2 + MARGIN, (term["outage_s"], term["_run"])
    assert term["outage_s"] < link["outage_s"] / 2, (term["outage_s"], link["outage_s"])
    assert term["split_brain_s"] == 0, term
    assert term["failover_s"] is not None, term
    wait_lab_ready(lab_p2, timeout=90)


def dead_for(run_folder: str) -> float:
    """Seconds from the SIGKILL to the undo (the agent's respawn or the fault's own restart)."""
    events = [json.loads(line) for line in (Path(run_folder) / "journal.jsonl").read_text().splitlines() if line.strip()]
    injected = next(e["t"] for e in events if e["kind"] == "fault.injected")
    undone = next(e["t"] for e in events if e["kind"] == "fault.undone")
    return undone - injected


@pytest.mark.lab
def test_sigkill_makes_a_split_brain_until_the_respawn(make_lab: Any, tmp_path: Path) -> None:
    # The agent checks every respawn_interval from its own start, so a kill lands at a random
    # point of its cycle: with 60 s the killed keepalived stays dead past Master_Down_Interval
    # (3.8 s) 94 % of the time, and the fault restarts it itself after respawn_wait (7 s). A run
    # where the agent happened to respawn it sooner does not meet the premise and is repeated once.
    kill_lab = make_lab("k", advert_int=1, respawn_interval=60.0, routers=1, boot_delay=2.0)
    master_down = 3 * 1 + skew(1)
    for attempt in range(2):
        wait_lab_ready(kill_lab)
        m = run(kill_lab, tmp_path / str(attempt), experiment(
            tmp_path, f"kill{attempt}", "  type: keepalived-kill\n  replica: primary\n  params: {signal: KILL, respawn_wait: 7s}",
            settle="4s"))
        if dead_for(m["_run"]) > master_down + 1:
            break
    else:
        pytest.fail(f"keepalived was respawned before Master_Down_Interval twice: {m['_run']}")
    # The killed side keeps its addresses; the backup takes them after Master_Down_Interval;
    # both hold them until keepalived is back (it starts in BACKUP and removes them).
    assert m["split_brain_s"] is not None and m["split_brain_s"] > 0, (m, m["_run"])
    assert m["split_brain_s"] <= dead_for(m["_run"]) - master_down + 1.5, m
    assert m["primaries_after"] == 1, m
    # What it did to TCP: sessions were held through it, and the report says how they fared.
    assert m["tcp_sessions"] is not None and m["tcp_sessions"] >= 1, m
    assert m["tcp_dropped"] is not None and m["tcp_max_stall_s"] is not None, m
    print(f"SIGKILL: split_brain_s={m['split_brain_s']} outage_s={m['outage_s']} tcp_sessions={m['tcp_sessions']} "
          f"tcp_dropped={m['tcp_dropped']} tcp_max_stall_s={m['tcp_max_stall_s']} run={m['_run']}")
    wait_lab_ready(kill_lab, timeout=90)


@pytest.mark.lab
def test_vrrp_partition_splits_the_brain(lab: LabHandle, tmp_path: Path) -> None:
    wait_lab_ready(lab)
    try:
        m = run(lab, tmp_path, experiment(
            tmp_path, "part", "  type: vrrp-partition\n  replica: any\n  duration: 8s", tcp=False))
        # Both replicas are primary from Master_Down_Interval (3.8 s) to the end of the partition.
        assert m["split_brain_s"] is not None and m["split_brain_s"] > 0, (m, m["_run"])
        assert m["split_brain_s"] <= 8 + 1, m
        assert m["primaries_after"] == 1, m
    finally:
        wait_lab_ready(lab, timeout=90)
