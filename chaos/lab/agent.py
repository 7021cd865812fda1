"""The lab's L3 agent: one per network node, running inside the node.

It does for HA routers what Neutron's L3 agent does, with Neutron's own pieces wherever they
can run here (file names, command lines and formats from ``chaos.neutron``):

- at start (boot, or restart) it syncs: every replica that ``lab.json`` places on this node is
  built (namespace, ports, NAT, keepalived.conf) and its processes started in Neutron's order:
  Neutron's own ``neutron-keepalived-state-change`` (the script from the installed neutron
  package, with HaRouter's command line), conntrackd when enabled, then keepalived, each with
  Neutron's command line and pid file; a state file left at ``primary`` by a node that lost
  power is reset to ``backup`` first, as HaRouter does;
- it serves the state-change notifications on ``<state_path>/keepalived-state-change`` (a unix
  socket, HTTP as Neutron's KeepalivedStateChangeHandler reads it) and handles them as
  neutron/agent/l3/ha.py does: a move to primary counts only once it has held for advert_int
  (except the first one per router since the agent took it: ha.py initial_state_change),
  then the agent writes the state file and reports the state to the server in batches every
  advert_int (here: ``<node dir>/ha_reports.json``, which the lab's Neutron API serves);
- its process monitor wakes every ``check_child_processes_interval`` (the lab's
  ``--respawn-interval``; Neutron's default 60 s, 0 = never) and respawns what is not
  "active" by Neutron's rule: the pid in the pid file runs with the router id in its command
  line. A stopped (SIGSTOP) keepalived is active; a keepalived started with other pid files is
  not, and would get a second one beside it, exactly as on a real node;
- on SIGHUP it reloads ``lab.json`` and adds or removes replicas (the lab API moves them),
  stopping a removed one as HaRouter.delete does.

Run as ``python -m chaos.lab.agent --lab-dir DIR --node NAME --fabric-ns PATH``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import time
from contextlib import suppress
from pathlib import Path

import structlog
from aiohttp import web

from chaos import neutron
from chaos.lab.node import HA_REPORTS
from chaos.lab.procs import cmdline, pid_alive, pids_matching, read_pid, terminate
from chaos.lab.replica import build_replica, remove_replica_files, remove_replica_namespace
from chaos.lab.router import lab_layout
from chaos.lab.spec import LabSpec, NodeSpec, ReplicaSpec, RouterSpec
from chaos.log import configure_logging

log = structlog.get_logger("lab.agent")

SIGTERM_TIMEOUT = 5.0  # keepalived.py / ha_router.py SIGTERM_TIMEOUT
THROTTLER_MULTIPLIER = 1.5  # ha_router.py: keepalived spawns at least 1.5 x advert_int apart


# Where scripts/install.sh puts the neutron package (``pip install --no-deps --target``): beside
# this environment, not in it, so that pip never judges Neutron's unmet requirements there.
NEUTRON_PACKAGE_DIR = Path(sys.prefix) / "neutron"


def state_change_program() -> Path:
    """Neutron's ``neutron-keepalived-state-change``, from the neutron package installed beside
    this interpreter (scripts/install.sh)."""
    return NEUTRON_PACKAGE_DIR / "bin" / neutron.STATE_CHANGE_PROGRAM


def write_state(path: Path, state: str) -> None:
    """As HaRouter's ha_state setter: the bare word, no newline."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(state)
    tmp.replace(path)


def active(pid_file: Path, uuid: str) -> int | None:
    """Neutron's ProcessManager.active: the pid in the file runs with ``uuid`` in its command line."""
    pid = read_pid(pid_file)
    return pid if pid is not None and pid_alive(pid) and uuid in cmdline(pid) else None


async def run_quiet(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 30.0) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env,
    )
    try:
        async with asyncio.timeout(timeout):
            _, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, f"timed out after {timeout:g}s"
    return proc.returncode or 0, err.decode(errors="replace")[-500:]


class ReplicaRuntime:
    """One replica's processes, managed as Neutron's HaRouter and its ProcessManagers do."""

    def __init__(self, agent: Agent, router: RouterSpec, replica: ReplicaSpec) -> None:
        self.agent = agent
        self.router = router
        self.replica = replica
        self.rid = router.id
        self.ns = router.namespace
        self.monitor: asyncio.subprocess.Process | None = None
        self.last_keepalived_spawn = 0.0
        self.layout = agent.layout

    def path(self, p: object) -> Path:
        return Path(str(p))

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self.check_and_set_real_state()
        await asyncio.to_thread(
            build_replica, self.agent.spec, self.agent.node, self.router, self.replica, self.agent.fabric_ns
        )
        await self.spawn_state_change_monitor()
        if self.agent.spec.options.conntrackd:
            await self.spawn_conntrackd()
        await self.spawn_keepalived()

    def check_and_set_real_state(self) -> None:
        """After a power loss the state file may still say primary: reset it (HaRouter)."""
        state = self.path(self.layout.state_file(self.rid))
        try:
            current = state.read_text()
        except OSError:
            return
        if current == neutron.PRIMARY and self.keepalived_active() is None:
            write_state(state, neutron.BACKUP)

    async def stop(self) -> None:
        """HaRouter.delete: the state-change monitor, keepalived, conntrackd, then the namespace."""
        pid = active(self.path(self.layout.state_change_pid(self.rid)), f"{self.rid}.monitor")
        if pid is not None:
            await asyncio.to_thread(terminate, pid, SIGTERM_TIMEOUT)
        if self.monitor is not None and self.monitor.returncode is None:
            with suppress(ProcessLookupError):
                self.monitor.kill()
            await self.monitor.wait()
        pid = self.keepalived_active()
        if pid is not None:
            await asyncio.to_thread(terminate, pid, SIGTERM_TIMEOUT)
        vrrp = active(self.path(self.layout.keepalived_vrrp_pid(self.rid)), self.rid)
        if vrrp is not None:
            await asyncio.to_thread(terminate, vrrp, SIGTERM_TIMEOUT)
        if self.agent.spec.options.conntrackd and self.conntrackd_active() is not None:
            await run_quiet(["ip", "netns", "exec", self.ns, "conntrackd", "-C", str(self.layout.conntrackd_file(self.rid, "conf")), "-k"])
            pid = self.conntrackd_active()
            if pid is not None:
                await asyncio.to_thread(terminate, pid, SIGTERM_TIMEOUT)
        await asyncio.to_thread(remove_replica_namespace, self.router)
        await asyncio.to_thread(remove_replica_files, self.agent.spec, self.router)

    # ------------------------------------------------------------------ Neutron's "active"
    def keepalived_active(self) -> int | None:
        return active(self.path(self.layout.keepalived_pid(self.rid)), self.rid)

    def conntrackd_active(self) -> int | None:
        return active(self.path(self.layout.conntrackd_file(self.rid, "pid")), self.rid)

    def state_change_active(self) -> int | None:
        return active(self.path(self.layout.state_change_pid(self.rid)), f"{self.rid}.monitor")

    # ------------------------------------------------------------------ spawning
    async def spawn_state_change_monitor(self) -> None:
        """HaRouter.spawn_state_change_monitor: Neutron's script, in the node's own namespace."""
        if self.state_change_active() is not None:
            return
        self.path(self.layout.state_change_pid(self.rid)).unlink(missing_ok=True)
        self.path(self.layout.pids).mkdir(parents=True, exist_ok=True)
        argv = self.layout.state_change_argv(
            self.rid, self.replica.ha_device, self.router.vrid,
            user=os.geteuid(), group=os.getegid(), conntrackd=self.agent.spec.options.conntrackd,
        )
        program = state_change_program()
        env = {**os.environ, "PATH": f"{program.parent}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"}
        if self.monitor is not None and self.monitor.returncode is None:
            with suppress(ProcessLookupError):
                self.monitor.kill()
            await self.monitor.wait()
        self.monitor = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, env=env,
        )
        log.info("state-change monitor started", router=self.rid, pid=self.monitor.pid)

    async def spawn_conntrackd(self) -> None:
        """ConntrackdManager.spawn: clean lock and socket, start, record the pid, resync."""
        if self.conntrackd_active() is not None:
            return
        conf = str(self.layout.conntrackd_file(self.rid, "conf"))
        for kind in ("lock", "ctl", "pid"):
            self.path(self.layout.conntrackd_file(self.rid, kind)).unlink(missing_ok=True)
        code, err = await run_quiet(["ip", "netns", "exec", self.ns, *self.layout.conntrackd_argv(self.rid)])
        if code != 0:
            log.error("conntrackd failed to start", router=self.rid, stderr=err)
            return
        pid = next((p for p in pids_matching(f"conntrackd -d -C {conf}") if cmdline(p).startswith("conntrackd")), None)
        if pid is None:
            log.error("no process for conntrackd after starting it", router=self.rid)
            return
        self.path(self.layout.conntrackd_file(self.rid, "pid")).write_text(str(pid))
        code, err = await run_quiet(["ip", "netns", "exec", self.ns, "conntrackd", "-C", conf, "-n"])
        if code != 0:
            log.warning("conntrackd resync request failed", router=self.rid, stderr=err)
        log.info("conntrackd started", router=self.rid, pid=pid)

    async def spawn_keepalived(self) -> None:
        """ProcessManager.enable with KeepalivedManager's callback: an orphaned VRRP child is
        killed and both pid files removed before keepalived starts with Neutron's command line."""
        if self.keepalived_active() is not None:
            return
        vrrp_pid = self.path(self.layout.keepalived_vrrp_pid(self.rid))
        orphan = active(vrrp_pid, self.rid)
        if orphan is not None:
            with suppress(ProcessLookupError):
                os.kill(orphan, signal.SIGKILL)
        vrrp_pid.unlink(missing_ok=True)
        self.path(self.layout.keepalived_pid(self.rid)).unlink(missing_ok=True)
        code, err = await run_quiet(["ip", "netns", "exec", self.ns, *self.layout.keepalived_argv(self.rid)])
        self.last_keepalived_spawn = time.monotonic()
        if code != 0:
            log.error("keepalived failed to start", router=self.rid, stderr=err)
            return
        log.info("keepalived started", router=self.rid)

    async def check(self) -> None:
        """One pass of Neutron's ProcessMonitor over this replica's processes."""
        if self.state_change_active() is None:
            log.error("neutron-keepalived-state-change-monitor not found; respawning", router=self.rid)
            await self.spawn_state_change_monitor()
        if self.agent.spec.options.conntrackd and self.conntrackd_active() is None:
            log.error("conntrackd not found; respawning", router=self.rid)
            await self.spawn_conntrackd()
        if self.keepalived_active() is None:
            log.error("keepalived not found; respawning", router=self.rid)
            await self.spawn_keepalived()


class BatchNotifier:
    """neutron/notifiers/batch_notifier.py: events queued while a batch is pending go out
    together, ``interval`` after the first of them, in order."""

    def __init__(self, interval: float, send: callable) -> None:  # type: ignore[valid-type]
        self.interval = interval
        self.send = send
        self.pending: list[tuple[str, str]] = []
        self.flushing = False

    async def queue(self, event: tuple[str, str]) -> None:
        self.pending.append(event)
        if self.flushing:
            return
        self.flushing = True
        try:
            await asyncio.sleep(self.interval)
            batch, self.pending = self.pending, []
            self.send(batch)
        finally:
            self.flushing = False


class Agent:
    def __init__(self, lab_dir: Path, node_name: str, fabric_ns: str) -> None:
        self.lab_dir = lab_dir
        self.node_dir = lab_dir / "nodes" / node_name
        self.fabric_ns = fabric_ns
        self.spec = LabSpec.load(lab_dir / "lab.json")
        self.node: NodeSpec = self.spec.node(node_name)
        self.replicas: dict[str, ReplicaRuntime] = {}
        self.failed: set[str] = set()
        self.reload = asyncio.Event()
        self.transitions: dict[str, str] = {}
        # ha.py's _initial_state_change_per_router: routers whose first state change this agent
        # has handled; that first one is not delayed (seen on real Zed: the API showed a first
        # failover within a second).
        self.initial_seen: set[str] = set()
        self.notifier = BatchNotifier(float(self.spec.options.advert_int), self.notify_server)
        self.tg: asyncio.TaskGroup | None = None
        self.listening = asyncio.Event()
        self.layout = lab_layout(self.spec)

    def wanted(self) -> dict[str, tuple[RouterSpec, ReplicaSpec]]:
        return {r.id: (r, rep) for r, rep in self.spec.replicas_on(self.node.name)}

    # ------------------------------------------------------------------ sync
    async def sync(self) -> None:
        wanted = self.wanted()
        # A replica removed and added back between two reloads comes back with a new HA port:
        # the old one must go (its port may already be unplugged), not be kept by router id.
        stale = [rid for rid, rt in self.replicas.items() if rid not in wanted or wanted[rid][1] != rt.replica]
        for rid in stale:
            log.info("removing replica", router=rid)
            await self.replicas.pop(rid).stop()
            self.initial_seen.discard(rid)
        for rid, (router, replica) in wanted.items():
            if rid in self.replicas:
                continue
            runtime = ReplicaRuntime(self, router, replica)
            try:
                await runtime.start()
            except Exception as exc:  # one broken replica must not stop the others; retried next cycle
                log.error("replica failed to start; will retry", router=rid, error=str(exc))
                self.failed.add(rid)
                await runtime.stop()
                continue
            self.failed.discard(rid)
            self.replicas[rid] = runtime
            self.check_ha_state_for_router(rid)
        self.write_status()

    def check_ha_state_for_router(self, rid: str) -> None:
        """After a sync the agent tells the server the state it holds when the server's differs
        (agent.py; the server's is the last report, standby by default)."""
        try:
            state = Path(str(self.layout.state_file(rid))).read_text()
        except OSError:
            return
        try:
            reported = json.loads((self.node_dir / HA_REPORTS).read_text()).get(rid, {}).get("ha_state", "standby")
        except (OSError, ValueError):
            reported = "standby"
        if neutron.API_HA_STATE.get(state) not in (None, reported) and self.tg is not None:
            self.tg.create_task(self.notifier.queue((rid, state)))

    def write_status(self) -> None:
        status = {
            "node": self.node.name,
            "pid": os.getpid(),
            "synced_at": time.time(),
            "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
            "replicas": sorted(self.replicas),
        }
        tmp = self.node_dir / "agent.json.tmp"
        tmp.write_text(json.dumps(status))
        tmp.replace(self.node_dir / "agent.json")

    # ------------------------------------------------------------------ state changes
    async def handle_notification(self, request: web.Request) -> web.Response:
        """KeepalivedStateChangeHandler: the router id and the state come in headers."""
        rid = request.headers.get("X-Neutron-Router-Id", "")
        state = request.headers.get("X-Neutron-State", "")
        await request.read()
        self.enqueue_state_change(rid, state)
        return web.Response(text="", content_type="text/plain")

    def enqueue_state_change(self, rid: str, state: str) -> None:
        """ha.py enqueue_state_change: one transition in flight per router, the latest wins."""
        pending = self.transitions.get(rid)
        self.transitions[rid] = state
        if pending is None and self.tg is not None:
            self.tg.create_task(self._enqueue_state_change(rid, state))

    def initial_state_change(self, rid: str) -> bool:
        """ha.py initial_state_change: True the first time a router's state change is handled."""
        first = rid not in self.initial_seen
        self.initial_seen.add(rid)
        return first

    async def _enqueue_state_change(self, rid: str, state: str) -> None:
        if state == neutron.PRIMARY and not self.initial_state_change(rid):
            await asyncio.sleep(self.spec.options.advert_int)
        current = self.transitions.pop(rid, None)
        if current != state:
            return  # backup -> primary -> backup within advert_int: never reported
        if rid not in self.replicas:
            return
        log.info("router transitioned", router=rid, state=state, host=self.node.name)
        with suppress(OSError):
            write_state(Path(str(self.layout.state_file(rid))), state)
        await self.notifier.queue((rid, state))

    def notify_server(self, batch: list[tuple[str, str]]) -> None:
        """update_ha_routers_states: the lab's server reads these reports."""
        path = self.node_dir / HA_REPORTS
        try:
            reports = json.loads(path.read_text())
        except (OSError, ValueError):
            reports = {}
        for rid, state in batch:
            reports[rid] = {"ha_state": neutron.API_HA_STATE.get(state, "unknown"), "t": time.time()}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(reports))
        tmp.replace(path)

    async def serve_notifications(self, stop: asyncio.Event) -> None:
        socket_path = Path(str(self.layout.state_change_socket))
        socket_path.parent.mkdir(parents=True, exist_ok=True)
        socket_path.unlink(missing_ok=True)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle_notification)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.UnixSite(runner, str(socket_path)).start()
            self.listening.set()
            await stop.wait()
        finally:
            await runner.cleanup()

    # ------------------------------------------------------------------ loops
    async def process_monitor(self, stop: asyncio.Event) -> None:
        """ProcessMonitor._periodic_checking_thread: sleep the interval, then check everything."""
        interval = self.spec.options.respawn_interval
        if interval <= 0:
            return
        while not stop.is_set():
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            for runtime in list(self.replicas.values()):
                await runtime.check()

    async def sync_loop(self, stop: asyncio.Event) -> None:
        await self.sync()
        log.info("agent synced", node=self.node.name, replicas=len(self.replicas))
        while not stop.is_set():
            with suppress(TimeoutError):
                await asyncio.wait_for(self.reload.wait(), 2.0)
            if self.reload.is_set():
                self.reload.clear()
                self.spec = LabSpec.load(self.lab_dir / "lab.json")
                await self.sync()
            elif self.failed:
                await self.sync()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.reload.set)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        async with asyncio.TaskGroup() as tg:
            self.tg = tg
            server = tg.create_task(self.serve_notifications(stop))
            await self.listening.wait()  # before any state-change monitor starts: it notifies at once
            tg.create_task(self.sync_loop(stop))
            tg.create_task(self.process_monitor(stop))
            await stop.wait()
            server.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(prog="chaos.lab.agent")
    parser.add_argument("--lab-dir", type=Path, required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--fabric-ns", required=True)
    args = parser.parse_args()
    configure_logging("json")
    if not shutil.which("curl"):
        log.error("curl is missing: neutron-keepalived-state-change notifies the agent with it")
    asyncio.run(Agent(args.lab_dir, args.node, args.fabric_ns).run())


if __name__ == "__main__":
    main()
