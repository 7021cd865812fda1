"""Build and tear down one replica of an HA router inside a lab network node.

Runs inside the node (its network, mount and PID namespaces), as the L3 agent does on a real
node: a ``qrouter-<id>`` namespace with ``ha-``, ``qr-`` and ``qg-`` devices (the same qr-/qg-
MAC on every replica), the NAT rules, the sysctls and the keepalived/conntrackd files. The far
end of each device is plugged into the lab fabric's bridge for that network, as the agent plugs
ports into br-int. Everything here is synchronous netlink work (pyroute2); the agent calls it
from a worker thread.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from pyroute2 import IPRoute


from chaos.lab.fabric import configure, link_index, plug_into_fabric, port_name
from chaos.lab.netlink import create_netns, list_netns, remove_netns, run_netlink
from chaos.lab.router import lab_layout, render_conntrackd_conf, render_iptables, render_keepalived_conf, router_sysctls
from chaos.lab.spec import HA_CIDR, LabSpec, NodeSpec, ReplicaSpec, RouterSpec
from chaos.transport.netns import write_sysctls


def fabric_peer_name(kind: str, node: NodeSpec, port_id: str) -> str:
    return port_name(kind, node.index, port_id)


def build_replica(spec: LabSpec, node: NodeSpec, router: RouterSpec, replica: ReplicaSpec, fabric_ns: str) -> None:
    """Create the namespace, devices, rules and config files of one replica (not keepalived)."""
    ns = router.namespace
    if ns in list_netns():
        remove_replica_namespace(router)
    create_netns(ns)
    ns_path = f"/run/netns/{ns}"
    write_sysctls(ns_path, router_sysctls(spec))
    project = spec.project(router.project_id)
    devices = [
        (replica.ha_device, replica.ha_mac, fabric_peer_name("h", node, replica.ha_port_id), project.bridge),
        (router.internal_device, router.internal_mac, fabric_peer_name("r", node, router.internal_port_id), router.tenant_bridge),
        (router.gateway_device, router.gateway_mac, fabric_peer_name("g", node, router.gateway_port_id), "br-ext"),
    ]
    for ifname, _, peer, bridge in devices:
        plug_into_fabric(fabric_ns, peer, bridge, ns_path, ifname)

    def configure_devices(ipr: IPRoute) -> None:
        ipr.link("set", index=link_index(ipr, "lo"), state="up")
        for ifname, mac, _, _ in devices:
            configure(ipr, ifname, mac=mac)
        configure(ipr, replica.ha_device, cidr=f"{replica.ha_ip}/{HA_CIDR.prefixlen}")

    run_netlink(ns_path, configure_devices)
    subprocess.run(
        ["ip", "netns", "exec", ns, "iptables-restore"],
        input=render_iptables(spec, router),
        text=True,
        check=True,
        capture_output=True,
        timeout=30,
    )
    layout = lab_layout(spec)
    Path(layout.conf_dir(router.id)).mkdir(parents=True, exist_ok=True)
    Path(layout.keepalived_conf(router.id)).write_text(render_keepalived_conf(spec, router, replica))
    if spec.options.conntrackd:
        Path(layout.conntrackd_file(router.id, "conf")).write_text(render_conntrackd_conf(spec, router, replica))


def remove_replica_namespace(router: RouterSpec) -> None:
    """Delete ``qrouter-<id>``; its devices and their fabric ends vanish with it."""
    remove_netns(router.namespace)


def remove_replica_files(spec: LabSpec, router: RouterSpec) -> None:
    layout = lab_layout(spec)
    shutil.rmtree(layout.conf_dir(router.id), ignore_errors=True)
    for path in (layout.keepalived_pid(router.id), layout.keepalived_vrrp_pid(router.id), layout.state_change_pid(router.id)):
        Path(path).unlink(missing_ok=True)
