"""Neutron's own names, paths, file formats and defaults for L3 HA routers, in one place.

Every fact here was read in Neutron's source (neutron 29.0.0; the Zed packages agree where
noted) and is compared with Neutron's own classes by the fidelity tests
(tests/test_neutron_fidelity.py, which import the real ``neutron`` package): the node commands,
the probes and the lab all take their paths and formats from this module, so a wrong name can
only be wrong once, and a test says so.

Sources, by fact:

- ``neutron/conf/common.py``, ``conf/agent/common.py``, ``conf/agent/l3/ha.py``: ``state_path``
  (/var/lib/neutron), ``ha_confs_path`` ($state_path/ha_confs), ``external_pids``
  ($state_path/external/pids), ``check_child_processes_interval`` (60 s; 0 disables the
  monitor), ``ha_vrrp_advert_int`` (2), the ``ha_conntrackd_*`` options.
- ``neutron/agent/linux/external_process.py``: a monitored process's pid file is
  ``<pids_path>/<uuid>.pid.<service>`` (``'pid.' + service``, since Train/15.0.0; before that
  ``<uuid>.pid``); a process is "active" when the pid in that file runs with the uuid in its
  command line; the process monitor checks every ``check_child_processes_interval`` and
  respawns what is not active.
- ``neutron/agent/linux/keepalived.py``: ``keepalived -P -f <conf> -p <pid> -r <pid>-vrrp``,
  keepalived.conf's layout (global_defs, vrrp_instance VR_<vrid>, state BACKUP, priority 50,
  garp_master_delay 60, nopreempt, track_interface, the primary VIP 169.254.0.<vrid>/24 under
  virtual_ipaddress, every other address under virtual_ipaddress_excluded sorted by address,
  ``no_track`` on untracked addresses and on routes when keepalived >= 2.0.3, ``protocol
  static`` on routes), joined with newlines and no final newline.
- ``neutron/agent/l3/ha_router.py``: the state file ``<ha_confs>/<id>/state``; the state-change
  monitor's command line and pid file (``<external_pids>/<id>.monitor.pid.
  neutron-keepalived-state-change-monitor``); spawn order: state-change monitor, conntrackd,
  keepalived; IPv6 link-local VIPs (scope link) for every qr-/qg- device.
- ``neutron/agent/l3/ha.py``: the agent's unix socket ``<state_path>/keepalived-state-change``,
  states primary/backup/fault/unknown reported to the server as active/standby/standby/unknown,
  a transition to primary reported only after ``ha_vrrp_advert_int``, batches every
  ``ha_vrrp_advert_int``.
- ``neutron/agent/linux/conntrackd.py``: the conntrackd template (FTFW, external cache on),
  ``conntrackd -d -C <conf>``, files in the router's conf dir, multicast group port
  ``ha_conntrackd_group + vrid``.
- ``neutron-keepalived-state-change`` (a POSIX sh script since 2025.x; Python in Zed): writes
  ``primary``/``backup`` (no newline) to the state file on VIP events, runs ``conntrackd -c; -f;
  -R; -B`` on promotion and ``-t; -n`` on demotion, and notifies the agent.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# --------------------------------------------------------------------------- defaults
STATE_PATH = PurePosixPath("/var/lib/neutron")
CHECK_CHILD_PROCESSES_INTERVAL = 60  # seconds; 0 = no process monitor
CHECK_CHILD_PROCESSES_ACTION = "respawn"
HA_VRRP_ADVERT_INT = 2
HA_PRIORITY = 50
GARP_PRIMARY_DELAY = 60
KEEPALIVED_EMAIL_FROM = "neutron@openstack.local"
KEEPALIVED_ROUTER_ID = "neutron"
KEEPALIVED_NO_TRACK_SINCE = (2, 0, 3)
HA_NETWORK_CIDR = ipaddress.IPv4Network("169.254.192.0/18")
PRIMARY_VIP_NETWORK = ipaddress.IPv4Network("169.254.0.0/24")
MAX_VRID = 254
HA_PORT_OWNER = "network:router_ha_interface"
HA_NETWORK_NAME = "HA network tenant {project_id}"

DEVICE_NAME_LEN = 14  # interface drivers' DEV_NAME_LEN: prefix + the port id, truncated
HA_DEVICE_PREFIX = "ha-"
INTERNAL_DEVICE_PREFIX = "qr-"
GATEWAY_DEVICE_PREFIX = "qg-"
ROUTER_NAMESPACE_PREFIX = "qrouter-"
SNAT_NAMESPACE_PREFIX = "snat-"

KEEPALIVED_SERVICE = "keepalived"
STATE_CHANGE_SERVICE = "neutron-keepalived-state-change-monitor"
STATE_CHANGE_PROGRAM = "neutron-keepalived-state-change"
STATE_CHANGE_SOCKET = "keepalived-state-change"
CONNTRACKD_SERVICE = "conntrackd"

# The state file: what neutron-keepalived-state-change writes ("master" before Neutron 17).
PRIMARY = "primary"
BACKUP = "backup"
LEGACY_PRIMARY = "master"
PRIMARY_STATES = (PRIMARY, LEGACY_PRIMARY)
# What the agent reports to the server for each state (neutron/agent/l3/ha.py TRANSLATION_MAP).
API_HA_STATE = {"primary": "active", "backup": "standby", "fault": "standby", "unknown": "unknown"}


class ConntrackdDefaults(BaseModel):
    """The ``ha_conntrackd_*`` options' defaults (neutron/conf/agent/l3/ha.py)."""

    model_config = ConfigDict(frozen=True)

    hashsize: int = 32768
    hashlimit: int = 131072
    unix_backlog: int = 20
    socketbuffersize: int = 262142
    socketbuffersize_max_grown: int = 655355
    ipv4_mcast_addr: str = "225.0.0.50"
    group: int = 3780
    sndsocketbuffer: int = 24985600
    rcvsocketbuffer: int = 24985600


CONNTRACKD = ConntrackdDefaults()


def namespace(router_id: str) -> str:
    return ROUTER_NAMESPACE_PREFIX + router_id


def device_name(prefix: str, port_id: str) -> str:
    """Neutron's device name for a port: the prefix and the port id, cut at 14 characters."""
    return (prefix + port_id)[:DEVICE_NAME_LEN]


def primary_vip(vrid: int) -> str:
    """The VIP keepalived holds on the ha- device of the primary: 169.254.0.<VRID>/24."""
    if not 1 <= vrid <= MAX_VRID:
        raise ValueError(f"VRID {vrid} is outside Neutron's 1..{MAX_VRID}")
    return f"{PRIMARY_VIP_NETWORK.network_address + vrid}/{PRIMARY_VIP_NETWORK.prefixlen}"


def ipv6_link_local(mac: str) -> str:
    """The EUI-64 link-local address Neutron adds as a VIP for a qr-/qg- device (``/64``)."""
    octets = [int(x, 16) for x in mac.split(":")]
    if len(octets) != 6:
        raise ValueError(f"{mac!r} is not a MAC address")
    eui = [octets[0] ^ 0x02, *octets[1:3], 0xFF, 0xFE, *octets[3:]]
    suffix = int.from_bytes(bytes(eui), "big")
    return f"{ipaddress.IPv6Address((0xFE80 << 112) | suffix)}/64"


# --------------------------------------------------------------------------- where files are
class NeutronLayout(BaseModel):
    """Where one node's L3 agent keeps its HA routers' files.

    ``pid_names``: ``current`` for every Neutron since Train (15.0.0, 2019); ``pre-train`` for
    older clouds, whose keepalived pid files were ``<id>.pid`` and ``<id>.pid-vrrp``. Commands
    that look for a running keepalived try both; commands that start one use this node's.
    """

    model_config = ConfigDict(frozen=True)

    state_path: PurePosixPath = STATE_PATH
    ha_confs_path: PurePosixPath | None = Field(default=None, description="default: <state_path>/ha_confs")
    external_pids: PurePosixPath | None = Field(default=None, description="default: <state_path>/external/pids")
    pid_names: Literal["current", "pre-train"] = "current"

    @property
    def ha_confs(self) -> PurePosixPath:
        return self.ha_confs_path or self.state_path / "ha_confs"

    @property
    def pids(self) -> PurePosixPath:
        return self.external_pids or self.state_path / "external" / "pids"

    def conf_dir(self, router_id: str) -> PurePosixPath:
        return self.ha_confs / router_id

    def keepalived_conf(self, router_id: str) -> PurePosixPath:
        return self.conf_dir(router_id) / "keepalived.conf"

    def state_file(self, router_id: str) -> PurePosixPath:
        return self.conf_dir(router_id) / "state"

    def keepalived_pid(self, router_id: str, names: Literal["current", "pre-train"] | None = None) -> PurePosixPath:
        """``<ha_confs>/<id>.pid.keepalived`` (``<id>.pid`` before Train)."""
        suffix = "pid" if (names or self.pid_names) == "pre-train" else f"pid.{KEEPALIVED_SERVICE}"
        return self.ha_confs / f"{router_id}.{suffix}"

    def keepalived_vrrp_pid(self, router_id: str, names: Literal["current", "pre-train"] | None = None) -> PurePosixPath:
        """The VRRP child's pid file: the main pid file's name plus ``-vrrp``."""
        main = self.keepalived_pid(router_id, names)
        return main.with_name(main.name + "-vrrp")

    def keepalived_pid_candidates(self, router_id: str) -> tuple[tuple[PurePosixPath, PurePosixPath], ...]:
        """(main, vrrp) pid file pairs to look in, this node's naming first."""
        own = self.pid_names
        other: Literal["current", "pre-train"] = "pre-train" if own == "current" else "current"
        return tuple((self.keepalived_pid(router_id, n), self.keepalived_vrrp_pid(router_id, n)) for n in (own, other))

    def state_change_pid(self, router_id: str) -> PurePosixPath:
        return self.pids / f"{router_id}.monitor.pid.{STATE_CHANGE_SERVICE}"

    def state_change_log(self, router_id: str) -> PurePosixPath:
        """Where the monitor logs when the agent has no log_dir (or logs per router in ha_confs)."""
        return self.conf_dir(router_id) / f"{STATE_CHANGE_PROGRAM}.log"

    @property
    def state_change_socket(self) -> PurePosixPath:
        return self.state_path / STATE_CHANGE_SOCKET

    def conntrackd_file(self, router_id: str, kind: Literal["conf", "pid", "lock", "ctl"]) -> PurePosixPath:
        return self.conf_dir(router_id) / f"conntrackd.{kind}"

    # ------------------------------------------------------------------ command lines
    def keepalived_argv(self, router_id: str) -> list[str]:
        """keepalived as Neutron's KeepalivedManager starts it (inside ``qrouter-<id>``)."""
        return [
            "keepalived", "-P",
            "-f", str(self.keepalived_conf(router_id)),
            "-p", str(self.keepalived_pid(router_id)),
            "-r", str(self.keepalived_vrrp_pid(router_id)),
        ]

    def conntrackd_argv(self, router_id: str) -> list[str]:
        """conntrackd as Neutron's ConntrackdManager starts it (inside ``qrouter-<id>``)."""
        return ["conntrackd", "-d", "-C", str(self.conntrackd_file(router_id, "conf"))]

    def state_change_argv(
        self,
        router_id: str,
        ha_device: str,
        vrid: int,
        *,
        program: str = STATE_CHANGE_PROGRAM,
        user: int = 0,
        group: int = 0,
        conntrackd: bool = False,
        debug: bool = False,
    ) -> list[str]:
        """neutron-keepalived-state-change as HaRouter starts it (in the node's own namespace)."""
        argv = [
            program,
            "--router_id", router_id,
            "--namespace", namespace(router_id),
            "--conf_dir", str(self.conf_dir(router_id)),
            "--log-file", str(self.state_change_log(router_id)),
            "--monitor_interface", ha_device,
            "--monitor_cidr", primary_vip(vrid),
            "--pid_file", str(self.state_change_pid(router_id)),
            "--state_path", str(self.state_path),
            "--user", str(user),
            "--group", str(group),
        ]
        if conntrackd:
            argv.append("--enable_conntrackd")
        if debug:
            argv.append("--debug")
        return argv


# --------------------------------------------------------------------------- keepalived.conf
class Vip(BaseModel):
    """One address keepalived manages: ``<cidr> dev <device> [scope <scope>] [no_track]``."""

    model_config = ConfigDict(frozen=True)

    cidr: str
    device: str
    scope: str | None = None
    track: bool = False  # only addresses on a tracked interface (the ha- device) are tracked


class VirtualRoute(BaseModel):
    model_config = ConfigDict(frozen=True)

    destination: str
    nexthop: str | None = None
    device: str | None = None
    scope: str | None = None


class KeepalivedInstance(BaseModel):
    """What Neutron's HaRouter puts into one router's vrrp_instance."""

    model_config = ConfigDict(frozen=True)

    vrid: int
    ha_device: str
    advert_int: int = HA_VRRP_ADVERT_INT
    priority: int = HA_PRIORITY
    vips: tuple[Vip, ...] = ()
    routes: tuple[VirtualRoute, ...] = ()


def render_keepalived_conf(
    instance: KeepalivedInstance, *, no_track: bool = True, route_protocol_static: bool = True
) -> str:
    """keepalived.conf exactly as Neutron writes it: lines joined by newlines, no final newline.

    ``no_track``: keepalived >= 2.0.3 (Neutron checks the installed version); ``route_protocol_
    static``: Neutron 2023.2 and later (Zed writes routes without it).
    """

    def vip_line(v: Vip) -> str:
        line = f"{v.cidr} dev {v.device}"
        if v.scope:
            line += f" scope {v.scope}"
        if not v.track and no_track:
            line += " no_track"
        return line

    def route_line(r: VirtualRoute) -> str:
        line = r.destination
        if r.nexthop:
            line += f" via {r.nexthop}"
        if r.device:
            line += f" dev {r.device}"
        if r.scope:
            line += f" scope {r.scope}"
        if no_track:
            line += " no_track"
        if route_protocol_static:
            line += " protocol static"
        return line

    lines = [
        "global_defs {",
        f"    notification_email_from {KEEPALIVED_EMAIL_FROM}",
        f"    router_id {KEEPALIVED_ROUTER_ID}",
        "}",
        f"vrrp_instance VR_{instance.vrid} {{",
        "    state BACKUP",
        f"    interface {instance.ha_device}",
        f"    virtual_router_id {instance.vrid}",
        f"    priority {instance.priority}",
        f"    garp_master_delay {GARP_PRIMARY_DELAY}",
        "    nopreempt",
        f"    advert_int {instance.advert_int}",
        "    track_interface {",
        f"        {instance.ha_device}",
        "    }",
        "    virtual_ipaddress {",
        f"        {primary_vip(instance.vrid)} dev {instance.ha_device}",
        "    }",
    ]
    if instance.vips:
        lines.append("    virtual_ipaddress_excluded {")
        lines += [f"        {vip_line(v)}" for v in sorted(instance.vips, key=lambda v: v.cidr)]
        lines.append("    }")
    if instance.routes:
        lines.append("    virtual_routes {")
        lines += [f"        {route_line(r)}" for r in instance.routes]
        lines.append("    }")
    lines.append("}")
    return "\n".join(lines)


def router_vips(
    *,
    gateway: tuple[str, str, str] | None,
    internals: Sequence[tuple[str, str, str]] = (),
    floating_ips: Sequence[str] = (),
) -> tuple[Vip, ...]:
    """The excluded VIPs of an HA router as HaRouter adds them.

    ``gateway`` and each of ``internals`` are (device, cidr of the port's fixed IP, MAC): the
    fixed IP, and the device's IPv6 link-local address (scope link); each floating IP is a /32
    on the gateway device.
    """
    vips: list[Vip] = []
    for device, cidr, mac in ([gateway] if gateway else []) + list(internals):
        vips.append(Vip(cidr=cidr, device=device))
        vips.append(Vip(cidr=ipv6_link_local(mac), device=device, scope="link"))
    if gateway:
        vips += [Vip(cidr=f"{address}/32", device=gateway[0]) for address in floating_ips]
    return tuple(vips)


# --------------------------------------------------------------------------- conntrackd.conf
def render_conntrackd_conf(
    layout: NeutronLayout,
    router_id: str,
    *,
    ha_ip: str,
    ha_device: str,
    vrid: int,
    options: ConntrackdDefaults = CONNTRACKD,
) -> str:
    """conntrackd.conf as Neutron's template renders it (FTFW, external cache left on: synced
    flows wait in the backup's external cache until ``conntrackd -c`` commits them)."""
    accept = ["TCP", "SCTP", "DCCP", "UDP", "ICMP", "IPv6-ICMP"]
    ignore = [(4, "127.0.0.1"), (6, "::1"), (4, ha_ip)]
    return "\n".join(
        [
            "",
            "General {",
            f"    HashSize {options.hashsize}",
            f"    HashLimit {options.hashlimit}",
            "    Syslog on",
            f"    LockFile {layout.conntrackd_file(router_id, 'lock')}",
            "    UNIX {",
            f"        Path {layout.conntrackd_file(router_id, 'ctl')}",
            f"        Backlog {options.unix_backlog}",
            "    }",
            f"    SocketBufferSize {options.socketbuffersize}",
            f"    SocketBufferSizeMaxGrown {options.socketbuffersize_max_grown}",
            "    Filter From Kernelspace {",
            "        Protocol Accept {",
            *(f"            {p}" for p in accept),
            "        }",
            "        Address Ignore {",
            *(f"            IPv{v}_address {a}" for v, a in ignore),
            "        }",
            "    }",
            "}",
            "Sync {",
            "    Mode FTFW {",
            "    }",
            "    Multicast Default {",
            f"        IPv4_address {options.ipv4_mcast_addr}",
            f"        IPv4_interface {ha_ip}",
            f"        Group {options.group + vrid}",
            f"        Interface {ha_device}",
            f"        SndSocketBuffer {options.sndsocketbuffer}",
            f"        RcvSocketBuffer {options.rcvsocketbuffer}",
            "        Checksum on",
            "    }",
            "}",
        ]
    )
