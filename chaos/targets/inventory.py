"""A static inventory file as a target: network nodes, how to reach them, and the HA routers.

For a cloud whose API the tool may not (or cannot) ask, an operator writes down what discovery
would find: the routers, which nodes host their replicas and the ``ha-`` device of each, and how
to reach every node over SSH. ``load_inventory`` turns that file into the ``Topology`` the runner
uses (``target: {source: inventory, inventory: FILE}``); OpenStack discovery reuses only the
``defaults:`` and ``nodes:`` sections, through ``ssh_settings_for``, to reach the hosts its L3
agents name. docs/inventory.md describes the format.

The file is judged completely before anything connects: every field through ``chaos.model``
(router ids are UUIDs, device names Neutron's), and across fields what no single field can say
(a replica on a node nobody described, a router with one replica, a name listed twice). Each
problem names its line and column; ``InvalidInput`` (exit code 3) lists them all.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import string
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from chaos.deployment import ProfileName
from chaos.errors import ChaosError, InvalidInput
from chaos.model import FloatingIP, HostName, NetnsName, Node, ProbePort, Router, Topology, Vantage, _hostname
from chaos.transport.ssh import parse_jump_host
from chaos.transport.ssh_config import default_ssh_config, settings_from_config
from chaos.yamlfile import (
    FileKind,
    Loc,
    Problem,
    YamlDocument,
    invalid_input,
    position,
    problem_at,
    read_yaml,
    sorted_problems,
    validate,
)

INVENTORY = FileKind(
    noun="an inventory", required="nodes and routers", example_keys="defaults:, nodes:, routers:, vantage:, bmc:, probe_ports:"
)
HINT = "docs/inventory.md describes the inventory format"

_USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,31}\Z")
_HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}\Z")  # chaos.model's rule; an invalid name is reported there
_PATTERN_RE = re.compile(r"^[A-Za-z0-9.*?\[\]!_-]{1,253}\Z")


# --------------------------------------------------------------------------- field rules
def _address(value: str) -> str:
    """An IP address or a host name: it goes to the SSH client, and into messages."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return _hostname(value)


def _user(value: str) -> str:
    if not _USER_RE.match(value):
        raise ValueError(f"user {value!r} is not a login name")
    return value


def _jump_host(value: str) -> str:
    try:
        _, host, _ = parse_jump_host(value)
    except ChaosError as exc:  # the SSH transport's own reading of the spec: one parser
        raise ValueError(exc.message) from None
    _address(host)
    return value


def _pattern(value: str) -> str:
    if not _PATTERN_RE.match(value):
        raise ValueError(f"pattern {value!r} has characters a host name pattern cannot have")
    if not any(c in value for c in "*?["):
        raise ValueError(f"pattern {value!r} has no wildcard (* ? [...]); write name: {value} for one node")
    return value


def _template(value: str) -> str:
    fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(value) if name is not None]
    if not fields or any(name != "name" or spec or conv for name, spec, conv in fields):
        raise ValueError(f"address template {value!r} may use {{name}} and nothing else, e.g. '{{name}}.mgmt.example'")
    return value


_CONTAINER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")


def _container(value: str) -> str:
    if not _CONTAINER_RE.match(value):
        raise ValueError(f"container name {value!r} is not a container name (letters, digits, _ . -)")
    return value


def _state_path(value: Path) -> Path:
    if not PurePosixPath(value).is_absolute():
        raise ValueError(f"{str(value)!r} must be an absolute path on the node, e.g. /var/lib/neutron")
    return value


def _local_file(value: Path, info: ValidationInfo) -> Path:
    """``~`` expanded, a relative path read from the inventory's folder, and the file must exist."""
    path = value.expanduser()
    base = (info.context or {}).get("base_dir")
    if base is None:
        return path
    path = path if path.is_absolute() else (Path(base) / path).resolve()
    if not path.is_file():
        raise ValueError(f"no such file: {path} (relative paths are read from the inventory's folder)")
    return path


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _url(value: str) -> str:
    if not re.match(r"^https?://[^\s/]+", value):
        raise ValueError(f"BMC url {value!r} is not an http:// or https:// URL")
    return value


LocalFile = Annotated[Path, Strict(False), AfterValidator(_local_file)]
Text = Annotated[str, Strict()]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------- the file
class SshSettings(_Model):
    """How to reach a node: the ``defaults:`` section, and what each node entry may override.

    ``key_file: null`` uses the SSH agent and the default keys, as ``ssh`` does; ``known_hosts:
    null`` is ``~/.ssh/known_hosts``. Host keys are verified either way."""

    user: Annotated[Text, AfterValidator(_user)] = "root"
    port: Annotated[int, Strict()] = Field(default=22, ge=1, le=65535)
    key_file: LocalFile | None = None
    known_hosts: LocalFile | None = None
    sudo: Annotated[bool, Strict()] = False
    jump_host: Annotated[Text, AfterValidator(_jump_host)] | None = Field(
        default=None, description="user@host:port of a bastion the SSH connection goes through"
    )
    netns: NetnsName | None = Field(
        default=None, description="open the SSH socket inside this network namespace"
    )
    profile: ProfileName = Field(
        default="upstream", description="how the deployment runs the L3 agent: upstream, kolla, tripleo or custom"
    )
    container_engine: Literal["docker", "podman"] | None = Field(
        default=None, description="kolla/tripleo: the container engine (default docker for kolla, podman for tripleo)"
    )
    agent_container: Annotated[Text, AfterValidator(_container)] | None = Field(
        default=None, description="kolla/tripleo: the L3 agent's container (default neutron_l3_agent)"
    )
    exec_prefix: tuple[Text, ...] | None = Field(
        default=None, description="custom: the command (argv) that runs a command where the L3 agent runs, "
        "e.g. [docker, exec, -u, root, neutron_l3_agent]; empty: on the host"
    )
    state_path: Annotated[Path, Strict(False), AfterValidator(_state_path)] | None = Field(
        default=None, description="Neutron's state_path as the agent sees it (default: the profile's)"
    )
    ha_confs_path: Annotated[Path, Strict(False), AfterValidator(_state_path)] | None = Field(
        default=None, description="Neutron's ha_confs_path when it is not <state_path>/ha_confs"
    )
    pid_names: Literal["current", "pre-train"] = Field(
        default="current", description="pre-train: keepalived pid files <id>.pid / <id>.pid-vrrp (Neutron before 15.0.0)"
    )
    check_child_processes_interval: Annotated[float, Strict(False)] = Field(
        default=60.0, ge=0, le=86400, description="the L3 agent's [agent] check_child_processes_interval"
    )
    ssh_config: Annotated[bool, Strict()] | LocalFile = Field(
        default=True, description="read OpenSSH's client config for what this file leaves unset: true (~/.ssh/config, "
        "if it exists), false (never), or a file (chaos.transport.ssh_config)"
    )


class NodeEntry(SshSettings):
    """One node by ``name``, or every host matching a glob ``pattern``; what is not written here
    comes from ``defaults:``. The address is ``address``, or ``address_template`` with the host's
    name in place of ``{name}``, or else the host name itself."""

    name: HostName | None = None
    pattern: Annotated[Text, AfterValidator(_pattern)] | None = None
    address: Annotated[Text, AfterValidator(_address)] | None = None
    address_template: Annotated[Text, AfterValidator(_template)] | None = None

    @model_validator(mode="after")
    def _one_way_to_name(self) -> NodeEntry:
        if (self.name is None) == (self.pattern is None):
            which = "has name: (one node) or" if self.name is not None else "needs name: (one node) or"
            raise ValueError(f"a node entry {which} pattern: (a glob such as 'net-*')"
                             + (", not both" if self.name is not None else ""))
        if self.address is not None and self.address_template is not None:
            raise ValueError("a node entry has address: or address_template:, not both")
        return self

    def matches(self, host: str) -> bool:
        return host == self.name if self.name is not None else fnmatch.fnmatchcase(host, self.pattern or "")


class Bmc(_Model):
    """The Redfish endpoint that power-cycles nodes, and the file with its basic-auth credentials."""

    url: Annotated[Text, AfterValidator(_url)]
    credentials_file: LocalFile | None = None


def _ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address (a floating IP)") from None


def _distinct_ports(value: tuple[ProbePort, ...]) -> tuple[ProbePort, ...]:
    ports = [p.port for p in value]
    twice = sorted({p for p in ports if ports.count(p) > 1})
    if twice:
        raise ValueError(f"port(s) {', '.join(map(str, twice))} given twice: name each port once, with its service")
    return value


PortList = Annotated[tuple[ProbePort, ...], AfterValidator(_distinct_ports)]


class ProbePorts(_Model):
    """Which TCP ports of which floating IPs probes may use, for routers this file does not list
    itself (OpenStack discovery) or whose floating IPs say nothing. The most specific list
    applies, whole: a floating IP's own ``probe_ports``/``echo_port`` (under ``routers:``), then
    ``floating_ips`` by address, then ``routers`` by the router's name or id, then ``default``."""

    default: PortList = ()
    routers: dict[Annotated[Text, AfterValidator(_non_blank)], PortList] = {}
    floating_ips: dict[Annotated[Text, AfterValidator(_ip)], PortList] = {}

    def for_floating_ip(self, router: Router, fip: FloatingIP) -> tuple[ProbePort, ...]:
        if fip.probe_ports:
            return fip.probe_ports
        if str(fip.address) in self.floating_ips:
            return self.floating_ips[str(fip.address)]
        for key in (router.id, router.name):
            if key and key in self.routers:
                return self.routers[key]
        return self.default

    def apply(self, routers: Iterable[Router]) -> tuple[Router, ...]:
        """The routers with every floating IP's probe ports filled in from this section."""
        return tuple(
            r.model_copy(update={"floating_ips": tuple(
                FloatingIP(**{**f.model_dump(exclude={"probe_ports", "echo_port"}),
                              "probe_ports": self.for_floating_ip(r, f)})
                for f in r.floating_ips
            )})
            for r in routers
        )


class Inventory(_Model):
    """An inventory file, validated field by field (``check_inventory`` adds the rules across fields)."""

    defaults: SshSettings = SshSettings()
    nodes: tuple[NodeEntry, ...] = Field(min_length=1)
    routers: tuple[Router, ...] | None = Field(default=None, description="required for source: inventory")
    vantage: Vantage = Vantage()
    bmc: Bmc | None = None
    probe_ports: ProbePorts = ProbePorts()

    def entry_for(self, host: str) -> NodeEntry | None:
        """The entry that describes ``host``: its exact name first, then the first matching pattern."""
        named = [e for e in self.nodes if e.name == host]
        return named[0] if named else next((e for e in self.nodes if e.pattern is not None and e.matches(host)), None)


# --------------------------------------------------------------------------- public interface
def load_inventory(path: Path | str) -> Topology:
    """The topology an inventory file describes; ``InvalidInput`` lists every problem, one a line."""
    inventory = read_inventory(path, routers_required=True)
    return to_topology(inventory)


def read_inventory(path: Path | str, *, routers_required: bool = False) -> Inventory:
    """The validated inventory in ``path`` (for OpenStack discovery, ``routers:`` may be absent)."""
    inventory, problems = check_inventory(path, routers_required=routers_required)
    if inventory is None:
        raise invalid_input(str(path), problems, what="inventory file", hint=HINT)
    return inventory


def check_inventory(path: Path | str, *, routers_required: bool = True) -> tuple[Inventory | None, list[Problem]]:
    """Read and judge ``path``: the inventory, or None and every problem; never raises for a bad file."""
    doc = read_yaml(path, INVENTORY)
    if doc.document is None:
        return None, doc.problems
    inventory, problems = validate(Inventory, doc, context={"base_dir": Path(path).absolute().parent})
    problems += _problems_across_fields(doc, routers_required=routers_required)
    problems = sorted_problems(problems)
    return (inventory if not problems else None), problems


SSH_KEYS = ("user", "port", "key_file", "known_hosts", "jump_host")
"""The settings OpenSSH's client config could also give; the inventory's win where it writes them."""


def ssh_settings_for(host: str, inventory: Inventory | None) -> Node:
    """How to reach ``host``: its entry (exact name, else the first matching pattern) over the
    defaults, then OpenSSH's client config for what neither writes (``chaos.transport.ssh_config``).
    Without an inventory: the tool's defaults and the config, the host reached by its own name."""
    if inventory is None:
        entry, defaults = NodeEntry.model_construct(name=host), SshSettings()
    else:
        found = inventory.entry_for(host)
        if found is None:
            names = ", ".join(e.name or e.pattern or "" for e in inventory.nodes)
            raise InvalidInput(
                f"host {host!r} matches no entry under nodes: in the inventory",
                hint=f"add name: {host} (or a pattern matching it) under nodes:; entries: {names}",
            )
        entry, defaults = found, inventory.defaults
    given = entry.model_fields_set
    settings: dict[str, Any] = {f: getattr(entry if f in given else defaults, f) for f in SshSettings.model_fields}
    written = {f for f in SSH_KEYS if f in given or f in defaults.model_fields_set}
    address = entry.address or (entry.address_template.format(name=host) if entry.address_template else host)
    config = settings.pop("ssh_config")
    config_path = (default_ssh_config() if config is True else None) if isinstance(config, bool) else config
    if config_path is not None:
        from_config = settings_from_config(address, config_path, node=host, given=written)
        address = str(from_config.pop("address", address))
        settings.update(from_config, ssh_config=config_path)
    try:
        return Node(name=host, address=_address(address), **settings)
    except (ValueError, ValidationError) as exc:
        reason = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        reason = reason.removeprefix("Value error, ")
        raise InvalidInput(f"host {host!r}: the inventory does not describe it completely: {reason}", hint=HINT) from None


def to_topology(inventory: Inventory) -> Topology:
    """Every named node, and every host a pattern covers that hosts a replica, with its SSH settings."""
    hosts = [e.name for e in inventory.nodes if e.name is not None]
    for router in inventory.routers or ():
        hosts += [r.node for r in router.replicas if r.node not in hosts]
    bmc = inventory.bmc
    return Topology(
        source="inventory",
        nodes=tuple(ssh_settings_for(h, inventory) for h in hosts),
        routers=inventory.probe_ports.apply(inventory.routers or ()),
        vantage=inventory.vantage,
        bmc_url=bmc.url if bmc else None,
        bmc_credentials_file=bmc.credentials_file if bmc else None,
    )


# --------------------------------------------------------------------------- rules across fields
def _problems_across_fields(doc: YamlDocument, *, routers_required: bool) -> list[Problem]:
    """What no single field can say. Read from the plain data, so these are found even while
    another part of the file is invalid: the user sees every problem in one pass."""
    data = doc.data
    problems: list[Problem] = []
    first: dict[tuple[str, str], Loc] = {}

    def once(kind: str, value: Any, loc: Loc, what: str) -> bool:
        """False (and a problem) when ``value`` was seen before under ``kind``."""
        if not isinstance(value, str | int) or isinstance(value, bool):
            return True
        key = (kind, str(value))
        if key in first:
            line = position(doc, first[key])[0]
            problems.append(problem_at(doc, loc, f"{what} {value!r} appears twice (first at line {line})"))
            return False
        first[key] = loc
        return True

    entries = list(_mappings(data.get("nodes")))
    for i, entry in entries:
        once("node", entry.get("name"), ("nodes", i, "name"), "node")
        once("pattern", entry.get("pattern"), ("nodes", i, "pattern"), "pattern")
    names = [e["name"] for _, e in entries if isinstance(e.get("name"), str)]
    patterns = [e["pattern"] for _, e in entries if isinstance(e.get("pattern"), str)]

    routers = data.get("routers")
    if routers_required and routers is None:
        problems.append(problem_at(doc, ("routers",), "required with source: inventory (the HA routers and their replicas)",
                                   missing=True))
    elif routers_required and routers == []:
        problems.append(problem_at(doc, ("routers",), "lists no router: source: inventory needs at least one"))
    for i, router in _mappings(routers):
        loc: Loc = ("routers", i)
        once("router", router.get("id"), (*loc, "id"), "router id")
        if router.get("vrid") is not None and router.get("project_id") is not None:
            once(f"vrid in {router.get('project_id')}", router.get("vrid"), (*loc, "vrid"),
                 "in one project's HA network, VRID")
        for k, fip in _mappings(router.get("floating_ips")):
            once("floating ip", fip.get("address"), (*loc, "floating_ips", k, "address"), "floating IP")
        replicas = router.get("replicas")
        if isinstance(replicas, list) and len(replicas) < 2:
            problems.append(problem_at(doc, (*loc, "replicas"), f"lists {len(replicas)} replica(s): an HA router has "
                                       "at least two (a single-replica router cannot fail over)", at_key=True))
        for j, replica in _mappings(replicas):
            node = replica.get("node")
            if not isinstance(node, str):
                continue
            device = replica.get("ha_device")
            if isinstance(device, str) and device.startswith(("qr-", "qg-")):  # other names: the model says
                problems.append(problem_at(doc, (*loc, "replicas", j, "ha_device"),
                                           f"device {device!r} is not an ha- device (the replica's port on the HA network)"))
            if not once(f"replica of {i}", node, (*loc, "replicas", j, "node"), "this router's replica on node"):
                continue
            if _HOST_RE.match(node) and node not in names and not any(fnmatch.fnmatchcase(node, p) for p in patterns):
                known = ", ".join(dict.fromkeys(names + patterns)) or "none"
                problems.append(problem_at(doc, (*loc, "replicas", j, "node"),
                                           f"node {node!r} matches no entry under nodes: (names and patterns: {known})"))
    return problems


def _mappings(value: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    """The mapping items of a list, with their index (anything else is the schema's to report)."""
    if isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, dict):
                yield index, item
