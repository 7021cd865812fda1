"""Fidelity: what the tool and its lab write and run on a node is what Neutron itself produces.

Neutron 29.0.0's own classes (HaRouter, KeepalivedManager, ConntrackdManager, ProcessManager,
run in .venv-neutron by tests/fidelity/neutron_reference.py) render each replica of a lab
plan; ``chaos.neutron`` (used by the node commands, the probes and the lab) must agree with
them byte for byte: keepalived.conf, conntrackd.conf, pid file names, state files, command
lines, defaults. The lab tests then compare a running lab's files and processes with the same
reference, so what the tool meets in the lab is what it meets on a cloud.

In CI the reference venv is installed by .ci/run (scripts/install-neutron-reference.sh); a
missing one fails there instead of skipping.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from chaos import neutron
from chaos.deployment import AgentContext
from chaos.lab.agent import state_change_program
from chaos.lab.node import neutron_file
from chaos.lab.router import LAYOUT, keepalived_instance, lab_layout, render_conntrackd_conf, render_keepalived_conf
from chaos.lab.spec import HA_CIDR, LabOptions, LabSpec, RouterSpec, plan_lab
from chaos.transport import node_commands as nc
from tests.conftest import IN_CI, LabHandle, wait_lab_ready
from tests.fidelity.reference import neutron_reference, require_reference

pytestmark = pytest.mark.system  # see tests/conftest.py: the proof tier


@pytest.fixture(scope="module", autouse=True)
def _reference_installed() -> None:
    require_reference(IN_CI)


def reference_input(spec: LabSpec, routers: list[RouterSpec] | None = None, **options: Any) -> dict[str, Any]:
    """The lab's routers as Neutron's server would hand them to one L3 agent (the first
    replica of each), in neutron_reference.py's input shape."""
    ext = ipaddress.IPv4Network(spec.external_cidr)
    doc: dict[str, Any] = {
        "state_path": str(LAYOUT.state_path),
        "ha_confs_path": str(LAYOUT.ha_confs),
        "advert_int": spec.options.advert_int,
        "conntrackd": spec.options.conntrackd,
        "routers": [],
        **options,
    }
    for r in routers or list(spec.routers):
        rep = r.replicas[0]
        doc["routers"].append({
            "id": r.id, "project_id": r.project_id, "vrid": r.vrid,
            "ha_port": {"id": rep.ha_port_id, "mac": rep.ha_mac, "ip": rep.ha_ip, "cidr": str(HA_CIDR),
                        "network_id": spec.project(r.project_id).ha_network_id},
            "gateway": {"port_id": r.gateway_port_id, "mac": r.gateway_mac, "ip": r.gateway_ip, "cidr": str(ext),
                        "gateway_ip": spec.external_gateway_ip, "network_id": spec.external_network_id,
                        "subnet_id": spec.external_network_id},
            "internal": {"port_id": r.internal_port_id, "mac": r.internal_mac, "ip": r.internal_ip,
                         "cidr": r.tenant_cidr, "network_id": r.tenant_network_id, "subnet_id": r.tenant_network_id},
            "floating_ips": [f.address for f in r.floating_ips],
        })
    return doc


# --------------------------------------------------------------------------- renderings (no lab)
@pytest.mark.parametrize("conntrackd", [False, True])
def test_lab_renders_every_file_and_command_line_as_neutron(conntrackd: bool) -> None:
    spec = plan_lab(LabOptions(name="fid", routers=12, nodes=3, advert_int=2, conntrackd=conntrackd))
    ref = neutron_reference(reference_input(spec))
    for r in spec.routers:
        want = ref["routers"][r.id]
        rep = r.replicas[0]
        assert render_keepalived_conf(spec, r, rep) == want["keepalived_conf"]
        assert LAYOUT.keepalived_argv(r.id) == want["keepalived_argv"]
        assert str(LAYOUT.keepalived_conf(r.id)) == want["keepalived_conf_path"]
        assert str(LAYOUT.keepalived_pid(r.id)) == want["keepalived_pid_file"]
        assert str(LAYOUT.keepalived_vrrp_pid(r.id)) == want["keepalived_vrrp_pid_file"]
        assert str(LAYOUT.state_file(r.id)) == want["state_file"]
        assert str(LAYOUT.state_change_pid(r.id)) == want["state_change_pid_file"]
        assert str(LAYOUT.state_change_socket) == want["state_change_socket"]
        assert LAYOUT.state_change_argv(
            r.id, rep.ha_device, r.vrid, user=os.geteuid(), group=os.getegid(), conntrackd=conntrackd
        ) == want["state_change_argv"]
        if conntrackd:
            assert render_conntrackd_conf(spec, r, rep) == want["conntrackd_conf"]
            assert LAYOUT.conntrackd_argv(r.id) == want["conntrackd_argv"]
            for kind, key in (("conf", "conntrackd_conf_path"), ("pid", "conntrackd_pid_file"),
                              ("lock", "conntrackd_lock"), ("ctl", "conntrackd_ctl")):
                assert str(LAYOUT.conntrackd_file(r.id, kind)) == want[key]  # type: ignore[arg-type]
        else:
            assert want["conntrackd_argv"] is None


def test_defaults_are_neutrons() -> None:
    spec = plan_lab(LabOptions(name="fid", routers=1, nodes=2))
    defaults = neutron_reference(reference_input(spec))["defaults"]
    assert defaults["neutron_version"] == "29.0.0"
    assert defaults["check_child_processes_interval"] == neutron.CHECK_CHILD_PROCESSES_INTERVAL
    assert defaults["check_child_processes_action"] == neutron.CHECK_CHILD_PROCESSES_ACTION
    assert defaults["external_pids"] == str(LAYOUT.pids)
    assert defaults["ha_vrrp_advert_int"] == neutron.HA_VRRP_ADVERT_INT
    for name, value in neutron.CONNTRACKD.model_dump().items():
        assert defaults[f"ha_conntrackd_{name}"] == value, name
    # The lab's replicas run the very script of the same Neutron release.
    assert state_change_program().read_bytes() == Path(defaults["keepalived_state_change_script"]).read_bytes()
    assert LabOptions().respawn_interval == neutron.CHECK_CHILD_PROCESSES_INTERVAL


def test_a_layout_with_ha_confs_apart_from_state_path() -> None:
    """Deployments move ha_confs_path away from state_path (and kolla moves state_path):
    the layout follows Neutron's options, not a fixed /var/lib/neutron."""
    spec = plan_lab(LabOptions(name="fid", routers=2, nodes=2, conntrackd=True))
    layout = neutron.NeutronLayout(state_path=PurePosixPath("/var/lib/neutron/kolla"),
                                   ha_confs_path=PurePosixPath("/srv/neutron-ha"))
    ref = neutron_reference(reference_input(spec, state_path=str(layout.state_path), ha_confs_path=str(layout.ha_confs)))
    for r in spec.routers:
        want, rep = ref["routers"][r.id], r.replicas[0]
        assert layout.keepalived_argv(r.id) == want["keepalived_argv"]
        assert str(layout.state_file(r.id)) == want["state_file"]
        assert str(layout.state_change_pid(r.id)) == want["state_change_pid_file"]
        assert str(layout.state_change_socket) == want["state_change_socket"]
        assert layout.state_change_argv(r.id, rep.ha_device, r.vrid, user=os.geteuid(), group=os.getegid(),
                                        conntrackd=True) == want["state_change_argv"]
        assert neutron.render_conntrackd_conf(layout, r.id, ha_ip=rep.ha_ip, ha_device=rep.ha_device,
                                              vrid=r.vrid) == want["conntrackd_conf"]


def test_keepalived_without_no_track_support() -> None:
    """keepalived older than 2.0.3 gets no ``no_track``; the renderer says so the same way."""
    spec = plan_lab(LabOptions(name="fid", routers=1, nodes=2))
    r = spec.routers[0]
    want = neutron_reference(reference_input(spec, keepalived_no_track=False))["routers"][r.id]["keepalived_conf"]
    assert "no_track" not in want
    assert neutron.render_keepalived_conf(keepalived_instance(spec, r, r.replicas[0]), no_track=False) == want


def test_node_commands_start_keepalived_with_neutrons_command_line() -> None:
    spec = plan_lab(LabOptions(name="fid", routers=1, nodes=2))
    r = spec.routers[0]
    want = neutron_reference(reference_input(spec))["routers"][r.id]["keepalived_argv"]
    start = nc.keepalived_start(AgentContext(layout=LAYOUT), r.id)
    assert shlex.join(["ip", "netns", "exec", f"qrouter-{r.id}", *want]) in start


# --------------------------------------------------------------------------- a running lab
def node_cmdlines(lab: LabHandle, node: str) -> list[list[str]]:
    """Every process command line inside the node (its own PID namespace)."""
    from chaos.lab.node import init_pid
    from chaos.lab.procs import pids_in_pidns

    init = init_pid(lab.dir, node)
    assert init is not None
    lines = []
    for entry in pids_in_pidns(init):
        try:
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if raw:
            lines.append(raw.rstrip(b"\0").decode().split("\0"))
    return lines


def node_file(lab: LabHandle, node: str, path: PurePosixPath) -> str:
    return neutron_file(lab.dir, lab.spec, node, path).read_text()


# How each lab shape runs Neutron's keepalived command line: as the agent gives it (upstream),
# or through kolla's wrapper: /usr/sbin/keepalived in the foreground of its sidecar.
KEEPALIVED_AS_RUN = {
    "upstream": lambda argv: argv,
    "kolla": lambda argv: ["/usr/sbin/keepalived", "-n", "-l", "-D", *argv[1:]],
}


@pytest.mark.lab
@pytest.mark.parametrize("shape", ["lab", "kolla_lab"])
def test_a_running_lab_writes_and_runs_what_neutron_does(shape: str, request: pytest.FixtureRequest) -> None:
    lab: LabHandle = request.getfixturevalue(shape)
    wait_lab_ready(lab)
    spec = lab.spec
    layout = lab_layout(spec)
    as_run = KEEPALIVED_AS_RUN[spec.options.profile]
    for r in spec.routers:
        for rep in r.replicas:
            # Neutron renders the replica on rep.node: its HA port is that replica's.
            doc = reference_input(spec, [r.model_copy(update={"replicas": (rep,)})], state_path=str(layout.state_path),
                                  ha_confs_path=str(layout.ha_confs))
            want = neutron_reference(doc)["routers"][r.id]
            assert node_file(lab, rep.node, layout.keepalived_conf(r.id)) == want["keepalived_conf"]
            assert node_file(lab, rep.node, layout.state_file(r.id)) in ("primary", "backup")  # no newline
            running = node_cmdlines(lab, rep.node)
            keepalived = [c for c in running if c[0].endswith("keepalived") and want["keepalived_conf_path"] in c]
            assert keepalived and all(c == as_run(want["keepalived_argv"]) for c in keepalived), keepalived
            assert len(keepalived) == 2, "one keepalived (its main process and VRRP child) per replica"
            monitors = [c[2:] for c in running if len(c) > 2 and c[1].endswith("/neutron-keepalived-state-change")
                        and r.id in c]
            # Neutron's script under /bin/sh, with HaRouter's arguments (the script itself forks
            # a reader loop, so its command line shows twice).
            assert monitors and all(m == want["state_change_argv"][1:] for m in monitors), monitors
            pid = int(node_file(lab, rep.node, layout.keepalived_pid(r.id)))
            assert any(str(pid) == p for p in _pids_of(lab, rep.node, as_run(want["keepalived_argv"])))


def _pids_of(lab: LabHandle, node: str, argv: list[str]) -> list[str]:
    """Pids, as the node numbers them (its own /proc), of the processes running exactly ``argv``."""
    from chaos.lab.node import init_pid

    init = init_pid(lab.dir, node)
    proc = Path(f"/proc/{init}/root/proc")
    found = []
    for entry in os.listdir(proc):
        if entry.isdigit():
            try:
                if (proc / entry / "cmdline").read_bytes().rstrip(b"\0").decode().split("\0") == argv:
                    found.append(entry)
            except OSError:
                continue
    return found
