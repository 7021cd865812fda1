#!/usr/bin/env bash
# The main job, end to end: install, bring the lab up, run an experiment against it, write the
# report. The run folder is printed last. The lab is taken down afterwards unless KEEP_LAB=1.
#   bash scripts/demo.sh [EXPERIMENT]       (default: experiments/keepalived-term.yaml)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
EXPERIMENT=${1:-experiments/keepalived-term.yaml}
LAB=${CHAOS_LAB_NAME:-chaoslab}
CHAOS=.venv/bin/chaos

cleanup() {
    if [ "${KEEP_LAB:-0}" != "1" ]; then
        "$CHAOS" lab down --name "$LAB" >/dev/null || true
    fi
}
trap cleanup EXIT

"$CHAOS" lab up --name "$LAB"
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
