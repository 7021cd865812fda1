"""What a replica of an HA router is made of, in Neutron's own formats.

keepalived.conf follows neutron/agent/linux/keepalived.py (state BACKUP, nopreempt, priority
50, track_interface, the VIP 169.254.0.<VRID>/24 on the ha- device, every real address under
virtual_ipaddress_excluded, the default route under virtual_routes). The NAT rules use the L3
agent's chain names. conntrackd follows the shape Neutron 2025.1 gives it when
``ha_conntrackd_enabled`` is on: FTFW, the external cache disabled so that replicated entries
land directly in the backup's kernel table, sync over the HA network.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from chaos.lab.spec import LabSpec, ReplicaSpec, RouterSpec

STATE_PATH = Path("/var/lib/neutron")
HA_CONFS = STATE_PATH / "ha_confs"
CONNTRACKD_GROUP = "225.0.0.50"
CONNTRACKD_BASE_PORT = 3780


def conf_dir(router_id: str) -> Path:
    return HA_CONFS / router_id


def keepalived_paths(router_id: str) -> dict[str, Path]:
    """The files of a replica's keepalived, where Neutron puts them."""
    return {
        "conf": conf_dir(router_id) / "keepalived.conf",
        "pid": HA_CONFS / f"{router_id}.pid",
        "pid_vrrp": HA_CONFS / f"{router_id}.pid-vrrp",
        "state": conf_dir(router_id) / "state",
    }


def keepalived_command(router_id: str) -> list[str]:
    """Neutron's keepalived command line, to run inside ``qrouter-<id>``."""
    p = keepalived_paths(router_id)
    return ["keepalived", "-P", "-f", str(p["conf"]), "-p", str(p["pid"]), "-r", str(p["pid_vrrp"])]


def render_keepalived_conf(spec: LabSpec, router: RouterSpec, replica: ReplicaSpec) -> str:
    ext_prefix = ipaddress.IPv4Network(spec.external_cidr).prefixlen
    tenant_prefix = ipaddress.IPv4Network(router.tenant_cidr).prefixlen
    ha = replica.ha_device
    qg = router.gateway_device
    qr = router.internal_device
    excluded = [f"{router.gateway_ip}/{ext_prefix} dev {qg}"]
    excluded += [f"{fip.address}/32 dev {qg}" for fip in router.floating_ips]
    excluded.append(f"{router.internal_ip}/{tenant_prefix} dev {qr}")
    lines = [
        "global_defs {",
        "    notification_email_from neutron@openstack.local",
        "    router_id neutron",
        "}",
        f"vrrp_instance VR_{router.vrid} {{",
        "    state BACKUP",
        f"    interface {ha}",
        f"    virtual_router_id {router.vrid}",
        "    priority 50",
        "    garp_master_delay 60",
        "    nopreempt",
        f"    advert_int {spec.options.advert_int}",
        "    track_interface {",
        f"        {ha}",
        "    }",
        "    virtual_ipaddress {",
        f"        {router.ha_vip}/24 dev {ha}",
        "    }",
        "    virtual_ipaddress_excluded {",
        *(f"        {line}" for line in sorted(excluded)),
        "    }",
        "    virtual_routes {",
        f"        0.0.0.0/0 via {spec.external_gateway_ip} dev {qg}",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def render_iptables(spec: LabSpec, router: RouterSpec) -> str:
    """iptables-restore input for a qrouter namespace: floating-IP 1:1 NAT and the router's SNAT."""
    qg = router.gateway_device
    nat = [
        "*nat",
        ":PREROUTING ACCEPT [0:0]",
        ":INPUT ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]",
        ":neutron-l3-agent-PREROUTING - [0:0]",
        ":neutron-l3-agent-OUTPUT - [0:0]",
        ":neutron-l3-agent-POSTROUTING - [0:0]",
        ":neutron-l3-agent-float-snat - [0:0]",
        ":neutron-l3-agent-snat - [0:0]",
        "-A PREROUTING -j neutron-l3-agent-PREROUTING",
        "-A OUTPUT -j neutron-l3-agent-OUTPUT",
        "-A POSTROUTING -j neutron-l3-agent-POSTROUTING",
        "-A POSTROUTING -j neutron-l3-agent-snat",
    ]
    for fip in router.floating_ips:
        nat += [
            f"-A neutron-l3-agent-PREROUTING -d {fip.address}/32 -j DNAT --to-destination {fip.fixed_ip}",
            f"-A neutron-l3-agent-OUTPUT -d {fip.address}/32 -j DNAT --to-destination {fip.fixed_ip}",
            f"-A neutron-l3-agent-float-snat -s {fip.fixed_ip}/32 -j SNAT --to-source {fip.address}",
        ]
    nat += [
        f"-A neutron-l3-agent-POSTROUTING ! -o {qg} -m conntrack ! --ctstate DNAT -j ACCEPT",
        "-A neutron-l3-agent-snat -j neutron-l3-agent-float-snat",
        f"-A neutron-l3-agent-snat -o {qg} -j SNAT --to-source {router.gateway_ip}",
        "COMMIT",
    ]
    filt = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    if spec.options.strict_conntrack:
        # Stateful firewalling: a forwarded packet of a flow this replica never saw is INVALID
        # and dropped; one addressed to a floating IP is not translated and meets the router's
        # own TCP stack, which answers with a reset. A failover without replicated conntrack
        # state therefore breaks TCP sessions, as on clouds with strict tracking.
        filt.append("-A FORWARD -m conntrack --ctstate INVALID -j DROP")
    filt.append("COMMIT")
    return "\n".join(nat + filt) + "\n"


def router_sysctls(spec: LabSpec) -> dict[str, str]:
    return {
        "net.ipv4.ip_forward": "1",
        "net.ipv6.conf.all.disable_ipv6": "1",
        "net.ipv6.conf.default.disable_ipv6": "1",
        "net.netfilter.nf_conntrack_tcp_loose": "0" if spec.options.strict_conntrack else "1",
    }


def conntrackd_paths(router_id: str) -> dict[str, Path]:
    d = conf_dir(router_id)
    return {
        "conf": d / "conntrackd.conf",
        "lock": d / "conntrackd.lock",
        "ctl": d / "conntrackd.ctl",
        "log": d / "conntrackd.log",
        "pid": d / "conntrackd.pid",
    }


def conntrackd_command(router_id: str) -> list[str]:
    return ["conntrackd", "-d", "-C", str(conntrackd_paths(router_id)["conf"])]


def render_conntrackd_conf(router: RouterSpec, replica: ReplicaSpec) -> str:
    """FTFW over multicast on the HA network; one UDP port per VRID keeps routers apart."""
    p = conntrackd_paths(router.id)
    port = CONNTRACKD_BASE_PORT + router.vrid
    return f"""General {{
    HashSize 32768
    HashLimit 131072
    Syslog off
    LogFile {p['log']}
    LockFile {p['lock']}
    UNIX {{
        Path {p['ctl']}
    }}
    NetlinkBufferSize 2097152
    NetlinkBufferSizeMaxGrowth 8388608
    Filter From Kernelspace {{
        Protocol Accept {{
            TCP
            UDP
            ICMP
        }}
        Address Ignore {{
            IPv4_address 127.0.0.1
            IPv4_address {replica.ha_ip}
            IPv4_address {router.ha_vip}
        }}
    }}
}}
Sync {{
    Mode FTFW {{
        DisableExternalCache on
        ResendQueueSize 131072
        PurgeTimeout 5
    }}
    Multicast {{
        IPv4_address {CONNTRACKD_GROUP}
        Group {port}
        IPv4_interface {replica.ha_ip}
        Interface {replica.ha_device}
        SndSocketBuffer 1249280
        RcvSocketBuffer 1249280
        Checksum on
    }}
}}
"""
