"""Fuzzing the node command builders (chaos.transport.node_commands) with hostile values (issue 14).

Every builder gets router ids, device names, markers, pids, durations, Neutron layout paths and
an agent exec prefix drawn from hostile text (shell metacharacters, quotes, newlines, unicode,
command substitutions). Either the builder refuses (ValueError, which pydantic's and the tool's
InvalidInput also are) or the command it returns is shell with exactly the structure of the
same command built from harmless placeholders: tokenized by ``shlex`` (recursing into every
``sh -c`` script), the two differ only inside the words that carry the value, and those words
carry the value verbatim. ``bash -n`` confirms that the command parses. So nothing supplied by a
user, an inventory or the cloud can become shell syntax on a node.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from chaos.deployment import AgentContext
from chaos.neutron import NeutronLayout
from chaos.transport import node_commands as nc
from tests.conftest import budget

RID = "cfff158b-fb81-50e1-abe2-769b312e5ed7"
HA = "ha-e7dbb7a0-b5"
MARK = "chaos-run1.a2"
PH = "PHzq9"  # placeholder that no template contains
FUZZ = settings(max_examples=budget(150), deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

SHELLY = st.sampled_from([
    "; reboot", "$(reboot)", "`id`", "' ; rm -rf / #", '"; id; "', "a\nb", "&& true", "| sh", "> /etc/x", "$HOME",
    "${IFS}", "\\", "'", '"', "*", "~root", "-rf", "--", "a b", "\t", "\u202e", "ünï", "🔥", "%s%(main)s", "{a,b}",
    RID + "; id", RID.upper(), HA + "x", "ha-../../x", "qr-", "", " ", "..", "/", "!", "#", "\r",
])
HOSTILE = st.one_of(SHELLY, st.text(max_size=30), st.builds(lambda a, b: a + b, SHELLY, st.text(max_size=8)))
# Free-form values (paths and exec prefixes come from a validated inventory; the builders must
# still quote them): no NUL, which no command line can carry (see test_nul_is_refused).
FREE = st.one_of(SHELLY, st.text(alphabet=st.characters(blacklist_characters="\x00"), min_size=1, max_size=20))


def tokens(text: str) -> list[str]:
    lex = shlex.shlex(text, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    return list(lex)


def same_structure(built: str, reference: str, subst: dict[str, str]) -> None:
    """``built`` has ``reference``'s shell structure, with each placeholder only inside a word
    (replaced by its value there, verbatim); scripts after ``-c`` are compared the same way."""
    got, want = tokens(built), tokens(reference)
    assert len(got) == len(want), f"token count differs:\n{built!r}\n{reference!r}"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if g == w:
            continue
        if i > 0 and want[i - 1] == "-c":  # an `sh -c SCRIPT`: the script itself must keep its structure
            same_structure(g, w, subst)
            continue
        expected = w
        for placeholder, value in subst.items():
            expected = expected.replace(placeholder, value)
        assert g == expected, f"word {i} differs: {g!r} != {expected!r}\n{built!r}"


def bash_parses(command: str) -> None:
    result = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True, timeout=10, check=False)
    assert result.returncode == 0, result.stderr


def agent_for(state: str, prefix: tuple[str, ...]) -> AgentContext:
    return AgentContext(layout=NeutronLayout(state_path=PurePosixPath("/srv/" + state)), exec_prefix=prefix)


# Builders as (name, call(agent, rid, device, mark)): every one that takes a value from outside.
BUILDERS: list[tuple[str, Callable[[AgentContext, str, str, str], str]]] = [
    ("ground_truth", lambda a, r, d, m: nc.ground_truth(a, [(r, d)])),
    ("keepalived_instances", lambda a, r, d, m: nc.keepalived_instances(a, r)),
    ("keepalived_signal", lambda a, r, d, m: nc.keepalived_signal(a, r, nc.Signal.KILL)),
    ("keepalived_pids", lambda a, r, d, m: nc.keepalived_pids(a, r)),
    ("keepalived_start", lambda a, r, d, m: nc.keepalived_start(a, r)),
    ("keepalived_ensure_running", lambda a, r, d, m: nc.keepalived_ensure_running(a, r)),
    ("keepalived_vrids", lambda a, r, d, m: nc.keepalived_vrids(a, [r])),
    ("ha_link_set", lambda a, r, d, m: nc.ha_link_set(a, r, d, nc.LinkAction.DOWN)),
    ("vrrp_block", lambda a, r, d, m: nc.vrrp_block(a, r, d, m)),
    ("vrrp_unblock", lambda a, r, d, m: nc.vrrp_unblock(a, r, d, m)),
    ("vrrp_rules_count", lambda a, r, d, m: nc.vrrp_rules_count(a, r, m)),
    ("deadman_schedule", lambda a, r, d, m: nc.deadman_schedule(m, 30, [nc.ha_link_set(a, r, d, nc.LinkAction.UP)])),
    ("deadman_cancel", lambda a, r, d, m: nc.deadman_cancel(m)),
    ("follow_replicas", lambda a, r, d, m: nc.follow_replicas(a, [r])),
    ("conntrack_tables", lambda a, r, d, m: nc.conntrack_tables(a, [r], [22, 80])),
    ("preflight", lambda a, r, d, m: nc.preflight(a)),
]
REFUSED = (ValueError, ValidationError)  # pydantic's ValidationError and InvalidInput are ValueErrors too


@FUZZ
@given(
    builder=st.sampled_from(BUILDERS),
    rid=st.one_of(st.just(RID), HOSTILE),
    dev=st.one_of(st.just(HA), HOSTILE),
    mark=st.one_of(st.just(MARK), HOSTILE),
)
@example(builder=BUILDERS[0], rid=RID + "\n", dev=HA, mark=MARK)
@example(builder=BUILDERS[8], rid=RID, dev=HA, mark="a'b")
def test_hostile_ids_devices_and_markers_are_refused_or_inert(
    builder: tuple[str, Callable[..., str]], rid: str, dev: str, mark: str
) -> None:
    name, build = builder
    agent = agent_for("var/lib/neutron", ())
    try:
        command = build(agent, rid, dev, mark)
    except REFUSED:
        return
    # accepted: then each value is of the safe alphabet its kind allows, and the command is the
    # reference command with the value in place of the placeholder-free default
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", rid) or name in (
        "deadman_cancel", "preflight"), (name, rid)
    if name in ("ha_link_set", "vrrp_block", "vrrp_unblock", "ground_truth", "deadman_schedule"):
        assert re.fullmatch(r"(ha|qr|qg)-[0-9a-f-]{1,11}", dev), (name, dev)
    if name in ("vrrp_block", "vrrp_unblock", "vrrp_rules_count", "deadman_schedule", "deadman_cancel"):
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}", mark), (name, mark)
    reference = build(agent, RID, HA, MARK)
    if (rid, dev, mark) == (RID, HA, MARK):
        assert command == reference
    bash_parses(command)


@FUZZ
@given(builder=st.sampled_from(BUILDERS), state=FREE, prefix=st.lists(FREE, max_size=3).map(tuple))
@example(builder=BUILDERS[4], state="a b'c", prefix=("docker", "exec", "-u", "root", "x'; reboot; '"))
@example(builder=BUILDERS[13], state="%(confs)s", prefix=())
def test_hostile_layout_paths_and_exec_prefixes_stay_words(
    builder: tuple[str, Callable[..., str]], state: str, prefix: tuple[str, ...]
) -> None:
    """Paths and the exec prefix come from an inventory (validated there); the builders quote
    them all the same: the command is the placeholder command with the value inside words."""
    name, build = builder
    path = str(PurePosixPath("/srv/" + state))
    if PH in path or any(PH in p for p in prefix):
        return
    command = build(agent_for(state, prefix), RID, HA, MARK)
    reference_prefix = tuple(f"{PH}p{i}" for i in range(len(prefix)))
    reference = build(agent_for(PH, reference_prefix), RID, HA, MARK)
    subst = {f"/srv/{PH}": path, **{f"{PH}p{i}": p for i, p in enumerate(prefix)}}
    same_structure(command, reference, subst)
    bash_parses(command)


@FUZZ
@given(pids=st.lists(st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.booleans(), HOSTILE,
                               st.floats(allow_nan=True, allow_infinity=True)), min_size=1, max_size=4))
def test_hostile_pids_are_refused_or_numbers(pids: list[Any]) -> None:
    agent = agent_for("var/lib/neutron", ())
    for build in (lambda: nc.pids_alive(agent, pids), lambda: nc.deadman_cancel(MARK, pids[0])):
        try:
            command = build()
        except REFUSED:
            continue
        numbers = re.findall(r"for x in ([0-9 ]*);", command) or re.findall(r"/proc/([0-9]+)/cmdline", command)
        assert numbers, command
        for word in " ".join(numbers).split():
            assert 1 < int(word) <= 4_194_304 or (int(word) == 1 and "for x in" in command), command  # never 0, -1 or a group 1
        bash_parses(command)


@FUZZ
@given(after=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**70), 2**70), HOSTILE),
       every=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**40), 2**40), HOSTILE))
@example(after=1.0, every=0.0)
@example(after=float("inf"), every=0.1)
def test_hostile_durations_are_refused_or_numbers(after: Any, every: Any) -> None:
    agent = agent_for("var/lib/neutron", ())
    for build in (lambda: nc.deadman_schedule(MARK, after, [nc.boot_id()]),
                  lambda: nc.reboot_systemctl(after), lambda: nc.reboot_sysrq(after),
                  lambda: nc.follow_replicas(agent, [RID], heartbeat=after, state_every=every)):
        try:
            command = build()
        except REFUSED:
            continue
        for value in re.findall(r"sleep (\S+?)[;'\n]", command):
            assert re.fullmatch(r"[0-9]+(\.[0-9]+)?", value), command
        bash_parses(command)


@pytest.mark.parametrize("where", ["state_path", "exec_prefix", "marker"])
def test_nul_is_refused(where: str) -> None:
    """A NUL cannot be passed in a command line; a remote shell would cut the command there, so
    a value holding one is refused instead of sent (found by the layout fuzzer)."""
    with pytest.raises(ValueError):
        if where == "state_path":
            nc.keepalived_start(agent_for("var/lib\x00x", ()), RID)
        elif where == "exec_prefix":
            nc.keepalived_start(agent_for("var/lib/neutron", ("docker\x00", "exec")), RID)
        else:
            nc.vrrp_block(agent_for("var/lib/neutron", ()), RID, HA, "a\x00")
