"""Fuzzing experiment files through ``chaos validate`` and ``chaos run --dry-run`` (issue 14).

Structure-aware: each example starts from a shipped experiment (experiments/*.yaml and the
broken-file suite, which is valid YAML with one mistake each), changes one thing (one field's
value to a hostile one, one key renamed or removed, one anchor/alias, a duplicated line,
non-UTF-8 bytes, a cut) and runs the command in-process through ``chaos.cli.main``. What must
hold whatever the file: no traceback and no internal error (exit 70), only the exit codes the
docs give (validate: 0 or 3), and every problem printed as ``file:line:col: ...`` so the user
is pointed at the place. The budget is fixed and the examples derandomized, so CI is
reproducible; the failing inputs found on the way are kept below as plain tests.
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from chaos.cli import main
from chaos.errors import ExitCode
from tests.conftest import budget

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "experiments").glob("*.yaml"))


def _is_mapping(path: Path) -> bool:
    """A seed the structured mutations can walk: YAML whose top level is a mapping."""
    try:
        return isinstance(YAML(typ="rt").load(path.read_text()), CommentedMap)
    except Exception:  # noqa: BLE001 - the broken suite's YAML errors are seeds for the text mutations only
        return False


BROKEN = sorted((ROOT / "tests/data/experiments/broken").glob("*.yaml"))
SEEDS = SHIPPED + [p for p in BROKEN if _is_mapping(p)]
TEXT_SEEDS = SHIPPED + BROKEN

# What `chaos run --dry-run` may answer without a lab: ok, usage, invalid input, an unreachable
# API or node, missing prerequisites, no such lab (docs: README's exit codes, chaos.errors.ExitCode).
DRY_RUN_CODES = {ExitCode.OK, ExitCode.USAGE, ExitCode.INVALID_INPUT, ExitCode.INFRASTRUCTURE,
                 ExitCode.PREREQUISITES, ExitCode.CONFLICT}
FUZZ = settings(max_examples=budget(120), deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module", autouse=True)
def no_lab_no_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """No cloud and no lab can be reached from a fuzzed run: an empty lab root, no clouds.yaml,
    reports and state in a temporary folder."""
    base = tmp_path_factory.mktemp("fuzz-env")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHAOS_LAB_ROOT", str(base / "labs"))
        mp.setenv("CHAOS_REPORTS_DIR", str(base / "reports"))
        mp.setenv("CHAOS_STATE_DIR", str(base / "state"))
        mp.setenv("OS_CLIENT_CONFIG_FILE", str(base / "no-clouds.yaml"))
        mp.delenv("OS_CLOUD", raising=False)
        mp.delenv("CHAOS_CONFIG", raising=False)
        yield base


def cli(*argv: str) -> tuple[int, str, str]:
    """``chaos ARGV`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse's usage errors
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


# --------------------------------------------------------------------------- mutations
def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.width = 4096
    return yaml


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key and list item of the document, depth first (the places a mutation can hit)."""
    out: list[tuple[Any, ...]] = []
    if isinstance(node, CommentedMap):
        for key, value in node.items():
            out.append(prefix + (key,))
            out.extend(_paths(value, prefix + (key,)))
    elif isinstance(node, CommentedSeq):
        for index, value in enumerate(node):
            out.append(prefix + (index,))
            out.extend(_paths(value, prefix + (index,)))
    return out


def _deep(depth: int) -> Any:
    value: Any = "bottom"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


HOSTILE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 2**31, 2**63, -(2**63) - 1, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["", " ", "\u202e\u200b", "ünïcødé", "🔥" * 20, "1e999", "-5s", "99999999999d", "0ms",
                     "nan", "inf", "10 s", "${HOME}", "$(reboot)", "'; rm -rf / #", "a" * 5000, "\x00", "\t"]),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    st.integers(min_value=20, max_value=120).map(_deep),
)


def mutate_value(text: str, data: st.DataObject) -> str:
    """One key's value replaced, one key renamed or one entry removed."""
    yaml = _yaml()
    document = yaml.load(text)
    paths = _paths(document)
    path = data.draw(st.sampled_from(paths), label="path")
    parent: Any = document
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    action = data.draw(st.sampled_from(["replace", "replace", "replace", "rename", "delete"]), label="action")
    if action == "replace":
        parent[last] = data.draw(HOSTILE, label="value")
    elif action == "delete":
        del parent[last]
    elif isinstance(parent, CommentedMap):
        new_key = data.draw(st.one_of(st.text(min_size=1, max_size=20), st.integers(), st.sampled_from(["<<", "~", "?"])),
                            label="new key")
        if new_key not in parent:
            parent.insert(list(parent).index(last), new_key, parent.pop(last))
    stream = io.StringIO()
    yaml.dump(document, stream)
    return stream.getvalue()


def mutate_text(text: str, data: st.DataObject) -> bytes:
    """Mutations of the bytes that a model of the document cannot express."""
    lines = text.splitlines(keepends=True)
    kind = data.draw(st.sampled_from(["duplicate", "anchor", "bomb", "bytes", "cut", "tag", "merge", "indent"]), label="kind")
    index = data.draw(st.integers(0, max(0, len(lines) - 1)), label="line")
    if kind == "duplicate":  # the same key twice in a mapping
        lines.insert(index, lines[index])
    elif kind == "anchor":  # an anchor on one value, its alias in place of another
        match = re.match(r"^(\s*[\w\"()]+:\s)(.+)$", lines[index].rstrip("\n"))
        other = data.draw(st.integers(0, max(0, len(lines) - 1)), label="alias line")
        alias = re.match(r"^(\s*[\w\"()]+:\s)(.+)$", lines[other].rstrip("\n"))
        if match and alias:
            lines[index] = f"{match[1]}&a {match[2]}\n"
            lines[other] = f"{alias[1]}*a\n" if other != index else lines[index]
    elif kind == "bomb":  # aliases of aliases: a small file that expands to a huge one
        bomb = 'x0: &x0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
        for i in range(1, 9):
            bomb += f"x{i}: &x{i} [" + ",".join([f"*x{i - 1}"] * 9) + "]\n"
        lines.insert(0, bomb)
    elif kind == "bytes":
        raw = "".join(lines).encode()
        offset = data.draw(st.integers(0, len(raw)), label="offset")
        junk = data.draw(st.sampled_from([b"\xff", b"\xc3", b"\xfe\xff", b"\x00", b"\xed\xa0\x80", b"\x80abc"]), label="junk")
        return raw[:offset] + junk + raw[offset:]
    elif kind == "cut":
        raw = "".join(lines).encode()
        return raw[: data.draw(st.integers(0, len(raw)), label="cut at")]
    elif kind == "tag":
        match = re.match(r"^(\s*[\w\"()]+:\s)(.+)$", lines[index].rstrip("\n"))
        tag = data.draw(st.sampled_from(["!!python/object/apply:os.system", "!!binary", "!!timestamp", "!!set", "!!omap",
                                         "!custom", "!!float", "!!int"]), label="tag")
        if match:
            lines[index] = f"{match[1]}{tag} {match[2]}\n"
    elif kind == "merge":
        lines.insert(0, "defaults: &d {max: 1}\n")
        match = re.match(r"^(\s*)[\w\"()]+:\s*$", lines[min(index + 1, len(lines) - 1)].rstrip("\n"))
        if match:
            lines.insert(min(index + 2, len(lines)), f"{match[1]}  <<: *d\n")
    elif kind == "indent":
        lines[index] = data.draw(st.sampled_from(["\t", "   ", " "]), label="indent") + lines[index]
    return "".join(lines).encode()


def check_validate(path: Path) -> None:
    code, out, err = cli("validate", str(path))
    assert "Traceback" not in err and "internal error" not in err, err
    assert code in (ExitCode.OK, ExitCode.INVALID_INPUT), (code, out, err)
    lines = out.strip().splitlines()
    assert lines, "validate printed nothing"
    if code == ExitCode.OK:
        assert lines == [lines[0]] and lines[0].startswith(f"{path}: ok: ")
        return
    for line in lines:  # every problem names the file and the line and column it is at
        assert re.match(rf"^{re.escape(str(path))}:\d+:\d+: \S", line), line


def check_dry_run(path: Path) -> None:
    code, out, err = cli("run", "--dry-run", str(path), "--lab", "fuzznolab")
    assert "Traceback" not in err and "internal error" not in err, err
    assert code in DRY_RUN_CODES, (code, out, err)
    if code == ExitCode.INVALID_INPUT and "problem" in err:  # the file's problems, each at its place
        assert re.search(rf"{re.escape(str(path))}:\d+:\d+: ", err), err
    if code != ExitCode.OK:
        assert err.strip().startswith("chaos: "), err


def _write(tmp: Path, name: str, content: bytes) -> Path:
    path = tmp / name
    path.write_bytes(content)
    return path


# --------------------------------------------------------------------------- the fuzzers
@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-files")


@FUZZ
@given(seed=st.sampled_from(SEEDS), data=st.data())
def test_validate_survives_one_mutated_field(workdir: Path, seed: Path, data: st.DataObject) -> None:
    text = mutate_value(seed.read_text(), data)
    check_validate(_write(workdir, f"field-{seed.name}", text.encode()))


@FUZZ
@given(seed=st.sampled_from(TEXT_SEEDS), data=st.data())
def test_validate_survives_one_mutated_byte_pattern(workdir: Path, seed: Path, data: st.DataObject) -> None:
    check_validate(_write(workdir, f"text-{seed.name}", mutate_text(seed.read_text(), data)))


@settings(FUZZ, max_examples=budget(40))
@given(seed=st.sampled_from(SHIPPED), data=st.data())
def test_dry_run_survives_one_mutation(workdir: Path, seed: Path, data: st.DataObject) -> None:
    if data.draw(st.booleans(), label="structured"):
        content = mutate_value(seed.read_text(), data).encode()
    else:
        content = mutate_text(seed.read_text(), data)
    check_dry_run(_write(workdir, f"dry-{seed.name}", content))


# --------------------------------------------------------------------------- regressions found
def test_dry_run_with_an_unusable_ssh_key_is_invalid_input_not_internal() -> None:
    """Found by this fuzzer's dry runs: an inventory whose key_file is no private key made
    asyncssh raise KeyImportError (a ValueError) inside a TaskGroup: exit 70. Now exit 3, with
    the node and the key file named."""
    code, out, err = cli("run", "--dry-run", str(ROOT / "experiments/keepalived-term.yaml"),
                         "--inventory", str(ROOT / "tests/data/inventories/valid/full.yaml"))
    assert code == ExitCode.INVALID_INPUT, err
    assert "internal error" not in err and "Traceback" not in err
    # the nodes are asked concurrently: the first to fail cancels the others, so any of them
    assert re.search(r"chaos: (network-1|network-2|gw-17): the SSH key file \S+id_test cannot be used", err), err


BOMB = 'x0: &x0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"x{i}: &x{i} [" + ",".join([f"*x{i - 1}"] * 9) + "]\n" for i in range(1, 9))
FOUND = {  # each was exit 70 or a hang before its fix in chaos/yamlfile.py
    "deep-brackets": ("title: " + "[" * 300 + "]" * 300 + "\n", 1, "nested more than 64 levels deep"),
    "deep-mappings": ("title: " + "{k: " * 300 + "1" + "}" * 300 + "\n", 1, "nested more than 64 levels deep"),
    "deep-but-parsable": ("title: " + "[" * 80 + "]" * 80 + "\n", 1, "nested more than 64 levels deep"),
    "alias-bomb": ("title: x\n" + BOMB, 7, "expands to more than 100000 values through aliases"),
    "nul-character": ("title: x\nfault: a\x00b\n", 2, "the character #x0000 is not allowed in YAML"),
    "set-tag-on-text": ("title: x\nfault: !!set bar\n", 2, "remove the tag"),
    "omap-tag-on-text": ("title: x\ntags: !!omap a\n", 2, "remove the tag"),
}


@pytest.mark.parametrize("name", sorted(FOUND))
def test_found_yaml_shapes_are_problems_at_a_line(workdir: Path, name: str) -> None:
    text, line, message = FOUND[name]
    path = _write(workdir, f"{name}.yaml", text.encode())
    check_validate(path)
    code, out, _ = cli("validate", str(path))
    assert code == ExitCode.INVALID_INPUT
    assert out.startswith(f"{path}:{line}:") and message in out, out


# --------------------------------------------------------------------------- dry runs that plan
EDGE = st.one_of(
    st.sampled_from([0, 1, 2, 3, 100, 255, 256, 2**31 - 1, 2**63 - 1, 2**63, 10**18, 0.0001, 99.999, 100.0, 1e300]),
    st.sampled_from(["0s", "1ms", "0.001s", "1e-9s", "9999999s", "10000000s", "999999h", "1h", "100000d", "2m"]),
)


def mutate_edge(text: str, data: st.DataObject) -> str:
    """One number or duration replaced with a value at the edge of what the schema may allow,
    so that more mutated files pass validation and reach planning."""
    yaml = _yaml()
    document = yaml.load(text)
    paths = []
    for path in _paths(document):
        node: Any = document
        for part in path:
            node = node[part]
        if isinstance(node, int | float) or (isinstance(node, str) and re.fullmatch(r"[0-9.]+(ms|s|m|h|d)", node)):
            paths.append(path)
    path = data.draw(st.sampled_from(paths), label="edge path")
    parent: Any = document
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = data.draw(EDGE, label="edge value")
    stream = io.StringIO()
    yaml.dump(document, stream)
    return stream.getvalue()


FAKE_FAULTS = [
    "  type: ha-link-down\n  replica: primary\n  duration: 0.3s",
    "  type: keepalived-kill\n  replica: primary\n  params: {signal: TERM, respawn_wait: 1s}",
    "  type: vrrp-partition\n  replica: backup\n  duration: 1s",
]


@settings(FUZZ, max_examples=budget(40))
@given(fault=st.sampled_from(FAKE_FAULTS), data=st.data())
def test_dry_run_on_the_fake_network_plans_or_refuses_a_mutated_experiment(fault: str, data: st.DataObject) -> None:
    """Past validation: a mutated experiment that is still valid reaches planning (the fake
    network node of tests/fakenode.py answers the dry run's read-only commands), where a value
    at the edge of what the schema allows (a huge seed, a huge limit) must plan or be refused."""
    from tests import fakenode

    with tempfile.TemporaryDirectory(prefix="fuzz-dry-") as tmp_name, pytest.MonkeyPatch.context() as mp:
        tmp = Path(tmp_name)
        net = fakenode.FakeNetwork(fakenode.topology())
        fakenode.install(mp, net)
        (tmp / "inv.yaml").write_text(fakenode.inventory_yaml(net.topology))
        text = fakenode.experiment_yaml("inv.yaml", fault)
        mutate = mutate_edge if data.draw(st.integers(0, 3), label="edge?") else mutate_value
        path = _write(tmp, "exp.yaml", mutate(text, data).encode())
        code, out, err = cli("run", "--dry-run", str(path))
        assert "Traceback" not in err and "internal error" not in err, err
        assert code in DRY_RUN_CODES | {ExitCode.ABORTED}, (code, out, err)
        assert net.injected() == []  # a dry run touches nothing
