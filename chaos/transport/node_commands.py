"""Every shell command the tool sends to a network node, built in one place.

Commands are built only from validated values: router ids must be Neutron's lowercase UUIDs,
devices Neutron's ``ha-``/``qr-``/``qg-`` names, signals come from an enum, durations are
numbers, markers match a short safe alphabet; and every value is ``shlex.quote``d on top, so
nothing a user, an inventory or the cloud supplies can turn into shell syntax. Faults and
probes ask this module for commands and never format shell text themselves.

Paths, file names and command lines come from ``chaos.neutron`` (Neutron's own, checked
against Neutron's code by the fidelity tests): a node's ``NeutronLayout`` says where its
ha_confs are and which pid file names its Neutron uses. Commands that look for a running
keepalived try the current names (``<id>.pid.keepalived``, since Train) and the pre-Train ones
(``<id>.pid``), and trust a pid only when its process runs this router's keepalived.conf.
Commands are POSIX sh (dash or bash).

Every builder returns a ``NodeCommand``: the text (a ``str``, so callers pass it, journal it and
compare it as before) carrying its ``intent``, a small typed record of which builder made it
from which validated values. Nothing in the tool reads the intent to run a command; it is there
so that a stand-in for a node (the tests' fake network node) can answer the command from what it
means instead of parsing shell, and composite commands keep it: a dead-man holds the intents of
its undo commands, and the agent context's ``<exec_prefix> sh -c '...'`` is recorded in every
intent as its ``agent``. Text that went through a pydantic ``str`` field or the journal comes
back as a plain ``str``: only the builders' output carries intents.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from chaos.deployment import AgentContext
from chaos.model import _device, _router_id
from chaos.neutron import NeutronLayout

_MARKER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}\Z")
VRRP_PROTOCOL = 112
DEADMAN_TAG = "chaos-deadman"
# Ground truth is gathered in chunks: one shell argument may not exceed 128 KiB (MAX_ARG_STRLEN).
GROUND_TRUTH_CHUNK = 400


class Signal(str, Enum):
    """Signals a fault may send to keepalived."""

    TERM = "TERM"
    KILL = "KILL"
    STOP = "STOP"
    CONT = "CONT"


class LinkAction(str, Enum):
    UP = "up"
    DOWN = "down"


# --------------------------------------------------------------------------- intents
class Intent(BaseModel):
    """What a command means: the builder and its validated arguments (see the module docstring)."""

    model_config = ConfigDict(frozen=True)


class AgentIntent(Intent):
    """A command that runs where the L3 agent runs (``agent.wrap``)."""

    agent: AgentContext


class GroundTruth(AgentIntent):
    replicas: tuple[tuple[str, str], ...]  # (router_id, ha_device)


class KeepalivedInstances(AgentIntent):
    router_id: str


class KeepalivedSignal(AgentIntent):
    router_id: str
    signal: Signal
    vrrp_child: bool


class KeepalivedPids(AgentIntent):
    router_id: str


class KeepalivedStart(AgentIntent):
    router_id: str


class KeepalivedEnsureRunning(AgentIntent):
    router_id: str


class KeepalivedVrids(AgentIntent):
    router_ids: tuple[str, ...]


class PidsAlive(AgentIntent):
    pids: tuple[int, ...]


class HaLinkSet(AgentIntent):
    router_id: str
    ha_device: str
    action: LinkAction


class VrrpBlock(AgentIntent):
    router_id: str
    ha_device: str
    marker: str


class VrrpUnblock(AgentIntent):
    router_id: str
    ha_device: str
    marker: str


class VrrpRulesCount(AgentIntent):
    router_id: str
    marker: str


class DeadmanSchedule(Intent):
    marker: str
    after: float
    undo: tuple[str, ...]  # the undo commands' text, in order
    undo_intents: tuple[Any, ...]  # their intents (an Intent, or None for a command given as plain text)


class DeadmanCancel(Intent):
    marker: str
    pid: int | None


class BootId(Intent):
    pass


class Reboot(Intent):
    method: Literal["systemctl", "sysrq"]
    delay: float


class FollowReplicas(AgentIntent):
    router_ids: tuple[str, ...]
    heartbeat: float
    state_every: float


class ConntrackTables(AgentIntent):
    router_ids: tuple[str, ...]
    ports: tuple[int, ...]


class Preflight(AgentIntent):
    pass


class NodeCommand(str):
    """A command's text with its ``intent``. Behaves as the ``str`` it is everywhere; string
    operations on it (joining, formatting) give plain ``str``, without the intent."""

    intent: Intent

    def __new__(cls, text: str, intent: Intent) -> NodeCommand:
        command = super().__new__(cls, text)
        command.intent = intent
        return command

    def __reduce__(self) -> tuple[Any, ...]:  # copy and pickle keep the intent
        return (NodeCommand, (str(self), self.intent))


def intent_of(command: str) -> Intent | None:
    """The intent a command was built with; None for plain text (journaled, or not built here)."""
    return command.intent if isinstance(command, NodeCommand) else None


def q(value: object) -> str:
    """``value`` as one shell word; a NUL, which no command line can carry (a remote shell would
    cut the command there), is refused (ValueError)."""
    return shlex.quote(no_nul(str(value)))


def no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError(f"{text!r} holds a NUL character, which no shell command can carry")
    return text


def router_id(value: str) -> str:
    """A router id, refused unless it is a lowercase UUID (ValueError)."""
    return _router_id(value)


def device(value: str) -> str:
    """A Neutron device name, refused unless it is ha-/qr-/qg- plus up to 11 id characters."""
    return _device(value)


def marker(value: str) -> str:
    """A run/action marker (iptables comment, dead-man tag): short and shell-inert."""
    if not _MARKER_RE.match(value):
        raise ValueError(f"marker {value!r} may only hold letters, digits and _.:- (at most 200)")
    return value


PID_MAX = 4_194_304  # the kernel's PID_MAX_LIMIT


def pid(value: object) -> int:
    """A process id: a whole number 1..PID_MAX (ValueError otherwise). Not a bool, not a float,
    never 0 or negative: ``kill -- -0`` / ``kill -- -1`` would hit the caller's process group or
    every process (found by tests/test_fuzz_node_commands.py: any int was accepted)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"pid {value!r} is not a whole number")
    if isinstance(value, str):
        if not re.fullmatch(r"[0-9]{1,7}", value):
            raise ValueError(f"pid {value!r} is not a whole number")
        value = int(value)
    if not 1 <= value <= PID_MAX:
        raise ValueError(f"pid {value} is not between 1 and {PID_MAX}")
    return value


def seconds(value: float) -> str:
    """A non-negative, finite duration rendered for sleep(1)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"duration {value!r} is not a number of seconds")
    try:
        v = float(value)
    except (ValueError, OverflowError):  # "abc"; an int too big for a float
        raise ValueError(f"duration {value!r} is not a number of seconds between 0 and 10^7") from None
    if not (0 <= v < 10**7):
        raise ValueError(f"duration {value!r} is not a number of seconds between 0 and 10^7")
    return f"{v:.3f}".rstrip("0").rstrip(".") or "0"


def namespace(rid: str) -> str:
    return f"qrouter-{router_id(rid)}"


def _pid_suffixes(layout: NeutronLayout, rid: str) -> tuple[list[str], list[str]]:
    """File-name suffixes after ``<ha_confs>/<id>.`` of the main and VRRP pid files, own naming
    first (the names differ only in that suffix, so the node-side functions take it as words)."""
    pairs = layout.keepalived_pid_candidates(rid)
    cut = len(rid) + 1
    return [m.name[cut:] for m, _ in pairs], [v.name[cut:] for _, v in pairs]


def as_root(command: str, sudo: bool) -> str:
    """Wrap a privileged command for a node whose SSH user is not root."""
    return f"sudo -n sh -c {q(command)}" if sudo else command


# --------------------------------------------------------------------------- ground truth
# One function per node, called once per router: emits tagged lines the parser understands.
#   R <router_id>                      start of a router's block
#   N 0|1                              the qrouter namespace exists
#   S <state file's first line | ->
#   A <one line of `ip -o -4 addr`>
#   K main|vrrp <pid|-> <proc state letter|->   (- = not a running keepalived of this router)
#   L <one line of `ip -o link show dev <ha>`>
#   E                                  end of block
# `kp` looks for a process through its pid file names in order (current, then pre-Train) and
# trusts a pid only if it runs this router's keepalived.conf: pid files outlive a reboot.
# Files are read with the shell's own `read` and trimmed by parameter expansion, and `ip`'s lines
# are tagged by `tag` (a loop of builtins), not with `head | tr`, `sed | cut` and `| sed 's/^/A /'`:
# the poll runs for every replica of a node (200 at 100 routers), and those pipelines were 17 of
# its about 21 processes per replica, which kept the nodes busy (bench/README.md, scale_bench.py);
# now 4 remain (two `ip`, two `grep`), and a poll of 200 replicas costs about a third of the CPU.
# The output is the same: the first line, whose characters other than digits (pid files) or
# letters (state files) are dropped (`tr -cd` still does that when there are any, which is never
# the case for the files Neutron writes), the state letter after the last ") " of /proc/PID/stat,
# and every line of `ip` behind its tag.
_KEEPALIVED_PID_FN = r"""kp() {
  key=$1; r=$2; shift 2; first=-
  for sfx in "$@"; do
    p=; { read -r p < "$c/$r.$sfx"; } 2>/dev/null
    case $p in *[!0-9]*) p=$(printf '%s' "$p" | tr -cd '0-9');; esac
    [ -n "$p" ] || continue
    [ "$first" = - ] && first=$p
    if grep -qaF "$c/$r/keepalived.conf" "/proc/$p/cmdline" 2>/dev/null; then
      st=; { read -r st < "/proc/$p/stat"; } 2>/dev/null; st=${st##*") "}
      echo "K $key $p ${st%"${st#?}"}"; return 0
    fi
  done
  echo "K $key $first -"
}"""

_GROUND_TRUTH_FN = r"""gt() {
  r=$1; ns=qrouter-$1
  echo "R $r"
  if [ -e "/run/netns/$ns" ]; then echo "N 1"; else echo "N 0"; fi
  s=; { read -r s < "$c/$r/state"; } 2>/dev/null
  case $s in *[!a-zA-Z]*) s=$(printf '%%s' "$s" | tr -cd 'a-zA-Z');; esac
  echo "S ${s:--}"
  tag A "$(ip -n "$ns" -o -4 addr 2>/dev/null)"
  kp main "$r" %(main)s
  kp vrrp "$r" %(vrrp)s
  tag L "$(ip -n "$ns" -o link show dev "$2" 2>/dev/null)"
  echo E
}
tag() {
  t=$1; rest=$2
  while [ -n "$rest" ]; do
    printf '%%s %%s\n' "$t" "${rest%%%%"$nl"*}"
    case $rest in *"$nl"*) rest=${rest#*"$nl"};; *) rest=;; esac
  done
}
nl='
'"""


def ground_truth(agent: AgentContext, replicas: Iterable[tuple[str, str]]) -> NodeCommand:
    """One command reading the ground truth of many replicas on one node.

    ``replicas`` are (router_id, ha_device) pairs of replicas hosted on that node.
    """
    layout = agent.layout
    replicas = list(replicas)
    calls = [f"gt {q(router_id(rid))} {q(device(ha))}" for rid, ha in replicas]
    main, vrrp = _pid_suffixes(layout, "0" * 36)
    fn = _GROUND_TRUTH_FN % {"main": " ".join(q(m) for m in main), "vrrp": " ".join(q(v) for v in vrrp)}
    return NodeCommand(
        agent.wrap(f"c={q(str(layout.ha_confs))}\n{_KEEPALIVED_PID_FN}\n{fn}\n" + "\n".join(calls)),
        GroundTruth(agent=agent, replicas=tuple((router_id(rid), device(ha)) for rid, ha in replicas)),
    )


class KeepalivedProcess(BaseModel):
    pid: int | None
    alive: bool
    stopped: bool  # SIGSTOPped (state T)


class ReplicaTruth(BaseModel):
    """What one replica's node says about it, parsed from ``ground_truth`` output."""

    router_id: str
    namespace_exists: bool = False
    state: str | None = None
    addresses: list[tuple[str, str]] = []  # (device, cidr)
    keepalived: dict[str, KeepalivedProcess] = {}  # "main", "vrrp"
    ha_link_up: bool | None = None

    @property
    def keepalived_alive(self) -> bool:
        main = self.keepalived.get("main")
        return main is not None and main.alive and not main.stopped

    def has_address(self, address: str) -> bool:
        return any(cidr.split("/", 1)[0] == address for _, cidr in self.addresses)


def parse_ground_truth(output: str) -> dict[str, ReplicaTruth]:
    """Parse ``ground_truth`` output; routers whose block is cut short keep what was read."""
    result: dict[str, ReplicaTruth] = {}
    current: ReplicaTruth | None = None
    for line in output.splitlines():
        tag, _, rest = line.partition(" ")
        if tag == "R":
            current = ReplicaTruth(router_id=rest.strip())
            result[current.router_id] = current
        elif current is None:
            continue
        elif tag == "N":
            current.namespace_exists = rest.strip() == "1"
        elif tag == "S":
            current.state = None if rest.strip() in ("", "-") else rest.strip()
        elif tag == "A":
            fields = rest.split()
            # "2: ha-xxx    inet 169.254.192.1/18 brd ... scope global ha-xxx\ ..."
            if len(fields) >= 4 and fields[2] == "inet":
                current.addresses.append((fields[1], fields[3]))
        elif tag == "K":
            fields = rest.split()
            if len(fields) == 3:
                which, pid, st = fields
                current.keepalived[which] = KeepalivedProcess(
                    pid=int(pid) if pid.isdigit() else None, alive=st != "-", stopped=st == "T"
                )
        elif tag == "L":
            flags = re.search(r"<([^>]*)>", rest)
            current.ha_link_up = bool(flags) and "UP" in flags.group(1).split(",")  # type: ignore[union-attr]
        elif tag == "E":
            current = None
    return result


# --------------------------------------------------------------------------- keepalived
def _each_keepalived(layout: NeutronLayout, rid: str, which: Sequence[str], body: str) -> str:
    """Run ``body`` with $x set to the pid of each of the replica's running keepalived processes
    named in ``which`` ("main", "vrrp"), found through its pid files (current names, then
    pre-Train) and trusted only if the process runs this router's keepalived.conf."""
    main, vrrp = _pid_suffixes(layout, rid)
    confs = layout.ha_confs
    conf = q(str(layout.keepalived_conf(rid)))
    loops = []
    for key in which:
        files = " ".join(q(str(confs / f"{rid}.{sfx}")) for sfx in {"main": main, "vrrp": vrrp}[key])
        loops.append(
            f"x=; for f in {files}; do p=$(head -n1 \"$f\" 2>/dev/null | tr -cd '0-9'); "
            f'[ -n "$p" ] && grep -qaF {conf} "/proc/$p/cmdline" 2>/dev/null && {{ x=$p; break; }}; done; '
            f'if [ -n "$x" ]; then {body}; fi'
        )
    return "; ".join(loops)


def keepalived_running(layout: NeutronLayout, rid: str) -> str:
    """Shell that sets $running to the pids of every keepalived process running this router's
    keepalived.conf, whatever its pid files say (one scan of /proc/*/cmdline; the scanning
    processes themselves are not keepalived and are left out)."""
    conf = q(str(layout.keepalived_conf(router_id(rid))))
    return (
        f"running=$(for f in $(grep -laF -- {conf} /proc/[0-9]*/cmdline 2>/dev/null); do "
        f'a=$(tr "\\000" "\\n" < "$f" 2>/dev/null | head -n1); '
        f'case "${{a##*/}}" in keepalived) p=${{f#/proc/}}; echo "${{p%/cmdline}}";; esac; done | tr "\\n" " ")'
    )


def keepalived_instances(agent: AgentContext, rid: str) -> NodeCommand:
    """Print the pids of every keepalived process of this router on the node, one line."""
    return NodeCommand(
        agent.wrap(f'{keepalived_running(agent.layout, rid)}; echo "keepalived: ${{running:-none}}"'),
        KeepalivedInstances(agent=agent, router_id=router_id(rid)),
    )


def keepalived_signal(agent: AgentContext, rid: str, signal: Signal, *, vrrp_child: bool = True) -> NodeCommand:
    """Signal a replica's keepalived, found through its pid files (never a host-wide pattern).

    Prints ``signalled <pid>`` per process; exits 3 when no running keepalived was found, so an
    injection against a replica without keepalived fails loudly.
    """
    rid = router_id(rid)
    layout = agent.layout
    sig = Signal(signal).value
    prelude = ""
    if sig == Signal.KILL.value and vrrp_child:
        # keepalived's children get SIGTERM when their parent dies (PDEATHSIG) and its parent
        # restarts a dead child: freeze the parent first, then kill the child, then the parent,
        # so that no process gets to clean up, as in a crash.
        prelude = _each_keepalived(layout, rid, ["main"], 'kill -s STOP "$x"') + "; "
    which = ["vrrp", "main"] if vrrp_child else ["main"]
    loop = _each_keepalived(layout, rid, which, f'kill -s {sig} "$x" && echo "signalled $x" && n=$((n+1))')
    return NodeCommand(
        agent.wrap(
            f"n=0; {prelude}{loop}; [ \"$n\" -gt 0 ] || {{ echo 'no running keepalived for router {rid}' >&2; exit 3; }}"
        ),
        KeepalivedSignal(agent=agent, router_id=rid, signal=Signal(signal), vrrp_child=vrrp_child),
    )


def keepalived_pids(agent: AgentContext, rid: str) -> NodeCommand:
    """Print ``<pid> <state letter>`` of each running keepalived process of a replica."""
    body = "echo \"$x $(sed 's/.*) //' /proc/$x/stat | cut -c1)\""
    return NodeCommand(
        agent.wrap(_each_keepalived(agent.layout, router_id(rid), ["main", "vrrp"], body)),
        KeepalivedPids(agent=agent, router_id=rid),
    )


DUPLICATE_SETTLE_S = 1  # after a start, how long the other starters (the agent) get to show up


def _stat_field(pid_var: str, n: int) -> str:
    """Shell printing field ``n`` of /proc/<pid>/stat counted after the command name (1: state,
    2: parent pid, 20: start time), for the process in ``pid_var`` (a shell variable reference)."""
    return f"sed 's/.*) //' /proc/{pid_var}/stat 2>/dev/null | cut -d' ' -f{n}"


def _keepalived_dedupe(layout: NeutronLayout, rid: str) -> str:
    """Shell that leaves exactly one keepalived instance of the router, named by its pid files,
    when a start raced another.

    "Start unless one runs" is a check then a start, and the node's L3 agent does the same
    when it respawns keepalived: started in the same instant (``chaos recover`` replaying an
    undo just as the agent's process monitor fires), both see none and both start, and two
    keepalived run one VRID on one node for good (found by the interruption campaign). Each
    starter also removes the pid files first, as Neutron does, so the survivor's may be gone,
    and the agent, which watches the pid file, would start yet another. So after its start the
    tool looks again: it keeps the instance the main pid file names (else the oldest), freezes
    then kills every other main instance (one whose parent is not this router's keepalived)
    with its children, as a crash would (no cleanup that would remove the kept one's pid
    files), and writes the kept instance's pid files. A start a moment ago has not become
    primary yet (it waits Master_Down_Interval), so nothing the killed one held is lost.
    """
    pidfile = q(str(layout.keepalived_pid(rid)))
    vrrp_pidfile = q(str(layout.keepalived_vrrp_pid(rid)))
    return "; ".join([
        f"sleep {DUPLICATE_SETTLE_S}",
        keepalived_running(layout, rid),
        f"keep=$(head -n1 {pidfile} 2>/dev/null | tr -cd '0-9'); mains=; n=0",
        f"for x in $running; do pp=$({_stat_field('$x', 2)}); "
        'case " $running " in *" $pp "*) ;; *) mains="$mains $x"; n=$((n+1));; esac; done',
        'ok=; if [ -n "$keep" ]; then case " $mains " in *" $keep "*) ok=1;; esac; fi',
        'if [ -z "$ok" ] && [ "$n" -gt 0 ]; then best=; for x in $mains; do '
        f"st=$({_stat_field('$x', 20)}); "
        'if [ -z "$best" ] || [ "$st" -lt "$best" ]; then best=$st; keep=$x; fi; done; fi',
        'extra=; for x in $mains; do [ "$x" = "$keep" ] || extra="$extra $x"; done',
        'for x in $extra; do kill -s STOP "$x" 2>/dev/null; done',
        'for x in $extra; do for c in $running; do '
        f'[ "$({_stat_field("$c", 2)})" = "$x" ] && kill -s KILL "$c" 2>/dev/null; done; '
        'kill -s KILL "$x" 2>/dev/null; done',
        '[ -n "$extra" ] && echo "removed duplicate keepalived:$extra (kept $keep)"',
        'if [ "$n" -gt 0 ] && [ -z "$ok" ]; then '
        f'echo "$keep" > {pidfile}; for c in $running; do '
        f'[ "$({_stat_field("$c", 2)})" = "$keep" ] && echo "$c" > {vrrp_pidfile}; done; '
        'echo "pid files name keepalived $keep"; fi',
        "true",
    ])


def _keepalived_start(layout: NeutronLayout, rid: str) -> str:
    argv = ["ip", "netns", "exec", namespace(rid), *layout.keepalived_argv(rid)]
    stale = " ".join(q(str(p)) for p in (layout.keepalived_pid(rid), layout.keepalived_vrrp_pid(rid)))
    return (
        f"{keepalived_running(layout, rid)}; "
        f'if [ -n "$running" ]; then echo "keepalived already running: $running"; '
        f"else rm -f {stale} && {shlex.join(argv)} && echo 'started keepalived' && {{ {_keepalived_dedupe(layout, rid)}; }}; fi"
    )


def keepalived_start(agent: AgentContext, rid: str) -> NodeCommand:
    """Start keepalived as Neutron's L3 agent does, unless one already runs for this router.

    Neutron's command line inside ``qrouter-<id>``, in the agent's context (where a
    deployment's keepalived wrapper takes over, as it does for the agent), after removing stale
    pid files (as Neutron's ProcessManager does before every start). A keepalived already
    running this router's keepalived.conf, whatever its pid files, means nothing is started:
    two keepalived for one VRID on one node is a split brain of the tool's making.
    """
    return NodeCommand(agent.wrap(_keepalived_start(agent.layout, router_id(rid))), KeepalivedStart(agent=agent, router_id=rid))


def keepalived_ensure_running(agent: AgentContext, rid: str) -> NodeCommand:
    """Idempotent undo of any keepalived fault: continue stopped processes, start one only if
    none runs for this router (see ``keepalived_start``)."""
    rid = router_id(rid)
    cont = _each_keepalived(
        agent.layout, rid, ["main", "vrrp"],
        "s=$(sed 's/.*) //' /proc/$x/stat | cut -c1); [ \"$s\" = T ] && kill -s CONT \"$x\" && echo \"continued $x\"",
    )
    return NodeCommand(agent.wrap(f"{cont}; {_keepalived_start(agent.layout, rid)}"), KeepalivedEnsureRunning(agent=agent, router_id=rid))


def keepalived_vrids(agent: AgentContext, router_ids: Sequence[str]) -> NodeCommand:
    """Print ``<router_id> virtual_router_id <n>`` (or ``<router_id> -``) per router, from each
    replica's keepalived.conf on the node."""
    parts = [
        f"printf '%s ' {q(router_id(r))}; "
        f"(grep -m1 -o 'virtual_router_id [0-9]*' {q(str(agent.layout.keepalived_conf(r)))} 2>/dev/null || echo -); echo"
        for r in router_ids
    ]
    return NodeCommand(agent.wrap("; ".join(parts)), KeepalivedVrids(agent=agent, router_ids=tuple(router_ids)))


def pids_alive(agent: AgentContext, pids: Iterable[int]) -> NodeCommand:
    """Print each pid that still runs and is not a zombie, with its state letter (pids as the
    agent's context numbers them)."""
    numbers = tuple(pid(p) for p in pids)
    checked = " ".join(str(p) for p in numbers)
    return NodeCommand(
        agent.wrap(
            f"for x in {checked}; do s=$(sed 's/.*) //' /proc/$x/stat 2>/dev/null | cut -c1); "
            f'case "$s" in ""|Z|X) ;; *) echo "$x $s";; esac; done; true'
        ),
        PidsAlive(agent=agent, pids=numbers),
    )


# --------------------------------------------------------------------------- ha- link
def ha_link_set(agent: AgentContext, rid: str, ha_device: str, action: LinkAction) -> NodeCommand:
    """``ip link set`` of the replica's ha- device inside its namespace."""
    return NodeCommand(
        agent.wrap(shlex.join(["ip", "-n", namespace(rid), "link", "set", "dev", device(ha_device), LinkAction(action).value])),
        HaLinkSet(agent=agent, router_id=rid, ha_device=ha_device, action=LinkAction(action)),
    )


# --------------------------------------------------------------------------- VRRP partition
def _vrrp_rules(ha_device: str, mark: str) -> list[list[str]]:
    dev = device(ha_device)
    comment = ["-m", "comment", "--comment", marker(mark)]
    drop = ["-p", str(VRRP_PROTOCOL), *comment, "-j", "DROP"]
    return [["INPUT", "-i", dev, *drop], ["OUTPUT", "-o", dev, *drop]]


def vrrp_block(agent: AgentContext, rid: str, ha_device: str, mark: str) -> NodeCommand:
    """Drop VRRP (IP protocol 112) in and out of the replica's ha- device, tagged with ``mark``
    (in the agent's context: its iptables is the one that programs the namespace)."""
    ns = namespace(rid)
    return NodeCommand(
        agent.wrap(" && ".join(shlex.join(["ip", "netns", "exec", ns, "iptables", "-w", "-I", *rule]) for rule in _vrrp_rules(ha_device, mark))),
        VrrpBlock(agent=agent, router_id=rid, ha_device=ha_device, marker=mark),
    )


def vrrp_unblock(agent: AgentContext, rid: str, ha_device: str, mark: str) -> NodeCommand:
    """Remove only the rules carrying ``mark`` (every copy of them); idempotent."""
    ns = namespace(rid)
    parts = [
        f"while {shlex.join(['ip', 'netns', 'exec', ns, 'iptables', '-w', '-D', *rule])} 2>/dev/null; do :; done"
        for rule in _vrrp_rules(ha_device, mark)
    ]
    return NodeCommand(agent.wrap("; ".join(parts) + "; true"), VrrpUnblock(agent=agent, router_id=rid, ha_device=ha_device, marker=mark))


def vrrp_rules_count(agent: AgentContext, rid: str, mark: str) -> NodeCommand:
    """Print how many filter rules in the namespace carry ``mark``."""
    ns = namespace(rid)
    return NodeCommand(
        agent.wrap(f"{shlex.join(['ip', 'netns', 'exec', ns, 'iptables', '-w', '-S'])} | grep -cF -- {q(marker(mark))} || true"),
        VrrpRulesCount(agent=agent, router_id=rid, marker=mark),
    )


# --------------------------------------------------------------------------- dead-man
def deadman_schedule(mark: str, after: float, undo: Sequence[str]) -> NodeCommand:
    """Schedule ``undo`` to run after ``after`` seconds, detached from the SSH session.

    The detached shell gets a session of its own (setsid), ignores the hang-up (nohup), prints
    ``deadman <pid>`` on the channel and then closes it, so the SSH command returns at once while
    the timer survives the session, the connection and the runner. Its command line carries
    ``chaos-deadman <mark>``, which lets a cancel find exactly this timer.
    """
    script = f": {DEADMAN_TAG} {marker(mark)}; echo \"deadman $$\" >&3; exec 3>&-; sleep {seconds(after)}; " + "; ".join(undo)
    return NodeCommand(
        f"nohup setsid sh -c {q(script)} 3>&1 </dev/null >/dev/null 2>&1 &",
        DeadmanSchedule(marker=mark, after=float(after), undo=tuple(str(u) for u in undo),
                        undo_intents=tuple(intent_of(u) for u in undo)),
    )


def parse_deadman_pid(output: str) -> int | None:
    match = re.search(r"^deadman (\d+)$", output, re.MULTILINE)
    return int(match.group(1)) if match else None


def deadman_cancel(mark: str, pid: int | None = None) -> NodeCommand:
    """End the dead-man's process group: the pid if known and still ours, else any carrying ``mark``.

    The search pattern is written so that it does not match the command line of the shell
    running the search itself (``chaos-deadma[n]``).
    """
    pattern = q(f"{DEADMAN_TAG[:-1]}[{DEADMAN_TAG[-1]}] {marker(mark)};")
    if pid is not None:
        p = globals()["pid"](pid)  # the validator; this function's parameter shadows its name
        if p == 1:
            raise ValueError("pid 1 is init, never a dead-man's process group")
        return NodeCommand(
            f'if grep -qa {pattern} /proc/{p}/cmdline 2>/dev/null; then kill -s TERM -- -{p} 2>/dev/null; echo "cancelled {p}"; fi; true',
            DeadmanCancel(marker=mark, pid=p),
        )
    # One grep over every command line: a loop forking grep per process takes seconds on a busy host.
    return NodeCommand(
        f"for f in $(grep -la {pattern} /proc/[0-9]*/cmdline 2>/dev/null); do p=${{f#/proc/}}; p=${{p%/cmdline}}; "
        f'kill -s TERM -- "-$p" 2>/dev/null; echo "cancelled $p"; done; true',
        DeadmanCancel(marker=mark, pid=None),
    )


# --------------------------------------------------------------------------- node
def boot_id() -> NodeCommand:
    return NodeCommand("cat /proc/sys/kernel/random/boot_id", BootId())


def reboot_systemctl(delay: float = 1.0) -> NodeCommand:
    """A clean reboot, detached and delayed so that the SSH command returns before the node goes."""
    return NodeCommand(
        f"nohup setsid sh -c {q(f'sleep {seconds(delay)}; systemctl reboot')} </dev/null >/dev/null 2>&1 &",
        Reboot(method="systemctl", delay=float(delay)),
    )


def reboot_sysrq(delay: float = 1.0) -> NodeCommand:
    """An immediate kernel reboot (no sync, no unmount): as close to a power cut as SSH gets."""
    script = f"sleep {seconds(delay)}; echo 1 > /proc/sys/kernel/sysrq; echo b > /proc/sysrq-trigger"
    return NodeCommand(f"nohup setsid sh -c {q(script)} </dev/null >/dev/null 2>&1 &", Reboot(method="sysrq", delay=float(delay)))


# --------------------------------------------------------------------------- replica address stream
# One long-lived command per node follows every hosted replica of the target routers. Lines:
#   B <router_id>                      a snapshot of the router's addresses begins
#   A <router_id> <one line of `ip -o addr`>
#   E <router_id>                      the snapshot is complete
#   M <router_id> <one line of `ip -o monitor address`>   ("Deleted ..." for a removal)
#   S <router_id> <state file's first line | ->           (only when it changes)
#   X <router_id>                      the namespace's monitor ended (it is followed again)
#   H                                  heartbeat, every ``heartbeat`` seconds
# Every router's follower waits for its qrouter namespace (a rebooted node recreates them), starts
# `ip monitor` first and snapshots afterwards, so no event between the two is lost. The state files
# are read with the shell's builtin ``read`` (no process per read). When the channel closes, the
# next write fails (SIGPIPE ignored, so the write returns an error) and the command ends its whole
# process group: nothing is left running on the node.
_FOLLOW_FN = r"""trap '' PIPE
c=%(confs)s
fol() {
  r=$1; ns=qrouter-$1
  while :; do
    while [ ! -e "/run/netns/$ns" ]; do sleep 0.2; done
    ip -n "$ns" -o monitor address 2>/dev/null | sed -u "s/^/M $r /" &
    m=$!
    sleep 0.05
    echo "B $r"; ip -n "$ns" -o addr 2>/dev/null | sed -u "s/^/A $r /"; echo "E $r"
    wait "$m"
    echo "X $r"
    sleep 0.5
  done
}
st() {
  v=-; read -r v 2>/dev/null < "$c/$2/state" || v=${v:--}; v=${v:--}
  eval "o=\${s_$1-}"
  if [ "$v" != "$o" ]; then eval "s_$1=\$v"; echo "S $2 $v" || { kill 0; exit 1; }; fi
}"""


def follow_replicas(agent: AgentContext, router_ids: Sequence[str], *, heartbeat: float = 1.0, state_every: float = 0.1) -> NodeCommand:
    """One command streaming address events and state-file changes of many replicas on one node.

    ``state_every``: how often the state files are read (the address events need no polling).
    """
    if not router_ids:
        raise ValueError("follow_replicas needs at least one router")
    confs = agent.layout.ha_confs
    rids = [router_id(r) for r in router_ids]
    # Checked before the arithmetic: 0 divided by zero, inf and nan failed in round() with
    # ZeroDivisionError/OverflowError, not the ValueError of a refused value (found by the fuzzer).
    every, beat = float(seconds(state_every)), float(seconds(heartbeat))
    if every <= 0 or beat <= 0:
        raise ValueError(f"heartbeat {heartbeat!r} and state_every {state_every!r} must be more than 0 seconds")
    beats = max(1, round(beat / every))
    followers = "\n".join(f"fol {q(r)} &" for r in rids)
    sweep = "; ".join(f"st {i} {q(r)}" for i, r in enumerate(rids))
    loop = (
        f"n=0\nwhile :; do\n  {sweep}\n  n=$((n+1))\n"
        f"  if [ \"$n\" -ge {beats} ]; then n=0; echo \"H $(date +%s.%N)\" || {{ kill 0; exit 1; }}; fi\n"
        f"  sleep {seconds(every)}\ndone"
    )
    return NodeCommand(
        agent.wrap(_FOLLOW_FN % {"confs": q(str(confs))} + "\n" + followers + "\n" + loop),
        FollowReplicas(agent=agent, router_ids=tuple(rids), heartbeat=float(heartbeat), state_every=every),
    )


# --------------------------------------------------------------------------- conntrack
# `ct TAG CMD...` runs a listing and tags each flow line of its output with TAG; when the command
# fails it prints `X TAG <exit code> <its last message>` instead of nothing, so a missing binary
# or a dead conntrackd reads as "unknown, because ...", never as an empty table.
_CONNTRACK_FN = r"""ct() {
  t=$1; shift; e=$(mktemp 2>/dev/null || echo "/tmp/chaos-ct.$$")
  o=$("$@" 2>"$e"); rc=$?
  printf '%s\n' "$o" | grep -E '^[a-z0-9-]+ +[0-9]+ ' | sed "s/^/$t /"
  if [ "$rc" != 0 ]; then echo "X $t $rc $(tail -n1 "$e" 2>/dev/null)"; fi
  rm -f "$e"
}"""
# (stderr apart from stdout: conntrack's summary line on stderr lands mid-line when merged)


def conntrack_tables(agent: AgentContext, router_ids: Sequence[str], ports: Iterable[int]) -> NodeCommand:
    """The TCP flows whose original destination port is one of ``ports``, per router on one node:
    the kernel's table inside ``qrouter-<id>`` and, where the router runs conntrackd (its
    conntrackd.conf exists), conntrackd's external cache (``conntrackd -C <conf> -e``: the
    flows replicated from the primary, which Neutron's state-change script commits to the
    kernel only on promotion). Lines: ``R <router_id> 0|1`` (namespace present), ``K <flow>``
    (kernel), ``C <flow>`` (external cache), ``X K|C <code> <message>`` (a listing failed),
    ``E <router_id>``."""
    port_list = sorted({int(p) for p in ports})
    if not port_list or not all(0 < p < 65536 for p in port_list):
        raise ValueError(f"ports {port_list!r} must be 1..65535 and at least one")
    blocks = []
    rids = [router_id(r) for r in router_ids]
    for rid in rids:
        ns = namespace(rid)
        conf = str(agent.layout.conntrackd_file(rid, "conf"))
        kernel = "; ".join(
            "ct K " + shlex.join(["ip", "netns", "exec", ns, "conntrack", "-L", "-p", "tcp", "--dport", str(p)]) for p in port_list
        )
        cache = f"if [ -e {q(conf)} ]; then ct C {shlex.join(['ip', 'netns', 'exec', ns, 'conntrackd', '-C', conf, '-e'])}; fi"
        blocks.append(
            f"if [ -e /run/netns/{q(ns)} ]; then echo {q('R ' + rid + ' 1')}; {kernel}; {cache}; "
            f"else echo {q('R ' + rid + ' 0')}; fi; echo {q('E ' + rid)}"
        )
    return NodeCommand(
        agent.wrap(_CONNTRACK_FN + "\n" + "\n".join(blocks)),
        ConntrackTables(agent=agent, router_ids=tuple(rids), ports=tuple(port_list)),
    )


# --------------------------------------------------------------------------- preflight
# What a run needs on a node, asked in one command (chaos doctor; chaos run before injecting).
# The first part runs on the host as the SSH user (through sudo when the node says so), the
# second where the L3 agent runs. Lines:
#   U <uid>                              who the commands run as on the host
#   A ok                                 the agent's context answered (its exec prefix works)
#   P <program> ok|missing <version or error>   a program the faults and probes run
#   N ok|fail <error>                    `ip netns list` works
#   I <iptables -V>                      the iptables the namespace rules go through
#   C <check_child_processes_interval line | ->   from the agent's configuration, where readable
_PREFLIGHT_AGENT = r"""echo "A ok"
for p in ip conntrack iptables; do
  case $p in ip) v=$(ip -V 2>&1);; *) v=$($p --version 2>&1);; esac
  rc=$?; v=$(printf '%s\n' "$v" | head -n1)
  if [ $rc -eq 0 ] && [ -n "$v" ]; then echo "P $p ok $v"; else echo "P $p missing ${v:-not found}"; fi
done
# keepalived may be a deployment's wrapper (kolla's, TripleO's) that starts a container: never run it here.
if k=$(command -v keepalived); then
  if [ "$(head -c2 "$k" 2>/dev/null)" = "#!" ]; then echo "P keepalived ok a wrapper: $k"
  else
    v=$("$k" --version 2>&1); rc=$?; v=$(printf '%s\n' "$v" | head -n1)
    if [ $rc -eq 0 ]; then echo "P keepalived ok $v"; else echo "P keepalived missing $v"; fi
  fi
else echo "P keepalived missing not found"; fi
if ls "$c"/*/conntrackd.conf >/dev/null 2>&1; then
  v=$(conntrackd --version 2>&1); rc=$?; v=$(printf '%s\n' "$v" | head -n1)
  if [ $rc -eq 0 ]; then echo "P conntrackd ok $v"; else echo "P conntrackd missing ${v:-not found}"; fi
fi
if e=$(ip netns list 2>&1); then echo "N ok"; else echo "N fail $e"; fi
echo "I $(iptables -V 2>&1 | head -n1)"
i=$(grep -hs '^[[:space:]]*check_child_processes_interval' /etc/neutron/*.ini /etc/neutron/*.conf /etc/neutron/*/*.ini /etc/neutron/*/*.conf /etc/neutron/*.conf.d/* 2>/dev/null | tail -n1)
echo "C ${i:--}"
"""


def preflight(agent: AgentContext) -> NodeCommand:
    """One command checking a node: the host part, then the agent's context (see the tags above)."""
    inner = f"c={q(str(agent.layout.ha_confs))}\n{_PREFLIGHT_AGENT}"
    # On the host the script is not one `sh -c` word: group it, or the `||` below would follow a
    # newline (a syntax error; found by tests/test_fuzz_node_commands.py with `bash -n`).
    wrapped = agent.wrap(inner) if agent.exec_prefix else f"{{ {inner}}}"
    # A failing exec prefix (no such container, no sudo) must show as such, not as a silence.
    return NodeCommand(f'echo "U $(id -u)"; {wrapped} || echo "A fail exit $?"', Preflight(agent=agent))
