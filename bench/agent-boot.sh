#!/usr/bin/env bash
# Benchmark (not a test): how long the first-boot agent takes on a real boot.
# Builds the amd64 test-profile image of examples/qemu-lab.yaml (rootfs cached
# in $PIHA_CACHE_DIR), stamps it as the init control plane cp1, boots it under
# qemu-system-x86_64 with OVMF and TCG (with the fw_cfg entry that asks the
# test image to power off once the agent is done), and reports:
#   - per agent step: wall and CPU milliseconds (from status.json on the card),
#   - guest time from kernel start to the agent starting and to "done" (the
#     kernel timestamps on the serial console).
# Usage: sudo bench/agent-boot.sh [NODE]     (default cp1)
set -euo pipefail
cd "$(dirname "$0")/.."
node=${1:-cp1}
work=$(mktemp -d /var/tmp/piha-bench-agent.XXXXXX)
trap 'rm -rf "$work"' EXIT
export PIHA_CACHE_DIR=${PIHA_CACHE_DIR:-$HOME/.cache/piha}

cargo build --release -q -p piha
piha=target/release/piha
cp examples/qemu-lab.yaml "$work/cluster.yaml"
"$piha" init --cluster "$work/cluster.yaml" >/dev/null
"$piha" build --board amd64 --distro debian-bookworm --profile test \
  --cluster "$work/cluster.yaml" --out "$work/out" >/dev/null
img="$work/$node.img"
cp --sparse=always "$work/out/qemu-lab-amd64.img" "$img"
"$piha" stamp --cluster "$work/cluster.yaml" --node "$node" "$img" >/dev/null

cp /usr/share/OVMF/OVMF_VARS_4M.fd "$work/vars.fd"
start=$(date +%s.%N)
timeout 1200 qemu-system-x86_64 -accel tcg -nographic -no-reboot -m 1024 -machine q35 -smp 2 \
  -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
  -drive if=pflash,format=raw,unit=1,file="$work/vars.fd" \
  -drive file="$img",format=raw,if=virtio \
  -netdev user,id=n0,net=10.0.2.0/24 -device virtio-net-pci,netdev=n0,addr=0x2 \
  -fw_cfg name=opt/piha/poweroff,string=1 \
  -serial file:"$work/console.log" -monitor none >/dev/null 2>&1
end=$(date +%s.%N)

ts() { grep -a "$1" "$work/console.log" | head -n 1 | sed -n 's/^\[ *\([0-9.]*\)\].*/\1/p'; }
agent_start=$(ts 'piha-agent\[[0-9]*\]: step read-config: starting')
agent_done=$(ts 'piha-agent\[[0-9]*\]: step done: done')

echo "piha-agent on $node (amd64, Debian bookworm, QEMU TCG, host load $(cut -d' ' -f1 /proc/loadavg))"
"$piha" status --json "$img" | python3 -c '
import json, sys
s = json.load(sys.stdin)
print("%-22s%10s%10s" % ("step", "wall ms", "cpu ms"))
for st in s["steps"]:
    print("%-22s%10s%10s" % (st["name"], st.get("wall_ms") or 0, st.get("cpu_ms") or 0))
print("phase:", s["phase"])
'
echo "guest seconds from kernel start: agent started ${agent_start:-?}, agent done ${agent_done:-?}"
echo "host wall seconds for the whole boot to power-off: $(python3 -c "print(round($end - $start, 1))")"
