#!/usr/bin/env bash
# Installs what `chaos lab up --backend neutron` runs: Debian 12's OpenStack Zed Neutron
# (neutron-server, the L3 and LinuxBridge agents), MariaDB and RabbitMQ, as root.
#
# Nothing may start or configure itself: a policy-rc.d that exits 101 keeps every package's
# service from starting during the install (systemd is never asked to start anything), and
# debconf answers keep neutron-common from setting up a database, RabbitMQ or Keystone. The
# lab gives every process its own configuration and state under /run/chaos-lab/<lab>/; the
# files the packages put in /etc/neutron, /var/lib/neutron, /var/lib/mysql, /var/lib/rabbitmq
# are not used. Idempotent: a second run installs nothing.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "install-neutron-backend.sh: run as root" >&2
    exit 6
fi

PACKAGES=(neutron-server neutron-l3-agent neutron-linuxbridge-agent mariadb-server rabbitmq-server sudo)
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "neutron backend: already installed ($(dpkg-query -W -f='${Version}' neutron-common))"
    exit 0
fi

started=$(date +%s)
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# chaos: no service starts while the neutron backend installs\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own_policy=1
fi
cleanup() { if [ "$own_policy" -eq 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

debconf-set-selections <<'SEL'
neutron-common neutron/configure_db boolean false
neutron-common neutron/configure_rabbit boolean false
neutron-common neutron/configure_ksat boolean false
neutron-common neutron/configure_nova boolean false
SEL

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

# Belt and braces: whatever a package enabled stays stopped and disabled on this host.
for unit in neutron-server neutron-l3-agent neutron-linuxbridge-agent neutron-rpc-server \
            neutron-api mariadb rabbitmq-server epmd; do
    systemctl disable --now "$unit" >/dev/null 2>&1 || true
done
echo "neutron backend: installed neutron $(dpkg-query -W -f='${Version}' neutron-common) in $(( $(date +%s) - started ))s"
