"""The ``chaos`` command: parse arguments, call one function, turn errors into exit codes.

Every failure a user can meet is a ``ChaosError`` with a message and a documented exit code
(see ``chaos.errors.ExitCode`` and the README); no traceback reaches the terminal for them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Sequence

from chaos import __version__
from chaos.errors import ChaosError, ExitCode
from chaos.log import configure_logging, get_logger
from chaos.settings import Settings, load_settings

Handler = Callable[[argparse.Namespace, Settings], int]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's usage errors: exit 2, one line
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(ExitCode.USAGE)


def _progress(message: str) -> None:
    get_logger("chaos").info(message)


# --------------------------------------------------------------------------- lab
def _lab(settings: Settings, args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from chaos.lab.manager import Lab

    return Lab(settings.lab_root, args.name or settings.lab_name)


def cmd_lab_up(args: argparse.Namespace, settings: Settings) -> int:
    from chaos.lab.manager import parse_options

    lab = _lab(settings, args)
    options = parse_options(
        name=lab.name,
        nodes=args.nodes,
        routers=args.routers,
        replicas=args.replicas,
        projects=args.projects,
        advert_int=args.advert_int,
        conntrackd=args.conntrackd,
        strict_conntrack=args.strict_conntrack,
        respawn_interval=args.respawn_interval,
        boot_delay=args.boot_delay,
        backend=args.backend,
        profile=args.profile,
    )
    lab.up(options, progress=_progress, timeout=args.timeout)
    print(f"lab {lab.name} is up; `chaos lab status --name {lab.name}` describes it")
    return ExitCode.OK


def cmd_lab_status(args: argparse.Namespace, settings: Settings) -> int:
    lab = _lab(settings, args)
    status = lab.status()
    if args.json:
        print(json.dumps(status, indent=2))
        return ExitCode.OK
    print(f"lab {status['name']}  ({status['dir']})  backend {status['backend']}, Neutron {status['neutron_version']}")
    if status.get("controller"):
        ctl = status["controller"]
        print(f"  controller      {ctl['management_address']:<15} {'up' if ctl['running'] else 'DOWN':<5} {ctl['boot'].get('step', '-')}")
    for node in status["nodes"]:
        power = "up" if node["powered"] else "DOWN"
        print(f"  node {node['name']:<12} {node['management_address']:<15} {power:<5} agent {'synced' if node['agent_synced'] else '-'}")
    for router in status["routers"]:
        reps = "  ".join(
            f"{r['node']}:{r['state'] or '-'}{'*' if r['holds_addresses'] else ''}" for r in router["replicas"]
        )
        fips = ",".join(f["address"] for f in router["floating_ips"])
        print(f"  {router['name']:<10} {router['id']}  vrid {router['vrid']:<3} fip {fips:<15} {reps}")
    print("  (* = holds the router's addresses)")
    return ExitCode.OK


def cmd_lab_down(args: argparse.Namespace, settings: Settings) -> int:
    lab = _lab(settings, args)
    removed = lab.down(progress=_progress)
    print(f"lab {lab.name} removed" if removed else f"nothing of lab {lab.name} was found")
    return ExitCode.OK


def cmd_lab_reboot(args: argparse.Namespace, settings: Settings) -> int:
    lab = _lab(settings, args)
    lab.reboot(args.node, wait=not args.no_wait, timeout=args.timeout, progress=_progress)
    return ExitCode.OK


def cmd_lab_ssh(args: argparse.Namespace, settings: Settings) -> int:
    lab = _lab(settings, args)
    spec = lab.spec()
    node = spec.node(args.node)
    ssh = lab.dir / "ssh"
    argv = [
        "ip", "netns", "exec", spec.vantage.netns,
        "ssh", "-i", str(ssh / "id_ed25519"),
        "-o", f"UserKnownHostsFile={ssh / 'known_hosts'}", "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes", "-p", str(node.ssh_port), f"root@{node.mgmt_ip}",
    ]
    command = [c for c in args.command if c != "--"]
    argv += command  # as with ssh(1): the remote shell interprets the words
    sys.stdout.flush()
    os.execvp(argv[0], argv)
    return ExitCode.INFRASTRUCTURE  # not reached


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="chaos", description="Chaos experiments for Neutron L3 HA routers.")
    parser.add_argument("--version", action="version", version=f"chaos {__version__}")
    parser.add_argument("--json-logs", action="store_true", help="log JSON lines to stderr")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    lab = sub.add_parser("lab", help="the embedded Neutron L3 HA lab")
    lab_sub = lab.add_subparsers(dest="lab_command", required=True, parser_class=_Parser)

    def lab_cmd(name: str, handler: Handler, help_: str) -> argparse.ArgumentParser:
        p = lab_sub.add_parser(name, help=help_)
        p.add_argument("--name", help="lab name (default: CHAOS_LAB_NAME or chaoslab)")
        p.set_defaults(handler=handler)
        return p

    up = lab_cmd("up", cmd_lab_up, "create the lab (idempotent)")
    up.add_argument("--nodes", type=int, help="network nodes (default 3)")
    up.add_argument("--routers", type=int, help="HA routers (default 4)")
    up.add_argument("--replicas", type=int, help="replicas per router (default 2)")
    up.add_argument("--projects", type=int, help="projects, one HA network each (default 1)")
    up.add_argument("--advert-int", type=int, help="VRRP advert_int in seconds (default 2)")
    up.add_argument("--conntrackd", action="store_true", default=None, help="replicate conntrack state")
    up.add_argument("--strict-conntrack", action="store_true", default=None, help="tcp_loose off, INVALID dropped")
    up.add_argument("--profile", choices=["upstream", "kolla"],
                    help="how the nodes run the L3 agent: on the host (default) or as kolla-ansible does "
                    "(a neutron_l3_agent container, kolla's paths, keepalived sidecars, `docker exec`)")
    up.add_argument("--respawn-interval", type=float,
                    help="the L3 agents' check_child_processes_interval: how often they respawn a dead keepalived "
                    "(default 60s as in Neutron; 0: never)")
    up.add_argument("--boot-delay", type=float, help="seconds a rebooted node stays down (default 3)")
    up.add_argument("--backend", choices=["emulated", "neutron"],
                    help="what runs the routers: the lab's emulated agent and API (default), or Debian 12's "
                    "Neutron Zed (neutron-server, L3 and LinuxBridge agents; scripts/install-neutron-backend.sh)")
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the lab to be ready")

    status = lab_cmd("status", cmd_lab_status, "describe the lab and its live state")
    status.add_argument("--json", action="store_true")
    lab_cmd("down", cmd_lab_down, "remove everything of the lab")
    reboot = lab_cmd("reboot", cmd_lab_reboot, "power-cycle a network node through its BMC")
    reboot.add_argument("node")
    reboot.add_argument("--no-wait", action="store_true", help="return once the power is cut")
    reboot.add_argument("--timeout", type=float, default=120.0)
    ssh = lab_cmd("ssh", cmd_lab_ssh, "a shell or a command on a node")
    ssh.add_argument("node")
    ssh.add_argument("command", nargs=argparse.REMAINDER)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands() -> list[Callable[[argparse._SubParsersAction], None]]:  # type: ignore[type-arg]
    """Sub-commands contributed by other packages (experiments, runs, reports)."""
    registrars = []
    for module_name in ("chaos.commands",):
        try:
            module = __import__(module_name, fromlist=["register"])
        except ModuleNotFoundError:
            continue
        registrars.append(module.register)
    return registrars


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The errors of a (nested) exception group, in order."""
    out: list[BaseException] = []
    for inner in group.exceptions:
        out.extend(_leaves(inner) if isinstance(inner, BaseExceptionGroup) else [inner])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except Exception as exc:
        print(f"chaos: invalid settings (CHAOS_* variables or CHAOS_CONFIG file): {exc}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    configure_logging("json" if args.json_logs else settings.log_format, args.log_level or settings.log_level)
    try:
        code = int(args.handler(args, settings))
        sys.stdout.flush()  # here, not at exit: a reader that went away is then a BrokenPipeError below
        return code
    except ChaosError as exc:
        print(f"chaos: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except BaseExceptionGroup as group:
        # Concurrent work (a TaskGroup over nodes) fails as a group: when every error in it is a
        # ChaosError, the user gets their sentences and the first one's exit code, not exit 70.
        leaves = _leaves(group)
        if leaves and any(isinstance(e, KeyboardInterrupt) for e in leaves):
            print("chaos: interrupted", file=sys.stderr)  # Ctrl-C inside concurrent work is still Ctrl-C
            return int(ExitCode.INTERRUPTED)
        if not leaves or not all(isinstance(e, ChaosError) for e in leaves):
            if (args.log_level or settings.log_level) == "debug":
                raise
            print(f"chaos: internal error: {type(group).__name__}: {group} (rerun with --log-level debug for the traceback)",
                  file=sys.stderr)
            return int(ExitCode.INTERNAL)
        for exc in dict.fromkeys(str(e) for e in leaves):
            print(f"chaos: {exc}", file=sys.stderr)
        return int(leaves[0].exit_code)  # type: ignore[attr-defined]
    except KeyboardInterrupt:
        print("chaos: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        # The reader went away (`chaos report RUN | head`): nothing is wrong with the run. Exit as
        # a program killed by SIGPIPE would, without a word on stderr and without Python's
        # complaint when it flushes stdout at exit.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return int(ExitCode.BROKEN_PIPE)
    except Exception as exc:  # a bug: say so plainly; the traceback only on request
        if (args.log_level or settings.log_level) == "debug":
            raise
        print(f"chaos: internal error: {type(exc).__name__}: {exc} (rerun with --log-level debug for the traceback)", file=sys.stderr)
        return int(ExitCode.INTERNAL)


if __name__ == "__main__":
    sys.exit(main())
