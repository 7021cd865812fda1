"""Node commands: refused when a value is not what Neutron would produce, quoted always.

The shell snippets are run here with the local sh where they only read files or sleep, so the
tests check real shell behaviour, not just strings. Reboot commands are only inspected.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chaos.deployment import AgentContext
from chaos.neutron import NeutronLayout
from chaos.transport import node_commands as nc

RID = "cfff158b-fb81-50e1-abe2-769b312e5ed7"
LAYOUT = NeutronLayout()
AGENT = AgentContext(layout=LAYOUT)
HA = "ha-e7dbb7a0-b5"
EVIL_IDS = [
    "cfff158b-fb81-50e1-abe2-769b312e5ed7; rm -rf /",
    "$(reboot)",
    "cfff158b-fb81-50e1-abe2-769b312e5ed7`id`",
    "CFFF158B-FB81-50E1-ABE2-769B312E5ED7",
    "../../etc/passwd",
    "",
]


def sh(command: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("bad", EVIL_IDS)
def test_router_id_with_shell_metacharacters_is_refused(bad: str) -> None:
    builders = [
        lambda: nc.ground_truth(AGENT, [(bad, HA)]),
        lambda: nc.keepalived_signal(AGENT, bad, nc.Signal.KILL),
        lambda: nc.keepalived_start(AGENT, bad),
        lambda: nc.keepalived_ensure_running(AGENT, bad),
        lambda: nc.ha_link_set(AGENT, bad, HA, nc.LinkAction.DOWN),
        lambda: nc.vrrp_block(AGENT, bad, HA, "chaos-r1-a1"),
        lambda: nc.vrrp_unblock(AGENT, bad, HA, "chaos-r1-a1"),
    ]
    for build in builders:
        with pytest.raises(ValueError):
            build()


@pytest.mark.parametrize("bad", ["eth0", "ha-x; reboot", "ha-$(id)", "qg-0123456789abcdef", "tap-1234"])
def test_device_names_other_than_neutrons_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        nc.ha_link_set(AGENT, RID, bad, nc.LinkAction.DOWN)
    with pytest.raises(ValueError):
        nc.ground_truth(AGENT, [(RID, bad)])


@pytest.mark.parametrize("bad", ["a b", "x;y", "'", "-leading", "a" * 201, ""])
def test_markers_are_refused_unless_shell_inert(bad: str) -> None:
    with pytest.raises(ValueError):
        nc.vrrp_block(AGENT, RID, HA, bad)
    with pytest.raises(ValueError):
        nc.deadman_schedule(bad, 1, ["true"])


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), 1e9])
def test_durations_must_be_sane_numbers(bad: float) -> None:
    with pytest.raises(ValueError):
        nc.deadman_schedule("chaos-r1-a1", bad, ["true"])


def test_signals_come_from_the_enum() -> None:
    with pytest.raises(ValueError):
        nc.keepalived_signal(AGENT, RID, "HUP; reboot")  # type: ignore[arg-type]


def test_keepalived_start_is_neutrons_command_line() -> None:
    start = nc.keepalived_start(AGENT, RID)
    confs = "/var/lib/neutron/ha_confs"
    argv = ["ip", "netns", "exec", f"qrouter-{RID}", "keepalived", "-P", "-f", f"{confs}/{RID}/keepalived.conf",
            "-p", f"{confs}/{RID}.pid.keepalived", "-r", f"{confs}/{RID}.pid.keepalived-vrrp"]
    assert shlex.join(argv) in start
    old = NeutronLayout(pid_names="pre-train")
    assert f"-p {confs}/{RID}.pid -r {confs}/{RID}.pid-vrrp" in nc.keepalived_start(AgentContext(layout=old), RID)


def _fake_keepalived(conf: Path) -> subprocess.Popen[bytes]:
    """A process whose argv[0] is keepalived and whose command line names ``conf``."""
    script = f"exec -a keepalived {shlex.quote(sys.executable)} -c 'import time; time.sleep(30)' -f {shlex.quote(str(conf))}"
    return subprocess.Popen(["bash", "-c", script])


def test_keepalived_start_never_starts_a_second_one(tmp_path: Path) -> None:
    layout = NeutronLayout(state_path=tmp_path)
    agent = AgentContext(layout=layout)
    conf = Path(str(layout.keepalived_conf(RID)))
    conf.parent.mkdir(parents=True)
    # None runs: the start goes ahead (and fails here: there is no such namespace on this host).
    out = sh(nc.keepalived_start(agent, RID))
    assert "already running" not in out.stdout and "started keepalived" not in out.stdout
    assert "qrouter-" in out.stderr
    # One runs under pid files the start does not know (a keepalived of the deployment's own):
    # nothing is started, and the answer names it.
    other = _fake_keepalived(conf)
    try:
        time.sleep(0.2)
        out = sh(nc.keepalived_start(agent, RID))
        assert out.stdout.strip() == f"keepalived already running: {other.pid}", out
        out = sh(nc.keepalived_ensure_running(agent, RID))
        assert f"keepalived already running: {other.pid}" in out.stdout and "started" not in out.stdout
        assert sh(nc.keepalived_instances(agent, RID)).stdout.strip() == f"keepalived: {other.pid}"
    finally:
        other.kill()
        other.wait()
    assert sh(nc.keepalived_instances(agent, RID)).stdout.strip() == "keepalived: none"


@pytest.mark.parametrize("names", ["current", "pre-train"])
def test_keepalived_is_found_under_either_pid_file_name(tmp_path: Path, names: str) -> None:
    """A cloud from before Train writes <id>.pid; one since writes <id>.pid.keepalived: the
    signal and the ground truth find keepalived under both, and trust a pid only if it runs
    this router's keepalived.conf."""
    layout = NeutronLayout(state_path=tmp_path)
    agent = AgentContext(layout=layout)
    conf = Path(str(layout.keepalived_conf(RID)))
    conf.parent.mkdir(parents=True)
    proc = _fake_keepalived(conf)
    try:
        time.sleep(0.2)
        Path(str(layout.keepalived_pid(RID, names))).write_text(f"{proc.pid}\n")  # type: ignore[arg-type]
        truth = nc.parse_ground_truth(sh(nc.ground_truth(agent, [(RID, HA)])).stdout)[RID]
        assert truth.keepalived["main"].pid == proc.pid and truth.keepalived_alive
        assert sh(nc.keepalived_pids(agent, RID)).stdout.split()[0] == str(proc.pid)
        out = sh(nc.keepalived_signal(agent, RID, nc.Signal.TERM, vrrp_child=False))
        assert out.returncode == 0 and f"signalled {proc.pid}" in out.stdout
        assert proc.wait(timeout=5) == -15
    finally:
        proc.kill()
        proc.wait()
    out = sh(nc.keepalived_signal(agent, RID, nc.Signal.TERM))
    assert out.returncode == 3 and "no running keepalived" in out.stderr


def test_state_path_with_odd_characters_stays_one_word(tmp_path: Path) -> None:
    odd = tmp_path / "state $(touch pwned) 'q'"
    confs = odd / "ha_confs" / RID
    confs.mkdir(parents=True)
    (confs / "state").write_text("primary\n")
    (odd / "ha_confs" / f"{RID}.pid.keepalived").write_text(f"{os.getpid()}\n")  # a live pid that is not keepalived
    out = sh(nc.ground_truth(AgentContext(layout=NeutronLayout(state_path=odd)), [(RID, HA)]), timeout=20)
    assert not (Path.cwd() / "pwned").exists() and not (tmp_path / "pwned").exists()
    truth = nc.parse_ground_truth(out.stdout)[RID]
    assert truth.state == "primary"
    assert truth.namespace_exists is False  # no such namespace on this machine
    assert truth.keepalived["main"].pid == os.getpid() and truth.keepalived["main"].alive is False
    assert truth.keepalived_alive is False and truth.addresses == []


def test_parse_ground_truth_reads_every_field() -> None:
    output = "\n".join(
        [
            f"R {RID}",
            "N 1",
            "S primary",
            "A 1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever",
            f"A 2: {HA}    inet 169.254.0.1/24 scope global {HA}\\       valid_lft forever",
            "A 4: qg-7726395c-ff    inet 100.64.1.1/16 scope global qg-7726395c-ff\\       valid_lft forever",
            "K main 25 S",
            "K vrrp 26 T",
            f"L 2: {HA}@if18: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 state UP",
            "E",
            "R 4d436c1e-6fec-59fb-bb5b-139361adc266",
            "N 1",
            "S -",
            "K main - -",
            "K vrrp - -",
            f"L 2: {HA}@if18: <BROADCAST,MULTICAST> mtu 1500 state DOWN",
            "E",
        ]
    )
    truths = nc.parse_ground_truth(output)
    a = truths[RID]
    assert a.state == "primary" and a.has_address("169.254.0.1") and a.has_address("100.64.1.1")
    assert a.keepalived_alive and a.keepalived["vrrp"].stopped and a.ha_link_up is True
    b = truths["4d436c1e-6fec-59fb-bb5b-139361adc266"]
    assert b.state is None and not b.keepalived_alive and b.ha_link_up is False


def test_vrrp_rules_drop_protocol_112_both_ways_with_the_marker() -> None:
    block = nc.vrrp_block(AGENT, RID, HA, "chaos-run1-a2")
    assert block.count("-p 112") == 2 and "-I INPUT -i " + HA in block and "-I OUTPUT -o " + HA in block
    assert block.count("--comment chaos-run1-a2") == 2
    unblock = nc.vrrp_unblock(AGENT, RID, HA, "chaos-run1-a2")
    assert "-I " not in unblock and unblock.count("-D ") == 2 and unblock.count("chaos-run1-a2") == 2


def test_sudo_wraps_the_whole_command_quoted() -> None:
    wrapped = nc.as_root("echo a; echo 'b'", sudo=True)
    assert shlex.split(wrapped) == ["sudo", "-n", "sh", "-c", "echo a; echo 'b'"]
    assert nc.as_root("true", sudo=False) == "true"


def test_reboot_commands_are_built_detached_and_not_run() -> None:
    ssh = nc.reboot_systemctl()
    sysrq = nc.reboot_sysrq()
    for cmd in (ssh, sysrq):
        words = shlex.split(cmd)
        assert words[:4] == ["nohup", "setsid", "sh", "-c"] and cmd.rstrip().endswith("&")
    assert "systemctl reboot" in shlex.split(ssh)[4]
    assert "echo b > /proc/sysrq-trigger" in shlex.split(sysrq)[4]


def _wait_for(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_deadman_fires_by_itself_after_the_shell_is_gone(tmp_path: Path) -> None:
    flag = tmp_path / "undone"
    started = time.monotonic()
    out = sh(nc.deadman_schedule("chaos-test-fire", 0.5, [f"touch {shlex.quote(str(flag))}"]))
    assert time.monotonic() - started < 0.4, "scheduling must return at once"
    pid = nc.parse_deadman_pid(out.stdout)
    assert pid is not None and pid != os.getpid()
    assert not flag.exists()
    assert _wait_for(flag.exists, 5)


def test_deadman_cancel_by_pid_and_by_marker(tmp_path: Path) -> None:
    for by_pid in (True, False):
        flag = tmp_path / f"undone-{by_pid}"
        mark = f"chaos-test-cancel-{int(by_pid)}"
        out = sh(nc.deadman_schedule(mark, 1.5, [f"touch {shlex.quote(str(flag))}"]))
        pid = nc.parse_deadman_pid(out.stdout)
        assert pid is not None and Path(f"/proc/{pid}").exists()
        cancel = sh(nc.deadman_cancel(mark, pid if by_pid else None))
        assert cancel.returncode == 0 and f"cancelled {pid}" in cancel.stdout
        assert _wait_for(lambda: not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3], 2)
        time.sleep(1.7)
        assert not flag.exists(), "a cancelled dead-man must not undo"


def test_deadman_cancel_by_pid_leaves_foreign_processes_alone() -> None:
    proc = subprocess.Popen(["sleep", "5"], start_new_session=True)
    try:
        out = sh(nc.deadman_cancel("chaos-test-foreign", proc.pid))
        assert "cancelled" not in out.stdout
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- keepalived-kill's dead-man
def _kill_fault(signal: str, *, respawn_wait: float | None = None, duration: float | None = None,
                check_interval: float = 60.0, profile: str = "upstream"):  # type: ignore[no-untyped-def]
    """A keepalived-kill action on the fake topology's first router, built as the planner builds it
    (no node is reached: building commands needs none)."""
    from chaos.faults.base import FaultContext
    from chaos.faults.keepalived_kill import KeepalivedKill
    from chaos.model import Topology
    from tests import fakenode

    topo = fakenode.topology(check_interval=check_interval)
    nodes = tuple(n.model_copy(update={"profile": profile}) for n in topo.nodes)
    topo = Topology(source=topo.source, nodes=nodes, routers=topo.routers)
    router = topo.routers[0]
    params = {"signal": signal} | ({"respawn_wait": respawn_wait} if respawn_wait is not None else {})
    ctx = FaultContext(topo, None, "run-1")  # type: ignore[arg-type]
    return KeepalivedKill(ctx, router=router, node=topo.node(router.replicas[0].node), params=params,
                          duration=duration, action_id="a1")


@pytest.mark.parametrize("signal", ["TERM", "KILL"])
def test_keepalived_term_and_kill_arm_a_deadman_after_respawn_wait_and_the_live_undo(signal: str) -> None:
    """Without a duration, TERM and KILL still get a node-side deadline: the dead-man goes first,
    fires respawn_wait + the margin after the kill, runs exactly the undo's revert, and the undo
    ends by cancelling it (a disarm step, after the revert)."""
    from chaos.faults.keepalived_kill import REVERT_GRACE, KeepalivedKill

    fault = _kill_fault(signal, respawn_wait=2)
    margin = KeepalivedKill.took_timeout + REVERT_GRACE
    assert fault.deadman_after() == fault.deadman_deadline() == 2 + margin
    deadman, kill = fault.inject_commands()
    intent = nc.intent_of(deadman)
    assert isinstance(intent, nc.DeadmanSchedule)
    assert intent.after == 2 + margin and intent.marker == fault.marker == "chaos-run-1-a1"
    assert list(intent.undo) == fault.revert_commands() and isinstance(intent.undo_intents[0], nc.KeepalivedEnsureRunning)
    assert isinstance(nc.intent_of(kill), nc.KeepalivedSignal) and nc.intent_of(kill).signal == signal  # type: ignore[union-attr]
    revert, disarm = fault.undo_steps()
    assert revert.command == fault.revert_commands()[0] and not revert.disarm
    assert disarm.disarm and disarm.command == nc.deadman_cancel(fault.marker)
    # One shell word each: the timer's script is the quoted argument of `sh -c`, holding the
    # revert byte for byte after `sleep <deadline>;`.
    words = shlex.split(deadman)
    assert words[:4] == ["nohup", "setsid", "sh", "-c"] and words[5:] == ["3>&1", "</dev/null", ">/dev/null", "2>&1", "&"]
    assert words[4].startswith(f": {nc.DEADMAN_TAG} chaos-run-1-a1; ")
    assert f"; sleep {2 + margin:g}; {fault.revert_commands()[0]}" in words[4]
    for text in (deadman, words[4]):
        assert sh(f"sh -n -c {shlex.quote(text)}").returncode == 0, text


@pytest.mark.parametrize("check_interval, respawn_wait, deadline", [
    (60.0, None, 60 + 15 + 15),  # Neutron's default interval: the agent's chance, then the margin
    (0.0, None, 15),  # an agent that never respawns: no chance to give it, the margin only
    (60.0, 0, 15),
])
def test_keepalived_kill_deadline_follows_respawn_wait(check_interval: float, respawn_wait: float | None,
                                                       deadline: float) -> None:
    fault = _kill_fault("KILL", respawn_wait=respawn_wait, check_interval=check_interval)
    assert fault.deadman_deadline() == deadline
    assert f"sleep {deadline:g};" in fault.inject_commands()[0]


def test_keepalived_stop_keeps_its_duration_as_the_deadline() -> None:
    fault = _kill_fault("STOP", duration=3)
    assert fault.deadman_deadline() == 3 and "sleep 3;" in fault.inject_commands()[0]
    assert [s.disarm for s in fault.undo_steps()] == [False, True]


def test_keepalived_kill_deadman_in_a_container_profile_runs_the_revert_in_the_agents_context() -> None:
    """kolla: the timer runs on the host (it must outlive any container exec), its revert goes
    through `docker exec ... sh -c '...'`, quoted inside the timer's own quoted script."""
    fault = _kill_fault("TERM", respawn_wait=1, profile="kolla")
    script = shlex.split(fault.inject_commands()[0])[4]
    revert = fault.revert_commands()[0]
    assert revert.startswith("docker exec -u root neutron_l3_agent sh -c ") and script.endswith(f"; {revert}")
    assert sh(f"sh -n -c {shlex.quote(script)}").returncode == 0


def test_keepalived_kill_describes_its_deadline() -> None:
    """`chaos validate` and the dry run say when the dead-man would restart keepalived."""
    from chaos.experiment.registry import registry
    from chaos.experiment.schema import FAULT_SPECS
    from chaos.runner.plan import Plan, PlannedAction, describe

    cls = registry().fault("keepalived-kill")
    spec = FAULT_SPECS["keepalived-kill"].model_validate({"type": "keepalived-kill", "params": {"signal": "TERM", "respawn_wait": "2s"}})
    assert "dead-man restarts keepalived 17s (respawn_wait + 15s) after the kill" in cls.describe_spec(spec)
    spec = FAULT_SPECS["keepalived-kill"].model_validate({"type": "keepalived-kill"})
    assert "respawn_wait + 15s (respawn_wait: the node's check_child_processes_interval + 15s" in cls.describe_spec(spec)
    fault = _kill_fault("KILL", respawn_wait=2)
    action = PlannedAction(action_id="a1", fault="keepalived-kill", node=fault.node.name, router_id=fault.router_id,
                           router_name=None, replica_role="primary", affected_routers=[fault.router_id],
                           inject=fault.inject_commands(), undo=[s.model_dump() for s in fault.undo_steps()])
    plan = Plan(fault="keepalived-kill", routers=[fault.router_id], actions=[action], waves=[["a1"]])
    text = describe(plan, fault.ctx.topology, {"a1": fault.deadman_deadline()})
    assert f"dead-man on {fault.node.name}: undoes it by itself 17s after the injection" in text


async def test_keepalived_kill_deadman_restarts_keepalived_when_the_runner_never_undoes(fake_network) -> None:  # type: ignore[no-untyped-def]
    """On the modelled node whose agent never respawns: a KILL whose runner dies (no undo) is
    undone by the dead-man at its deadline, and nothing else does it before; ``chaos recover``'s
    replay afterwards changes nothing (one keepalived, no dead-man left)."""
    from chaos.faults.base import FaultContext, UndoStep, run_undo_steps
    from chaos.faults.keepalived_kill import KeepalivedKill
    from tests import fakenode

    net = fake_network(fakenode.topology(check_interval=0))
    offset = [0.0]
    net.clock = lambda: time.monotonic() + offset[0]  # the model's time, moved on by hand below
    router = net.topology.routers[0]
    node = net.topology.node(router.replicas[0].node)
    async with net.pool()(net.topology.nodes) as ssh:
        ctx = FaultContext(net.topology, ssh, "run-1")
        fault = KeepalivedKill(ctx, router=router, node=node, params={"signal": "KILL", "respawn_wait": 1},
                               duration=None, action_id="a1")
        journaled = [s.model_dump() for s in fault.undo_steps()]
        assert "dead-man pid" in await fault.inject() and (await fault.took())[0]
        deadline = fault.deadman_deadline()
        assert deadline is not None
        offset[0] += deadline - 1
        assert any("not running" in x for x in net.injected()), "nothing but the dead-man may restart it"
        assert any("dead-man" in x for x in net.injected())
        offset[0] += 1.5
        assert net.injected() == []
        assert len([p for p in net.nodes[node.name].keepalived_of(router.id) if p.kind == "keepalived"]) == 1
        details = await run_undo_steps(ctx, [UndoStep.model_validate(s) for s in journaled])
        assert "already running" in details[0] and not details[1]
        assert net.injected() == []


async def test_an_old_journals_keepalived_kill_steps_without_disarm_still_recover(fake_network) -> None:  # type: ignore[no-untyped-def]
    """A run written before TERM/KILL armed a dead-man journaled the revert alone: ``chaos
    recover`` replays it as it is (plain text, as read back from the journal) and keepalived
    runs again; there is no dead-man to cancel."""
    from chaos.faults.base import FaultContext, UndoStep, run_undo_steps
    from tests import fakenode

    net = fake_network(fakenode.topology(check_interval=0))
    router = net.topology.routers[0]
    node = net.topology.node(router.replicas[0].node)
    old_steps = [{"via": "ssh", "node": node.name, "command": str(nc.keepalived_ensure_running(node.agent, router.id))}]
    async with net.pool()(net.topology.nodes) as ssh:
        await ssh.run(node.name, nc.keepalived_signal(node.agent, router.id, nc.Signal.KILL))  # as the old run did
        assert any("not running" in x for x in net.injected())
        details = await run_undo_steps(FaultContext(net.topology, ssh, "old-run"), [UndoStep.model_validate(s) for s in old_steps])
    assert "started keepalived" in details[0]
    assert net.injected() == []
