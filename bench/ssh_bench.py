"""Per-command cost on one node: SshPool (one connection, 8 channels) vs a plain OpenSSH loop.

The OpenSSH loop is what a shell script would do: ``ip netns exec <vantage> ssh ... node cmd``
once per command (a key exchange and a login each time). Both run the same command the same
number of times against a running lab; the figures are wall time per command.

    python bench/ssh_bench.py --lab NAME [--node network-1] [-n 200] [--command true]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

from chaos.model import Topology
from chaos.transport.ssh import SshPool


async def pool_run(topo: Topology, node: str, command: str, n: int, channels: int) -> tuple[float, list[float]]:
    async with SshPool(topo.nodes, max_channels=channels) as pool:
        await pool.run(node, "true")  # connection set up outside the measurement, as in a run
        started = time.monotonic()
        await asyncio.gather(*(pool.run(node, command) for _ in range(n)))
        total = time.monotonic() - started
        one_by_one = [(await pool.run(node, command)).duration_s for _ in range(min(n, 100))]
    return total, one_by_one


def openssh_run(topo: Topology, node_name: str, command: str, n: int) -> tuple[float, list[float]]:
    node = topo.node(node_name)
    if node.netns is None or node.key_file is None or node.known_hosts is None:
        sys.exit("the node needs netns, key_file and known_hosts (a lab inventory has them)")
    argv = [
        "ip", "netns", "exec", node.netns, "ssh", "-i", str(node.key_file),
        "-o", f"UserKnownHostsFile={node.known_hosts}", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
        "-p", str(node.port), f"{node.user}@{node.address}", command,
    ]
    each = []
    started = time.monotonic()
    for _ in range(n):
        t = time.monotonic()
        subprocess.run(argv, check=True, capture_output=True, timeout=30)
        each.append(time.monotonic() - t)
    return time.monotonic() - started, each


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lab", required=True)
    parser.add_argument("--lab-root", type=Path, default=Path("/run/chaos-lab"))
    parser.add_argument("--node", default="network-1")
    parser.add_argument("-n", type=int, default=200, help="commands per method (bounded: at most 5000)")
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--command", default="true")
    args = parser.parse_args()
    n = max(1, min(args.n, 5000))
    topo = Topology.model_validate_json((args.lab_root / args.lab / "inventory.json").read_text())

    pool_total, pool_each = asyncio.run(pool_run(topo, args.node, args.command, n, args.channels))
    ssh_total, ssh_each = openssh_run(topo, args.node, args.command, n)
    pool_per, ssh_per = pool_total / n, ssh_total / n
    print(f"{n} x {args.command!r} on {args.node}")
    print(f"  SshPool ({args.channels} channels): {pool_per * 1000:7.2f} ms/command (throughput), "
          f"one at a time: median {statistics.median(pool_each) * 1000:.1f} ms")
    print(f"  OpenSSH ssh loop:        {ssh_per * 1000:7.2f} ms/command, "
          f"median {statistics.median(ssh_each) * 1000:.1f} ms, p95 {sorted(ssh_each)[int(0.95 * (n - 1))] * 1000:.1f} ms")
    print(f"  ratio (ssh loop / pool): {ssh_per / pool_per:.1f}x")


if __name__ == "__main__":
    main()
