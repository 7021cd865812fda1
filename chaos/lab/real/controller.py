"""The neutron backend's controller host: MariaDB, RabbitMQ, neutron-server and a LinuxBridge agent.

A host like a network node: the namespace ``<lab>-controller`` with ``eth0`` on the management
network (198.51.100.2), and inside it new mount, PID and UTS namespaces whose first process is
this module's ``main``. Every service of the controller is a child of that init, so ending the
init ends all of them at once (the kernel kills a PID namespace with its init): ``chaos lab
down`` needs no list of daemons, also after a crash.

Boot order, each step waited for: MariaDB (a private datadir, bound to the management address),
RabbitMQ (as root, private HOME and mnesia, epmd on the namespace's loopback), the schema
(``neutron-db-manage upgrade heads``, once), neutron-server, the LinuxBridge agent. The init
writes the step it is at to ``controller/boot.json``; ``chaos lab up`` shows it as progress.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from chaos.errors import InfrastructureError
from chaos.lab.fabric import attach, new_netns
from chaos.lab.netlink import remove_netns
from chaos.lab.procs import kill, pid_alive, pids_matching, read_pid
from chaos.lab.real import agents
from chaos.lab.real.config import MYSQL_PORT, RABBIT_PORT, controller_dir, ensure_secrets, mysqld_argv, rabbitmq_env
from chaos.lab.spec import LabSpec

BOOT_FILE = "boot.json"
CTL_PORT = "mgmt-ctl"  # the controller's NIC on br-mgmt, fabric side
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
INIT_MODULE = "chaos.lab.real.controller"


# --------------------------------------------------------------------------- seen from outside
def init_marker(lab_dir: Path) -> str:
    """What the init's command line holds; the trailing space (the end of its argv) keeps lab
    ``t1`` from matching lab ``t12``'s controller."""
    return f"{INIT_MODULE} --lab-dir {lab_dir} "


def power_on(spec: LabSpec, lab_dir: Path) -> int:
    """Create the controller's namespace and NIC, then start its init. Returns the power pid."""
    assert spec.controller is not None
    ctl = spec.controller
    d = controller_dir(lab_dir)
    d.mkdir(parents=True, exist_ok=True)
    remove_netns(ctl.netns)
    new_netns(ctl.netns)
    prefix = spec.mgmt_cidr.rsplit("/", 1)[1]
    attach(spec, ctl.netns, "eth0", CTL_PORT, "br-mgmt", f"{ctl.mgmt_ip}/{prefix}", "52:54:00:00:ff:02")
    (d / BOOT_FILE).unlink(missing_ok=True)
    with open(d / "console.log", "ab") as log:
        proc = subprocess.Popen(
            [
                "ip", "netns", "exec", ctl.netns,
                "unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
                "--mount-proc", "--uts",
                sys.executable, "-m", INIT_MODULE, "--lab-dir", str(lab_dir),
            ],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    (d / "power.pid").write_text(str(proc.pid))
    return proc.pid


def power_off(lab_dir: Path, timeout: float = 15.0) -> list[int]:
    """End the controller's init (and with it every service of the controller)."""
    victims = [p for p in pids_matching(init_marker(lab_dir)) if pid_alive(p)]
    power = read_pid(controller_dir(lab_dir) / "power.pid")
    if power is not None and pid_alive(power, "unshare"):
        victims.append(power)
    for pid in victims:
        kill(pid)
    deadline = time.monotonic() + timeout
    while any(pid_alive(v) for v in victims) and time.monotonic() < deadline:
        time.sleep(0.05)
    return victims


def boot_state(lab_dir: Path) -> dict[str, object]:
    try:
        value = json.loads((controller_dir(lab_dir) / BOOT_FILE).read_text())
    except (OSError, ValueError):
        return {"step": "powering on"}
    return value if isinstance(value, dict) else {"step": "?"}


def is_running(lab_dir: Path) -> bool:
    return any(pid_alive(p) for p in pids_matching(init_marker(lab_dir)))


# --------------------------------------------------------------------------- inside: PID 1
def _step(d: Path, step: str, **fields: object) -> None:
    tmp = d / (BOOT_FILE + ".tmp")
    tmp.write_text(json.dumps({"step": step, "t": time.time(), **fields}))
    tmp.replace(d / BOOT_FILE)
    print(f"{time.time():.3f} controller: {step}", flush=True)


def _wait(what: str, check, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise InfrastructureError(f"controller: {what} not ready after {timeout:.0f}s")
        time.sleep(0.2)


def _tcp_open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


def _sql(sock: Path, statement: str) -> bool:
    proc = subprocess.run(
        ["mariadb", "--no-defaults", "-S", str(sock), "-u", "root", "-e", statement],
        capture_output=True, text=True, timeout=30,
    )
    return proc.returncode == 0


def main() -> None:
    from chaos.lab.node_init import Supervisor, neutron_env, own_hosts_entry

    parser = argparse.ArgumentParser(prog=INIT_MODULE)
    parser.add_argument("--lab-dir", type=Path, required=True)
    args = parser.parse_args()
    lab_dir: Path = args.lab_dir
    spec = LabSpec.load(lab_dir / "lab.json")
    assert spec.controller is not None
    ctl = spec.controller
    d = controller_dir(lab_dir)
    secrets = ensure_secrets(lab_dir)
    socket.sethostname(ctl.name)
    own_hosts_entry(d, ctl.name)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    env = neutron_env()
    services = Supervisor(d)
    try:
        _step(d, "starting MariaDB")
        mysql = d / "mysql"
        if not (mysql / "data" / "mysql").is_dir():
            subprocess.run(
                ["mariadb-install-db", "--no-defaults", "--user=root", f"--datadir={mysql / 'data'}",
                 "--auth-root-authentication-method=socket", "--skip-test-db"],
                check=True, capture_output=True, timeout=300, env=env,
            )
        services.start("mariadb", mysqld_argv(spec, lab_dir), env=env)
        sock = mysql / "mysqld.sock"
        _wait("MariaDB", lambda: sock.exists() and _sql(sock, "SELECT 1"), 120)
        ok = _sql(sock, "CREATE DATABASE IF NOT EXISTS neutron; "
                        f"CREATE USER IF NOT EXISTS 'neutron'@'%' IDENTIFIED BY '{secrets.db_password}'; "
                        "GRANT ALL PRIVILEGES ON neutron.* TO 'neutron'@'%'; FLUSH PRIVILEGES;")
        if not ok:
            raise InfrastructureError("controller: creating Neutron's database failed")
        _step(d, "starting RabbitMQ")
        services.start("rabbitmq", [RABBITMQ_SERVER], env={**env, **rabbitmq_env(lab_dir)})
        _wait("RabbitMQ", lambda: _tcp_open(ctl.mgmt_ip, RABBIT_PORT), 180)
        _wait("MariaDB port", lambda: _tcp_open(ctl.mgmt_ip, MYSQL_PORT), 30)
        schema_done = d / "schema.done"
        if not schema_done.exists():
            _step(d, "creating Neutron's schema (neutron-db-manage upgrade heads)")
            with open(d / "db-manage.log", "ab") as logf:
                subprocess.run(agents.db_manage_argv(lab_dir), check=True, stdout=logf, stderr=subprocess.STDOUT,
                               timeout=600, env=env)
            schema_done.touch()
        _step(d, "starting neutron-server")
        services.start("neutron-server", agents.server_argv(lab_dir), env=env)
        services.start("linuxbridge-agent", agents.controller_agent_argv(lab_dir), env=env)
        _step(d, "running")
    except (InfrastructureError, subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        _step(d, "failed", error=str(exc))
    services.run_forever(ctl.name)


if __name__ == "__main__":
    main()
