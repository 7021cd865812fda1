"""Shared fixtures. Lab tests need root and the lab's Debian packages.

Two tiers: ``pytest -m "not lab"`` is the quick loop (no root, no lab, no kernel: the fake
network node of ``tests/fakenode.py`` stands in for the nodes), ``pytest -m lab`` the proof on
real namespaces and real processes (tests marked ``system`` run chaos serve, PostgreSQL,
Chromium or Neutron's reference code: they belong to the proof too). Every test that uses a lab fixture is marked ``lab`` here, whatever its file
says, and so is every test marked ``root`` (it needs root without a lab: a private PostgreSQL
run as another user, ``chaos lab up`` reaching its checks), so the quick tier never meets a
test it cannot run. Asked for lab tests (``-m`` selecting any) without root, the session stops
at once with the reason instead of skipping them one by one.

Outside CI a machine without the prerequisites skips lab tests with the reason (a plain
``pytest``); with ``CI=true`` a missing prerequisite fails the run instead, so CI can never
pass by skipping. One lab is shared by every test of a session (``lab`` fixture, advert_int
1); tests that need other lab options make their own with ``make_lab``. Every lab created here
is removed at the end, and a lab left behind by a crashed run is removed before a new one
starts (``Lab.up`` does that).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chaos.errors import ChaosError
from chaos.lab.manager import Lab, check_prerequisites
from chaos.lab.spec import LabOptions, LabSpec
from chaos.model import Topology
from tests import fakenode

LAB_ROOT = Path(os.environ.get("CHAOS_TEST_LAB_ROOT", "/run/chaos-lab"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# The CLI of the environment under test, whatever else is on PATH (a fresh machine has no other).
CHAOS_CLI = (sys.executable, "-m", "chaos")


def budget(examples: int) -> int:
    """A property test's or fuzzer's number of examples: all of them in CI (the same inputs every
    run: they are derandomized), a third in the quick loop, whose point is seconds."""
    return examples if IN_CI else max(10, examples // 3)


def lab_name(suffix: str = "") -> str:
    """Names unique per test process, so concurrent test runs never share a lab."""
    return f"t{os.getpid() % 100000}{suffix}"[:10]


LAB_FIXTURES = frozenset({"lab", "kolla_lab", "still_lab", "make_lab"})


@pytest.hookimpl(tryfirst=True)  # before the -m selection, which reads the markers added here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``lab`` every test that uses a lab (directly or through another fixture), needs root,
    or is a ``system`` test (it runs chaos serve, PostgreSQL, Chromium or Neutron's reference
    code: the proof that the pieces work together, seconds each, not the quick loop's job)."""
    for item in items:
        uses_lab = bool(LAB_FIXTURES & set(getattr(item, "fixturenames", ())))
        heavy = item.get_closest_marker("root") or item.get_closest_marker("system")
        if (uses_lab or heavy) and not item.get_closest_marker("lab"):
            item.add_marker(pytest.mark.lab)


def pytest_collection_finish(session: pytest.Session) -> None:
    """``-m`` that selects lab tests, without root: stop now, saying why (no page of skips)."""
    if os.geteuid() == 0 or not session.config.option.markexpr:
        return
    selected = [item.nodeid for item in session.items if item.get_closest_marker("lab")]
    if selected:
        pytest.exit(
            f"{len(selected)} selected test(s) are lab tests (e.g. {selected[0]}): they need root "
            "(network, mount and PID namespaces). Run them as root, or run the quick tier: pytest -m \"not lab\"",
            returncode=6,  # chaos's own exit code for missing prerequisites
        )


def require_lab_prerequisites() -> None:
    try:
        check_prerequisites()
    except ChaosError as exc:
        if IN_CI:
            pytest.fail(f"lab prerequisites missing in CI: {exc}")
        pytest.skip(f"lab prerequisites missing: {exc}")


class LabHandle:
    """A running lab for tests: its manager, its plan and its root folder."""

    def __init__(self, lab: Lab, spec: LabSpec) -> None:
        self.lab = lab
        self.spec = spec

    @property
    def name(self) -> str:
        return self.lab.name

    @property
    def dir(self) -> Path:
        return self.lab.dir

    def status(self) -> dict:
        return self.lab.status()


@pytest.fixture(scope="session", autouse=True)
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``chaos run`` keeps leases and history in CHAOS_STATE_DIR (default /var/lib/chaos): the
    tests' runs (and the CLIs they start) use a folder of their own instead."""
    path = tmp_path_factory.mktemp("chaos-state")
    os.environ["CHAOS_STATE_DIR"] = str(path)
    return path


@pytest.fixture
def fake_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., fakenode.FakeNetwork]]:
    """Factory: ``fake_network(topology=None, **options)`` models the topology's nodes
    (``tests/fakenode.py``) and makes every SshPool the tool opens in this test reach them.
    A command the fake does not model fails the test at the end, even if the tool swallowed it."""
    made: list[fakenode.FakeNetwork] = []

    def make(topology: Topology | None = None, **options: object) -> fakenode.FakeNetwork:
        net = fakenode.FakeNetwork(topology or fakenode.topology(), **options)  # type: ignore[arg-type]
        fakenode.install(monkeypatch, net)
        made.append(net)
        return net

    yield make
    for net in made:
        assert not net.unmodelled, f"commands the fake does not model: {net.unmodelled}"


@pytest.fixture(scope="session")
def make_lab() -> Iterator[Callable[..., LabHandle]]:
    """Factory: ``make_lab(suffix, **options)`` brings up a lab that is removed at session end."""
    created: list[Lab] = []
    by_options: dict[tuple[str, str], LabHandle] = {}

    def make(suffix: str = "", *, timeout: float = 180, **options: object) -> LabHandle:
        """The same suffix and options give the same lab; other options get a lab of their own.
        ``timeout``: for the bring-up (the neutron backend needs minutes on a loaded machine)."""
        require_lab_prerequisites()
        key = (suffix, repr(sorted(options.items())))
        if key in by_options:
            return by_options[key]
        taken = {lab.name for lab in created}
        name, n = lab_name(suffix), 1
        while name in taken:
            n += 1
            name = lab_name(f"{suffix}{n}")
        lab = Lab(LAB_ROOT, name)
        created.append(lab)
        spec = lab.up(LabOptions(name=lab.name, **options), timeout=timeout)
        by_options[key] = LabHandle(lab, spec)
        return by_options[key]

    yield make
    for lab in created:
        lab.down()


@pytest.fixture(scope="session")
def lab(make_lab: Callable[..., LabHandle]) -> LabHandle:
    """The shared lab: 3 nodes, 4 routers, 2 replicas, advert_int 1."""
    return make_lab("", nodes=3, routers=4, replicas=2, advert_int=1, respawn_interval=2.0, boot_delay=2.0)


@pytest.fixture(scope="session")
def kolla_lab(make_lab: Callable[..., LabHandle]) -> LabHandle:
    """A lab of the kolla shape: agents in a neutron_l3_agent container, kolla's paths,
    keepalived in per-router sidecars, reached with `docker exec` (chaos.deployment)."""
    return make_lab("k", nodes=3, routers=2, replicas=2, advert_int=1, respawn_interval=2.0, boot_delay=2.0,
                    profile="kolla")


@pytest.fixture(scope="session")
def still_lab(make_lab: Callable[..., LabHandle]) -> LabHandle:
    """A lab whose agents never respawn keepalived (check_child_processes_interval 0): whatever
    brings a dead keepalived back there is the tool (its undo, its node-side dead-man)."""
    return make_lab("n", routers=2, nodes=2, advert_int=1, respawn_interval=0)


def wait_lab_ready(handle: LabHandle, timeout: float = 60.0, *, data_plane: bool = True) -> None:
    """Block until every agent is synced, every router has exactly one primary and (with
    ``data_plane``) every floating IP answers a ping from the vantage point: after a healed
    partition the upstream ARP entry can point at the old primary for a while (no GARP is sent),
    and the next test must not start inside that black hole."""
    import subprocess
    import time

    deadline = time.monotonic() + timeout
    problems: list[str] = []
    while time.monotonic() < deadline:
        problems = handle.lab.not_ready(handle.spec)
        if not problems and data_plane:
            problems = [
                f"{fip.address} does not answer"
                for router in handle.spec.routers
                for fip in router.floating_ips
                if subprocess.run(
                    ["ip", "netns", "exec", handle.spec.vantage.netns, "ping", "-c", "1", "-W", "1", fip.address],
                    capture_output=True, timeout=10,
                ).returncode != 0
            ]
        if not problems:
            return
        time.sleep(0.2)
    raise AssertionError(f"lab not ready after {timeout}s: {problems}")
