"""The domain: routers, their replicas on network nodes, floating IPs, and how to reach nodes.

A ``Topology`` is what every target (the lab, a static inventory, OpenStack discovery) resolves
to, and all the runner ever sees. Models are immutable and validated at the boundary, so a
router id or a device name that reaches a shell command has already been checked here.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, IPvAnyAddress, model_validator

from chaos import deployment, neutron

# \Z, not $: "$" also matches before a final newline, and "<uuid>\n" passed for a router id
# (found by tests/test_fuzz_node_commands.py); the same for every name rule here.
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_DEVICE_RE = re.compile(r"^(ha|qr|qg)-[0-9a-f-]{1,11}\Z")
_HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}\Z")


_NETNS_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\Z")


def _netns(value: str) -> str:
    """A namespace name becomes a path under /run/netns: no slashes, no dot-dot."""
    if not _NETNS_RE.match(value) or value.strip(".") == "" or ".." in value:
        raise ValueError(f"network namespace {value!r} is not a plain namespace name")
    return value


def _router_id(value: str) -> str:
    if not _UUID_RE.match(value):
        raise ValueError(f"router id {value!r} is not a lowercase UUID like Neutron's")
    return value


def _device(value: str) -> str:
    if not _DEVICE_RE.match(value):
        raise ValueError(f"device {value!r} is not a Neutron ha-/qr-/qg- device name")
    return value


def _hostname(value: str) -> str:
    if not _HOST_RE.match(value):
        raise ValueError(f"host name {value!r} has characters a host name cannot have")
    return value


RouterId = Annotated[str, AfterValidator(_router_id)]
DeviceName = Annotated[str, AfterValidator(_device)]
HostName = Annotated[str, AfterValidator(_hostname)]
NetnsName = Annotated[str, AfterValidator(_netns)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Node(_Model):
    """A network node and how to reach it over SSH."""

    name: HostName
    address: str
    port: int = Field(default=22, ge=1, le=65535)
    user: str = "root"
    key_file: Path | None = None
    known_hosts: Path | None = None
    jump_host: str | None = None
    netns: NetnsName | None = Field(default=None, description="open the SSH socket inside this network namespace")
    sudo: bool = Field(default=False, description="prefix privileged commands with `sudo -n`")
    ssh_config: Path | None = Field(
        default=None, description="the OpenSSH client config that filled what the inventory left unset (chaos.transport.ssh_config)"
    )
    profile: deployment.ProfileName = Field(
        default="upstream", description="how the deployment runs the L3 agent (chaos.deployment)"
    )
    container_engine: deployment.ContainerEngine | None = Field(
        default=None, description="kolla/tripleo: docker or podman (default: the profile's)"
    )
    agent_container: str | None = Field(default=None, description="kolla/tripleo: the L3 agent's container")
    exec_prefix: tuple[str, ...] | None = Field(
        default=None, description="custom: the command prefix that runs a command where the L3 agent runs"
    )
    state_path: Path | None = Field(default=None, description="Neutron's state_path as the agent sees it (default: the profile's)")
    ha_confs_path: Path | None = Field(default=None, description="Neutron's ha_confs_path (default <state_path>/ha_confs)")
    pid_names: Literal["current", "pre-train"] = Field(
        default="current", description="keepalived pid file names: <id>.pid.keepalived (Train and later) or <id>.pid"
    )
    check_child_processes_interval: float = Field(
        default=neutron.CHECK_CHILD_PROCESSES_INTERVAL, ge=0, le=86400,
        description="the L3 agent's process monitor interval (0: it never respawns keepalived)",
    )

    @model_validator(mode="after")
    def _profile_fields(self) -> Node:
        if self.profile == "custom" and self.exec_prefix is None:
            raise ValueError("profile custom needs exec_prefix (the command that runs a command where the L3 agent "
                             "runs; [] for the host)")
        if self.profile != "custom" and self.exec_prefix is not None:
            raise ValueError(f"exec_prefix applies to profile custom only (this node's profile is {self.profile})")
        if self.profile in ("upstream", "custom") and (self.container_engine or self.agent_container):
            raise ValueError(f"container_engine and agent_container apply to profiles kolla and tripleo, not {self.profile}")
        return self

    @property
    def layout(self) -> neutron.NeutronLayout:
        """Where this node's Neutron keeps its HA routers' files, as the agent sees them."""
        state = PurePosixPath(self.state_path) if self.state_path else deployment.DEFAULT_STATE_PATH[self.profile]
        return neutron.NeutronLayout(
            state_path=state,
            ha_confs_path=PurePosixPath(self.ha_confs_path) if self.ha_confs_path else None,
            pid_names=self.pid_names,
        )

    @property
    def agent(self) -> deployment.AgentContext:
        """Where commands about Neutron's world run on this node, and with which paths."""
        prefix = self.exec_prefix if self.exec_prefix is not None else deployment.exec_prefix_for(
            self.profile, self.container_engine, self.agent_container
        )
        return deployment.AgentContext(layout=self.layout, exec_prefix=tuple(prefix))


ProbeService = Literal["echo", "listener", "ssh"]
"""What answers on a floating IP's TCP port: ``echo`` sends back what it receives (held sessions
can measure stalls through it), ``listener`` only accepts (new-connection probes), ``ssh`` sends
an SSH identification string first (every cloud image runs sshd)."""


class ProbePort(_Model):
    """A TCP port behind a floating IP that probes may connect to, and what answers there."""

    port: int = Field(ge=1, le=65535)
    service: ProbeService = "listener"

    @model_validator(mode="before")
    @classmethod
    def _bare_number(cls, data: object) -> object:
        """``443`` alone is a port that accepts connections (a listener)."""
        return {"port": data} if isinstance(data, int) and not isinstance(data, bool) else data


class FloatingIP(_Model):
    """A floating IP, and the TCP ports that probes may use behind it.

    ``echo_port`` (the lab's echo service, port 7) and ``probe_ports`` say the same thing in two
    ways: an ``echo_port`` is one of the ``probe_ports`` with service ``echo``, and the first echo
    port of ``probe_ports`` is the ``echo_port``. Either may be given; both are filled in when the
    model is built (``model_copy(update=...)`` skips that: build a new one to change ports).
    """

    address: IPvAnyAddress
    fixed_ip: IPvAnyAddress | None = None
    echo_port: int | None = Field(default=None, ge=1, le=65535, description="TCP echo service behind the floating IP")
    probe_ports: tuple[ProbePort, ...] = Field(
        default=(), description="TCP ports probes may connect to, with what answers there (in order of preference)"
    )
    vm_netns: NetnsName | None = Field(
        default=None, description="lab only: namespace of the VM behind it, where outbound probes open sockets"
    )

    @model_validator(mode="after")
    def _echo_port_is_a_probe_port(self) -> FloatingIP:
        echo = [p.port for p in self.probe_ports if p.service == "echo"]
        if self.echo_port is not None and self.echo_port not in echo:
            object.__setattr__(self, "probe_ports", (ProbePort(port=self.echo_port, service="echo"), *self.probe_ports))
        elif self.echo_port is None and echo:
            object.__setattr__(self, "echo_port", echo[0])
        ports = [p.port for p in self.probe_ports]
        if len(set(ports)) != len(ports):
            twice = sorted({p for p in ports if ports.count(p) > 1})
            raise ValueError(f"floating IP {self.address}: port(s) {', '.join(map(str, twice))} given twice "
                             "(echo_port and probe_ports name each port once)")
        return self

    def probe_port(self, services: tuple[ProbeService, ...]) -> ProbePort | None:
        """The first declared port whose service is the first of ``services`` that any port has."""
        for service in services:
            port = next((p for p in self.probe_ports if p.service == service), None)
            if port is not None:
                return port
        return None


class Replica(_Model):
    """One keepalived instance of a router, on one node."""

    node: HostName
    ha_device: DeviceName
    ha_ip: str | None = None


class Router(_Model):
    id: RouterId
    name: str = ""
    project_id: str = ""
    vrid: int | None = Field(default=None, ge=1, le=255)
    ha_vip: str | None = None
    replicas: tuple[Replica, ...]
    floating_ips: tuple[FloatingIP, ...] = ()
    gateway_ip: str | None = None
    internal_ip: str | None = None
    tags: tuple[str, ...] = ()

    @property
    def namespace(self) -> str:
        return f"qrouter-{self.id}"


class Vantage(_Model):
    """Where probes run from: the operator's point of view on the external network."""

    netns: NetnsName | None = None
    echo_address: str | None = None
    echo_port: int | None = None


class Topology(_Model):
    source: str
    nodes: tuple[Node, ...]
    routers: tuple[Router, ...]
    vantage: Vantage = Vantage()
    bmc_url: str | None = Field(default=None, description="Redfish endpoint that can power-cycle nodes")
    bmc_credentials_file: Path | None = None
    backend: str | None = Field(
        default=None, description="what runs the routers: a lab's 'emulated' or 'neutron' backend; None for a cloud"
    )
    neutron_version: str | None = Field(default=None, description="the Neutron release the routers run under, where known")

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)
