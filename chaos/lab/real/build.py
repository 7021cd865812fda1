"""The lab's topology created through Neutron's API, as an admin and a tenant would, and read back.

- The admin creates the external network (flat, physnet ``extnet``, ``router:external``) and
  its subnet (the vantage point is its gateway).
- The tenant (the lab Keystone's member user: roles member and reader on the lab's project)
  creates, per router, a network and subnet,
  the router (HA because the server says ``l3_ha = True``: the tenant does not ask), its
  gateway, its interface, the VM's port (the planned MAC and fixed IP, device_owner
  ``compute:lab``) and a floating IP on it.
- The admin binds each VM port to the controller's host, as Nova binds a VM's port to its
  compute host; the VM's ``tap<port[:11]>`` (a veth whose other end is the VM's ``eth0``) is
  plugged there by Neutron's LinuxBridge agent.

Neutron chooses the rest (router, port and network ids, the L3 agents that host each router,
the HA ports and addresses, the VRIDs, the gateway and floating addresses); ``read_back``
turns what Neutron made into the lab's plan, from which ``status`` and the inventory are
written as for the emulated lab.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from chaos.errors import InfrastructureError
from chaos.lab.keystone import KeystoneUser, load_config
from chaos.lab.node import node_dir
from chaos.lab.real.config import EXT_PHYSNET
from chaos.lab.router import LAYOUT
from chaos.lab.spec import EXT_CIDR, FloatingIPSpec, LabSpec, ProjectSpec, ReplicaSpec, RouterSpec, VMSpec

log = structlog.get_logger("lab.real.build")

API_TIMEOUT = 30.0
HA_PORT_OWNER = "network:router_ha_interface"
GATEWAY_OWNER = "network:router_gateway"
HA_INTERFACE_OWNER = "network:ha_router_replicated_interface"
VM_OWNER = "compute:lab"
EXT_NETWORK = "ext-net"
# Gateways and floating IPs come from here; the vantage point is the subnet's gateway (.0.1).
EXT_POOL = (str(EXT_CIDR.network_address + 256 + 1), str(EXT_CIDR.network_address + 64 * 256 - 2))


def connect(auth_url: str, account: KeystoneUser) -> Any:
    """An openstacksdk connection for one of the lab Keystone's accounts."""
    import openstack.connection

    return openstack.connection.Connection(
        auth={
            "auth_url": auth_url, "username": account.user, "password": account.password,
            "project_name": account.project, "user_domain_name": "Default", "project_domain_name": "Default",
        },
        auth_type="password", identity_api_version="3", region_name="RegionOne", interface="public",
        api_timeout=API_TIMEOUT,
    )


def accounts(lab_dir: Path) -> tuple[KeystoneUser, KeystoneUser]:
    """The admin, and the tenant: the lab Keystone's member user, whose project is the lab's
    first project (so Neutron's routers carry the plan's project id)."""
    config = load_config(lab_dir)
    if config.member is None:
        raise InfrastructureError("the lab's Keystone has no member user to act as the tenant")
    admin = KeystoneUser(user=config.user, user_id=config.user_id, password=config.password,
                         project=config.project, project_id=config.project_id)
    return admin, config.member


def poll(what: str, check: Callable[[], str | None], timeout: float, progress: Callable[[str], None],
         interval: float = 1.0) -> None:
    """Call ``check`` until it returns None (done); it returns what is still missing otherwise."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            missing = check()
        except Exception as exc:  # noqa: BLE001 - the API may refuse while it starts; retried
            missing = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if missing is None:
            return
        if missing != last:
            progress(f"waiting for {what}: {missing}")
            last = missing
        if time.monotonic() > deadline:
            raise InfrastructureError(f"{what} not done after {timeout:.0f}s: {missing}")
        time.sleep(interval)


def agents_missing(admin: Any, spec: LabSpec) -> str | None:
    """What is missing for every host's agents to be alive: L3 agents on the network nodes,
    LinuxBridge agents on them and on the controller."""
    assert spec.controller is not None
    agents = list(admin.network.agents())
    alive = {(a.agent_type, a.host) for a in agents if a.is_alive}
    want = {("L3 agent", n.name) for n in spec.nodes} | {("Linux bridge agent", n.name) for n in spec.nodes}
    want.add(("Linux bridge agent", spec.controller.name))
    missing = sorted(want - alive)
    return None if not missing else ", ".join(f"{kind} on {host}" for kind, host in missing)


def create(spec: LabSpec, admin: Any, tenant: Any, progress: Callable[[str], None]) -> dict[int, dict[str, Any]]:
    """Create every network, router, port and floating IP; returns per router index the ids."""
    assert spec.controller is not None
    ext = admin.network.find_network(EXT_NETWORK)
    if ext is None:
        ext = admin.network.create_network(
            name=EXT_NETWORK, is_router_external=True, provider_network_type="flat",
            provider_physical_network=EXT_PHYSNET,
        )
        admin.network.create_subnet(
            network_id=ext.id, name=f"{EXT_NETWORK}-subnet", ip_version=4, cidr=spec.external_cidr,
            gateway_ip=spec.external_gateway_ip, is_dhcp_enabled=False,
            allocation_pools=[{"start": EXT_POOL[0], "end": EXT_POOL[1]}],
        )
    created: dict[int, dict[str, Any]] = {}
    for r in spec.routers:
        vm = r.vms[0]
        net = tenant.network.find_network(f"tenant-net-{r.index}") or tenant.network.create_network(name=f"tenant-net-{r.index}")
        subnet = tenant.network.find_subnet(f"tenant-subnet-{r.index}") or tenant.network.create_subnet(
            network_id=net.id, name=f"tenant-subnet-{r.index}", ip_version=4, cidr=r.tenant_cidr,
            gateway_ip=r.internal_ip, is_dhcp_enabled=False,
        )
        router = tenant.network.find_router(r.name)
        if router is None:
            router = tenant.network.create_router(name=r.name)
            tenant.network.update_router(router, external_gateway_info={"network_id": ext.id})
            tenant.network.add_interface_to_router(router, subnet=subnet.id)
        port = tenant.network.find_port(vm.name)
        if port is None:
            port = tenant.network.create_port(
                network_id=net.id, name=vm.name, mac_address=vm.mac, device_owner=VM_OWNER,
                device_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"chaos-lab-vm:{spec.name}:{vm.name}")),
                fixed_ips=[{"subnet_id": subnet.id, "ip_address": vm.ip}],
            )
        # Nova's part: bind the port to the host the VM runs on (binding:host_id is admin-only).
        admin.network.update_port(port.id, binding_host_id=spec.controller.name)
        if not list(tenant.network.ips(port_id=port.id)):
            tenant.network.create_ip(floating_network_id=ext.id, port_id=port.id)
        created[r.index] = {"router": router.id, "network": net.id, "port": port.id}
        progress(f"created {r.name} ({router.id}) with its network, VM port and floating IP")
    return created


def ha_vrid(lab_dir: Path, node: str, router_id: str) -> int | None:
    """The VRID the L3 agent wrote into the replica's keepalived.conf (the API does not show it)."""
    conf = node_dir(lab_dir, node) / "neutron" / Path(str(LAYOUT.keepalived_conf(router_id))).relative_to("/var/lib/neutron")
    try:
        found = re.search(r"virtual_router_id (\d+)", conf.read_text())
    except OSError:
        return None
    return int(found.group(1)) if found else None


def read_back(spec: LabSpec, lab_dir: Path, admin: Any, created: dict[int, dict[str, Any]]) -> LabSpec:
    """The plan as Neutron made it: ids, ports, hosts, addresses and VRIDs from the API and
    the nodes' keepalived.conf. Raises LookupError while something is not there yet."""
    ext = admin.network.find_network(EXT_NETWORK)
    agents = {a.id: a for a in admin.network.agents(agent_type="L3 agent")}
    nodes = tuple(
        n.model_copy(update={"agent_id": next((a.id for a in agents.values() if a.host == n.name), n.agent_id)})
        for n in spec.nodes
    )
    routers: list[RouterSpec] = []
    project_id = ""
    for r in spec.routers:
        ids = created[r.index]
        router = admin.network.get_router(ids["router"])
        project_id = router.project_id
        ports = list(admin.network.ports(device_id=router.id))
        by_owner: dict[str, list[Any]] = {}
        for p in ports:
            by_owner.setdefault(p.device_owner, []).append(p)
        gw = _one(by_owner.get(GATEWAY_OWNER), f"{r.name}: gateway port")
        qr = _one(by_owner.get(HA_INTERFACE_OWNER), f"{r.name}: interface port")
        hosting = [agents[a.id].host for a in admin.network.routers_hosting_l3_agents(router.id) if a.id in agents]
        ha_ports = {p.binding_host_id: p for p in by_owner.get(HA_PORT_OWNER, []) if p.binding_host_id}
        if len(hosting) != spec.options.replicas or set(hosting) - set(ha_ports):
            raise LookupError(f"{r.name}: hosted by {sorted(hosting)}, HA ports bound to {sorted(ha_ports)}")
        vrids = {ha_vrid(lab_dir, host, router.id) for host in hosting}
        if len(vrids) != 1 or None in vrids:
            raise LookupError(f"{r.name}: keepalived.conf not written on every host yet")
        vm_port = admin.network.get_port(ids["port"])
        fips = list(admin.network.ips(port_id=vm_port.id))
        if not fips:
            raise LookupError(f"{r.name}: no floating IP")
        vm = r.vms[0].model_copy(update={"port_id": vm_port.id, "mac": vm_port.mac_address})
        routers.append(r.model_copy(update={
            "id": router.id,
            "project_id": router.project_id,
            "vrid": vrids.pop(),
            "gateway_port_id": gw.id, "gateway_mac": gw.mac_address, "gateway_ip": gw.fixed_ips[0]["ip_address"],
            "internal_port_id": qr.id, "internal_mac": qr.mac_address, "internal_ip": qr.fixed_ips[0]["ip_address"],
            "tenant_network_id": ids["network"],
            "vms": (VMSpec(**vm.model_dump()),),
            "floating_ips": tuple(
                FloatingIPSpec(id=f.id, address=f.floating_ip_address, fixed_ip=f.fixed_ip_address, port_id=vm_port.id)
                for f in fips
            ),
            "replicas": tuple(
                ReplicaSpec(node=host, ha_port_id=ha_ports[host].id, ha_ip=ha_ports[host].fixed_ips[0]["ip_address"],
                            ha_mac=ha_ports[host].mac_address)
                for host in sorted(hosting)
            ),
        }))
    ha_net = next(iter(admin.network.networks(name=f"HA network tenant {project_id}")), None)
    if ha_net is None:
        raise LookupError("the tenant's HA network")
    project = ProjectSpec(id=project_id, index=1, ha_network_id=ha_net.id, ha_network_name=ha_net.name, bridge="-")
    return spec.model_copy(update={
        "nodes": nodes, "routers": tuple(routers), "projects": (project,),
        "external_network_id": ext.id if ext is not None else spec.external_network_id,
    })


def _one(items: list[Any] | None, what: str) -> Any:
    if not items:
        raise LookupError(what)
    return items[0]


def current_replicas(admin: Any, router_ids: list[str]) -> dict[str, tuple[ReplicaSpec, ...]]:
    """Where each router's replicas are now, by its HA ports (Neutron deletes a replica's HA
    port when the router leaves an agent and makes a new one when it joins another)."""
    found: dict[str, list[ReplicaSpec]] = {rid: [] for rid in router_ids}
    for p in admin.network.ports(device_owner=HA_PORT_OWNER):
        if p.device_id in found and p.binding_host_id:
            found[p.device_id].append(ReplicaSpec(node=p.binding_host_id, ha_port_id=p.id,
                                                  ha_ip=p.fixed_ips[0]["ip_address"], ha_mac=p.mac_address))
    return {rid: tuple(sorted(reps, key=lambda r: r.node)) for rid, reps in found.items()}
