"""The registry finds faults and probes (built in, and plugins through entry points), leaves out
a plugin that cannot load without stopping the tool, and says why where a user meets it:
``chaos validate`` on an experiment that uses it, ``chaos doctor``. The example plugin under
``examples/chaos-example-plugin`` is installed as a user would (pip, offline) and run on the
shared lab.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from chaos.commands.doctor import plugin_checks
from chaos.errors import ExitCode
from chaos.experiment.registry import FAULT_GROUP, PROBE_GROUP, load, registry
from chaos.experiment.schema import DEFAULT_PROBES, FAULT_SPECS, FAULT_TYPES, PROBE_NAMES
from chaos.journal import read_journal
from tests.conftest import CHAOS_CLI, LabHandle
from tests.test_engine import lab_is_clean

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "chaos-example-plugin"
BUILTIN_FAULTS = {"agent-evacuate", "gateway-reboot", "ha-link-down", "keepalived-kill", "vrrp-partition"}
BUILTIN_PROBES = {"icmp", "tcp", "new_connections", "primary", "conntrack", "arp", "api_lag"}


# --------------------------------------------------------------------------- built in
def test_every_builtin_fault_and_probe_is_found_and_shapes_the_schema() -> None:
    reg = registry()
    assert set(reg.faults) >= BUILTIN_FAULTS and set(reg.probes) >= BUILTIN_PROBES
    assert reg.problems == [], [p.describe() for p in reg.problems]
    assert set(FAULT_SPECS) == set(reg.faults) and list(FAULT_TYPES) == sorted(reg.faults)
    assert set(PROBE_NAMES) == set(reg.probes)
    switched_on = {name for name, value in DEFAULT_PROBES if name in reg.probes and value is not None}
    assert switched_on == {name for name, kind in reg.probes.items() if kind.default_on} == {"icmp", "primary"}
    assert {name for name, cls in reg.faults.items() if cls.scope == "node"} == {"agent-evacuate", "gateway-reboot"}
    for name in BUILTIN_FAULTS:
        assert reg.sources[(FAULT_GROUP, name)].startswith("built-in module chaos.faults.")


# --------------------------------------------------------------------------- plugins
PLUGIN = '''
from chaos.faults.ha_link_down import HaLinkDown
from chaos.probes.primary import PrimaryKind


class HaLinkFlap(HaLinkDown):
    """A new fault type that reuses a built-in one's behaviour."""
    type = "ha-link-flap"


class PrimaryAgain(PrimaryKind):
    name = "primary_again"
    default_on = False


class Abstract(HaLinkDown.__mro__[1]):  # chaos.faults.base.Fault itself: nothing implemented
    type = "abstract-fault"


class Clash(HaLinkDown):
    type = "keepalived-kill"


class BadName(HaLinkDown):
    type = "Bad Name"


NOT_A_CLASS = 42
'''


def entry(name: str, value: str, group: str) -> metadata.EntryPoint:
    return metadata.EntryPoint(name=name, value=value, group=group)


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "chaos_test_plugin.py").write_text(PLUGIN)
    (tmp_path / "chaos_test_broken.py").write_text('raise ImportError("needs libfrobnicate")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    return "chaos_test_plugin"


def test_a_plugin_adds_its_fault_and_probe(plugin_module: str) -> None:
    reg = load({
        FAULT_GROUP: [entry("ha-link-flap", f"{plugin_module}:HaLinkFlap", FAULT_GROUP)],
        PROBE_GROUP: [entry("primary_again", f"{plugin_module}:PrimaryAgain", PROBE_GROUP)],
    })
    assert reg.problems == []
    assert reg.fault("ha-link-flap").__name__ == "HaLinkFlap" and reg.fault("ha-link-flap").scope == "router"
    assert reg.probes["primary_again"].__name__ == "PrimaryAgain"
    assert reg.sources[(FAULT_GROUP, "ha-link-flap")] == f"entry point ha-link-flap = {plugin_module}:HaLinkFlap"
    assert set(reg.faults) >= BUILTIN_FAULTS, "a plugin adds to the built-in kinds"


@pytest.mark.parametrize(
    ("group", "name", "value", "why"),
    [
        (FAULT_GROUP, "frob", "chaos_test_broken:Frob", "cannot be imported: ImportError: needs libfrobnicate"),
        (FAULT_GROUP, "forty-two", "chaos_test_plugin:NOT_A_CLASS", "chaos_test_plugin:NOT_A_CLASS is not a Fault subclass"),
        (PROBE_GROUP, "flap", "chaos_test_plugin:HaLinkFlap", "is not a ProbeKind subclass"),
        (FAULT_GROUP, "flap", "chaos_test_plugin:HaLinkFlap", "the entry point's name must be the type it registers ('ha-link-flap')"),
        (FAULT_GROUP, "keepalived-kill", "chaos_test_plugin:Clash",
         "type 'keepalived-kill' is taken by built-in module chaos.faults.keepalived_kill"),
        (FAULT_GROUP, "Bad Name", "chaos_test_plugin:BadName", "is not a name such as my-fault"),
        (FAULT_GROUP, "abstract-fault", "chaos_test_plugin:Abstract", "it does not implement fault_commands"),
        (FAULT_GROUP, "missing", "chaos_test_plugin:Missing", "cannot be imported: AttributeError"),
    ],
)
def test_a_plugin_that_cannot_load_is_left_out_with_the_reason(
    plugin_module: str, group: str, name: str, value: str, why: str
) -> None:
    reg = load({group: [entry(name, value, group)]})
    assert [p.name for p in reg.problems] == [name]
    problem = reg.problem_for(group, name)
    assert problem is not None and why in problem.describe(), problem
    assert f"entry point {name} = {value}" in problem.describe()
    table = reg.faults if group == FAULT_GROUP else reg.probes
    assert set(table) == (BUILTIN_FAULTS if group == FAULT_GROUP else BUILTIN_PROBES), "the built-ins are untouched"
    if name == "keepalived-kill":
        assert table[name].__module__ == "chaos.faults.keepalived_kill", "a plugin never replaces a built-in"


def test_doctor_lists_plugins_and_warns_of_broken_ones(plugin_module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = load({
        FAULT_GROUP: [entry("ha-link-flap", f"{plugin_module}:HaLinkFlap", FAULT_GROUP),
                      entry("frob", "chaos_test_broken:Frob", FAULT_GROUP)],
    })
    monkeypatch.setattr("chaos.commands.doctor.registry", lambda: reg)
    checks = {(c.status, c.detail) for c in plugin_checks()}
    assert ("ok", f"fault ha-link-flap: entry point ha-link-flap = {plugin_module}:HaLinkFlap") in checks
    warned = [detail for status, detail in checks if status == "warn"]
    assert len(warned) == 1 and "needs libfrobnicate" in warned[0]


# --------------------------------------------------------------------------- as a user meets it
def fake_distribution(site: Path, name: str, entry_points: str) -> None:
    """An installed distribution as importlib.metadata finds it: a dist-info folder on the path."""
    info = site / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)


def chaos(*args: str, pythonpath: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([*CHAOS_CLI, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


EXPERIMENT = """title: uses a plugin's fault
target:
  routers: {name: "*"}
  mode: all
  source: lab
fault:
  type: frob
  replica: primary
  duration: 2s
steady_state_hypothesis:
  title: t
  tolerances:
    primaries_after: {equals: 1}
"""


def test_validate_names_the_plugin_that_failed_and_why(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "frob_plugin.py").write_text('raise ImportError("needs libfrobnicate")\n')
    fake_distribution(site, "frob_plugin", "[chaos.faults]\nfrob = frob_plugin:Frob\n")
    exp = tmp_path / "uses-frob.yaml"
    exp.write_text(EXPERIMENT)
    proc = chaos("validate", str(exp), pythonpath=site)
    out = proc.stdout + proc.stderr
    assert proc.returncode == ExitCode.INVALID_INPUT, out
    assert f"{exp}:7" in out, f"the fault type's line: {out}"
    assert "the plugin that provides 'frob' could not be loaded" in out and "needs libfrobnicate" in out, out
    assert "(distribution frob_plugin)" in out, out
    assert "Traceback" not in out


@pytest.fixture(scope="module")
def example_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin installed as a user would, offline: pip into a folder of its own."""
    target = tmp_path_factory.mktemp("example-plugin")
    source = tmp_path_factory.mktemp("example-plugin-source") / EXAMPLE.name
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))  # pip builds in place
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return target


def test_the_example_plugins_experiment_validates_with_it_and_not_without(example_plugin: Path) -> None:
    exp = EXAMPLE / "experiments" / "floating-ip-drop.yaml"
    proc = chaos("validate", str(exp), pythonpath=example_plugin)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    without = chaos("validate", str(exp))
    out = without.stdout + without.stderr
    assert without.returncode == ExitCode.INVALID_INPUT and "floating-ip-drop" in out and "keepalived-kill" in out, out
    assert "connect_time" in out, f"the plugin's probe is unknown too: {out}"


def test_the_example_plugin_runs_on_the_lab(example_plugin: Path, lab: LabHandle, tmp_path: Path) -> None:
    """Its fault darkens one router's floating IPs without a failover, its probe measures
    connections through it, its metrics judge the run, and its undo leaves the lab clean."""
    lab_is_clean(lab)
    exp = EXAMPLE / "experiments" / "floating-ip-drop.yaml"
    proc = chaos("run", "--lab", lab.name, "--reports-dir", str(tmp_path), str(exp), pythonpath=example_plugin,
                 timeout=180)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    folder = Path(proc.stdout.strip().splitlines()[-1])
    journal = list(read_journal(folder / "journal.jsonl"))
    kinds = [e["kind"] for e in journal]
    assert "fault.injected" in kinds and "fault.undone" in kinds, kinds
    raw = [json.loads(line)["kind"] for line in (folder / "journal.jsonl").read_text().splitlines()]
    assert "probe.connect_time" in raw, "the plugin's probe journals its own events"
    assert "probe.connect_time" not in kinds, "a reader without the plugin passes over its events"
    injected = next(e for e in journal if e["kind"] == "fault.injected")
    assert injected["fault"] == "floating-ip-drop"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["verdict"] == "held"
    judged = {t["name"]: t for t in summary["tolerances"]}
    assert judged["connect_failures"]["value"] >= 5 and not judged["connect_failures"]["skipped"], judged
    assert judged["transitions"]["value"] == 0, "keepalived saw nothing: no failover"
    lab_is_clean(lab)


def test_no_shipped_experiment_needs_a_plugin() -> None:
    """The shipped experiments never depend on a plugin (a fresh install runs them all)."""
    for path in sorted((ROOT / "experiments").glob("*.yaml")):
        assert "floating-ip-drop" not in path.read_text(), path
