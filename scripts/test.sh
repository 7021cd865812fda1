#!/usr/bin/env bash
# Installs everything, then runs the whole test suite (lab tests included; they need root).
set -euo pipefail
cd "$(dirname "$0")/.."
# --with-neutron: the neutron backend's tests (tests/test_neutron_backend.py) run real Neutron.
bash scripts/install.sh --with-neutron
# Neutron's own code, for the fidelity tests (a venv of its own: .venv-neutron).
bash scripts/install-neutron-reference.sh
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "test.sh: pytest collected no tests; that is a failure" >&2
    exit 1
fi
exit "$status"
