"""A real browser renders report.html: headless Chromium (Debian's ``chromium``) loads the file
from a file:// URL with networking features off, and the test reads back the DOM it built and
the console it logged. Screenshots are kept under test-artifacts/ (git-ignored) for people.

Outside CI a machine without chromium skips these tests; with CI=true it fails them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from chaos.analysis.summary import load_summary
from chaos.report.render import render_reports
from tests.test_report_journals import RouterPlan, synth_run

pytestmark = pytest.mark.system  # see tests/conftest.py: the proof tier

ROOT = Path(__file__).resolve().parent.parent

def _artifacts() -> Path:
    """test-artifacts/ in the checkout; in a checkout the tests may not write to (another user's),
    a folder of this user's under the temp directory."""
    folder = ROOT / "test-artifacts"
    return folder if os.access(ROOT, os.W_OK) or folder.is_dir() and os.access(folder, os.W_OK) else \
        Path(tempfile.gettempdir()) / f"chaos-test-artifacts-{os.geteuid()}"


ARTIFACTS = _artifacts()
LAB_RUN = ROOT / "tests" / "data" / "runs" / "20261125T141014Z-vrrp-partition-b8dd21"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
    "--enable-logging=stderr", "--v=0",
]
CONSOLE_ERROR = re.compile(r"Uncaught|ERROR:CONSOLE|CONSOLE\(\d+\)\].*(Error|error)")


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if IN_CI:
            pytest.fail("chromium is not installed (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return exe


def browse(page: Path | str, *extra: str) -> tuple[str, str]:
    """Run Chromium once on ``page`` (a file, or a URL such as the operator's dashboard);
    returns (stdout, stderr). Bounded by a timeout."""
    target = page if isinstance(page, str) else page.resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="chaos-chromium-") as profile:
        proc = subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", *extra, target],
            capture_output=True, text=True, timeout=90, check=False, env={**os.environ, "HOME": profile},
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr


def console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if CONSOLE_ERROR.search(line)]


def test_console_errors_are_detected(tmp_path: Path) -> None:
    """The console check can fail: a page that throws is caught by it."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><script>undefinedFunction();</script></body></html>")
    _, stderr = browse(page, "--dump-dom")
    assert console_errors(stderr), stderr[-2000:]


@pytest.mark.parametrize("which", ["lab-run", "fifty-routers"])
def test_chromium_draws_the_report(which: str, tmp_path: Path) -> None:
    if which == "lab-run":
        folder = tmp_path / LAB_RUN.name
        shutil.copytree(LAB_RUN, folder)
        height = 2600
    else:
        plans = [RouterPlan(outage=1.0 + (i % 9) * 0.8, tcp_drop=i % 13 == 0, split_brain=1.5 if i % 11 == 0 else 0.0)
                 for i in range(50)]
        folder = synth_run(tmp_path / "fifty", plans, interval=0.2, warmup=3, hold=6, settle=3)
        height = 3400
    render_reports(folder)
    summary = load_summary(folder / "summary.json")
    targeted = [r.router_id for r in summary.routers if r.targeted]
    page = folder / "report.html"

    dom, stderr = browse(page, "--dump-dom", "--virtual-time-budget=3000")
    assert not console_errors(stderr), console_errors(stderr)
    assert 'data-rendered="yes"' in dom, "the page's script did not run to its end"
    lanes = re.search(r'data-router-lanes="(\d+)"', dom)
    assert lanes and int(lanes.group(1)) == len(targeted) > 0
    timelines = re.search(r'data-router-timelines="(\d+)"', dom)
    assert timelines and int(timelines.group(1)) == len(targeted)
    assert sorted(re.findall(r'<g class="router-lane" data-router-id="([^"]+)"', dom)) == sorted(targeted)
    assert f'data-verdict="{summary.verdict}"' in dom

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"report-{which}.png"
    shot.unlink(missing_ok=True)
    _, stderr = browse(page, f"--screenshot={shot}", f"--window-size=1100,{height}")
    assert not console_errors(stderr), console_errors(stderr)
    assert shot.is_file() and shot.stat().st_size > 20_000  # a blank page is a few kB
