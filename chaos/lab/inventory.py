"""A lab's plan (lab.json) as the inventory a run reads (inventory.json).

The plan is the lab's own description (namespaces, addresses, where each replica runs); the
inventory is the ``Topology`` every target gives the runner. It is rewritten whenever replicas
move (the lab's API, the neutron backend's placement sync), by whichever part moved them, so
it has a module of its own that all of them use.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from chaos.lab.spec import ECHO_PORT, LabSpec
from chaos.model import FloatingIP, Node, Replica, Router, Topology, Vantage

NEUTRON_VERSION = "29.0.0"  # the neutron package whose state-change script the lab runs


def neutron_version(spec: LabSpec) -> str:
    """The Neutron a lab's routers meet: Debian's package for the neutron backend; for the
    emulated one, the release whose formats and state-change script it reproduces."""
    if spec.backend != "neutron":
        return f"{NEUTRON_VERSION} (emulated)"
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "neutron-common"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    upstream = out.split(":", 1)[-1].split("-", 1)[0] if out else "unknown"
    return f"{upstream} (Debian {out})" if out else upstream


def topology_of(lab_dir: Path, spec: LabSpec) -> Topology:
    """The lab as a run sees it: nodes reached over SSH from the vantage namespace, routers,
    floating IPs with the VMs' echo service, the BMC (from the running services' status)."""
    ssh_dir = lab_dir / "ssh"
    services = json.loads((lab_dir / "services.json").read_text())
    return Topology(
        source=f"lab:{lab_dir.name}",
        nodes=tuple(
            Node(
                name=n.name,
                address=n.mgmt_ip,
                port=n.ssh_port,
                key_file=ssh_dir / "id_ed25519",
                known_hosts=ssh_dir / "known_hosts",
                netns=spec.vantage.netns,
                check_child_processes_interval=spec.options.respawn_interval,
                profile=spec.options.profile,
            )
            for n in spec.nodes
        ),
        routers=tuple(
            Router(
                id=r.id,
                name=r.name,
                project_id=r.project_id,
                vrid=r.vrid,
                ha_vip=r.ha_vip,
                replicas=tuple(Replica(node=rep.node, ha_device=rep.ha_device, ha_ip=rep.ha_ip) for rep in r.replicas),
                floating_ips=tuple(
                    FloatingIP(address=f.address, fixed_ip=f.fixed_ip, echo_port=ECHO_PORT, vm_netns=r.vms[0].netns)
                    for f in r.floating_ips
                ),
                gateway_ip=r.gateway_ip,
                internal_ip=r.internal_ip,
            )
            for r in spec.routers
        ),
        vantage=Vantage(netns=spec.vantage.netns, echo_address=spec.vantage.ext_ip, echo_port=spec.vantage.echo_port),
        bmc_url=services["bmc_url"],
        bmc_credentials_file=lab_dir / "bmc.json",
        backend=spec.backend,
        neutron_version=neutron_version(spec),
    )


def write_inventory(lab_dir: Path, spec: LabSpec) -> Topology:
    """Write inventory.json for ``spec`` atomically (a reader never sees half a file)."""
    topo = topology_of(lab_dir, spec)
    tmp = lab_dir / "inventory.json.tmp"
    tmp.write_text(topo.model_dump_json(indent=2))
    tmp.replace(lab_dir / "inventory.json")
    return topo
