"""Bring a lab up, describe it, reboot its nodes, take it down (also after a crash).

Everything a lab creates is either inside a namespace whose name starts with ``<lab>-`` or in
the lab folder ``<lab_root>/<lab>/``; ``down`` finds both again from the name alone, so a lab
left behind by a killed process is removed as cleanly as a healthy one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from chaos.errors import Conflict, InfrastructureError, InvalidInput, Prerequisites
from chaos.lab import fabric
from chaos.lab.inventory import NEUTRON_VERSION, neutron_version, write_inventory
from chaos.lab.netlink import drop_netns, list_netns, run_netlink
from chaos.transport.netns import NETNS_RUN_DIR
from chaos.lab.node import (
    generate_key,
    init_pid,
    is_powered,
    neutron_file,
    new_credentials,
    node_dir,
    power_on,
    prepare_node_disk,
    sshd_config,
)
from chaos.lab.procs import (
    ProcTable,
    kill_all,
    pid_alive,
    run_checked,
    terminate_all,
    wait_gone,
)
from chaos.lab.router import lab_layout
from chaos.lab.spec import LabOptions, LabSpec, RouterSpec, plan_lab, validate_lab_name
from chaos.model import Topology

log = structlog.get_logger("lab")

REQUIRED_PROGRAMS = {
    "keepalived": "keepalived",
    "curl": "curl",  # neutron-keepalived-state-change notifies the agent with it
    "conntrack": "conntrack",
    "conntrackd": "conntrackd",
    "sshd": "openssh-server",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "iptables-restore": "iptables",
    "ip": "iproute2",
    "unshare": "util-linux",
    "mount": "mount",
}
NEUTRON_STATE = Path("/var/lib/neutron")
# How long a teardown waits for the lab's killed processes to be gone, all of them together: a
# node's init exits once the kernel has ended every process of its PID namespace.
NODE_EXIT_TIMEOUT = 30.0


NEUTRON_BACKEND_PROGRAMS = {
    "neutron-server": "neutron-server",
    "neutron-db-manage": "neutron-common",
    "neutron-l3-agent": "neutron-l3-agent",
    "neutron-linuxbridge-agent": "neutron-linuxbridge-agent",
    "neutron-keepalived-state-change": "neutron-common",
    "privsep-helper": "python3-oslo.privsep",
    "sudo": "sudo",
    "mariadbd": "mariadb-server",
    "mariadb-install-db": "mariadb-server",
    "rabbitmq-server": "rabbitmq-server",
}


def check_prerequisites(backend: str = "emulated") -> None:
    if os.geteuid() != 0:
        raise Prerequisites("the lab needs root (network, mount and PID namespaces)", hint="run it as root")
    if backend == "neutron":
        absent = sorted(prog for prog in NEUTRON_BACKEND_PROGRAMS if not _which(prog))
        if absent:
            raise Prerequisites(
                "the neutron backend needs Debian's Neutron, MariaDB and RabbitMQ; missing: " + ", ".join(absent),
                hint="bash scripts/install-neutron-backend.sh (or scripts/install.sh --with-neutron)",
            )
    missing = sorted({pkg for prog, pkg in REQUIRED_PROGRAMS.items() if not _which(prog)})
    if missing:
        raise Prerequisites(
            "missing programs for the lab: " + ", ".join(p for p, pkg in REQUIRED_PROGRAMS.items() if pkg in missing and not _which(p)),
            hint="apt-get install -y " + " ".join(missing),
        )
    from chaos.lab.agent import state_change_program

    if backend == "emulated" and not state_change_program().is_file():
        raise Prerequisites(
            f"Neutron's neutron-keepalived-state-change is not installed ({state_change_program()}): the lab's "
            "replicas run Neutron's own state-change monitor",
            hint=f"{sys.executable} -m pip install --no-deps --target {state_change_program().parent.parent} "
            f"neutron=={NEUTRON_VERSION} (scripts/install.sh does it)",
        )


def _which(prog: str) -> str | None:
    return shutil.which(prog, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


class Lab:
    """One lab, by name, with its folder under ``lab_root``."""

    def __init__(self, lab_root: Path, name: str) -> None:
        self.name = validate_lab_name(name)
        self.root = lab_root
        self.dir = lab_root / name

    # ------------------------------------------------------------------ discovery
    @property
    def spec_path(self) -> Path:
        return self.dir / "lab.json"

    def exists(self) -> bool:
        return self.spec_path.exists() or bool(self.leftover_namespaces())

    def spec(self) -> LabSpec:
        if not self.spec_path.exists():
            raise Conflict(f"no lab named {self.name!r} is running", hint=f"start one with: chaos lab up --name {self.name}")
        return LabSpec.load(self.spec_path)

    def leftover_namespaces(self) -> list[str]:
        return [ns for ns in list_netns() if ns.startswith(f"{self.name}-")]

    def services_pid(self) -> int | None:
        try:
            pid = json.loads((self.dir / "services.json").read_text())["pid"]
        except (OSError, ValueError, KeyError):
            return None
        return pid if pid_alive(pid, "chaos.lab.services") else None

    def bmc(self) -> tuple[str, str, str]:
        """URL, user and password of the lab's BMC."""
        services = json.loads((self.dir / "services.json").read_text())
        creds = json.loads((self.dir / "bmc.json").read_text())
        return services["bmc_url"], creds["user"], creds["password"]

    def healthy(self) -> bool:
        if not self.spec_path.exists() or self.services_pid() is None:
            return False
        spec = self.spec()
        if spec.backend == "neutron":
            from chaos.lab.real import controller
            from chaos.lab.real.lab import BUILT_MARKER

            if not (self.dir / BUILT_MARKER).exists() or not controller.is_running(self.dir):
                return False
        return all(is_powered(self.dir, n.name) for n in spec.nodes)

    # ------------------------------------------------------------------ up
    def up(self, options: LabOptions, progress: Callable[[str], None] = lambda _: None, timeout: float = 120.0) -> LabSpec:
        check_prerequisites(options.backend)
        if options.conntrackd and not _which("conntrackd"):
            raise Prerequisites("--conntrackd needs conntrackd", hint="apt-get install -y conntrackd")
        spec = plan_lab(options)
        if self.spec_path.exists():
            current = self.spec()
            if current.options == options and self.healthy():
                progress(f"lab {self.name} is already up with these options")
                return current
            if current.options != options:
                raise Conflict(
                    f"lab {self.name!r} already exists with other options ({_describe(current.options)})",
                    hint=f"take it down first: chaos lab down --name {self.name}",
                )
        if self.exists():
            progress(f"removing what a previous lab {self.name} left behind")
            self.down()
        neighbour_warning = _neighbour_table_warning(spec)
        if neighbour_warning:
            progress(neighbour_warning)
        started = time.monotonic()
        try:
            if spec.backend == "neutron":
                from chaos.lab.real.lab import create as create_neutron

                spec = create_neutron(self, spec, progress, timeout)
            else:
                self._create(spec, progress)
            self._wait_ready(spec, progress, timeout)
            if spec.backend == "neutron":
                self.write_inventory(spec)
        except BaseException:
            progress("lab up failed; removing what was created")
            self.down()
            raise
        progress(f"lab {self.name} up in {time.monotonic() - started:.1f}s: {len(spec.nodes)} nodes, {len(spec.routers)} routers"
                 + (f", Neutron {neutron_version(spec)}" if spec.backend == "neutron" else ""))
        return spec

    def _create(self, spec: LabSpec, progress: Callable[[str], None]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        spec.save(self.spec_path)
        if not NEUTRON_STATE.exists():
            # Mount point for each node's private /var/lib/neutron; removed again by `down`.
            NEUTRON_STATE.mkdir(parents=True)
            (self.root / ".created-var-lib-neutron").touch()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        self.prepare_disks(spec)
        progress("building the fabric, vantage point and VMs")
        fabric.build_fabric(spec)
        fabric.build_vantage(spec)
        fabric.build_vms(spec)
        self._start_vm_sshd(spec)
        self.write_known_hosts(spec)
        new_credentials(self.dir)
        self._start_services()
        # clouds.yaml for the lab's Keystone/Neutron API (chaos.lab.keystone); credentials never logged.
        from chaos.lab.keystone import write_clouds_yaml

        write_clouds_yaml(self.dir, self.name, json.loads((self.dir / "services.json").read_text())["api_url"])
        for node in spec.nodes:
            power_on(spec, self.dir, node)
            progress(f"powered on {node.name}")
        self.write_inventory(spec)

    def prepare_disks(self, spec: LabSpec) -> None:
        """The lab's SSH client key and every node's disk (host key, sshd config, folders)."""
        ssh_dir = self.dir / "ssh"
        ssh_dir.mkdir(exist_ok=True)
        client_pub = generate_key(ssh_dir / "id_ed25519", f"chaos-lab-{self.name}")
        (ssh_dir / "authorized_keys").write_text(client_pub + "\n")
        for node in spec.nodes:
            prepare_node_disk(spec, self.dir, node)

    def write_known_hosts(self, spec: LabSpec) -> None:
        """Every node's and VM's host key, by name and address (a VM also by its floating IPs)."""
        known = []
        for node in spec.nodes:
            host_pub = (node_dir(self.dir, node.name) / "ssh_host_ed25519_key.pub").read_text()
            known.append(f"{node.name},{node.mgmt_ip} {_key_part(host_pub)}")
        for router in spec.routers:
            for vm in router.vms:
                host_pub = (self.dir / "vms" / vm.name / "ssh_host_ed25519_key.pub").read_text()
                names = [vm.name, vm.ip, *(f.address for f in router.floating_ips)]
                known.append(f"{','.join(names)} {_key_part(host_pub)}")
        (self.dir / "ssh" / "known_hosts").write_text("\n".join(known) + "\n")

    def start_vm_sshd(self, spec: LabSpec) -> None:
        self._start_vm_sshd(spec)

    def start_services(self) -> None:
        self._start_services()

    def _start_vm_sshd(self, spec: LabSpec) -> None:
        for router in spec.routers:
            for vm in router.vms:
                d = self.dir / "vms" / vm.name
                d.mkdir(parents=True, exist_ok=True)
                generate_key(d / "ssh_host_ed25519_key", f"root@{vm.name}")
                (d / "sshd_config").write_text(
                    sshd_config(vm.ip, 22, d / "ssh_host_ed25519_key", d / "sshd.pid", self.dir / "ssh" / "authorized_keys")
                )
                run_checked(
                    ["ip", "netns", "exec", vm.netns, "/usr/sbin/sshd", "-f", str(d / "sshd_config")],
                    f"starting sshd of {vm.name}",
                )

    def _start_services(self) -> None:
        with open(self.dir / "services.log", "ab") as logf:
            subprocess.Popen(
                [sys.executable, "-m", "chaos.lab.services", "--lab-dir", str(self.dir)],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while self.services_pid() is None:
            if time.monotonic() > deadline:
                raise InfrastructureError("the lab services did not start", hint=f"see {self.dir / 'services.log'}")
            time.sleep(0.05)

    def _wait_ready(self, spec: LabSpec, progress: Callable[[str], None], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        progress("waiting for the agents to sync and every router to elect a primary")
        while True:
            waiting = self.not_ready(spec)
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise InfrastructureError(f"lab not ready after {timeout:.0f}s: {'; '.join(waiting[:5])}")
            time.sleep(0.2)

    def not_ready(self, spec: LabSpec, nodes: list[str] | None = None) -> list[str]:
        """What is not yet as it should be: agents not synced, routers without exactly one primary."""
        problems = []
        for node in spec.nodes:
            if nodes is not None and node.name not in nodes:
                continue
            agent = self.agent_status(node.name, spec=spec)
            want = {r.id for r, _ in spec.replicas_on(node.name)}
            if agent is None or set(agent["replicas"]) != want:
                problems.append(f"{node.name}: agent not synced")
        if problems:
            return problems
        for router in spec.routers:
            states = [self.replica_state(rep.node, router, spec) for rep in router.replicas]
            if states.count("primary") != 1:
                problems.append(f"{router.name}: states {states}")
        return problems

    # ------------------------------------------------------------------ live state
    def agent_status(self, node: str, procs: ProcTable | None = None, spec: LabSpec | None = None) -> dict[str, Any] | None:
        """The node's agent as the lab sees it: its boot id and the replicas it runs. With the
        neutron backend: the routers whose keepalived runs in the node (Neutron's L3 agent
        started it), and the boot id the node's init wrote.

        ``spec``: the caller's plan, only to learn the backend; without it lab.json is read.
        Bring-up polls every node five times a second, and parsing a 100-router lab.json each
        time cost the host a third of a core while the agents needed it."""
        known = spec if spec is not None else (self.spec() if self.spec_path.exists() else None)
        if known is not None and known.backend == "neutron":
            if not is_powered(self.dir, node):
                return None
            spec = self.spec()  # the placement as it is now: Neutron moves replicas
            try:
                boot_id = (node_dir(self.dir, node) / "boot_id").read_text().strip()
            except OSError:
                return None
            procs = procs or ProcTable.scan()
            running = [r.id for r, _ in spec.replicas_on(node) if self.keepalived_pids(node, r, procs)]
            return {"node": node, "boot_id": boot_id, "replicas": running}
        try:
            return json.loads((node_dir(self.dir, node) / "agent.json").read_text())
        except (OSError, ValueError):
            return None

    def replica_state(self, node: str, router: RouterSpec, spec: LabSpec | None = None) -> str | None:
        if not is_powered(self.dir, node):
            return None
        spec = spec or self.spec()
        try:
            return neutron_file(self.dir, spec, node, lab_layout(spec).state_file(router.id)).read_text().strip()
        except OSError:
            return None

    def replica_addresses(self, node: str, router: RouterSpec, procs: ProcTable | None = None) -> list[str] | None:
        """IPv4 addresses configured in the replica's qrouter namespace (None: no such namespace)."""
        init = init_pid(self.dir, node, procs)
        if init is None:
            return None
        path = f"/proc/{init}/root/run/netns/{router.namespace}"
        if not os.path.exists(path):
            return None
        try:
            addrs = run_netlink(path, lambda ipr: [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=2)])
        except OSError:
            return None
        return sorted(a for a in addrs if a != "127.0.0.1")

    def keepalived_pids(self, node: str, router: RouterSpec, procs: ProcTable | None = None) -> list[int]:
        """Host pids of the replica's keepalived processes (the node's PID namespace only).

        ``procs``: a /proc snapshot shared by every replica of one call (``status``), so that a
        status reads /proc once, not once per replica; without it, a fresh one."""
        procs = procs or ProcTable.scan()
        init = init_pid(self.dir, node, procs)
        if init is None:
            return []
        conf = f"ha_confs/{router.id}/keepalived.conf"
        return [pid for pid in procs.in_pidns(init)
                if conf in procs.cmdlines[pid] and "keepalived" in procs.cmdlines[pid] and pid_alive(pid)]

    def status(self) -> dict[str, Any]:
        spec = self.spec()
        procs = ProcTable.scan()  # one look at /proc for every node and replica below
        ssh_dir = self.dir / "ssh"
        services = None
        try:
            url, _, _ = self.bmc()
            services = {"pid": self.services_pid(), "bmc_url": url, "bmc_credentials": str(self.dir / "bmc.json")}
        except (OSError, ValueError, KeyError):
            pass
        nodes = []
        for node in spec.nodes:
            agent = self.agent_status(node.name, procs, spec)
            host_key = (node_dir(self.dir, node.name) / "ssh_host_ed25519_key.pub").read_text().strip()
            nodes.append(
                {
                    "name": node.name,
                    "netns": node.netns,
                    "management_address": node.mgmt_ip,
                    "ssh_port": node.ssh_port,
                    "user": "root",
                    "key_file": str(ssh_dir / "id_ed25519"),
                    "known_hosts": str(ssh_dir / "known_hosts"),
                    "host_key": host_key,
                    "powered": is_powered(self.dir, node.name),
                    "agent_synced": agent is not None,
                    "boot_id": (agent or {}).get("boot_id"),
                    "l3_agent_id": node.agent_id,
                }
            )
        routers = []
        for router in spec.routers:
            replicas = []
            for rep in router.replicas:
                addrs = self.replica_addresses(rep.node, router, procs)
                replicas.append(
                    {
                        "node": rep.node,
                        "ha_device": rep.ha_device,
                        "ha_ip": rep.ha_ip,
                        "state": self.replica_state(rep.node, router, spec),
                        # as the tool's ground truth reads it: the gateway or a floating IP is here
                        "holds_addresses": bool(addrs)
                        and any(a in addrs for a in [router.gateway_ip, *(f.address for f in router.floating_ips)]),
                        "keepalived_pids": self.keepalived_pids(rep.node, router, procs),
                    }
                )
            routers.append(
                {
                    "id": router.id,
                    "name": router.name,
                    "project_id": router.project_id,
                    "vrid": router.vrid,
                    "ha_vip": router.ha_vip,
                    "gateway_ip": router.gateway_ip,
                    "internal_ip": router.internal_ip,
                    "tenant_cidr": router.tenant_cidr,
                    "namespace": router.namespace,
                    "replicas": replicas,
                    "floating_ips": [{"address": f.address, "fixed_ip": f.fixed_ip} for f in router.floating_ips],
                    "vms": [{"name": vm.name, "netns": vm.netns, "ip": vm.ip, "echo_port": 7, "ssh_port": 22} for vm in router.vms],
                }
            )
        controller = None
        if spec.controller is not None:
            from chaos.lab.real import controller as ctl

            controller = {"netns": spec.controller.netns, "management_address": spec.controller.mgmt_ip,
                          "running": ctl.is_running(self.dir), "boot": ctl.boot_state(self.dir)}
        return {
            "name": self.name,
            "dir": str(self.dir),
            "backend": spec.backend,
            "neutron_version": neutron_version(spec),
            "controller": controller,
            "options": spec.options.model_dump(),
            "fabric_netns": spec.fabric_netns,
            "vantage": {**spec.vantage.model_dump(), "external_network": spec.external_cidr},
            "services": services,
            "inventory": str(self.dir / "inventory.json"),
            "nodes": nodes,
            "routers": routers,
        }

    def write_inventory(self, spec: LabSpec) -> Topology:
        return write_inventory(self.dir, spec)

    # ------------------------------------------------------------------ reboot
    def reboot(self, node_name: str, wait: bool = True, timeout: float = 120.0, progress: Callable[[str], None] = lambda _: None) -> None:
        """Power-cycle a node through its BMC, as one would a server, and wait for it to be back."""
        import asyncio

        from chaos.transport.redfish import RedfishClient

        spec = self.spec()
        spec.node(node_name)
        url, _, _ = self.bmc()
        old_boot = (self.agent_status(node_name) or {}).get("boot_id")

        async def reset() -> None:  # the same Redfish client the faults use on real servers
            async with RedfishClient.from_file(url, self.dir / "bmc.json") as bmc:
                await bmc.reset(node_name, "ForceRestart")

        asyncio.run(reset())
        progress(f"{node_name}: power cycled; boot delay {spec.options.boot_delay:g}s")
        if not wait:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            agent = self.agent_status(node_name)
            if agent is not None and agent.get("boot_id") not in (None, old_boot) and not self.not_ready(spec, [node_name]):
                progress(f"{node_name}: back, replicas synced")
                return
            time.sleep(0.2)
        raise InfrastructureError(f"{node_name} did not come back within {timeout:.0f}s")

    # ------------------------------------------------------------------ management network
    def set_management(self, node_name: str, up: bool) -> bool:
        """Cut (``up=False``) or restore a node's management network: its port on the fabric's
        ``br-mgmt`` is shut, as a switch port or a pulled cable. The node keeps running (its
        replicas, their HA network and its detached processes, a dead-man among them), but
        nothing reaches its sshd: the runner loses SSH without the node knowing. Returns whether
        the port was up before. Nothing outside the lab's fabric namespace is touched; a power
        cycle plugs a new port in, up."""
        spec = self.spec()
        node = spec.node(node_name)
        return fabric.set_port_state(spec.fabric_netns, fabric.mgmt_port(node.index), up)

    # ------------------------------------------------------------------ down
    def down(self, progress: Callable[[str], None] = lambda _: None) -> list[str]:
        """Remove everything of the lab; works from the name alone after a crash.

        Everything at once rather than node by node: the lab's services first (so that no BMC
        powers a node on behind our back), then every node's init with one SIGKILL each (the
        kernel ends a PID namespace with its init: keepalived, conntrackd, sshd, the agents,
        the SSH sessions' dead-man timers), one wait for all of them, then whatever still runs
        in one of the lab's network namespaces (the VMs' sshd), and last the namespaces
        themselves, in this process. Deleting the fabric namespace takes every veth of the lab
        with it, so no port is unplugged one by one (a power cut does that, for a reboot's
        sake; 600 single deletions were most of a 21 s teardown at 100 routers). Processes are
        found by the lab folder in their command line or by living in the lab's namespaces,
        namespaces by the ``<lab>-`` prefix: nothing of another lab is touched.
        """
        removed: list[str] = []
        procs = ProcTable.scan()
        pid = self.services_pid()
        services = {*procs.matching(f"chaos.lab.services --lab-dir {self.dir} "), *([pid] if pid else [])}
        terminate_all(services, 5.0)
        removed += [f"services pid {p}" for p in sorted(services)]
        # Scanned again: the services may have powered a node on while they stopped.
        inits = ProcTable.scan().matching(f"chaos.lab.node_init --lab-dir {self.dir} ")
        kill_all(inits)
        removed += [f"node init pid {p}" for p in sorted(inits)]
        survivors = wait_gone(inits, NODE_EXIT_TIMEOUT)
        from chaos.lab.real import controller

        for p in controller.power_off(self.dir):
            removed.append(f"controller init pid {p}")
        namespaces = self.leftover_namespaces()
        procs = ProcTable.scan()
        inside = sorted({p for ns in namespaces for p in procs.in_netns(NETNS_RUN_DIR / ns)})
        kill_all(inside)
        removed += [f"pid {p} in a lab namespace" for p in inside]
        survivors += wait_gone(inside, NODE_EXIT_TIMEOUT)
        failed = drop_netns(namespaces)
        removed += [f"netns {ns}" for ns in namespaces if ns not in failed]
        if self.dir.exists():
            shutil.rmtree(self.dir)
            removed.append(str(self.dir))
        marker = self.root / ".created-var-lib-neutron"
        if marker.exists() and not any(p.is_dir() for p in self.root.iterdir() if p.name != marker.name):
            try:
                NEUTRON_STATE.rmdir()
            except OSError:
                pass
            marker.unlink(missing_ok=True)
        if self.root.exists() and not any(self.root.iterdir()):
            self.root.rmdir()
        if survivors or failed:
            raise InfrastructureError(
                f"lab {self.name} not completely removed: "
                + "; ".join([*(f"pid {p} still runs" for p in survivors), *(f"netns {ns} remains" for ns in failed)]),
                hint=f"run chaos lab down --name {self.name} again",
            )
        progress(f"lab {self.name} removed ({len(removed)} items)")
        return removed


NEIGHBOURS_PER_ROUTER = 6  # vantage->FIP, vantage->gateway, primary->vantage, router<->VM, slack


def _neighbour_table_warning(spec: LabSpec) -> str | None:
    """The kernel's ARP table is shared by every namespace on the host; a lab that needs more
    entries than gc_thresh3 allows loses floating IPs at random (and disturbs other labs)."""
    try:
        limit = int(Path("/proc/sys/net/ipv4/neigh/default/gc_thresh3").read_text())
    except (OSError, ValueError):
        return None
    needed = NEIGHBOURS_PER_ROUTER * len(spec.routers) + 2 * len(spec.nodes)
    if needed <= 0.75 * limit:
        return None
    return (
        f"warning: this lab needs about {needed} ARP entries but the host's neighbour table holds "
        f"{limit} (net.ipv4.neigh.default.gc_thresh3, shared by every namespace); floating IPs may stop "
        f"answering. Raise it first: sysctl -w net.ipv4.neigh.default.gc_thresh3={2 * needed} "
        f"net.ipv4.neigh.default.gc_thresh2={needed}"
    )


def _key_part(pub_line: str) -> str:
    kind, key, *_ = pub_line.split()
    return f"{kind} {key}"


def _describe(options: LabOptions) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.model_dump().items() if k != "name")


def parse_options(**kwargs: Any) -> LabOptions:
    try:
        return LabOptions(**{k: v for k, v in kwargs.items() if v is not None})
    except Exception as exc:  # pydantic ValidationError: name the option
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            err = exc.errors()[0]
            field = ".".join(str(x) for x in err["loc"])
            raise InvalidInput(f"--{field.replace('_', '-')}: {err['msg']}") from None
        raise
