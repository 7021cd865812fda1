"""The static inventory target: the file format, its problems at their lines, and a real dry run.

Each file in tests/data/inventories/broken/ says what it must produce in `# expect:` lines
(`LINE:COL: path: start of the message`), so the expectation sits next to the mistake. The last
test describes the shared lab in an inventory file and drives `chaos run --dry-run` through it:
real SSH to the lab's nodes, inside the lab's vantage namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from chaos.errors import ExitCode, InvalidInput
from chaos.model import Topology
from chaos.targets.inventory import check_inventory, load_inventory, read_inventory, ssh_settings_for
from tests.conftest import CHAOS_CLI, LabHandle, wait_lab_ready

DATA = Path(__file__).resolve().parent / "data" / "inventories"
BROKEN = sorted((DATA / "broken").glob("*.yaml"))
CHAOS = list(CHAOS_CLI)


def _expectations(path: Path) -> list[str]:
    return [line.split("expect:", 1)[1].strip() for line in path.read_text().splitlines() if line.startswith("# expect:")]


# --------------------------------------------------------------------------- a valid file
def test_valid_inventory_gives_the_expected_topology() -> None:
    keys = DATA / "valid" / "keys"
    topo = load_inventory(DATA / "valid" / "full.yaml")
    assert topo.source == "inventory"
    assert [n.name for n in topo.nodes] == ["network-1", "network-2", "gw-17"], "named nodes, then pattern hosts"
    n1, n2, gw = topo.nodes
    # defaults apply, with relative paths read from the inventory's folder
    assert (n1.address, n1.user, n1.port, n1.sudo) == ("198.51.100.11", "neutron", 22, True)
    assert n1.key_file == keys / "id_test" and n1.known_hosts == keys / "known_hosts"
    assert n1.jump_host == "ops@bastion.example:2222"
    # an explicit null overrides a default; an IPv6 address is kept as written
    assert (n2.address, n2.port, n2.jump_host) == ("2001:db8::12", 2022, None)
    # the first matching pattern wins ("gw-*" before "gw-1*"), its template gives the address
    assert (gw.address, gw.user, gw.sudo) == ("gw-17.mgmt.example", "ops", False)
    assert str(gw.layout.state_path) == "/srv/neutron" and str(n1.layout.state_path) == "/var/lib/neutron"
    web, db = topo.routers
    assert (web.name, web.vrid, web.tags, str(web.floating_ips[0].address)) == ("web", 1, ("prod",), "203.0.113.10")
    assert [(r.node, r.ha_device) for r in db.replicas] == [
        ("network-2", "ha-0aa1bb2c-3d"), ("gw-17", "ha-4e5f6071-82"), ("network-1", "ha-93a4b5c6-d7"),
    ]
    assert topo.vantage.netns == "probe-ns" and topo.vantage.echo_port == 7
    assert topo.bmc_url == "https://bmc.example" and topo.bmc_credentials_file == keys / "README"


def test_home_is_expanded_and_hosts_map_by_name_then_pattern(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ops").write_text("placeholder\n")
    monkeypatch.setenv("HOME", str(home))
    path = tmp_path / "inv.yaml"
    path.write_text(
        "defaults: {key_file: ~/.ssh/id_ops}\n"
        "nodes:\n"
        "  - {pattern: 'net-*', address_template: '{name}.mgmt.example'}\n"
        "  - {name: net-7, address: 198.51.100.77, user: admin}\n"
    )
    inventory = read_inventory(path)  # routers: are optional when only the SSH settings are wanted
    exact = ssh_settings_for("net-7", inventory)
    assert (exact.address, exact.user, exact.key_file) == ("198.51.100.77", "admin", home / ".ssh" / "id_ops")
    assert ssh_settings_for("net-3", inventory).address == "net-3.mgmt.example"
    with pytest.raises(InvalidInput, match="'compute-1' matches no entry under nodes"):
        ssh_settings_for("compute-1", inventory)
    with pytest.raises(InvalidInput, match="routers: required with source: inventory"):
        load_inventory(path)


def test_the_shipped_example_loads() -> None:
    topo = load_inventory(Path(__file__).resolve().parent.parent / "examples" / "inventory.yaml")
    assert [(n.name, n.address, n.user) for n in topo.nodes] == [
        ("network-1", "198.51.100.11", "root"), ("network-2", "198.51.100.12", "root"), ("gw-3", "gw-3.mgmt.example", "ops"),
    ]
    assert [len(r.replicas) for r in topo.routers] == [2, 2]


# --------------------------------------------------------------------------- broken files
def test_the_broken_suite_is_big_enough_and_every_file_says_what_it_expects() -> None:
    assert len(BROKEN) >= 8
    for path in BROKEN:
        assert _expectations(path), f"{path.name} has no '# expect:' line"


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.stem)
def test_broken_inventory_reports_every_expected_problem(path: Path) -> None:
    inventory, problems = check_inventory(path)
    assert inventory is None
    reported = [str(p) for p in problems]
    for expected in _expectations(path):
        assert any(r.startswith(f"{path}:{expected}") for r in reported), f"expected {expected!r} in {reported}"
    assert len(reported) == len(_expectations(path)), f"unexpected extra problems: {reported}"
    with pytest.raises(InvalidInput) as caught:
        load_inventory(path)
    assert caught.value.exit_code == ExitCode.INVALID_INPUT
    assert all(r in caught.value.message for r in reported), "the error lists every problem"


def test_missing_file_names_the_resolved_path_next_to_the_inventory() -> None:
    path = DATA / "broken" / "missing-key-file.yaml"
    (problem,) = check_inventory(path)[1]
    assert str(DATA / "broken" / "keys" / "id_missing") in problem.message


def test_a_file_that_is_not_there_is_one_problem_without_a_line(tmp_path: Path) -> None:
    _, problems = check_inventory(tmp_path / "nope.yaml")
    assert [str(p) for p in problems] == [f"{tmp_path / 'nope.yaml'}: no such file"]


# --------------------------------------------------------------------------- against the lab
def lab_inventory_yaml(lab: LabHandle, folder: Path) -> Path:
    """The shared lab written as an inventory file, the way an operator would write one: SSH
    settings in defaults (the key by a path relative to the file), the last node by a pattern."""
    topo = Topology.model_validate_json((lab.dir / "inventory.json").read_text())
    first = topo.nodes[0]
    assert first.key_file is not None and first.known_hosts is not None and first.netns
    lines = [
        "defaults:",
        f"  user: {first.user}",
        f"  key_file: {os.path.relpath(first.key_file, folder)}",
        f"  known_hosts: {first.known_hosts}",
        f"  netns: {first.netns}",
        f"  check_child_processes_interval: {first.check_child_processes_interval}",
        "nodes:",
    ]
    *named, last = topo.nodes
    lines += [f"  - {{name: {n.name}, address: {n.address}}}" for n in named]
    lines += [f"  - {{pattern: '{last.name[:-1]}[{last.name[-1]}-9]', address: {last.address}}}"]
    routers = [
        r.model_dump(mode="json", include={"id", "name", "project_id", "vrid", "replicas", "floating_ips", "gateway_ip"})
        for r in topo.routers
    ]
    # JSON is YAML: the routers section as the lab knows it, one flow mapping a line
    lines += ["routers:"] + [f"  - {json.dumps(r)}" for r in routers]
    lines += [f"vantage: {json.dumps(topo.vantage.model_dump(mode='json'))}"]
    path = folder / "lab-inventory.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_inventory_of_the_lab_drives_a_real_dry_run(lab: LabHandle, tmp_path: Path) -> None:
    wait_lab_ready(lab)
    inventory = lab_inventory_yaml(lab, tmp_path)
    topo = load_inventory(inventory)
    lab_topo = Topology.model_validate_json((lab.dir / "inventory.json").read_text())
    assert topo.nodes == lab_topo.nodes, "the inventory reaches every node exactly as the lab's own inventory does"
    assert [r.id for r in topo.routers] == [r.id for r in lab_topo.routers]

    target = lab_topo.routers[0]
    experiment = tmp_path / "kill-primary.yaml"
    experiment.write_text(f"""title: kill the primary of {target.name}, found through an inventory file
target:
  routers: {{name: {target.name}}}
  mode: one
  source: inventory
  inventory: {inventory.name}
fault: {{type: keepalived-kill, replica: primary}}
steady_state_hypothesis:
  title: the router comes back
  tolerances:
    primaries_after: {{equals: 1}}
""")
    before = {r["id"]: [x["state"] for x in r["replicas"]] for r in lab.status()["routers"]}
    primary = next(x["node"] for r in lab.status()["routers"] if r["id"] == target.id
                   for x in r["replicas"] if x["state"] == "primary")
    proc = subprocess.run([*CHAOS, "run", "--dry-run", "--reports-dir", str(tmp_path / "reports"), str(experiment)],
                          capture_output=True, text=True, timeout=90, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"keepalived-kill on {primary}: router {target.name} (primary replica)" in proc.stdout, proc.stdout
    others = [rep.node for rep in target.replicas if rep.node != primary]
    assert all(f"on {node}:" not in proc.stdout for node in others), "only the primary's node is named"
    assert f"inject  [{primary}]$" in proc.stdout and target.id in proc.stdout
    assert not (tmp_path / "reports").exists(), "a dry run writes no run folder"
    assert {r["id"]: [x["state"] for x in r["replicas"]] for r in lab.status()["routers"]} == before


def test_a_broken_inventory_stops_chaos_run_with_exit_code_3(tmp_path: Path) -> None:
    inventory = tmp_path / "inv.yaml"
    inventory.write_text((DATA / "broken" / "single-replica.yaml").read_text())
    experiment = tmp_path / "e.yaml"
    experiment.write_text("""title: t
target: {source: inventory, inventory: inv.yaml}
fault: {type: keepalived-kill}
steady_state_hypothesis: {title: t, tolerances: {primaries_after: {equals: 1}}}
""")
    proc = subprocess.run([*CHAOS, "run", "--dry-run", str(experiment)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == ExitCode.INVALID_INPUT, proc.stdout + proc.stderr
    assert f"{inventory}:8:5: routers[0].replicas: lists 1 replica(s)" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
