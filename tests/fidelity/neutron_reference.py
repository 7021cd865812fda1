"""Neutron's own rendering of HA router replicas, as a JSON filter.

The lab writes keepalived.conf, conntrackd.conf, pid files and command lines for the replicas
of its HA routers. The fidelity tests compare those with what Neutron itself produces. This
script is the Neutron side of that comparison: it drives Neutron's real classes
(``HaRouter``, ``KeepalivedManager``, ``ConntrackdManager``, ``ProcessManager``,
``L3AgentKeepalivedStateChangeServer``) the way the L3 agent does, and prints what they render.
Nothing here re-implements Neutron: every file text, path and command line in the output
comes out of a Neutron method.

It runs under ``.venv-neutron/bin/python`` (``scripts/install-neutron-reference.sh``), never
under the project's own interpreter; ``tests/fidelity/reference.py`` is the caller.

Input (one JSON document on stdin)::

    {"state_path": "/var/lib/neutron",            # optional, Neutron's default if absent
     "ha_confs_path": "/var/lib/neutron/ha_confs", # optional, default "$state_path/ha_confs"
     "advert_int": 2,                              # optional, ha_vrrp_advert_int
     "conntrackd": true,                           # optional, ha_conntrackd_enabled (default false)
     "keepalived_no_track": true,                  # optional, see below (default true)
     "routers": [{"id": "<uuid>", "project_id": "<hex>", "vrid": 1,
        "ha_port": {"id": "<uuid>", "mac": "fa:16:3e:..", "ip": "169.254.192.5",
                    "cidr": "169.254.192.0/18", "network_id": "<uuid>"},
        "gateway": {"port_id": "<uuid>", "mac": "..", "ip": "100.64.0.10",
                    "cidr": "100.64.0.0/16", "gateway_ip": "100.64.0.1",
                    "network_id": "<uuid>", "subnet_id": "<uuid>"},
        "internal": {"port_id": "<uuid>", "mac": "..", "ip": "100.96.0.1",
                     "cidr": "100.96.0.0/24", "network_id": "<uuid>", "subnet_id": "<uuid>"},
        "floating_ips": ["100.64.32.5"]}]}

``gateway`` may be absent or null (no qg- device), ``gateway.gateway_ip`` may be null (no
default route), ``internal`` may also be a list of such objects, ``ha_port.subnet_id`` is
optional. Paths must be absolute and normalised (Neutron normalises some of them and not
others, so anything else could not be compared faithfully).

``keepalived_no_track``: whether keepalived understands ``no_track`` decides whether Neutron
appends it to VIPs on qr-/qg- devices and to virtual routes. Neutron asks the machine
(``neutron.cmd.runtime_checks.keepalived_use_no_track_support`` runs ``keepalived --version``,
no root helper involved) and caches the answer in ``keepalived._IS_NO_TRACK_SUPPORTED``. So
that the output does not depend on what is installed where the tests run, true/false is put
into that cache directly (true: keepalived 2.2.7, as on the test machines, supports it); null
lets Neutron's own runtime check decide. ``defaults.keepalived_no_track`` says what was used.

Output (one JSON document on stdout)::

    {"defaults": {"neutron_version", "check_child_processes_interval",
                  "check_child_processes_action", "external_pids", "ha_vrrp_advert_int",
                  "ha_conntrackd_<option>"..., "keepalived_state_change_script",
                  "keepalived_no_track"},
     "routers": {"<router id>": {
         "keepalived_conf", "keepalived_conf_path", "keepalived_argv", "keepalived_pid_file",
         "keepalived_vrrp_pid_file", "state_file",
         "state_change_argv", "state_change_pid_file", "state_change_socket",
         "conntrackd_conf", "conntrackd_conf_path", "conntrackd_argv", "conntrackd_pid_file",
         "conntrackd_lock", "conntrackd_ctl"}}}

The ``conntrackd_*`` fields are null when ``conntrackd`` is false: Neutron then never spawns
conntrackd. ``keepalived_conf`` and ``conntrackd_conf`` are the files' exact text as Neutron
writes them: neither ends with a newline, and conntrackd.conf starts with one. ``--user`` and
``--group`` in ``state_change_argv`` are this process's effective uid and gid, as Neutron
takes them from ``os.geteuid()``/``os.getegid()`` (``"0"`` when run as root).

Exit status: 0 on success; 2 with a one-line message on stderr for bad input; 1 with a
one-line message when Neutron itself refuses (e.g. a conntrackd socket path that is too long);
1 with a traceback for a bug in this script.

Side effects: none outside a private temporary directory. Neutron creates directories
(``ensure_tree`` on the pid and config directories) and the keepalived command callback
deletes a stale ``-vrrp`` pid file. So that this never touches (or, worse, finds and signals
the processes of) a real lab or agent using the same paths, Neutron is pointed at stand-in
directories inside a temporary directory, and every string in the output is translated back
to the input's paths. The stand-ins have the same length as the input's paths whenever the
input's path is long enough (about 16 characters; shorter ones get longer stand-ins), so Neutron's own path length limits (107 characters for the
conntrackd socket, 255 for the other conntrackd files) apply as they would to the real paths.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import ipaddress
import json
import logging
import os
import shutil
import sys
import sysconfig
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from typing import Any
from unittest import mock

# stdout carries the JSON document and nothing else: anything Neutron, eventlet or oslo print
# while importing or working goes to stderr, and their warnings and log records are dropped
# (a failure surfaces as an exception, which becomes the one-line message).
_JSON_OUT = sys.stdout
sys.stdout = sys.stderr
warnings.filterwarnings("ignore")
logging.disable(logging.CRITICAL)

import netaddr
from neutron import privileged
from neutron.agent import l3_agent
from neutron.agent.l3 import ha as l3_ha
from neutron.agent.l3 import ha_router
from neutron.agent.linux import (
    conntrackd,
    external_process,
    ip_lib,
    keepalived,
)
from neutron.conf.agent.l3 import ha as ha_conf
from neutron_lib.agent.linux import interface as lib_interface
from oslo_config import cfg

EXIT_NEUTRON_FAILED = 1
EXIT_BAD_INPUT = 2


class BadInput(ValueError):
    """The input document is not what the docstring describes."""


class NeutronFailed(RuntimeError):
    """Neutron raised while rendering; the message names the input's paths, not stand-ins."""


# --------------------------------------------------------------------------- input checking


def _require(obj: dict[str, Any], key: str, where: str) -> Any:
    if not isinstance(obj, dict):
        raise BadInput(f"{where}: expected an object")
    if key not in obj or obj[key] is None:
        raise BadInput(f"{where}.{key}: missing")
    return obj[key]


def _str(obj: dict[str, Any], key: str, where: str) -> str:
    value = _require(obj, key, where)
    if not isinstance(value, str) or not value:
        raise BadInput(f"{where}.{key}: expected a non-empty string, got {value!r}")
    return value


def _uuid(obj: dict[str, Any], key: str, where: str) -> str:
    value = _str(obj, key, where)
    try:
        uuid.UUID(value)
    except ValueError:
        raise BadInput(f"{where}.{key}: not a UUID: {value!r}") from None
    return value


def _int(value: Any, where: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (
        high is not None and value > high
    ):
        bounds = f">= {low}" if high is None else f"in {low}..{high}"
        raise BadInput(f"{where}: expected an integer {bounds}, got {value!r}")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise BadInput(f"{where}: expected true or false, got {value!r}")
    return value


def _path(value: Any, where: str) -> str:
    if not isinstance(value, str) or not os.path.isabs(value) or os.path.normpath(value) != value:
        raise BadInput(f"{where}: expected an absolute, normalised path, got {value!r}")
    return value


def _mac(obj: dict[str, Any], where: str) -> str:
    value = _str(obj, "mac", where)
    try:
        netaddr.EUI(value)
    except (netaddr.AddrFormatError, TypeError):
        raise BadInput(f"{where}.mac: not a MAC address: {value!r}") from None
    return value


def _ip_in_cidr(obj: dict[str, Any], where: str) -> tuple[str, int]:
    """The port's address and its subnet's prefix length, as Neutron's fixed_ips carry them."""
    ip, cidr = _str(obj, "ip", where), _str(obj, "cidr", where)
    try:
        address = ipaddress.ip_address(ip)
        network = ipaddress.ip_network(cidr, strict=True)
    except ValueError as exc:
        raise BadInput(f"{where}: {exc}") from None
    if address not in network:
        raise BadInput(f"{where}.ip: {ip} is not in {cidr}")
    return ip, network.prefixlen


def _port(obj: Any, where: str, *, id_key: str) -> dict[str, Any]:
    """A Neutron port dict (as the L3 agent receives it over RPC) from the input's shorthand."""
    if not isinstance(obj, dict):
        raise BadInput(f"{where}: expected an object")
    ip, prefixlen = _ip_in_cidr(obj, where)
    subnet_id = obj.get("subnet_id") or ""
    subnet: dict[str, Any] = {"id": subnet_id, "cidr": obj["cidr"], "gateway_ip": None}
    if "gateway_ip" in obj and obj["gateway_ip"] is not None:
        gateway_ip = _str(obj, "gateway_ip", where)
        try:
            ipaddress.ip_address(gateway_ip)
        except ValueError as exc:
            raise BadInput(f"{where}.gateway_ip: {exc}") from None
        subnet["gateway_ip"] = gateway_ip
    return {
        "id": _uuid(obj, id_key, where),
        "mac_address": _mac(obj, where),
        "network_id": _uuid(obj, "network_id", where),
        "fixed_ips": [{"ip_address": ip, "prefixlen": prefixlen, "subnet_id": subnet_id}],
        "subnets": [subnet],
        "extra_subnets": [],
        "status": "ACTIVE",
    }


def _router(obj: Any, where: str) -> dict[str, Any]:
    """A Neutron HA router dict (the shape ``HaRouter`` reads) from the input's shorthand."""
    if not isinstance(obj, dict):
        raise BadInput(f"{where}: expected an object")
    router_id = _uuid(obj, "id", where)
    internal = obj.get("internal") or []
    internals = internal if isinstance(internal, list) else [internal]
    fips = obj.get("floating_ips") or []
    if not isinstance(fips, list):
        raise BadInput(f"{where}.floating_ips: expected a list")
    for i, fip in enumerate(fips):
        try:
            ipaddress.ip_address(fip)
        except ValueError:
            raise BadInput(f"{where}.floating_ips[{i}]: not an IP address: {fip!r}") from None
    gateway = obj.get("gateway")
    if fips and gateway is None:
        raise BadInput(f"{where}.floating_ips: floating IPs need a gateway")
    return {
        "id": router_id,
        "project_id": obj.get("project_id"),
        "ha": True,
        "ha_vr_id": _int(_require(obj, "vrid", where), f"{where}.vrid", 1, 255),
        "enable_snat": True,
        "_ha_interface": _port(_require(obj, "ha_port", where), f"{where}.ha_port", id_key="id"),
        "gw_port": None if gateway is None else _port(
            gateway, f"{where}.gateway", id_key="port_id"),
        "_interfaces": [
            _port(p, f"{where}.internal[{i}]", id_key="port_id") for i, p in enumerate(internals)
        ],
        "_floatingips": [{"floating_ip_address": fip} for fip in fips],
    }


def parse_input(doc: Any) -> dict[str, Any]:
    """Check the input document; return it with Neutron-shaped router dicts."""
    if not isinstance(doc, dict):
        raise BadInput("input: expected a JSON object")
    routers = doc.get("routers")
    if not isinstance(routers, list) or not routers:
        raise BadInput("input.routers: expected a non-empty list")
    parsed = [_router(r, f"routers[{i}]") for i, r in enumerate(routers)]
    ids = [r["id"] for r in parsed]
    if len(set(ids)) != len(ids):
        raise BadInput("input.routers: duplicate router id")
    no_track = doc.get("keepalived_no_track", True)
    if no_track is not None:
        no_track = _bool(no_track, "input.keepalived_no_track")
    return {
        "state_path": None if doc.get("state_path") is None else _path(
            doc["state_path"], "input.state_path"),
        "ha_confs_path": None if doc.get("ha_confs_path") is None else _path(
            doc["ha_confs_path"], "input.ha_confs_path"),
        "advert_int": None if doc.get("advert_int") is None else _int(
            doc["advert_int"], "input.advert_int", 1),
        "conntrackd": _bool(doc.get("conntrackd") or False, "input.conntrackd"),
        "keepalived_no_track": no_track,
        "routers": parsed,
    }


# ------------------------------------------------------------------------ private directories


class PathMap:
    """Stand-in directories for the input's paths, and the translation back.

    Each stand-in lives in ``root`` and, when the real path is long enough, has exactly the
    real path's length (padded with one letter per path, so stand-ins never contain each
    other), which keeps Neutron's path length checks meaningful.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self._pairs: list[tuple[str, str]] = []

    def add(self, real: str, fill: str) -> str:
        head = os.path.join(self.root, "")
        stand_in = head + fill * max(1, len(real) - len(head))
        self._pairs.append((stand_in, real))
        return stand_in

    def unmap(self, value: Any) -> Any:
        """``value`` with every stand-in replaced by the real path (strings, lists, dicts)."""
        if isinstance(value, str):
            for stand_in, real in sorted(self._pairs, key=lambda p: -len(p[0])):
                value = value.replace(stand_in, real)
            return value
        if isinstance(value, list):
            return [self.unmap(v) for v in value]
        if isinstance(value, dict):
            return {k: self.unmap(v) for k, v in value.items()}
        return value


# ------------------------------------------------------------------------- Neutron, driven


class InterfaceDriverStandIn:
    """Stand-in for the agent's interface driver (OVS, linuxbridge...).

    HaRouter only reads ``DEV_NAME_LEN`` from it to cut device names (ha-/qr-/qg- + port id)
    as long as nothing is plugged; the value is the one every Neutron driver inherits from
    neutron-lib's base class. (Neutron's own ``NullDriver`` would do, but importing
    ``neutron.agent.linux.interface`` pulls in ovsdbapp, which nothing else here needs.)
    """

    DEV_NAME_LEN: int = lib_interface.LinuxInterfaceDriver.DEV_NAME_LEN


class RecordingProcessMonitor:
    """Stand-in for the agent's ``ProcessMonitor``: keeps what HaRouter registers.

    The managers hand their ``ProcessManager`` (with its command callback) to the monitor
    once they have "started" it; that is where the command lines are read from.
    """

    def __init__(self) -> None:
        self.processes: dict[str, external_process.ProcessManager] = {}

    def register(self, uuid: str, service_name: str,
                 monitored_process: external_process.ProcessManager) -> None:
        self.processes[service_name] = monitored_process

    def unregister(self, uuid: str, service_name: str) -> None:
        self.processes.pop(service_name, None)


@contextlib.contextmanager
def processes_not_started() -> Iterator[None]:
    """Let ``spawn()`` run for real except for ``ProcessManager.enable``, which starts things.

    ``enable()`` would delete the pid file, call the command callback and run the command in
    the namespace through the root helper; the callback is called below instead, with the
    same argument ``enable()`` passes (``get_pid_file_name()``).
    """

    def enable(self: external_process.ProcessManager, *args: Any, **kwargs: Any) -> None:
        return None

    with mock.patch.object(external_process.ProcessManager, "enable", enable):
        yield


def command_of(pm: external_process.ProcessManager) -> list[str]:
    """The command ``pm.enable()`` would run: its callback applied to its pid file."""
    return list(pm.default_cmd_callback(pm.get_pid_file_name()))


def configure(spec: dict[str, Any], paths: PathMap) -> None:
    """Register and set the options the way the L3 agent does (without reading /etc/neutron)."""
    l3_agent.register_opts(cfg.CONF)
    cfg.CONF(args=[], project="neutron", default_config_files=[], default_config_dirs=[])
    state_path = spec["state_path"] or cfg.CONF.state_path
    spec["state_path"] = state_path
    cfg.CONF.set_override("state_path", paths.add(state_path, "s"))
    if spec["ha_confs_path"] is not None:
        cfg.CONF.set_override("ha_confs_path", paths.add(spec["ha_confs_path"], "h"))
    if spec["advert_int"] is not None:
        cfg.CONF.set_override("ha_vrrp_advert_int", spec["advert_int"])
    cfg.CONF.set_override("ha_conntrackd_enabled", spec["conntrackd"])

    if spec["keepalived_no_track"] is None:
        keepalived._is_keepalived_use_no_track_supported()  # Neutron's runtime check
    else:
        keepalived._IS_NO_TRACK_SUPPORTED = spec["keepalived_no_track"]

    # The keepalived command callback deletes the stale "-vrrp" pid file as root, through
    # privsep; run privsep entrypoints in this process instead of starting its daemon (as
    # Neutron's own functional tests do). It only ever acts on the stand-in directories.
    privileged.default.set_client_mode(False)


def render_router(router: dict[str, Any]) -> dict[str, Any]:
    """One replica, built as ``HaRouter.initialize()`` and ``process()`` build it.

    The steps that need a running system are left out: creating the namespace, plugging
    devices, and reading the qr-/qg- devices' MAC address over netlink.
    """
    monitor = RecordingProcessMonitor()
    ri = ha_router.HaRouter(
        agent=None,  # only used to report floating IP statuses over RPC, not called here
        router_id=router["id"],
        router=router,
        agent_conf=cfg.CONF,
        interface_driver=InterfaceDriverStandIn(),
        # use_ipv6 only matters for IPv6 gateways (agent option ipv6_gateway, unset here).
        use_ipv6=False,
    )

    # initialize(), minus RouterInfo.initialize() (namespace creation) and
    # ha_network_added() (plugging the ha- device).
    ri.process_monitor = monitor
    ri.set_ha_port()
    ri._init_conntrackd_manager(monitor)
    ri._init_keepalived_manager(monitor)

    # process(): internal ports first, then the gateway, then floating IPs.
    # _disable_ipv6_addressing_on_interface() makes the device's IPv6 link-local address a
    # VIP, but reads the MAC from the device over netlink; it is computed from the port's
    # MAC with the same ip_lib.get_ipv6_lladdr() and added with the same _add_vip() call.
    for port in router["_interfaces"]:
        name = ri.get_internal_device_name(port["id"])
        ri._add_vip(ip_lib.get_ipv6_lladdr(port["mac_address"]), name, scope="link")
        ri._add_vips(port, name)
    gw_port = router["gw_port"]
    if gw_port is not None:
        name = ri.get_external_device_name(gw_port["id"])
        ri._add_gateway_vip(gw_port, name)
        ri._add_vip(ip_lib.get_ipv6_lladdr(gw_port["mac_address"]), name, scope="link")
        for fip in router["_floatingips"]:
            ri.add_floating_ip(fip, name, device=None)  # HaRouter ignores the device

    with processes_not_started():
        ri.spawn_state_change_monitor(monitor)
        if cfg.CONF.ha_conntrackd_enabled:
            ri.enable_conntrackd()  # writes conntrackd.conf
        ri.enable_keepalived()  # writes keepalived.conf

    km = ri.keepalived_manager
    keepalived_pm = monitor.processes[keepalived.KEEPALIVED_SERVICE_NAME]
    conf_path = km.get_full_config_file_path("keepalived.conf")
    with open(conf_path, encoding="utf-8", newline="") as f:
        keepalived_conf = f.read()
    state_change_pm = monitor.processes[ha_router.IP_MONITOR_PROCESS_SERVICE]
    out: dict[str, Any] = {
        "keepalived_conf": keepalived_conf,
        "keepalived_conf_path": conf_path,
        "keepalived_argv": command_of(keepalived_pm),
        "keepalived_pid_file": keepalived_pm.get_pid_file_name(),
        "keepalived_vrrp_pid_file": km.get_vrrp_pid_file_name(keepalived_pm.get_pid_file_name()),
        "state_file": ri.ha_state_path,
        "state_change_argv": command_of(state_change_pm),
        "state_change_pid_file": state_change_pm.get_pid_file_name(),
        "state_change_socket": (
            l3_ha.L3AgentKeepalivedStateChangeServer.get_keepalived_state_change_socket_path(
                cfg.CONF)),
        "conntrackd_conf": None,
        "conntrackd_conf_path": None,
        "conntrackd_argv": None,
        "conntrackd_pid_file": None,
        "conntrackd_lock": None,
        "conntrackd_ctl": None,
    }
    if cfg.CONF.ha_conntrackd_enabled:
        cm = ri.conntrackd_manager
        conntrackd_pm = monitor.processes[conntrackd.CONNTRACKD_SERVICE_NAME]
        with open(cm.get_conffile_path(), encoding="utf-8", newline="") as f:
            conntrackd_conf = f.read()
        if conntrackd_conf != cm.build_config():
            raise RuntimeError("conntrackd.conf on disk differs from build_config()")
        out.update(
            conntrackd_conf=conntrackd_conf,
            conntrackd_conf_path=cm.get_conffile_path(),
            conntrackd_argv=command_of(conntrackd_pm),
            conntrackd_pid_file=cm.get_pid_file_path(),
            conntrackd_lock=cm.get_lockfile_path(),
            conntrackd_ctl=cm.get_ctlfile_path(),
        )
    if keepalived_conf != km.config.get_config_str():
        raise RuntimeError("keepalived.conf on disk differs from get_config_str()")
    return out


def defaults() -> dict[str, Any]:
    """Agent-wide values: option defaults, derived paths, installed script, version."""
    opt_defaults = {opt.name: opt.default for opt in ha_conf.OPTS}
    out: dict[str, Any] = {
        "neutron_version": importlib.metadata.version("neutron"),
        "check_child_processes_interval": cfg.CONF.AGENT.check_child_processes_interval,
        "check_child_processes_action": cfg.CONF.AGENT.check_child_processes_action,
        "external_pids": cfg.CONF.external_pids,
        "ha_vrrp_advert_int": opt_defaults["ha_vrrp_advert_int"],
        "keepalived_state_change_script": os.path.join(
            sysconfig.get_path("scripts"), ha_router.STATE_CHANGE_PROC_NAME),
        "keepalived_no_track": keepalived._is_keepalived_use_no_track_supported(),
    }
    out.update({k: v for k, v in opt_defaults.items() if k.startswith("ha_conntrackd_")})
    return out


def run(doc: Any) -> dict[str, Any]:
    """The whole transformation: input document in, output document out."""
    spec = parse_input(doc)
    root = tempfile.mkdtemp(prefix="n", dir="/tmp" if os.access("/tmp", os.W_OK) else None)
    try:
        paths = PathMap(root)
        try:
            configure(spec, paths)
            result = {
                "defaults": defaults(),
                "routers": {r["id"]: render_router(r) for r in spec["routers"]},
            }
        except Exception as exc:
            raise NeutronFailed(paths.unmap(f"{type(exc).__name__}: {exc}")) from exc
        result = paths.unmap(result)
        if root in json.dumps(result):
            raise RuntimeError(f"internal: temporary directory {root} leaked into the output")
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main() -> int:
    try:
        doc = json.load(sys.stdin)
    except json.JSONDecodeError as exc:
        print(f"neutron_reference: input is not JSON: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        result = run(doc)
    except BadInput as exc:
        print(f"neutron_reference: bad input: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except NeutronFailed as exc:
        print(f"neutron_reference: neutron failed: {_one_line(exc)}", file=sys.stderr)
        return EXIT_NEUTRON_FAILED
    json.dump(result, _JSON_OUT, indent=2, sort_keys=True)
    _JSON_OUT.write("\n")
    _JSON_OUT.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
