"""The lab's L3 agent: one per network node, running inside the node.

What it does is what Neutron's L3 agent does for HA routers, reduced to what a failover
experiment touches:

- at start (boot, or restart) it syncs: every replica that ``lab.json`` places on this node is
  built and its keepalived started with Neutron's command line, so replicas come back as
  backups after a reboot (keepalived starts in BACKUP, nopreempt);
- a state watcher per replica follows ``ip -o monitor address`` inside ``qrouter-<id>`` and
  writes ``primary``/``backup`` to the ``state`` file when the VIP comes or goes, as
  neutron-keepalived-state-change does (events, not polling);
- its process monitor respawns a dead keepalived (or conntrackd) every ``respawn_interval``
  seconds, as Neutron's ProcessMonitor does with its ``respawn`` action;
- on SIGHUP it reloads ``lab.json`` and adds or removes replicas (the lab API moves them).

Run as ``python -m chaos.lab.agent --lab-dir DIR --node NAME --fabric-ns PATH``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from contextlib import suppress
from pathlib import Path

import structlog

from chaos.log import configure_logging

from chaos.lab.replica import build_replica, remove_replica_files, remove_replica_namespace
from chaos.lab.router import conntrackd_command, conntrackd_paths, keepalived_command, keepalived_paths
from chaos.lab.spec import LabSpec, NodeSpec, ReplicaSpec, RouterSpec
from chaos.lab.procs import cmdline, pid_alive, pids_matching, read_pid, terminate

log = structlog.get_logger("lab.agent")


def write_state(path: Path, state: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(state)
    tmp.replace(path)


class ReplicaRuntime:
    """The live parts of one replica: its state watcher and its daemons."""

    def __init__(self, agent: Agent, router: RouterSpec, replica: ReplicaSpec) -> None:
        self.agent = agent
        self.router = router
        self.replica = replica
        self.paths = keepalived_paths(router.id)
        self.watcher: asyncio.subprocess.Process | None = None
        self.watch_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await asyncio.to_thread(
            build_replica, self.agent.spec, self.agent.node, self.router, self.replica, self.agent.fabric_ns
        )
        await self.start_watcher()
        await self.spawn_keepalived()
        if self.agent.spec.options.conntrackd:
            await self.spawn_conntrackd()

    async def start_watcher(self) -> None:
        self.watcher = await asyncio.create_subprocess_exec(
            "ip", "-n", self.router.namespace, "-o", "monitor", "address",
            stdout=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        self.watch_task = asyncio.create_task(self._watch(self.watcher))
        # Initial state, as the state-change daemon writes on start: backup unless the VIP is here.
        await asyncio.sleep(0.05)
        proc = await asyncio.create_subprocess_exec(
            "ip", "-n", self.router.namespace, "-o", "-4", "addr", "show", "dev", self.replica.ha_device,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        has_vip = f" {self.router.ha_vip}/24 " in out.decode()
        write_state(self.paths["state"], "primary" if has_vip else "backup")

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        needle = f" {self.router.ha_vip}/24 "
        async for raw in proc.stdout:
            line = raw.decode(errors="replace")
            if needle not in line:
                continue
            state = "backup" if line.startswith("Deleted") else "primary"
            write_state(self.paths["state"], state)
            log.info("state change", router=self.router.id, state=state, node=self.agent.node.name)

    def own_keepalived(self, key: str) -> int | None:
        """The pid in a pid file if it is this replica's keepalived. Pid files live on the node's
        disk and outlive a reboot, when their numbers may belong to other processes."""
        pid = read_pid(self.paths[key])
        return pid if pid is not None and pid_alive(pid, str(self.paths["conf"])) else None

    async def spawn_keepalived(self) -> None:
        for key in ("pid", "pid_vrrp"):  # a stale pid file would make keepalived think it runs
            if self.own_keepalived(key) is None:
                self.paths[key].unlink(missing_ok=True)
        await run_in_router(self.router, keepalived_command(self.router.id))
        log.info("keepalived started", router=self.router.id)

    async def spawn_conntrackd(self) -> None:
        paths = conntrackd_paths(self.router.id)
        paths["lock"].unlink(missing_ok=True)
        paths["ctl"].unlink(missing_ok=True)
        await run_in_router(self.router, conntrackd_command(self.router.id))
        log.info("conntrackd started", router=self.router.id)

    def keepalived_alive(self) -> bool:
        return self.own_keepalived("pid") is not None

    def conntrackd_alive(self) -> bool:
        # conntrackd holds its lock file; its pid is found by config path in the cmdline.
        return find_pid_by_cmdline(str(conntrackd_paths(self.router.id)["conf"])) is not None

    async def check(self) -> None:
        if not self.keepalived_alive():
            log.warning("keepalived is dead; respawning", router=self.router.id)
            await self.spawn_keepalived()
        if self.agent.spec.options.conntrackd and not self.conntrackd_alive():
            log.warning("conntrackd is dead; respawning", router=self.router.id)
            await self.spawn_conntrackd()

    async def stop(self) -> None:
        for key in ("pid_vrrp", "pid"):
            pid = self.own_keepalived(key)
            if pid is not None:
                await asyncio.to_thread(terminate, pid, 5.0)
        pid = find_pid_by_cmdline(str(conntrackd_paths(self.router.id)["conf"]))
        if pid is not None:
            await asyncio.to_thread(terminate, pid, 5.0)
        if self.watcher and self.watcher.returncode is None:
            self.watcher.kill()
            await self.watcher.wait()
        if self.watch_task:
            self.watch_task.cancel()
            with suppress(asyncio.CancelledError):
                await self.watch_task
        await asyncio.to_thread(remove_replica_namespace, self.router)
        await asyncio.to_thread(remove_replica_files, self.router)


def find_pid_by_cmdline(fragment: str) -> int | None:
    for pid in pids_matching(fragment):
        if not cmdline(pid).startswith("ip "):
            return pid
    return None


async def run_in_router(router: RouterSpec, argv: list[str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", router.namespace, *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    if proc.returncode != 0:
        log.error("command failed in router", router=router.id, argv=argv, stderr=err.decode()[-500:])


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

    def wanted(self) -> dict[str, tuple[RouterSpec, ReplicaSpec]]:
        return {r.id: (r, rep) for r, rep in self.spec.replicas_on(self.node.name)}

    async def sync(self) -> None:
        wanted = self.wanted()
        # A replica removed and added back between two reloads comes back with a new HA port:
        # the old one must go (its port may already be unplugged), not be kept by router id.
        stale = [rid for rid, rt in self.replicas.items() if rid not in wanted or wanted[rid][1] != rt.replica]
        for rid in stale:
            log.info("removing replica", router=rid)
            await self.replicas.pop(rid).stop()
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
        self.write_status()

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

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.reload.set)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await self.sync()
        log.info("agent synced", node=self.node.name, replicas=len(self.replicas))
        interval = self.spec.options.respawn_interval
        while not stop.is_set():
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.reload.wait(), interval)
            if self.reload.is_set():
                self.reload.clear()
                self.spec = LabSpec.load(self.lab_dir / "lab.json")
                await self.sync()
            elif self.failed:
                await self.sync()
            for runtime in list(self.replicas.values()):
                await runtime.check()


def main() -> None:
    parser = argparse.ArgumentParser(prog="chaos.lab.agent")
    parser.add_argument("--lab-dir", type=Path, required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--fabric-ns", required=True)
    args = parser.parse_args()
    configure_logging("json")
    asyncio.run(Agent(args.lab_dir, args.node, args.fabric_ns).run())


if __name__ == "__main__":
    main()
