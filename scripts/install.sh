#!/usr/bin/env bash
# Installs what the lab and the tests need on Debian 12, as root: Debian packages, then the
# project in a virtual environment at .venv (Debian's own Python refuses system-wide pip).
# --with-neutron also installs the neutron backend (Debian's Neutron Zed, MariaDB, RabbitMQ;
# scripts/install-neutron-backend.sh: about 2 minutes and 800 MB, nothing started).
set -euo pipefail
cd "$(dirname "$0")/.."
with_neutron=0
for arg in "$@"; do
    case "$arg" in
        --with-neutron) with_neutron=1 ;;
        *) echo "install.sh: unknown option $arg (known: --with-neutron)" >&2; exit 2 ;;
    esac
done

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (the lab needs network, mount and PID namespaces)" >&2
    exit 6
fi

PACKAGES=(
    keepalived conntrack conntrackd openssh-server openssh-client iptables iproute2
    iputils-ping fping procps util-linux python3 python3-venv python3-pip ca-certificates
    curl chromium
    postgresql prometheus-pushgateway tzdata
)
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian packages start system-wide daemons on install; the lab runs its own, per node, and
# the operator's tests start a private PostgreSQL and Pushgateway of their own.
for unit in keepalived conntrackd ssh; do
    systemctl disable --now "$unit" >/dev/null 2>&1 || true
done
# A machine without systemd starts these through their init scripts when they are installed:
# stop them, but only when this script installed them (a server someone runs here is theirs).
for pkg in postgresql prometheus-pushgateway; do
    if [[ " ${missing[*]:-} " == *" $pkg "* ]]; then
        systemctl disable --now "$pkg" >/dev/null 2>&1 || service "$pkg" stop >/dev/null 2>&1 || true
    fi
done

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
# Neutron's own neutron-keepalived-state-change (a POSIX sh script in the neutron package) runs
# in the lab's replicas. Only the script is used: --no-deps keeps Neutron's libraries out, and
# --target keeps the package beside the environment (.venv/neutron), where pip does not judge
# its unmet requirements.
if [ ! -x .venv/neutron/bin/neutron-keepalived-state-change ]; then
    .venv/bin/python -m pip install -q --no-deps --target .venv/neutron 'neutron==29.0.0'
fi
if [ "$with_neutron" -eq 1 ]; then
    bash scripts/install-neutron-backend.sh
fi
echo "installed: $(.venv/bin/chaos --version)"
