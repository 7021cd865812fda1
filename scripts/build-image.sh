#!/usr/bin/env bash
# Builds the Dockerfile's image with buildah and smoke-tests it: `chaos --version`, `chaos
# validate` on the shipped experiments, and `chaos serve` answering /metrics. As root, on Debian 12.
#
# No container registry is needed: the base image is debootstrapped here and imported under the
# name the Dockerfile starts FROM. Host-specific mounts (this machine's CA bundle for pip) are
# given to buildah, never written into the Dockerfile. Not run by CI (it takes a few minutes and
# downloads Debian packages); see docs/operator.md.
#
#   bash scripts/build-image.sh [IMAGE]      (default chaos:latest)
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${1:-localhost/chaos:latest}
BASE=docker.io/library/debian:bookworm-slim

if [ "$(id -u)" -ne 0 ]; then echo "build-image.sh: run as root" >&2; exit 6; fi
missing=()
for pkg in buildah podman debootstrap; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

work=$(mktemp -d /tmp/chaos-image.XXXXXX)
containers=()
cleanup() {
    for c in "${containers[@]}"; do buildah rm "$c" >/dev/null 2>&1 || true; done
    rm -rf "$work"
}
trap cleanup EXIT

if ! buildah inspect --type image "$BASE" >/dev/null 2>&1; then
    echo "== debootstrap a Debian 12 base as $BASE"
    debootstrap --variant=minbase bookworm "$work/rootfs" >/dev/null
    tar -C "$work/rootfs" -c . | podman import - "$BASE" >/dev/null
    rm -rf "$work/rootfs"
fi

# pip inside the build trusts what this machine trusts (a TLS-inspecting proxy's CA, say)
mounts=()
if [ -r /etc/ssl/certs/ca-certificates.crt ]; then
    printf '[global]\ncert = /run/host-ca.crt\n' > "$work/pip.conf"
    mounts+=(-v /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro -v "$work/pip.conf:/etc/pip.conf:ro")
fi

echo "== build $IMAGE"
buildah bud --isolation=chroot --network=host --pull=never "${mounts[@]}" -t "$IMAGE" . >"$work/build.log" 2>&1 \
    || { tail -40 "$work/build.log"; exit 1; }

echo "== smoke test"
c=$(buildah from "$IMAGE"); containers+=("$c")
run() { buildah run --isolation=chroot --network=host "$c" -- "$@"; }
run chaos --version
run chaos validate /opt/chaos/experiments/keepalived-term.yaml
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# chroot isolation shares this machine's PID namespace: the server is stopped by its own pid only
cat > "$work/smoke.sh" <<SMOKE
set -eu
mkdir -p /etc/chaos/experiments
cp /opt/chaos/experiments/keepalived-term.yaml /etc/chaos/experiments/
chaos serve --experiments /etc/chaos/experiments --state-dir /tmp/state --listen 127.0.0.1:$port > /tmp/serve.log 2>&1 &
pid=\$!
ok=no
for i in \$(seq 1 60); do
    if python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())' \
        http://127.0.0.1:$port/metrics > /tmp/metrics 2>/dev/null; then ok=yes; break; fi
    sleep 0.5
done
kill -TERM \$pid; wait \$pid || true
[ \$ok = yes ] || { cat /tmp/serve.log; exit 1; }
echo "/metrics: \$(grep -c '^chaos_' /tmp/metrics) samples"; grep '^chaos_experiment_valid' /tmp/metrics
SMOKE
buildah copy "$c" "$work/smoke.sh" /tmp/smoke.sh >/dev/null
run sh /tmp/smoke.sh
echo "image $IMAGE built and smoke-tested: $(buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$IMAGE" | head -1)"
