"""The lab's physical network: one namespace of bridges, the vantage point and the VMs.

``<lab>-fabric`` holds one Linux bridge per network: ``br-mgmt`` (management, where sshd of
every node listens), ``br-ext`` (the external network with the routers' gateways and floating
IPs), ``br-ha<N>`` (the HA network of project N) and ``br-t<N>`` (router N's tenant network).
The vantage point ``<lab>-vantage`` sits on the external and management networks; each VM is a
namespace on its router's tenant network. Nothing here touches the root namespace.
"""

from __future__ import annotations

import ipaddress

from pyroute2 import IPRoute

from chaos.lab.netlink import create_netns, run_netlink
from chaos.lab.spec import LabSpec
from chaos.transport.netns import write_sysctls

NO_IPV6 = {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}


def link_index(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise LookupError(f"no device {name}")
    return int(found[0])


def new_netns(name: str) -> None:
    create_netns(name)
    write_sysctls(name, NO_IPV6)
    run_netlink(name, lambda ipr: ipr.link("set", index=link_index(ipr, "lo"), state="up"))


def configure(ipr: IPRoute, ifname: str, cidr: str | None = None, mac: str | None = None) -> None:
    idx = link_index(ipr, ifname)
    if mac:
        ipr.link("set", index=idx, address=mac)
    ipr.link("set", index=idx, state="up")
    if cidr:
        iface = ipaddress.IPv4Interface(cidr)
        ipr.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)


def plug_into_fabric(fabric_ns: str, peer: str, bridge: str, target_ns_path: str, ifname: str) -> None:
    """Create veth ``peer`` on fabric bridge ``bridge``; its other end ``ifname`` goes to the target."""

    def work(fab: IPRoute) -> None:
        stale = fab.link_lookup(ifname=peer)
        if stale:  # left by a namespace that died with its node; the name is ours
            fab.link("del", index=stale[0])
        with open(target_ns_path, "rb") as target:
            fab.link("add", ifname=peer, kind="veth", peer={"ifname": ifname, "net_ns_fd": target.fileno()})
        fab.link("set", index=link_index(fab, peer), master=link_index(fab, bridge), state="up")

    run_netlink(fabric_ns, work)


def attach(spec: LabSpec, ns: str, ifname: str, peer: str, bridge: str, cidr: str | None, mac: str | None = None) -> None:
    """A device ``ifname`` in lab namespace ``ns``, plugged into fabric bridge ``bridge``."""
    plug_into_fabric(spec.fabric_netns, peer, bridge, f"/run/netns/{ns}", ifname)
    run_netlink(ns, lambda ipr: configure(ipr, ifname, cidr, mac))


def build_fabric(spec: LabSpec) -> None:
    new_netns(spec.fabric_netns)
    names = ["br-mgmt", "br-ext", *(p.bridge for p in spec.projects), *(r.tenant_bridge for r in spec.routers)]

    def work(ipr: IPRoute) -> None:
        for name in names:
            ipr.link("add", ifname=name, kind="bridge", br_forward_delay=0, br_mcast_snooping=0)
            ipr.link("set", index=link_index(ipr, name), state="up")

    run_netlink(spec.fabric_netns, work)


def build_vantage(spec: LabSpec) -> None:
    v = spec.vantage
    new_netns(v.netns)
    ext_prefix = ipaddress.IPv4Network(spec.external_cidr).prefixlen
    mgmt_prefix = ipaddress.IPv4Network(spec.mgmt_cidr).prefixlen
    attach(spec, v.netns, "ext0", "vantage-ext", "br-ext", f"{v.ext_ip}/{ext_prefix}")
    attach(spec, v.netns, "mgmt0", "vantage-mgmt", "br-mgmt", f"{v.mgmt_ip}/{mgmt_prefix}")


def build_vms(spec: LabSpec) -> None:
    for router in spec.routers:
        prefix = ipaddress.IPv4Network(router.tenant_cidr).prefixlen
        for n, vm in enumerate(router.vms, start=1):
            new_netns(vm.netns)
            attach(spec, vm.netns, "eth0", f"vm{router.index}-{n}", router.tenant_bridge, f"{vm.ip}/{prefix}", vm.mac)
            run_netlink(vm.netns, lambda ipr, gw=router.internal_ip: ipr.route("add", dst="0.0.0.0/0", gateway=gw))
