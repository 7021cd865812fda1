"""The lab's physical network: one namespace of bridges, the vantage point and the VMs.

``<lab>-fabric`` holds one Linux bridge per network: ``br-mgmt`` (management, where sshd of
every node listens), ``br-ext`` (the external network with the routers' gateways and floating
IPs), ``br-ha<N>`` (the HA network of project N) and ``br-t<N>`` (router N's tenant network).
The vantage point ``<lab>-vantage`` sits on the external and management networks; each VM is a
namespace on its router's tenant network. Nothing here touches the root namespace.
"""

from __future__ import annotations

import errno
import ipaddress
import time

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

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
        for attempt in range(50):
            # A peer of the same name can linger while the kernel destroys the namespace of a
            # replica that died with its node (slowly, on a loaded machine): the name is ours.
            _delete_links(fab, [peer])
            try:
                with open(target_ns_path, "rb") as target:
                    fab.link("add", ifname=peer, kind="veth", peer={"ifname": ifname, "net_ns_fd": target.fileno()})
                break
            except NetlinkError as exc:
                if exc.code != errno.EEXIST or attempt == 49:
                    raise
                time.sleep(0.1)
        fab.link("set", index=link_index(fab, peer), master=link_index(fab, bridge), state="up")

    run_netlink(fabric_ns, work)


def port_name(kind: str, node_index: int, port_id: str) -> str:
    """Fabric-side name of a replica's device: kind (h, r, g), node index, port id; 15 bytes at most."""
    return f"{kind}{node_index:x}-{port_id[:8]}"


def _delete_links(fab: IPRoute, names: list[str]) -> None:
    for name in names:
        for index in fab.link_lookup(ifname=name):
            try:
                fab.link("del", index=index)
            except NetlinkError as exc:
                if exc.code != errno.ENODEV:  # the kernel removed it first: fine
                    raise


def mgmt_port(node_index: int) -> str:
    """Fabric-side name of a node's management NIC."""
    return f"mgmt-{node_index}"


def ext_port(node_index: int) -> str:
    """Fabric-side name of a node's external NIC (the neutron backend's flat physnet)."""
    return f"ext-{node_index}"


def unplug_node(fabric_ns: str, node_index: int) -> int:
    """Delete every fabric port of a node (its management NIC and its replicas' ports): deleting
    the fabric end of a veth pair takes the node's end with it. A power cut does this first, so
    that nothing of the dying node (a closing socket, a namespace torn down) reaches the network,
    and the node boots into a clean fabric. Returns how many ports went."""
    prefixes = tuple(port_name(kind, node_index, "") for kind in "hrg")

    def work(fab: IPRoute) -> int:
        names = [link.get_attr("IFLA_IFNAME") for link in fab.get_links()]
        doomed = [n for n in names if n and (n.startswith(prefixes) or n in (mgmt_port(node_index), ext_port(node_index)))]
        _delete_links(fab, doomed)
        return len(doomed)

    return run_netlink(fabric_ns, work)


def set_port_state(fabric_ns: str, port: str, up: bool) -> bool:
    """Switch a fabric port on or off, as a switch port is shut (``up=False``) or opened again.

    The node keeps its NIC, addresses and processes; only the wire goes silent (its end reports
    NO-CARRIER), so nothing on the node learns of it but through the silence. Returns whether
    the port was up before. Only ports of the fabric namespace: never anything elsewhere.
    """

    def work(fab: IPRoute) -> bool:
        idx = link_index(fab, port)
        was_up = bool(fab.get_links(idx)[0]["flags"] & 1)  # IFF_UP
        fab.link("set", index=idx, state="up" if up else "down")
        return was_up

    return run_netlink(fabric_ns, work)


def port_is_up(fabric_ns: str, port: str) -> bool:
    """Whether a fabric port is switched on (``set_port_state``)."""
    return run_netlink(fabric_ns, lambda fab: bool(fab.get_links(link_index(fab, port))[0]["flags"] & 1))


def attach(spec: LabSpec, ns: str, ifname: str, peer: str, bridge: str, cidr: str | None, mac: str | None = None) -> None:
    """A device ``ifname`` in lab namespace ``ns``, plugged into fabric bridge ``bridge``."""
    plug_into_fabric(spec.fabric_netns, peer, bridge, f"/run/netns/{ns}", ifname)
    run_netlink(ns, lambda ipr: configure(ipr, ifname, cidr, mac))


def build_fabric(spec: LabSpec) -> None:
    new_netns(spec.fabric_netns)
    names = ["br-mgmt", "br-ext"]
    if spec.backend == "emulated":  # with Neutron, HA and tenant networks are VXLAN over br-mgmt
        names += [*(p.bridge for p in spec.projects), *(r.tenant_bridge for r in spec.routers)]

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
