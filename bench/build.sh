#!/usr/bin/env bash
# Times `piha build` of the amd64 image (Debian bookworm from the host's apt
# mirror, test profile, the QEMU lab cluster) in the situations a user meets:
#
#   cold        empty cache: downloads every .deb, runs mmdebstrap
#   warm        the same build again: cached rootfs tarball
#   debs-warm   --no-cache with the .deb cache filled: mmdebstrap without downloads
#   overlay     warm, after changing one overlay file
#   cluster     warm, after changing the cluster file (an SSH key)
#
# Prints seconds per stage from `piha build --json`. No pass/fail: numbers for
# the README and the issue. The agent binary is built once up front and passed
# in with PIHA_AGENT_BIN, so its compile time is not in the figures.
#
#   sudo bench/build.sh [--keep]
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "run as root (mmdebstrap root mode)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is needed to read the JSON summaries" >&2; exit 1; }

echo "building piha and piha-agent (release)…" >&2
cargo build --release --locked -p piha -p piha-agent --manifest-path "$repo/Cargo.toml" >&2
piha="$repo/target/release/piha"
export PIHA_AGENT_BIN="$repo/target/release/piha-agent"

work=$(mktemp -d /var/tmp/piha-bench-build.XXXXXX)
[ "${1:-}" = "--keep" ] || trap 'rm -rf "$work"' EXIT
cache="$work/cache"
out="$work/out"

# A data directory whose overlays can be changed without touching the checkout.
data="$work/data"
mkdir -p "$data"
ln -s "$repo/boards" "$data/boards"
ln -s "$repo/distros" "$data/distros"
cp -r "$repo/overlays" "$data/overlays"
export PIHA_DATA_DIR="$data"
cluster="$work/cluster.yaml"
cp "$repo/examples/qemu-lab.yaml" "$cluster"

printf '%-10s %8s %9s %7s %9s %8s %8s %6s  %s\n' run total preflight rootfs customize assemble package cache image
run() {
    local name=$1; shift
    local start end json
    start=$(date +%s.%N)
    json=$("$piha" build --board amd64 --distro debian-bookworm --profile test --cluster "$cluster" \
        --out "$out" --cache-dir "$cache" --json "$@" 2>"$work/$name.log") || {
        echo "$name: piha build failed, see $work/$name.log" >&2; tail -20 "$work/$name.log" >&2; exit 1; }
    end=$(date +%s.%N)
    python3 -c '
import json, sys
s = json.loads(sys.argv[2]); t = s["timings"]
wall = float(sys.argv[4]) - float(sys.argv[3])
print("%-10s %8.1f %9.1f %7.1f %9.1f %8.1f %8.1f %6s  %d MiB zst" % (sys.argv[1], wall, t["preflight"], t["rootfs"],
      t["customize"], t["assemble"], t["package"], s["rootfs_cache"], s["compressed_size"] >> 20))' "$name" "$json" "$start" "$end"
}

run cold
run warm
run debs-warm --no-cache
echo "# changed by bench/build.sh" >> "$data/overlays/base/etc/hosts"
run overlay
sed -i 's/tester@piha/bench@piha/' "$cluster"
run cluster
