"""What a replica of an HA router is made of, in Neutron's own formats.

keepalived.conf and conntrackd.conf come from ``chaos.neutron`` (Neutron's renderings, compared
with Neutron's own classes by the fidelity tests): the replica's vrrp_instance with its primary
VIP on the ha- device, the gateway's, the internal port's and the floating IPs' addresses, each
qr-/qg- device's IPv6 link-local address, and the default route, as HaRouter adds them. The
NAT rules use the L3 agent's chain names; the namespace's sysctls are HaRouterNamespace's.
"""

from __future__ import annotations

import ipaddress

from chaos import deployment, neutron
from chaos.lab.spec import LabSpec, ReplicaSpec, RouterSpec

# A lab node of the upstream shape keeps Neutron's default layout (its own /var/lib/neutron);
# one of the kolla shape has kolla's state_path inside its agent container.
LAYOUT = neutron.NeutronLayout()


def lab_layout(spec: LabSpec) -> neutron.NeutronLayout:
    """The Neutron layout the lab's agents see, by the lab's profile."""
    return neutron.NeutronLayout(state_path=deployment.DEFAULT_STATE_PATH[spec.options.profile])


def keepalived_instance(spec: LabSpec, router: RouterSpec, replica: ReplicaSpec) -> neutron.KeepalivedInstance:
    """The vrrp_instance Neutron's HaRouter builds for this replica."""
    ext_prefix = ipaddress.IPv4Network(spec.external_cidr).prefixlen
    tenant_prefix = ipaddress.IPv4Network(router.tenant_cidr).prefixlen
    return neutron.KeepalivedInstance(
        vrid=router.vrid,
        ha_device=replica.ha_device,
        advert_int=spec.options.advert_int,
        vips=neutron.router_vips(
            gateway=(router.gateway_device, f"{router.gateway_ip}/{ext_prefix}", router.gateway_mac),
            internals=[(router.internal_device, f"{router.internal_ip}/{tenant_prefix}", router.internal_mac)],
            floating_ips=[fip.address for fip in router.floating_ips],
        ),
        routes=(neutron.VirtualRoute(destination="0.0.0.0/0", nexthop=spec.external_gateway_ip, device=router.gateway_device),),
    )


def render_keepalived_conf(spec: LabSpec, router: RouterSpec, replica: ReplicaSpec) -> str:
    return neutron.render_keepalived_conf(keepalived_instance(spec, router, replica))


def render_conntrackd_conf(spec: LabSpec, router: RouterSpec, replica: ReplicaSpec) -> str:
    return neutron.render_conntrackd_conf(
        lab_layout(spec), router.id, ha_ip=replica.ha_ip, ha_device=replica.ha_device, vrid=router.vrid
    )


def render_iptables(spec: LabSpec, router: RouterSpec) -> str:
    """iptables-restore input for a qrouter namespace: floating-IP 1:1 NAT and the router's SNAT.

    SNAT with ``--random-fully``, as Neutron's L3 agent writes it (``[AGENT] use_random_fully``,
    True by default; seen in real Zed's rules on the neutron backend): a connection that a new
    primary picks up mid-stream is a new NAT mapping there, so an outbound session through the
    floating IP's SNAT gets another source port after a failover and the far end resets it.
    Without conntrackd, VM-initiated TCP sessions do not survive a failover; inbound ones
    (DNAT keeps the ports) do."""
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
            f"-A neutron-l3-agent-float-snat -s {fip.fixed_ip}/32 -j SNAT --to-source {fip.address} --random-fully",
        ]
    nat += [
        f"-A neutron-l3-agent-POSTROUTING ! -o {qg} -m conntrack ! --ctstate DNAT -j ACCEPT",
        "-A neutron-l3-agent-snat -j neutron-l3-agent-float-snat",
        f"-A neutron-l3-agent-snat -o {qg} -j SNAT --to-source {router.gateway_ip} --random-fully",
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
    """HaRouterNamespace's settings: IPv4 forwarding, nonlocal binds; IPv6 on but without
    kernel link-local addresses (keepalived manages them, only on the primary) and without IPv6
    forwarding (a backup must not send MLD). Written before the devices move in, so that
    ``default`` applies to them."""
    return {
        "net.ipv4.ip_forward": "1",
        "net.ipv4.ip_nonlocal_bind": "1",
        "net.ipv6.conf.all.disable_ipv6": "0",
        "net.ipv6.conf.default.disable_ipv6": "0",
        "net.ipv6.conf.all.addr_gen_mode": "1",
        "net.ipv6.conf.default.addr_gen_mode": "1",
        "net.ipv6.conf.all.forwarding": "0",
        "net.netfilter.nf_conntrack_tcp_loose": "0" if spec.options.strict_conntrack else "1",
    }
