"""The lab's plan: every name, id and address of an embedded Neutron L3 HA lab.

The plan is computed once by ``plan_lab`` from the options, written to ``lab.json`` in the lab
folder, and read by everything else (the management side, the per-node agents, ``status``, the
inventory). Ids are derived from the lab name, so the same options give the same lab.

Addresses stay inside the ranges the project may use: management on 198.51.100.0/24, the
external network on 100.64.0.0/16, tenant networks carved from 100.96.0.0/11, HA networks on
169.254.192.0/18 with VIPs 169.254.0.<VRID>/24, exactly as Neutron numbers them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import uuid
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from chaos.errors import InvalidInput

LAB_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,9}$")
MAX_VRID = 254

MGMT_CIDR = ipaddress.IPv4Network("198.51.100.0/24")
EXT_CIDR = ipaddress.IPv4Network("100.64.0.0/16")
TENANT_SUPERNET = ipaddress.IPv4Network("100.96.0.0/11")
HA_CIDR = ipaddress.IPv4Network("169.254.192.0/18")
HA_VIP_NET = ipaddress.IPv4Network("169.254.0.0/24")
ECHO_PORT = 7  # RFC 862 echo, served by the lab on every VM and on the vantage point
SSH_PORT = 22
CONTROLLER_IP = str(MGMT_CIDR.network_address + 2)  # the neutron backend's controller host

# What runs the routers: the lab's own emulated L3 agent and API, or Debian's Neutron (Zed).
Backend = Literal["emulated", "neutron"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LabOptions(_Frozen):
    name: str = "chaoslab"
    nodes: int = Field(default=3, ge=2, le=200)
    routers: int = Field(default=4, ge=1, le=2000)
    replicas: int = Field(default=2, ge=2, le=16)
    projects: int = Field(default=1, ge=1, le=100)
    advert_int: int = Field(default=2, ge=1, le=255)
    conntrackd: bool = False
    strict_conntrack: bool = False
    # Neutron's [agent] check_child_processes_interval: how often the L3 agent's process monitor
    # respawns dead keepalived (60 s by default; 0: never). Tests pass shorter values.
    respawn_interval: float = Field(default=60.0, ge=0, le=3600)
    # How the nodes run the L3 agent (chaos.deployment): on the host, or as kolla-ansible does,
    # in a neutron_l3_agent "container" with kolla's paths and keepalived in per-router sidecars.
    profile: Literal["upstream", "kolla"] = "upstream"
    boot_delay: float = Field(default=3.0, ge=0, le=600)
    backend: Backend = "emulated"


class ControllerSpec(_Frozen):
    """The neutron backend's controller host: MariaDB, RabbitMQ, neutron-server, and the
    LinuxBridge agent that plugs the VMs' ports (the VMs live on it, as on an all-in-one host)."""

    name: str = "controller"
    netns: str
    mgmt_ip: str = CONTROLLER_IP


class NodeSpec(_Frozen):
    name: str
    index: int
    netns: str
    mgmt_ip: str
    ssh_port: int = SSH_PORT
    agent_id: str


class ProjectSpec(_Frozen):
    id: str
    index: int
    ha_network_id: str
    ha_network_name: str
    ha_cidr: str = str(HA_CIDR)
    bridge: str


class ReplicaSpec(_Frozen):
    node: str
    ha_port_id: str
    ha_ip: str
    ha_mac: str

    @property
    def ha_device(self) -> str:
        return device_name("ha-", self.ha_port_id)


class VMSpec(_Frozen):
    name: str
    netns: str
    ip: str
    mac: str
    port_id: str


class FloatingIPSpec(_Frozen):
    id: str
    address: str
    fixed_ip: str
    port_id: str


class RouterSpec(_Frozen):
    id: str
    name: str
    index: int
    project_id: str
    vrid: int
    gateway_port_id: str
    gateway_mac: str
    gateway_ip: str
    internal_port_id: str
    internal_mac: str
    internal_ip: str
    tenant_cidr: str
    tenant_network_id: str
    tenant_bridge: str
    vms: tuple[VMSpec, ...]
    floating_ips: tuple[FloatingIPSpec, ...]
    replicas: tuple[ReplicaSpec, ...]

    @property
    def namespace(self) -> str:
        return f"qrouter-{self.id}"

    @property
    def ha_vip(self) -> str:
        return str(HA_VIP_NET.network_address + self.vrid)

    @property
    def gateway_device(self) -> str:
        return device_name("qg-", self.gateway_port_id)

    @property
    def internal_device(self) -> str:
        return device_name("qr-", self.internal_port_id)


class VantageSpec(_Frozen):
    netns: str
    ext_ip: str
    mgmt_ip: str
    echo_port: int = ECHO_PORT


class LabSpec(_Frozen):
    options: LabOptions
    fabric_netns: str
    external_network_id: str
    external_cidr: str
    external_gateway_ip: str
    mgmt_cidr: str
    vantage: VantageSpec
    nodes: tuple[NodeSpec, ...]
    projects: tuple[ProjectSpec, ...]
    routers: tuple[RouterSpec, ...]
    controller: ControllerSpec | None = None  # the neutron backend only

    @property
    def name(self) -> str:
        return self.options.name

    @property
    def backend(self) -> Backend:
        return self.options.backend

    def node(self, name: str) -> NodeSpec:
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(n.name for n in self.nodes)
        raise InvalidInput(f"no node named {name!r} in lab {self.name!r}", hint=f"nodes: {known}")

    def project(self, project_id: str) -> ProjectSpec:
        return next(p for p in self.projects if p.id == project_id)

    def replicas_on(self, node: str) -> list[tuple[RouterSpec, ReplicaSpec]]:
        return [(r, rep) for r in self.routers for rep in r.replicas if rep.node == node]

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> LabSpec:
        return cls.model_validate_json(path.read_text())


def device_name(prefix: str, port_id: str) -> str:
    """Neutron's device name: a 3-character prefix and the port id cut to 11 characters."""
    return f"{prefix}{port_id[:11]}"


def _uuid(lab: str, *parts: object) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "chaos-lab:" + lab + ":" + "/".join(map(str, parts))))


def _mac(port_id: str) -> str:
    digest = hashlib.sha256(port_id.encode()).digest()
    return "fa:16:3e:" + ":".join(f"{b:02x}" for b in digest[:3])


def validate_lab_name(name: str) -> str:
    if not LAB_NAME_RE.match(name):
        raise InvalidInput(
            f"invalid lab name {name!r}",
            hint="use 1 to 10 lowercase letters or digits, starting with a letter (namespace names derive from it)",
        )
    return name


def plan_lab(options: LabOptions) -> LabSpec:
    """Compute every id, name and address of the lab; refuse what Neutron would refuse."""
    lab = validate_lab_name(options.name)
    if options.replicas > options.nodes:
        raise InvalidInput(
            f"--replicas {options.replicas} needs at least as many network nodes (--nodes {options.nodes})",
            hint="each replica of a router runs on a different network node",
        )
    per_project = -(-options.routers // options.projects)
    if per_project > MAX_VRID:
        raise InvalidInput(
            f"{options.routers} routers over {options.projects} project(s) puts {per_project} HA routers "
            f"in one project, but a project's HA network has only VRIDs 1..{MAX_VRID}",
            hint=f"the {MAX_VRID + 1}th router of a project cannot get a VRID; add --projects",
        )
    if options.backend == "neutron":
        refused = {
            "--conntrackd": options.conntrackd,  # ha_conntrackd_enabled arrived in Neutron 2025.1, not in Zed
            "--strict-conntrack": options.strict_conntrack,
            "--projects > 1": options.projects > 1,
            f"--profile {options.profile}": options.profile != "upstream",  # the packages lay Neutron out upstream's way
        }
        bad = [flag for flag, on in refused.items() if on]
        if bad:
            raise InvalidInput(
                f"{', '.join(bad)}: not available with --backend neutron",
                hint="the neutron backend runs Debian 12's Neutron Zed (no ha_conntrackd_enabled) with one tenant project",
            )
    max_mgmt = MGMT_CIDR.num_addresses - 20
    if options.nodes > max_mgmt:
        raise InvalidInput(f"at most {max_mgmt} nodes fit the management network")

    nodes = tuple(
        NodeSpec(
            name=f"network-{i}",
            index=i,
            netns=f"{lab}-network-{i}",
            mgmt_ip=str(MGMT_CIDR.network_address + 10 + i),
            agent_id=_uuid(lab, "agent", i),
        )
        for i in range(1, options.nodes + 1)
    )
    projects = tuple(
        ProjectSpec(
            id=_uuid(lab, "project", p).replace("-", ""),
            index=p,
            ha_network_id=_uuid(lab, "ha-network", p),
            ha_network_name="HA network tenant " + _uuid(lab, "project", p).replace("-", ""),
            bridge=f"br-ha{p}",
        )
        for p in range(1, options.projects + 1)
    )
    tenant_subnets = TENANT_SUPERNET.subnets(new_prefix=24)
    next_vrid = {p.id: 1 for p in projects}
    next_ha_host = {p.id: 1 for p in projects}
    routers = []
    for i in range(1, options.routers + 1):
        project = projects[(i - 1) % len(projects)]
        vrid = next_vrid[project.id]
        next_vrid[project.id] += 1
        rid = _uuid(lab, "router", i)
        subnet = next(tenant_subnets)
        replicas = []
        for k in range(options.replicas):
            node = nodes[(i - 1 + k) % len(nodes)]
            port = _uuid(lab, "ha-port", i, node.name)
            ha_ip = HA_CIDR.network_address + next_ha_host[project.id]
            next_ha_host[project.id] += 1
            replicas.append(ReplicaSpec(node=node.name, ha_port_id=port, ha_ip=str(ha_ip), ha_mac=_mac(port)))
        vm_port = _uuid(lab, "vm-port", i)
        vm = VMSpec(
            name=f"vm-{i}",
            netns=f"{lab}-vm-{i}",
            ip=str(subnet.network_address + 10),
            mac=_mac(vm_port),
            port_id=vm_port,
        )
        fip = FloatingIPSpec(
            id=_uuid(lab, "fip", i),
            address=str(EXT_CIDR.network_address + 8192 + i),
            fixed_ip=vm.ip,
            port_id=vm_port,
        )
        gw_port = _uuid(lab, "gw-port", i)
        qr_port = _uuid(lab, "qr-port", i)
        routers.append(
            RouterSpec(
                id=rid,
                name=f"router-{i}",
                index=i,
                project_id=project.id,
                vrid=vrid,
                gateway_port_id=gw_port,
                gateway_mac=_mac(gw_port),
                gateway_ip=str(EXT_CIDR.network_address + 256 + i),
                internal_port_id=qr_port,
                internal_mac=_mac(qr_port),
                internal_ip=str(subnet.network_address + 1),
                tenant_cidr=str(subnet),
                tenant_network_id=_uuid(lab, "tenant-net", i),
                tenant_bridge=f"br-t{i}",
                vms=(vm,),
                floating_ips=(fip,),
                replicas=tuple(replicas),
            )
        )
    return LabSpec(
        options=options,
        fabric_netns=f"{lab}-fabric",
        external_network_id=_uuid(lab, "ext-net"),
        external_cidr=str(EXT_CIDR),
        external_gateway_ip=str(EXT_CIDR.network_address + 1),
        mgmt_cidr=str(MGMT_CIDR),
        vantage=VantageSpec(
            netns=f"{lab}-vantage",
            ext_ip=str(EXT_CIDR.network_address + 1),
            mgmt_ip=str(MGMT_CIDR.network_address + 1),
        ),
        nodes=nodes,
        projects=projects,
        routers=tuple(routers),
        controller=ControllerSpec(netns=f"{lab}-controller") if options.backend == "neutron" else None,
    )
