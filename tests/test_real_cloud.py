"""docs/real-cloud.md, followed: the lab treated as a staging cloud.

The document's own command lines are read out of it and run, in its order, with its names
replaced by the lab's: the lab's Keystone/Neutron API through its clouds.yaml
(``OS_CLIENT_CONFIG_FILE``, as section 3 says), and an inventory written the way a user writes
one (node addresses, the key, an empty known_hosts file, only port 22 declared), with no lab
flag anywhere. Host keys are recorded by ``chaos known-hosts add``, then doctor, a dry run and
one real run with a blast radius of one router. The document's sudoers lines, example inventory
and canary echo services are checked for real too (visudo, the inventory loader, socat and
Python serving the probe's own protocol).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from chaos.errors import ExitCode
from chaos.journal import read_journal
from chaos.targets.inventory import read_inventory
from tests.conftest import CHAOS_CLI, LabHandle, wait_lab_ready

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "real-cloud.md"
INVENTORY = "staging.yaml"
CLOUD = "staging"
ROUTER = "canary-router"

# The chaos commands of the document, in its order: changing the walk-through changes this test.
WALK = [
    "chaos known-hosts add --cloud staging --inventory staging.yaml",
    "chaos known-hosts add --cloud staging --inventory staging.yaml --yes",
    "chaos discover --cloud staging --inventory staging.yaml",
    "chaos doctor --cloud staging --inventory staging.yaml",
    "chaos run experiments/keepalived-term.yaml --cloud staging --inventory staging.yaml --router canary-router --dry-run",
    "chaos run experiments/keepalived-term.yaml --cloud staging --inventory staging.yaml --router canary-router",
]


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


def doc_commands() -> list[str]:
    return [line.strip() for block in blocks("sh") for line in block.splitlines() if line.startswith("chaos ")]


def test_the_document_walks_these_commands() -> None:
    assert doc_commands() == WALK


@pytest.mark.skipif(shutil.which("visudo") is None, reason="visudo (sudo) is not installed")
def test_the_documents_sudoers_lines_parse(tmp_path: Path) -> None:
    (sudoers,) = blocks("sudoers")
    path = tmp_path / "chaos"
    path.write_text(sudoers)
    proc = subprocess.run(["visudo", "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "NOPASSWD: /bin/sh, /usr/bin/sh" in sudoers  # what `sudo -n sh -c` resolves to, /usr merged or not


def test_the_documents_inventory_is_valid(tmp_path: Path) -> None:
    (text,) = [b for b in blocks("yaml") if b.startswith("# staging.yaml")]
    (tmp_path / "id").write_text("key\n")
    (tmp_path / "kh").write_text("")
    text = text.replace("~/.ssh/chaos_ed25519", str(tmp_path / "id")).replace("~/.ssh/known_hosts_staging", str(tmp_path / "kh"))
    path = tmp_path / INVENTORY
    path.write_text(text + "  # ssh_config left to its default\n")
    inventory = read_inventory(path)
    assert (inventory.defaults.user, inventory.defaults.sudo, inventory.defaults.profile) == ("chaos", True, "kolla")
    assert [(p.port, p.service) for p in inventory.probe_ports.routers[ROUTER]] == [(7, "echo"), (22, "ssh")]


def echo_commands() -> list[list[str]]:
    """The canary's echo service command lines, as the document gives them (socat, Python)."""
    (cloud_init,) = [b for b in blocks("yaml") if b.startswith("#cloud-config")]
    unit = yaml.safe_load(cloud_init)["write_files"][0]["content"]
    (socat,) = re.findall(r"^ExecStart=(.*)$", unit, flags=re.M)
    (python,) = re.findall(r"^`ExecStart=(/usr/bin/python3 .*?)`\.$", DOC.read_text(), flags=re.M)
    return [shlex.split(socat), shlex.split(python)]


@pytest.mark.parametrize("which", [0, 1], ids=["socat", "python"])
def test_the_canary_echo_services_answer_the_probe(which: int) -> None:
    argv = echo_commands()[which]
    if shutil.which(argv[0]) is None:
        pytest.skip(f"{argv[0]} is not installed here")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # the same command on a free port (7 may be taken here)
    argv = [a.replace("TCP-LISTEN:7,", f"TCP-LISTEN:{port},").replace("('', 7)", f"('127.0.0.1', {port})") for a in argv]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                conn = socket.create_connection(("127.0.0.1", port), timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.05)
        with conn, conn.makefile("rwb", buffering=0) as f:
            for n in range(5):  # what the held-session probe sends: numbered lines, echoed in order
                f.write(f"{n}\n".encode())
                assert f.readline() == f"{n}\n".encode()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --------------------------------------------------------------------------- the walk, on the lab
def user_inventory(lab: LabHandle, folder: Path) -> Path:
    """What a user writes for this cloud (the lab): node addresses, the key that logs in, an empty
    known_hosts file for `chaos known-hosts add`, the agents' respawn interval, port 22 only."""
    (folder / "known_hosts").write_text("")
    nodes = "\n".join(f"  - {{name: {n.name}, address: {n.mgmt_ip}}}" for n in lab.spec.nodes)
    path = folder / INVENTORY
    path.write_text(f"""\
defaults:
  user: root                                # the lab's nodes take root logins with the lab's key
  key_file: {lab.dir / 'ssh' / 'id_ed25519'}
  known_hosts: known_hosts                  # empty: chaos known-hosts add fills it
  netns: {lab.spec.vantage.netns}           # this cloud's management network is reached from here
  profile: upstream
  check_child_processes_interval: 2         # the agents' [agent] check_child_processes_interval
nodes:
{nodes}
vantage: {{netns: {lab.spec.vantage.netns}}}  # where the floating IPs are reached from
probe_ports:
  default: [{{port: 22, service: ssh}}]     # no canary VM yet: every VM runs sshd
""")
    return path


def fingerprint(pub: Path) -> str:
    return subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True).stdout.split()[1]


def test_following_the_document_against_the_lab_as_a_cloud(lab: LabHandle, tmp_path: Path) -> None:
    wait_lab_ready(lab)
    folder = tmp_path / "ops"
    folder.mkdir()
    inventory = user_inventory(lab, folder)
    router = lab.spec.routers[0]
    home = tmp_path / "home"  # no ~/.ssh of anyone else's on the way
    home.mkdir()
    env = {**os.environ, "OS_CLIENT_CONFIG_FILE": str(lab.dir / "clouds.yaml"), "HOME": str(home),
           "CHAOS_REPORTS_DIR": str(tmp_path / "reports")}
    env.pop("OS_CLOUD", None)
    env.pop("CHAOS_LAB_NAME", None)

    def step(i: int) -> subprocess.CompletedProcess[str]:
        words = shlex.split(WALK[i])
        words = [{CLOUD: lab.name, INVENTORY: str(inventory), ROUTER: router.name}.get(w, w) for w in words]
        assert not any(w in ("--lab", "--name") for w in words)
        return subprocess.run([*CHAOS_CLI, *words[1:]], capture_output=True, text=True, timeout=300, cwd=ROOT,
                              env=env, stdin=subprocess.DEVNULL)

    started = time.monotonic()
    timings: dict[str, float] = {}

    def timed(i: int, name: str) -> subprocess.CompletedProcess[str]:
        t = time.monotonic()
        proc = step(i)
        timings[name] = round(time.monotonic() - t, 1)
        return proc

    # 6. host keys: shown, not recorded without a terminal; recorded with --yes
    shown = timed(0, "known-hosts (refused)")
    assert shown.returncode == ExitCode.USAGE, shown.stdout + shown.stderr
    for node in lab.spec.nodes:
        assert fingerprint(lab.dir / "nodes" / node.name / "ssh_host_ed25519_key.pub") in shown.stdout
    assert (folder / "known_hosts").read_text() == ""
    added = timed(1, "known-hosts --yes")
    assert added.returncode == ExitCode.OK, added.stdout + added.stderr
    assert len((folder / "known_hosts").read_text().splitlines()) == len(lab.spec.nodes)

    # 7. discover and doctor
    found = timed(2, "discover")
    assert found.returncode == ExitCode.OK, found.stdout + found.stderr
    assert router.name in found.stdout and "primary: " in found.stdout and "0 router(s) flagged" in found.stdout
    doctor = timed(3, "doctor")
    assert doctor.returncode == ExitCode.OK, doctor.stdout + doctor.stderr
    assert "nothing blocks a run" in doctor.stdout and "host key verified" in doctor.stdout

    # 8. the dry run: what the flags changed, the plan on one router, how its node is reached
    dry = timed(4, "dry run")
    assert dry.returncode == ExitCode.OK, dry.stdout + dry.stderr
    assert "target.source: 'lab' -> 'openstack'" in dry.stdout
    assert f"target openstack:{lab.name}" in dry.stdout
    assert "on 1 router(s), 1 action(s)" in dry.stdout and f"router {router.name} (primary replica)" in dry.stdout
    assert "nodes, reached as:" in dry.stdout and f"known_hosts {folder / 'known_hosts'}" in dry.stdout
    assert not (tmp_path / "reports").exists()  # a dry run writes nothing

    # ... and the run: one router disturbed, the rest untouched, the TCP tolerances skipped
    real = timed(5, "run")
    assert real.returncode == ExitCode.OK, real.stdout[-3000:] + real.stderr[-3000:]
    run_dir = Path(real.stdout.strip().splitlines()[-1])
    assert run_dir.parent == tmp_path / "reports"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["verdict"] == "held" and summary["run"]["target"] == f"openstack:{lab.name}"
    skipped = {t["name"]: t["reason"] for t in summary["tolerances"] if t["skipped"]}
    assert set(skipped) == {"tcp_dropped_inbound", "tcp_max_stall_s"}
    assert all("echo service" in why for why in skipped.values())
    assert "inside the VM" in skipped["tcp_max_stall_s"]  # both directions were impossible here
    measured = {t["name"]: t["value"] for t in summary["tolerances"] if not t["skipped"]}
    assert measured["new_conn_recovery_inbound_s"] is not None  # through the VM's sshd banner
    assert measured["outage_s"] is not None and measured["failover_s"] is not None
    assert "skip tcp_dropped_inbound" in real.stdout
    events = read_journal(run_dir / "journal.jsonl")
    started_event = next(e for e in events if e["kind"] == "run.started")
    assert started_event["overrides"]["target.routers"] == {"from": {"name": "*"}, "to": {"one_of": [router.name]}}
    assert started_event["overrides"]["target.cloud"]["to"] == lab.name
    plan = next(e for e in events if e["kind"] == "run.plan")
    assert plan["targets"] == [router.id] and [a["router_id"] for a in plan["actions"]] == [router.id]
    assert {e["router_id"] for e in events if e["kind"] == "fault.injected"} == {router.id}
    assert all(e["ok"] for e in events if e["kind"] == "fault.undone")
    junit = (run_dir / "junit.xml").read_text()
    assert 'failures="0"' in junit and 'skipped="2"' in junit
    # nothing left injected: every router has one primary again and every floating IP answers
    wait_lab_ready(lab)
    print(f"\nreal-cloud walk: {round(time.monotonic() - started, 1)} s in all; {timings}")
