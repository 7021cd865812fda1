"""Moving a router's replicas between lab nodes, as Neutron's L3 agent scheduler does.

Adding a router to an L3 agent in Neutron creates an HA port on the project's HA network
(a new port id, a new address from 169.254.192.0/18) bound to the agent's host, and the agent
builds ``qrouter-<id>`` there and starts keepalived. Removing it deletes the port and the agent
tears the replica down. The lab does exactly that: the plan (``lab.json``) is the database,
changed atomically under a lock, and the affected node's agent is told with SIGHUP, which makes
it reload the plan and add or remove replicas (see ``chaos.lab.agent``).

The VRID stays the router's: it belongs to the router inside its project's HA network, not to
a replica.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import signal
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from chaos.errors import Conflict, InfrastructureError, InvalidInput
from chaos.lab.procs import cmdline, pids_matching
from chaos.lab.spec import HA_CIDR, LabSpec, ReplicaSpec, RouterSpec

LOCK_NAME = "lab.json.lock"


class RouterNotFound(InvalidInput):
    """No router with that id in the lab."""


class AlreadyHosted(Conflict):
    """The router already has a replica on that node."""


class NotHosted(Conflict):
    """The router has no replica on that node."""


@contextmanager
def locked_plan(lab_dir: Path) -> Iterator[LabSpec]:
    """The lab's plan, read under an exclusive lock held until the block ends.

    The API handles requests concurrently and tests or tools may move replicas at the same
    time; the lock makes read-modify-write of ``lab.json`` one step.
    """
    fd = os.open(lab_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield LabSpec.load(lab_dir / "lab.json")
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _router(spec: LabSpec, router_id: str) -> RouterSpec:
    for router in spec.routers:
        if router.id == router_id:
            return router
    raise RouterNotFound(f"router {router_id} could not be found")


def _with_replicas(spec: LabSpec, router: RouterSpec, replicas: tuple[ReplicaSpec, ...]) -> LabSpec:
    routers = tuple(r.model_copy(update={"replicas": replicas}) if r.id == router.id else r for r in spec.routers)
    return spec.model_copy(update={"routers": routers})


def free_ha_ip(spec: LabSpec, project_id: str) -> str:
    """The lowest address of the project's HA network that no HA port uses (as Neutron's IPAM)."""
    used = {rep.ha_ip for r in spec.routers if r.project_id == project_id for rep in r.replicas}
    for host in ipaddress.IPv4Network(spec.project(project_id).ha_cidr).hosts():
        if str(host) not in used and host != HA_CIDR.network_address:
            return str(host)
    raise Conflict(f"the HA network of project {project_id} has no free address left")


def _mac(port_id: str) -> str:
    import hashlib

    digest = hashlib.sha256(port_id.encode()).digest()
    return "fa:16:3e:" + ":".join(f"{b:02x}" for b in digest[:3])


def add_replica(lab_dir: Path, router_id: str, node: str, *, notify: bool = True) -> ReplicaSpec:
    """Place a new replica of ``router_id`` on ``node``: a new HA port and address; the agent builds it."""
    with locked_plan(lab_dir) as spec:
        spec.node(node)  # raises InvalidInput for an unknown node
        router = _router(spec, router_id)
        if any(rep.node == node for rep in router.replicas):
            raise AlreadyHosted(f"router {router_id} is already hosted on {node}")
        port_id = str(uuid.uuid4())
        replica = ReplicaSpec(node=node, ha_port_id=port_id, ha_ip=free_ha_ip(spec, router.project_id), ha_mac=_mac(port_id))
        new = _with_replicas(spec, router, (*router.replicas, replica))
        new.save(lab_dir / "lab.json")
        refresh_inventory(lab_dir, new)
    if notify:
        notify_agent(lab_dir, node)
    return replica


def remove_replica(lab_dir: Path, router_id: str, node: str, *, notify: bool = True) -> ReplicaSpec:
    """Take ``router_id``'s replica off ``node``; the node's agent stops keepalived and removes the namespace."""
    with locked_plan(lab_dir) as spec:
        router = _router(spec, router_id)
        gone = next((rep for rep in router.replicas if rep.node == node), None)
        if gone is None:
            raise NotHosted(f"router {router_id} is not hosted on {node}")
        new = _with_replicas(spec, router, tuple(rep for rep in router.replicas if rep.node != node))
        new.save(lab_dir / "lab.json")
        refresh_inventory(lab_dir, new)
    if notify:
        notify_agent(lab_dir, node)
    return gone


def refresh_inventory(lab_dir: Path, spec: LabSpec) -> None:
    """Rewrite the lab's inventory.json so that it names the replicas where they now are."""
    from chaos.lab.inventory import write_inventory

    try:
        write_inventory(lab_dir, spec)
    except (OSError, ValueError, KeyError) as exc:  # services.json missing: a lab being torn down
        import structlog

        structlog.get_logger("lab.placement").warning("inventory not refreshed", error=str(exc))


def agent_host_pid(lab_dir: Path, node: str) -> int | None:
    """Host pid of the node's agent (its own pid file holds the pid inside the node's PID namespace)."""
    want = ["-m", "chaos.lab.agent", "--lab-dir", str(lab_dir), "--node", node]
    for pid in pids_matching(f"chaos.lab.agent --lab-dir {lab_dir} --node {node}"):
        argv = cmdline(pid).split()
        # exact tokens: "--node network-1" must not match "network-10"
        for i in range(len(argv) - len(want) + 1):
            if argv[i : i + len(want)] == want:
                return pid
    return None


def notify_agent(lab_dir: Path, node: str) -> bool:
    """SIGHUP the node's agent so it reloads the plan; False when the node is down (it syncs at boot)."""
    pid = agent_host_pid(lab_dir, node)
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return False
    except OSError as exc:
        raise InfrastructureError(f"could not signal the agent of {node}: {exc}") from exc
    return True
