#!/usr/bin/env bash
# Benchmark (not a test): the lab's timeline on this machine, recorded into
# bench/results/lab-DATE.txt:
#   - power-on to each node's agent `done` (from `piha lab up`'s progress lines),
#   - power-on to the whole cluster `done`,
#   - the agent's own wall time per step on each node (status.json),
#   - every row of `piha lab check`, failover gaps included.
# It runs `piha lab up` on examples/qemu-lab.yaml (the amd64 test-profile
# image is built into the lab directory, or taken from $PIHA_LAB_IMAGE), then
# `check`, then `down`.
# Usage: sudo [PIHA_LAB_IMAGE=IMG] [PIHA_LAB_NODES=a,b,...] bench/lab.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PIHA_CACHE_DIR=${PIHA_CACHE_DIR:-$HOME/.cache/piha}
cargo build --release -q -p piha
piha=$PWD/target/release/piha
work=$(mktemp -d /var/tmp/piha-bench-lab.XXXXXX)
lab="$work/lab"
trap '"$piha" lab down --dir "$lab" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
cp examples/qemu-lab.yaml "$work/cluster.yaml"
image=()
[ -n "${PIHA_LAB_IMAGE:-}" ] && image=(--image "$PIHA_LAB_IMAGE")
# PIHA_LAB_NODES=lb1,lb2,cp1,cp2: only those nodes (what the integration test boots).
nodes=()
[ -n "${PIHA_LAB_NODES:-}" ] && nodes=(--nodes "$PIHA_LAB_NODES")

"$piha" lab up --cluster "$work/cluster.yaml" --dir "$lab" "${image[@]}" "${nodes[@]}" 2>"$work/up.log" >"$work/up.txt"
# Before the check: it reboots cp1 and the MASTER, whose later boots record their steps as already done.
for node in $(jq -r '.nodes[].name' "$lab/lab.json"); do
  "$piha" status --json "$lab/nodes/$node/disk.img" |
    jq -r --arg n "$node" '[.steps[] | "\(.name) \(((.wall_ms // 0) / 100 | round) / 10)"] | "\($n): " + join(", ")'
done >"$work/steps.txt"
"$piha" lab check --json --dir "$lab" >"$work/check.json" 2>"$work/check.log" || true

out=bench/results/lab-$(date -u +%Y%m%d).txt
{
  echo "# piha lab timeline, $(date -u +%FT%TZ), $(nproc) cores, accel $(jq -r '.nodes[0].argv | index("-accel") as $i | .[$i+1]' "$lab/lab.json" 2>/dev/null || echo '?')"
  echo "# examples/qemu-lab.yaml: $(jq -r '[.nodes[].name] | join(", ")' "$lab/lab.json" 2>/dev/null)"
  echo
  echo "## power-on to agent done (s)"
  # Progress lines read "[   42s] cp1        vm running, agent done done ok".
  last=0
  for node in $(jq -r '.nodes[].name' "$lab/lab.json"); do
    t=$(grep -E "^\[ *[0-9]+s\] $node +vm running, agent done" "$work/up.log" | head -n 1 | sed -E 's/^\[ *([0-9]+)s\].*/\1/')
    printf '%-6s %s\n' "$node" "${t:-not done}"
    [ -n "$t" ] && [ "$t" -gt "$last" ] && last=$t
  done
  echo "whole cluster: $last"
  echo
  echo "## agent wall time per step (s)"
  cat "$work/steps.txt"
  echo
  echo "## piha lab check"
  jq -r '.[] | "\(if .ok then "ok  " else "FAIL" end)  \(.check)  |  \(.measured)"' "$work/check.json"
  echo
  echo "## piha lab check's warnings (each failed probe, with curl's exit status)"
  grep -F WARN "$work/check.log" || echo "(none)"
} | tee "$out"
echo "written: $out" >&2
