"""Every configuration file of the neutron backend, rendered into the lab folder.

Pure functions of the lab's plan and its secrets, so a test can read what each process gets.
Where a value departs from Neutron's default it says why; everything else is left at Zed's
default on purpose (the point of the backend is to meet Neutron as it ships).

Layout:

- ``<lab>/controller/etc/``: neutron.conf + ml2_conf.ini (neutron-server), api-paste.ini,
  policy.yaml (empty: Neutron's in-code defaults), rabbitmq.conf, linuxbridge_agent.ini
  (the controller's agent, which plugs the VMs' ports);
- ``<lab>/nodes/<node>/etc/``: neutron.conf, l3_agent.ini, linuxbridge_agent.ini.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from pydantic import BaseModel

from chaos.lab.keystone import IDENTITY_PREFIX
from chaos.lab.spec import HA_CIDR, LabSpec, NodeSpec

SECRETS_FILE = "neutron-secrets.json"
KEYSTONE_PORT = 5000  # where the lab's Keystone listens inside the controller namespace
NEUTRON_PORT = 9696
RABBIT_PORT = 5672
MYSQL_PORT = 3306
EXT_PHYSNET = "extnet"
EXT_NIC = "eth1"  # a network node's NIC on the external network (flat, physnet extnet)
VNI_RANGE = "1:1000"


class Secrets(BaseModel):
    """Passwords of the backend's own services (the lab's Keystone keeps its users' own)."""

    db_password: str
    rabbit_password: str


def ensure_secrets(lab_dir: Path) -> Secrets:
    path = lab_dir / SECRETS_FILE
    if path.exists():
        return Secrets.model_validate_json(path.read_text())
    value = Secrets(db_password=secrets.token_hex(16), rabbit_password=secrets.token_hex(16))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value.model_dump_json())
    return value


def controller_dir(lab_dir: Path) -> Path:
    return lab_dir / "controller"


def etc_dir(host_dir: Path) -> Path:
    return host_dir / "etc"


def _ini(sections: dict[str, dict[str, object]]) -> str:
    out = []
    for section, values in sections.items():
        out.append(f"[{section}]")
        for key, value in values.items():
            if isinstance(value, bool):
                value = "True" if value else "False"
            out.append(f"{key} = {value}")
        out.append("")
    return "\n".join(out)


def transport_url(spec: LabSpec, s: Secrets) -> str:
    assert spec.controller is not None
    return f"rabbit://chaos:{s.rabbit_password}@{spec.controller.mgmt_ip}:{RABBIT_PORT}/"


def identity_url(spec: LabSpec) -> str:
    assert spec.controller is not None
    return f"http://{spec.controller.mgmt_ip}:{KEYSTONE_PORT}{IDENTITY_PREFIX}"


def neutron_url(spec: LabSpec) -> str:
    assert spec.controller is not None
    return f"http://{spec.controller.mgmt_ip}:{NEUTRON_PORT}"


# --------------------------------------------------------------------------- controller
def server_conf(spec: LabSpec, lab_dir: Path, s: Secrets, service_user: tuple[str, str, str]) -> str:
    """neutron.conf of neutron-server. ``service_user``: (user, password, project) for
    keystonemiddleware, which validates the tokens of every request against the lab's Keystone."""
    assert spec.controller is not None
    d = controller_dir(lab_dir)
    user, password, project = service_user
    return _ini({
        "DEFAULT": {
            "core_plugin": "ml2",
            "service_plugins": "router",
            "auth_strategy": "keystone",
            "bind_host": spec.controller.mgmt_ip,
            "bind_port": NEUTRON_PORT,
            # Two cores: one API and one RPC worker (Zed's defaults scale with the CPUs).
            "api_workers": 1,
            "rpc_workers": 1,
            "rpc_state_report_workers": 1,
            "api_paste_config": etc_dir(d) / "api-paste.ini",
            "state_path": d / "state",
            "log_file": d / "log" / "neutron-server.log",
            "transport_url": transport_url(spec, s),
            "l3_ha": True,
            "max_l3_agents_per_router": spec.options.replicas,
            "l3_ha_net_cidr": str(HA_CIDR),
            "l3_ha_network_type": "vxlan",
            # No Nova and no DHCP agent in the lab: nothing to notify.
            "notify_nova_on_port_status_changes": False,
            "notify_nova_on_port_data_changes": False,
            "dhcp_agent_notification": False,
        },
        "database": {
            "connection": f"mysql+pymysql://neutron:{s.db_password}@{spec.controller.mgmt_ip}:{MYSQL_PORT}/neutron",
        },
        "keystone_authtoken": {
            "www_authenticate_uri": identity_url(spec),
            "auth_url": identity_url(spec),
            "auth_type": "password",
            "interface": "internal",  # the catalog's in-lab identity endpoint (the public one is loopback)
            "username": user,
            "password": password,
            "project_name": project,
            "user_domain_name": "Default",
            "project_domain_name": "Default",
        },
        "oslo_concurrency": {"lock_path": d / "state" / "lock"},
        # Neutron's in-code default policy: not Debian's /etc/neutron/policy.d.
        "oslo_policy": {"policy_file": etc_dir(d) / "policy.yaml", "policy_dirs": etc_dir(d) / "policy.d"},
        "experimental": {"linuxbridge": True},  # ML2/LinuxBridge is "experimental" in Zed
    })


def ml2_conf() -> str:
    """ML2 with LinuxBridge: the external network flat on ``extnet``, tenant and HA networks
    VXLAN (unicast, l2population), which needs no VLAN support from the kernel."""
    return _ini({
        "ml2": {
            "type_drivers": "flat,vxlan",
            "tenant_network_types": "vxlan",
            "mechanism_drivers": "linuxbridge,l2population",
            "extension_drivers": "",
        },
        "ml2_type_flat": {"flat_networks": EXT_PHYSNET},
        "ml2_type_vxlan": {"vni_ranges": VNI_RANGE},
    })


API_PASTE = """[composite:neutron]
use = egg:Paste#urlmap
/: neutronversions_composite
/v2.0: neutronapi_v2_0

[composite:neutronapi_v2_0]
use = call:neutron.auth:pipeline_factory
keystone = http_proxy_to_wsgi request_id catch_errors authtoken keystonecontext extensions neutronapiapp_v2_0

[composite:neutronversions_composite]
use = call:neutron.auth:pipeline_factory
keystone = http_proxy_to_wsgi neutronversions

[filter:request_id]
paste.filter_factory = oslo_middleware:RequestId.factory

[filter:catch_errors]
paste.filter_factory = oslo_middleware:CatchErrors.factory

[filter:http_proxy_to_wsgi]
paste.filter_factory = oslo_middleware.http_proxy_to_wsgi:HTTPProxyToWSGI.factory

[filter:keystonecontext]
paste.filter_factory = neutron.auth:NeutronKeystoneContext.factory

[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory

[filter:extensions]
paste.filter_factory = neutron.api.extensions:plugin_aware_extension_middleware_factory

[app:neutronversions]
paste.app_factory = neutron.pecan_wsgi.app:versions_factory

[app:neutronapiapp_v2_0]
paste.app_factory = neutron.api.v2.router:APIRouter.factory
"""


def rabbitmq_conf(spec: LabSpec, s: Secrets) -> str:
    assert spec.controller is not None
    return "\n".join([
        f"listeners.tcp.1 = {spec.controller.mgmt_ip}:{RABBIT_PORT}",
        "loopback_users = none",
        "default_user = chaos",
        f"default_pass = {s.rabbit_password}",
        "default_vhost = /",
        "log.console = false",
        "log.file.level = warning",
        "disk_free_limit.absolute = 50MB",
        "",
    ])


def rabbitmq_env(lab_dir: Path) -> dict[str, str]:
    """RabbitMQ as root with every path in the lab folder; epmd only on the namespace's loopback."""
    d = controller_dir(lab_dir) / "rabbitmq"
    etc = etc_dir(controller_dir(lab_dir))
    return {
        "HOME": str(d),
        "RABBITMQ_NODENAME": "rabbit@localhost",
        "RABBITMQ_CONFIG_FILE": str(etc / "rabbitmq.conf"),
        "RABBITMQ_CONF_ENV_FILE": str(etc / "rabbitmq-env.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(etc / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
        "RABBITMQ_LOG_BASE": str(d / "log"),
        "RABBITMQ_PID_FILE": str(d / "rabbitmq.pid"),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
    }


def mysqld_argv(spec: LabSpec, lab_dir: Path) -> list[str]:
    assert spec.controller is not None
    d = controller_dir(lab_dir) / "mysql"
    return [
        "mariadbd", "--no-defaults", "--user=root",
        f"--datadir={d / 'data'}", f"--socket={d / 'mysqld.sock'}", f"--pid-file={d / 'mysqld.pid'}",
        f"--log-error={d / 'error.log'}", f"--tmpdir={d / 'tmp'}",
        f"--bind-address={spec.controller.mgmt_ip}", f"--port={MYSQL_PORT}",
        "--skip-name-resolve", "--skip-log-bin", "--max-connections=500",
        # A throw-away lab database: small, and no fsync per commit.
        "--innodb-buffer-pool-size=64M", "--innodb-log-file-size=16M", "--innodb-flush-method=fsync",
        "--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0",
    ]


# --------------------------------------------------------------------------- agents
def agent_conf(spec: LabSpec, s: Secrets, host: str, state_path: Path | str, log_dir: Path) -> str:
    """neutron.conf of a host's agents."""
    return _ini({
        "DEFAULT": {
            "host": host,
            "state_path": state_path,
            "transport_url": transport_url(spec, s),
            "log_dir": log_dir,
        },
        "agent": {
            # The agents run as root: no sudo/rootwrap in front of their commands.
            "root_helper": "",
            # Neutron's ProcessMonitor: how often a dead keepalived is respawned (60 s by default).
            "check_child_processes_interval": _seconds(spec.options.respawn_interval),
        },
        "oslo_concurrency": {"lock_path": Path(state_path) / "lock"},
        "experimental": {"linuxbridge": True},
    })


def l3_agent_ini(spec: LabSpec) -> str:
    return _ini({
        "DEFAULT": {
            "interface_driver": "linuxbridge",
            "agent_mode": "legacy",
            "ha_vrrp_advert_int": spec.options.advert_int,
            "enable_metadata_proxy": False,  # no Nova, no metadata in the lab
        },
    })


def linuxbridge_ini(local_ip: str, external_nic: str | None) -> str:
    return _ini({
        "linux_bridge": {"physical_interface_mappings": f"{EXT_PHYSNET}:{external_nic}" if external_nic else ""},
        "vxlan": {"enable_vxlan": True, "local_ip": local_ip, "l2_population": True},
        # No security groups: the lab's hosts lack br_netfilter (no kernel modules).
        "securitygroup": {"firewall_driver": "noop", "enable_security_group": False},
    })


def _seconds(value: float) -> int:
    # Neutron's option is an integer; 0 disables the monitor.
    return int(round(value)) if value >= 1 or value == 0 else 1


# --------------------------------------------------------------------------- writing
def write_controller_files(spec: LabSpec, lab_dir: Path, s: Secrets, service_user: tuple[str, str, str]) -> None:
    d = controller_dir(lab_dir)
    etc = etc_dir(d)
    for sub in (etc, etc / "policy.d", d / "log", d / "state" / "lock", d / "mysql" / "tmp", d / "rabbitmq" / "log"):
        sub.mkdir(parents=True, exist_ok=True)
    assert spec.controller is not None
    files = {
        "neutron.conf": server_conf(spec, lab_dir, s, service_user),
        "ml2_conf.ini": ml2_conf(),
        "api-paste.ini": API_PASTE,
        "policy.yaml": "{}\n",
        "rabbitmq.conf": rabbitmq_conf(spec, s),
        "rabbitmq-env.conf": "",
        "enabled_plugins": "[].\n",
        "agent.conf": agent_conf(spec, s, spec.controller.name, d / "state", d / "log"),
        "linuxbridge_agent.ini": linuxbridge_ini(spec.controller.mgmt_ip, None),
    }
    for name, text in files.items():
        _write_private(etc / name, text)


def write_node_files(spec: LabSpec, node_dir: Path, s: Secrets, node: NodeSpec) -> None:
    etc = etc_dir(node_dir)
    (node_dir / "log").mkdir(parents=True, exist_ok=True)
    etc.mkdir(parents=True, exist_ok=True)
    files = {
        "neutron.conf": agent_conf(spec, s, node.name, "/var/lib/neutron", node_dir / "log"),
        "l3_agent.ini": l3_agent_ini(spec),
        "linuxbridge_agent.ini": linuxbridge_ini(node.mgmt_ip, EXT_NIC),
    }
    for name, text in files.items():
        _write_private(etc / name, text)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def read_json(path: Path) -> dict[str, object] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
