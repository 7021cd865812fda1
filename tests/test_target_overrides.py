"""One experiment file, several clouds: ``target.inventory`` with ``source: openstack``, and the
target flags of ``chaos run`` (``--cloud``, ``--inventory``, ``--seed``, ``--router``), what they
change, what they refuse and with which exit code (no lab)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from chaos.errors import ExitCode, InvalidInput
from chaos.experiment.load import check_experiment, check_text, load_experiment
from chaos.experiment.schema import RouterSelector
from chaos.model import Replica, Router, Topology
from chaos.runner.execute import TargetOverrides, check_named_routers
from tests.conftest import CHAOS_CLI

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = """\
title: t
target: {routers: {name: "web-*"}, mode: fixed-percent, value: 50, seed: 7, source: lab}
fault: {type: keepalived-kill, params: {signal: TERM}}
probes: {icmp: {}, primary: {}}
steady_state_hypothesis:
  tolerances:
    outage_s: {max: 10}
"""


def write(tmp_path: Path, text: str = EXPERIMENT, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_an_openstack_target_may_name_an_inventory_for_ssh(tmp_path: Path) -> None:
    (tmp_path / "hosts.yaml").write_text("nodes: [{pattern: 'net-*'}]\n")
    text = EXPERIMENT.replace("source: lab}", "source: openstack, cloud: staging, inventory: hosts.yaml}")
    experiment = load_experiment(write(tmp_path, text))
    assert experiment.target.inventory == tmp_path / "hosts.yaml"  # next to the experiment file
    assert "(SSH: inventory" in experiment.summary()
    missing = check_experiment(write(tmp_path, text.replace("hosts.yaml", "nope.yaml")))
    assert [p.message for p in missing.problems] == [f"no inventory file at {tmp_path / 'nope.yaml'}"]
    lab = check_text(EXPERIMENT.replace("source: lab}", "source: lab, inventory: hosts.yaml}"), "x.yaml")
    assert [str(p) for p in lab.problems] == [
        "x.yaml:2:101: target.inventory: only with source: inventory or source: openstack (the source is lab)"
    ]


def test_one_of_matches_a_name_or_an_id() -> None:
    sel = RouterSelector(one_of=("web-1", "2f892910-ebf4-5c84-9cd7-f520930a9f55"))
    assert sel.matches(name="web-1", router_id="11111111-1111-4111-8111-111111111111")
    assert sel.matches(name="db", router_id="2f892910-ebf4-5c84-9cd7-f520930a9f55")
    assert not sel.matches(name="web-10", router_id="11111111-1111-4111-8111-111111111111")
    with pytest.raises(ValueError):
        RouterSelector(one_of=())


def test_overrides_change_the_target_and_say_what_changed(tmp_path: Path) -> None:
    experiment = load_experiment(write(tmp_path))
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text("nodes: [{pattern: 'net-*'}]\n")
    new, changed = TargetOverrides(cloud="staging", inventory=inventory, seed=3, routers=("web-1",)).apply(experiment)
    t = new.target
    assert (t.source, t.cloud, t.inventory, t.seed, t.mode, t.value) == ("openstack", "staging", inventory, 3, "all", None)
    assert t.routers == RouterSelector(one_of=("web-1",))
    assert changed == {
        "target.source": {"from": "lab", "to": "openstack"},
        "target.cloud": {"from": None, "to": "staging"},
        "target.inventory": {"from": None, "to": str(inventory)},
        "target.seed": {"from": 7, "to": 3},
        "target.routers": {"from": {"name": "web-*"}, "to": {"one_of": ("web-1",)}},
        "target.mode": {"from": "fixed-percent", "to": "all"},
        "target.value": {"from": 50.0, "to": None},
    }
    # an inventory alone turns a lab experiment into a static-inventory one
    alone, _ = TargetOverrides(inventory=inventory).apply(experiment)
    assert (alone.target.source, alone.target.lab, alone.target.cloud) == ("inventory", None, None)
    # the same seed is no change
    assert TargetOverrides(seed=7).apply(experiment)[1] == {}
    assert TargetOverrides().apply(experiment) == (experiment, {})


def test_an_inventory_for_a_cloud_experiment_is_its_ssh_mapping(tmp_path: Path) -> None:
    evacuate = load_experiment(ROOT / "experiments" / "agent-evacuate.yaml")  # source: openstack, cloud: chaoslab
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text("nodes: [{name: net-1}]\n")
    kept, changed = TargetOverrides(inventory=inventory).apply(evacuate)
    assert (kept.target.source, kept.target.cloud, kept.target.inventory) == ("openstack", "chaoslab", inventory)
    assert list(changed) == ["target.inventory"]
    other, changed = TargetOverrides(cloud="staging").apply(evacuate)
    assert other.target.cloud == "staging" and list(changed) == ["target.cloud"]
    with pytest.raises(InvalidInput, match="no such file"):
        TargetOverrides(inventory=tmp_path / "missing.yaml").apply(evacuate)


def test_router_names_must_each_name_one_router() -> None:
    def router(n: int, name: str) -> Router:
        reps = (Replica(node="net-1", ha_device="ha-aaaaaaaa-aa"), Replica(node="net-2", ha_device="ha-bbbbbbbb-bb"))
        return Router(id=f"{n}1111111-1111-4111-8111-111111111111", name=name, replicas=reps)

    topology = Topology(source="openstack:staging", nodes=(), routers=(router(1, "web"), router(2, "web"), router(3, "db")))
    check_named_routers(topology, ("db", "11111111-1111-4111-8111-111111111111"))
    with pytest.raises(InvalidInput, match="2 routers of openstack:staging have that name .*pass the id"):
        check_named_routers(topology, ("web",))
    with pytest.raises(InvalidInput, match="--router cache: no HA router of openstack:staging"):
        check_named_routers(topology, ("db", "cache"))


def chaos(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CHAOS_CLI, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_cli_refuses_conflicting_or_missing_targets_with_documented_codes(tmp_path: Path) -> None:
    path = write(tmp_path)
    both = chaos("run", str(path), "--dry-run", "--lab", "x", "--cloud", "y")
    assert both.returncode == ExitCode.USAGE and "give one of them" in both.stderr and "Traceback" not in both.stderr
    missing = chaos("run", str(path), "--dry-run", "--inventory", str(tmp_path / "nope.yaml"))
    assert missing.returncode == ExitCode.INVALID_INPUT and "no such file" in missing.stderr
    seed = chaos("run", str(path), "--dry-run", "--seed", "many")
    assert seed.returncode == ExitCode.USAGE and "invalid int value" in seed.stderr
    # an inventory file that is not one: exit 3 naming the file and the field, never a traceback
    bad = write(tmp_path, "nodes: [{name: net-1, prot: 22}]\n", "bad.yaml")
    invalid = chaos("run", str(path), "--dry-run", "--inventory", str(bad))
    assert invalid.returncode == ExitCode.INVALID_INPUT, invalid.stderr
    assert "bad.yaml:1:" in invalid.stderr and "prot" in invalid.stderr and "Traceback" not in invalid.stderr
