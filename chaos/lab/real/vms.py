"""The VMs of the neutron backend: a namespace each, wired to the controller as a VM to its host.

A VM's ``eth0`` (the planned MAC and fixed IP, the router's interface as default route) is one
end of a veth pair; the other end lives in the controller's namespace. Once Neutron has made
the VM's port, that end is renamed ``tap<port id[:11]>`` (the name Nova's libvirt driver gives
a LinuxBridge port) and brought up: the controller's LinuxBridge agent sees the device, asks
the server for the port bound to its host, and plugs it into ``brq<network id[:11]>``.
"""

from __future__ import annotations

import errno
import ipaddress

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from chaos.lab.fabric import configure, link_index, new_netns
from chaos.lab.netlink import run_netlink
from chaos.lab.spec import LabSpec, RouterSpec

VXLAN_MTU = 1450  # Neutron's MTU for a VXLAN network on a 1500-byte underlay


def host_end(router: RouterSpec) -> str:
    """The controller-side end before the port exists."""
    return f"vm{router.index}"


def tap_name(port_id: str) -> str:
    return f"tap{port_id[:11]}"


def build_vms(spec: LabSpec) -> None:
    assert spec.controller is not None
    for router in spec.routers:
        vm = router.vms[0]
        new_netns(vm.netns)
        peer = host_end(router)

        def make(ipr: IPRoute, peer: str = peer, target: str = f"/run/netns/{vm.netns}") -> None:
            for index in ipr.link_lookup(ifname=peer):
                ipr.link("del", index=index)
            with open(target, "rb") as fd:
                ipr.link("add", ifname=peer, kind="veth", peer={"ifname": "eth0", "net_ns_fd": fd.fileno()})
            ipr.link("set", index=link_index(ipr, peer), mtu=VXLAN_MTU)

        run_netlink(spec.controller.netns, make)
        prefix = ipaddress.IPv4Network(router.tenant_cidr).prefixlen

        def setup(ipr: IPRoute, router: RouterSpec = router, prefix: int = prefix) -> None:
            ipr.link("set", index=link_index(ipr, "eth0"), mtu=VXLAN_MTU)
            configure(ipr, "eth0", f"{router.vms[0].ip}/{prefix}", router.vms[0].mac)
            ipr.route("add", dst="0.0.0.0/0", gateway=router.internal_ip)

        run_netlink(vm.netns, setup)


def bridge_name(network_id: str) -> str:
    return f"brq{network_id[:11]}"


def plug_vm(spec: LabSpec, router: RouterSpec, port_id: str, network_id: str) -> None:
    """What Nova's os-vif does for a LinuxBridge port: the tap named after the port, in the
    network's ``brq`` bridge (created if the agent has not made it yet), up. The agent leaves
    ``compute:`` ports to os-vif and only adds the VXLAN device and the port's status.
    Idempotent."""
    assert spec.controller is not None
    tap = tap_name(port_id)
    bridge = bridge_name(network_id)

    def work(ipr: IPRoute) -> None:
        if not ipr.link_lookup(ifname=tap):
            ipr.link("set", index=link_index(ipr, host_end(router)), ifname=tap)
        if not ipr.link_lookup(ifname=bridge):
            try:
                ipr.link("add", ifname=bridge, kind="bridge", br_forward_delay=0)
            except NetlinkError as exc:  # the agent made it meanwhile
                if exc.code != errno.EEXIST:
                    raise
        ipr.link("set", index=link_index(ipr, bridge), state="up")
        index = link_index(ipr, tap)
        ipr.link("set", index=index, master=link_index(ipr, bridge))
        ipr.link("set", index=index, state="up")

    run_netlink(spec.controller.netns, work)
