#!/usr/bin/env bash
# The main job, end to end: install, bring the lab up, run an experiment against it, write the
# report. The run folder is printed last. The lab is taken down afterwards unless KEEP_LAB=1.
#   bash scripts/demo.sh [EXPERIMENT]       (default: experiments/keepalived-term.yaml)
#   BACKEND=neutron bash scripts/demo.sh    the same against Debian's real Neutron (Zed)
set -euo pipefail
cd "$(dirname "$0")/.."
BACKEND=${BACKEND:-emulated}
if [ "$BACKEND" = neutron ]; then
    bash scripts/install.sh --with-neutron
else
    bash scripts/install.sh
fi
EXPERIMENT=${1:-experiments/keepalived-term.yaml}
LAB=${CHAOS_LAB_NAME:-chaoslab}
CHAOS=.venv/bin/chaos

cleanup() {
    if [ "${KEEP_LAB:-0}" != "1" ]; then
        "$CHAOS" lab down --name "$LAB" >/dev/null || true
    fi
}
trap cleanup EXIT

"$CHAOS" lab up --name "$LAB" --backend "$BACKEND" --timeout 600
"$CHAOS" lab status --name "$LAB"
out=$(mktemp)
set +e
"$CHAOS" run --lab "$LAB" "$EXPERIMENT" | tee "$out"
status=${PIPESTATUS[0]}
set -e
folder=$(tail -n 1 "$out")
rm -f "$out"
echo "chaos run exited with $status (0 held, 1 deviated; see README: exit codes)"
echo "report: $folder/report.html"
exit "$status"
