"""Neutron's own rendering of HA router replicas, for the fidelity tests.

The tests run under the project's .venv, which must not contain Neutron's libraries; Neutron
lives in .venv-neutron (``scripts/install-neutron-reference.sh``). This helper therefore never
imports neutron: it runs ``tests/fidelity/neutron_reference.py`` (and ``neutron_api_reference.py``) under that venv's interpreter
and exchanges JSON with it (the input and output shapes are in that script's docstring).
"""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_PYTHON = REPO_ROOT / ".venv-neutron" / "bin" / "python"
SCRIPT = REPO_ROOT / "tests" / "fidelity" / "neutron_reference.py"
API_SCRIPT = REPO_ROOT / "tests" / "fidelity" / "neutron_api_reference.py"
INSTALL_SCRIPT = "scripts/install-neutron-reference.sh"
TIMEOUT_S = 120.0


class NeutronReferenceUnavailable(RuntimeError):
    """.venv-neutron is missing: the reference cannot run until it is installed."""


class NeutronReferenceError(RuntimeError):
    """The reference script refused the input or Neutron failed; carries its message."""


def available() -> bool:
    """Whether .venv-neutron exists (for skip conditions); says nothing about its health."""
    return VENV_PYTHON.is_file()


def require_reference(in_ci: bool) -> None:
    """Skip a test without Neutron's reference code; in CI (``in_ci``) fail it instead."""
    import pytest

    if not available():
        message = f"Neutron's reference code is not installed: bash {INSTALL_SCRIPT}"
        if in_ci:
            pytest.fail(message)
        pytest.skip(message)


def neutron_reference(spec: dict[str, Any]) -> dict[str, Any]:
    """What Neutron renders for ``spec``: ``{"defaults": {...}, "routers": {id: {...}}}``.

    Results are cached per input (the script takes about two seconds, mostly importing
    Neutron); every call returns a fresh copy, so callers may modify it.
    """
    if not available():
        raise NeutronReferenceUnavailable(
            f"{VENV_PYTHON} not found: run `bash {INSTALL_SCRIPT}` (from {REPO_ROOT}) to "
            "install Neutron's reference code")
    return json.loads(_run(json.dumps(spec, sort_keys=True)))


def neutron_api_reference(request: dict[str, Any]) -> dict[str, Any]:
    """What neutron-server's own extension, filter and policy code answers (input and output
    shapes in tests/fidelity/neutron_api_reference.py)."""
    if not available():
        raise NeutronReferenceUnavailable(
            f"{VENV_PYTHON} not found: run `bash {INSTALL_SCRIPT}` (from {REPO_ROOT}) to "
            "install Neutron's reference code")
    return json.loads(_run(json.dumps(request, sort_keys=True), API_SCRIPT))


@functools.lru_cache(maxsize=64)
def _run(document: str, script: Path = SCRIPT) -> str:
    # -I: isolated mode, so the caller's PYTHONPATH, PYTHONHOME or user site-packages (this
    # project's .venv, for instance) cannot leak into Neutron's interpreter.
    try:
        proc = subprocess.run(
            [str(VENV_PYTHON), "-I", str(script)],
            input=document, capture_output=True, text=True, timeout=TIMEOUT_S,
            cwd=REPO_ROOT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise NeutronReferenceError(
            f"{script.name} did not finish within {TIMEOUT_S:.0f} s") from exc
    if proc.returncode != 0:
        message = proc.stderr.strip().splitlines()[-1:] or ["(no message)"]
        raise NeutronReferenceError(
            f"{script.name} exited with {proc.returncode}: {message[0]}")
    return proc.stdout
