#!/usr/bin/env bash
# Installs Neutron's own code into .venv-neutron/, the reference the fidelity tests compare the
# lab against (tests/fidelity/neutron_reference.py runs there). It is a venv of its own because
# Neutron's libraries (oslo.*, eventlet, SQLAlchemy...) must not leak into the project's .venv.
# neutron==29.0.0 goes in with --no-deps (its full requirements pull in the API server, OVN and
# OVS machinery), then only the libraries its L3 HA agent modules import:
# tests/fidelity/requirements-neutron.txt says why each one is there.
#
# Idempotent: does nothing when .venv-neutron already imports those modules and was built from
# the current requirements file. Quiet: pip's output is kept in a log shown only on failure.
# Interpreter: ${PYTHON:-python3} (Python >= 3.11, with the venv module: Debian's python3-venv).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-neutron"
REQUIREMENTS="$ROOT/tests/fidelity/requirements-neutron.txt"
STAMP="$VENV/.requirements.sha256"
NEUTRON="neutron==29.0.0"
PYTHON="${PYTHON:-python3}"
CHECK='
import importlib.metadata
import neutron.agent.l3.ha_router, neutron.agent.linux.keepalived
import neutron.agent.linux.conntrackd, neutron.agent.linux.external_process
import neutron.agent.l3_agent, neutron.agent.l3.ha  # also used by neutron_reference.py
assert importlib.metadata.version("neutron") == "29.0.0"
'

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONWARNINGS=ignore

wanted="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
imports_ok() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "$CHECK" >/dev/null 2>&1
}
if imports_ok && [ "$(cat "$STAMP" 2>/dev/null)" = "$wanted" ]; then
    exit 0
fi

log="$(mktemp "${TMPDIR:-/tmp}/install-neutron-reference.XXXXXX")"
trap 'rm -f "$log"' EXIT
run() {
    if ! "$@" >>"$log" 2>&1; then
        echo "install-neutron-reference.sh: failed: $*" >&2
        cat "$log" >&2
        exit 1
    fi
}

# A venv whose interpreter no longer runs (Python upgraded or removed) is rebuilt from scratch.
if [ -e "$VENV" ] && ! "$VENV/bin/python" -c '' >/dev/null 2>&1; then
    rm -rf "$VENV"
fi
[ -x "$VENV/bin/python" ] || run "$PYTHON" -m venv "$VENV"
rm -f "$STAMP"
run "$VENV/bin/python" -m pip install -q --no-deps "$NEUTRON"
# --no-warn-conflicts: Neutron's declared requirements are deliberately not all installed.
run "$VENV/bin/python" -m pip install -q --no-warn-conflicts -r "$REQUIREMENTS"
if ! "$VENV/bin/python" -c "$CHECK" >>"$log" 2>&1; then
    echo "install-neutron-reference.sh: $VENV does not import Neutron's L3 HA modules:" >&2
    cat "$log" >&2
    exit 1
fi
echo "$wanted" >"$STAMP"
echo "install-neutron-reference.sh: Neutron reference installed in $VENV"
