"""``chaos lab up --backend neutron``: the steps from nothing to routers that Neutron runs.

The lab's own pieces are reused as they are (the fabric, the vantage point, node hosts with
sshd and a BMC, VM namespaces with sshd and the echo service, the services process, the
inventory); this module orders them around the controller and Neutron's API:

1. disks, fabric (br-mgmt, br-ext), vantage point, the controller powered on (its boot runs
   while the rest is built), the VMs wired to it, their sshd, the services process (BMC, echo,
   Keystone, the forwarder to neutron-server), the network nodes powered on;
2. the controller's services and every agent alive (through the API, as an operator checks);
3. the topology created through the API (``build.create``) and the VMs' taps plugged;
4. the plan rewritten with what Neutron made (``build.read_back``), every floating IP answering
   from the vantage point.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chaos.errors import InfrastructureError
from chaos.lab import fabric
from chaos.lab.inventory import write_inventory
from chaos.lab.keystone import ensure_config, write_clouds_yaml
from chaos.lab.node import new_credentials, power_on
from chaos.lab.placement import locked_plan
from chaos.lab.real import build, controller, vms
from chaos.lab.real.config import (
    ensure_secrets,
    write_controller_files,
    write_node_files,
)
from chaos.lab.spec import LabSpec

if TYPE_CHECKING:
    from chaos.lab.manager import Lab

BUILT_MARKER = "neutron-built"


def create(lab: Lab, spec: LabSpec, progress: Callable[[str], None], timeout: float) -> LabSpec:
    """Bring the neutron backend up; returns the plan as Neutron made it (saved as lab.json)."""
    lab.dir.mkdir(parents=True, exist_ok=True)
    lab.dir.chmod(0o700)
    spec.save(lab.spec_path)
    lab.prepare_disks(spec)
    secrets = ensure_secrets(lab.dir)
    keystone = ensure_config(lab.dir)
    new_credentials(lab.dir)
    write_controller_files(spec, lab.dir, secrets, (keystone.user, keystone.password, keystone.project))
    for node in spec.nodes:
        write_node_files(spec, lab.dir / "nodes" / node.name, secrets, node)

    progress("building the fabric and the vantage point; powering on the controller")
    fabric.build_fabric(spec)
    fabric.build_vantage(spec)
    controller.power_on(spec, lab.dir)
    progress("wiring the VMs to the controller")
    vms.build_vms(spec)
    lab.start_vm_sshd(spec)
    lab.write_known_hosts(spec)
    lab.start_services()
    services = json.loads((lab.dir / "services.json").read_text())
    write_clouds_yaml(lab.dir, lab.name, services["api_url"])
    # Neutron's agents take minutes on a loaded 2-core machine; never less than ten.
    deadline = time.monotonic() + max(timeout, 600.0)
    # Controllers first, as in a datacenter: agents started before RabbitMQ listens back off
    # between reconnections (up to 30 s) and come up much later.
    _wait_controller(lab, progress, deadline)
    for node in spec.nodes:
        power_on(spec, lab.dir, node)
        progress(f"powered on {node.name}")
    admin_account, tenant_account = build.accounts(lab.dir)
    auth_url = services["api_url"] + "/identity/v3"
    admin = build.connect(auth_url, admin_account)
    tenant = build.connect(auth_url, tenant_account)
    try:
        build.poll("Neutron's agents", lambda: build.agents_missing(admin, spec), _left(deadline), progress)
        progress("creating the topology through Neutron's API (admin: external network; tenant: the rest)")
        created = build.create(spec, admin, tenant, progress)
        for router in spec.routers:
            vms.plug_vm(spec, router, created[router.index]["port"], created[router.index]["network"])
        progress("waiting for the L3 agents to build every replica")
        made: list[LabSpec] = []

        def built() -> str | None:
            try:
                made[:] = [build.read_back(spec, lab.dir, admin, created)]
            except LookupError as exc:
                return str(exc)
            return None

        build.poll("the routers' replicas", built, _left(deadline), progress)
    finally:
        admin.close()
        tenant.close()
    spec = made[0]
    spec.save(lab.spec_path)
    (lab.dir / BUILT_MARKER).touch()
    lab.write_known_hosts(spec)
    _wait_floating_ips(spec, lab.dir, progress, deadline)
    return spec


def _state(lab_dir: Path, node: str, router_id: str) -> str:
    path = lab_dir / "nodes" / node / "neutron" / "ha_confs" / router_id / "state"
    try:
        return f"{node}:{path.read_text()}"
    except OSError:
        return f"{node}:-"


def _left(deadline: float) -> float:
    return max(1.0, deadline - time.monotonic())


def _wait_controller(lab: Lab, progress: Callable[[str], None], deadline: float) -> None:
    last = ""
    while True:
        state = controller.boot_state(lab.dir)
        step = str(state.get("step"))
        if step != last:
            progress(f"controller: {step}")
            last = step
        if step == "running":
            return
        if step == "failed":
            raise InfrastructureError(
                f"the controller failed to boot: {state.get('error')}",
                hint=f"see {lab.dir / 'controller'}/*.log",
            )
        if not controller.is_running(lab.dir):
            raise InfrastructureError("the controller's init died", hint=f"see {lab.dir / 'controller' / 'console.log'}")
        if time.monotonic() > deadline:
            raise InfrastructureError(f"the controller is still at {step!r}", hint=f"see {lab.dir / 'controller'}/*.log")
        time.sleep(0.5)


def _wait_floating_ips(spec: LabSpec, lab_dir: Path, progress: Callable[[str], None], deadline: float) -> None:
    """Until every floating IP answers a ping from the vantage point (ports ACTIVE, ARP learnt)."""
    pending = [f.address for r in spec.routers for f in r.floating_ips]
    progress(f"waiting for {len(pending)} floating IP(s) to answer")
    while pending:
        pending = [
            a for a in pending
            if subprocess.run(["ip", "netns", "exec", spec.vantage.netns, "ping", "-c", "1", "-W", "1", a],
                              capture_output=True, timeout=10).returncode != 0
        ]
        if pending and time.monotonic() > deadline:
            states = {r.name: [_state(lab_dir, rep.node, r.id) for rep in r.replicas]
                      for r in spec.routers if any(f.address in pending for f in r.floating_ips)}
            raise InfrastructureError(f"floating IPs not answering: {', '.join(pending)} (replica states {states})",
                                      hint="the nodes' logs: <lab dir>/nodes/*/log/, the controller's: <lab dir>/controller/log/")
    progress("every floating IP answers")


def sync_placement(lab_dir: Path, admin: Any) -> bool:
    """Rewrite the plan and the inventory when Neutron moved replicas (an evacuation through the
    API, by the tool or by hand): the emulated lab's API does this as it moves them; here the
    lab's services process asks Neutron every few seconds. True when something changed."""
    if not (lab_dir / BUILT_MARKER).exists():
        return False
    spec = LabSpec.load(lab_dir / "lab.json")
    now = build.current_replicas(admin, [r.id for r in spec.routers])
    with locked_plan(lab_dir) as spec:
        changed = [r for r in spec.routers if now.get(r.id) and now[r.id] != r.replicas]
        if not changed:
            return False
        routers = tuple(r.model_copy(update={"replicas": now[r.id]}) if r in changed else r for r in spec.routers)
        spec = spec.model_copy(update={"routers": routers})
        spec.save(lab_dir / "lab.json")
        write_inventory(lab_dir, spec)
    return True
