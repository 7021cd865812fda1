"""Secrets never reach what a run writes (issue 14, part 5).

A run against the lab's cloud authenticates with a password (clouds.yaml, ``auth_type:
password``) or with a token (``auth_type: v3token``), and keystoneauth gets a new token either
way. Whatever the run writes, someone else reads: the run folder goes to CI artifacts and
dashboards, the journal into bug reports, logs into a log system, the state directory is shared
between operators. So every byte of all of it is searched for the password, the given token and
any token the lab's Keystone issues (they all start ``gAAAA``): run folder (journal, reports,
summary, junit), the state directory, the HOME the runs had, stdout and stderr of ``chaos run``
(JSON logs at debug level, the most talkative setting), ``chaos report`` and ``chaos recover``.

The runs are real: agent-evacuate through the lab's Neutron API (a write, a read-back, an undo),
the lab's nodes over SSH.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from chaos.lab.keystone import IDENTITY_PREFIX, load_config
from tests.conftest import CHAOS_CLI, LabHandle, wait_lab_ready
from tests.interruption import experiment_text, variant

# Every token the lab's Keystone issues looks so (chaos.lab.keystone): one pattern finds the
# tokens the runs were given by keystoneauth, which the test cannot know in advance.
TOKEN_PATTERN = re.compile(rb"gAAAA[A-Za-z0-9_-]{20,}")


@pytest.fixture(scope="module")
def secrets_lab(make_lab: Callable[..., LabHandle]) -> LabHandle:
    """The interruption campaign's lab (the same options give the same lab in one session):
    the evacuation moves replicas, which the shared lab's other tests must not see."""
    return make_lab("i", nodes=3, routers=2, replicas=2, advert_int=1, respawn_interval=2.0, boot_delay=2.0)


def issue_token(lab: LabHandle, password: str) -> str:
    """A token from the lab's Keystone, as a user gets one (``openstack token issue``)."""
    config = load_config(lab.dir)
    api = json.loads((lab.dir / "services.json").read_text())["api_url"]
    body = {"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": config.user, "password": password, "domain": {"name": config.domain}}}},
        "scope": {"project": {"name": config.project, "domain": {"name": config.domain}}},
    }}
    request = urllib.request.Request(f"{api}{IDENTITY_PREFIX}/v3/auth/tokens", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - the lab's loopback URL
        return answer.headers["X-Subject-Token"]


def token_clouds_yaml(lab: LabHandle, token: str, path: Path) -> str:
    """clouds.yaml with one cloud that authenticates with ``token`` (no password in it)."""
    config = load_config(lab.dir)
    yaml = YAML()
    entry = yaml.load((lab.dir / "clouds.yaml").read_text())["clouds"][lab.name]
    auth = entry["auth"]
    entry["auth_type"] = "v3token"
    entry["auth"] = {"auth_url": auth["auth_url"], "token": token, "project_name": config.project,
                     "project_domain_name": config.domain}
    name = f"{lab.name}-tok"
    with path.open("w") as f:
        yaml.dump({"clouds": {name: entry}}, f)
    return name


def findings(blobs: dict[str, bytes], secrets: dict[str, str]) -> list[str]:
    """Where any secret, or anything shaped like a lab token, appears: one line each."""
    found = []
    for where, data in blobs.items():
        for what, secret in secrets.items():
            if secret.encode() in data:
                found.append(f"{what} in {where}")
        for match in set(TOKEN_PATTERN.findall(data)):
            found.append(f"a token ({match[:9].decode()}...) in {where}")
    return sorted(set(found))


def files_under(*roots: Path) -> dict[str, bytes]:
    """Every file below the roots (bounded: at most 5000 files)."""
    out: dict[str, bytes] = {}
    for root in roots:
        for path in sorted(root.rglob("*"))[:5000]:
            if path.is_file() and not path.is_symlink():
                out[str(path)] = path.read_bytes()
    return out


def test_findings_sees_a_secret(tmp_path: Path) -> None:
    """The search itself can fail: a secret or a token in a file is found."""
    (tmp_path / "a.log").write_text('{"event": "auth", "password": "pw-123456"}')
    (tmp_path / "b.json").write_text("X-Auth-Token: gAAAAabcdefghijklmnopqrstuvwxyz0123")
    found = findings(files_under(tmp_path), {"the password": "pw-123456"})
    assert found == [f"a token (gAAAAabcd...) in {tmp_path / 'b.json'}", f"the password in {tmp_path / 'a.log'}"]


@pytest.mark.parametrize("auth", ["password", "token"])
def test_run_writes_no_secret(secrets_lab: LabHandle, tmp_path: Path, auth: str) -> None:
    wait_lab_ready(secrets_lab, timeout=90)
    password = load_config(secrets_lab.dir).password
    secrets = {"the password": password}
    home, state, reports = tmp_path / "home", tmp_path / "state", tmp_path / "reports"
    for d in (home, state, reports):
        d.mkdir()
    if auth == "password":
        clouds, cloud = secrets_lab.dir / "clouds.yaml", secrets_lab.name
    else:
        token = issue_token(secrets_lab, password)
        secrets["the given token"] = token
        clouds = tmp_path / "clouds.yaml"
        cloud = token_clouds_yaml(secrets_lab, token, clouds)
    exp = tmp_path / "evacuate.yaml"
    exp.write_text(experiment_text(variant("agent-evacuate"), cloud))
    env = {**os.environ, "OS_CLIENT_CONFIG_FILE": str(clouds), "HOME": str(home), "CHAOS_STATE_DIR": str(state),
           "OS_CLOUD": cloud}
    logs: dict[str, bytes] = {}

    def chaos(*argv: str) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run([*CHAOS_CLI, "--json-logs", "--log-level", "debug", *argv], capture_output=True,
                              env=env, timeout=180, cwd=tmp_path)
        logs[f"stdout of chaos {argv[0]}"] = proc.stdout
        logs[f"stderr of chaos {argv[0]}"] = proc.stderr
        return proc

    run = chaos("run", "--reports-dir", str(reports), str(exp))
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    folders = [p for p in reports.iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    journal = (folders[0] / "journal.jsonl").read_text()
    assert '"fault.undone"' in journal and '"fault.injected"' in journal, "the run did not go through the API"
    assert any(json.loads(line).get("kind") == "run.started" for line in journal.splitlines())
    assert chaos("report", str(folders[0])).returncode == 0
    assert chaos("recover", str(folders[0])).returncode == 0
    lines = [json.loads(line) for line in logs["stderr of chaos run"].splitlines() if line.startswith(b"{")]
    assert len(lines) >= 5 and all("event" in line for line in lines), "no JSON log lines: the search would prove little"
    written = files_under(reports, state, home)
    assert any(name.endswith("report.html") for name in written), sorted(written)
    found = findings({**written, **logs}, secrets)
    assert not found, f"secrets in what the {auth} run wrote: {found}"
    wait_lab_ready(secrets_lab, timeout=90)
