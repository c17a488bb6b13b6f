#!/usr/bin/env bash
# Flashes one image to a file and to a loop device with `piha flash` (which
# verifies by reading back and stamps PIHA-CFG), `piha flash --no-verify` (the
# same without the read-back), `bmaptool copy` (checksums while reading, no
# read-back) and `dd conv=sparse`, raw and zstd-compressed, and prints seconds,
# bytes written/read on the target and the ratio to bmaptool; the table also
# goes to bench/results/flash-<date>.json. No pass/fail: numbers for the
# README and the issue.
#
#   sudo bench/flash.sh [IMAGE.img]
#
# IMAGE defaults to the newest out/*amd64*.img, else a synthetic 1 GiB sparse
# GPT image (ESP with files, PIHA-CFG, ext4 root holding ~300 MiB of data) is
# made. The page cache is dropped before every run, so each tool reads the
# image cold. "written"/"read" for the loop device are the sectors the device
# saw (/sys/block/loopN/stat); for the file target "written" is the space the
# output file allocates.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "run as root (losetup, drop_caches)" >&2; exit 1; }
for t in bmaptool zstd dd losetup partx sfdisk mkfs.vfat mkfs.ext4 mcopy awk; do
    command -v "$t" >/dev/null || { echo "missing $t (scripts/setup-host installs it)" >&2; exit 1; }
done

piha=${PIHA_BIN:-$repo/target/release/piha}
if [ ! -x "$piha" ]; then
    echo "building piha (release)..." >&2
    (cd "$repo" && cargo build --release --bin piha >&2)
fi

work=$(mktemp -d /var/tmp/piha-bench-flash.XXXXXX)
loopdev=""
cleanup() {
    if [ -n "$loopdev" ]; then partx -d "$loopdev" 2>/dev/null || true; losetup -d "$loopdev" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

image=${1:-}
if [ -z "$image" ]; then
    image=$(ls -t "$repo"/out/*amd64*.img 2>/dev/null | head -1 || true)
fi
if [ -z "$image" ]; then
    image=$work/synthetic.img
    echo "making a synthetic 1 GiB image..." >&2
    truncate -s 1G "$image"
    printf 'label: gpt\nsize=256M, type=U, name=ESP\nsize=16M, type=L, name=PIHA-CFG\ntype=L, name=root\n' | sfdisk -q "$image"
    mkfs.vfat -F 16 -n ESP --offset=2048 "$image" $((256 * 1024)) >/dev/null
    mkfs.vfat -F 16 -n PIHA-CFG --offset=526336 "$image" $((16 * 1024)) >/dev/null
    mkdir -p "$work/root/data"
    for i in 1 2 3 4 5 6; do head -c 50M /dev/urandom > "$work/root/data/blob$i"; done
    head -c 20M /dev/urandom > "$work/esp.bin"
    mcopy -i "$image@@1M" "$work/esp.bin" ::kernel.efi
    # root: 273 MiB .. 1 MiB before the end (backup GPT).
    mkfs.ext4 -q -F -d "$work/root" -E offset=$((273 * 1024 * 1024)) "$image" $(((1024 - 273 - 1) * 1024))k
    rm -rf "$work/root" "$work/esp.bin"
fi

bmap=${image%.img}.bmap
[ -f "$bmap" ] || bmap=$image.bmap
if [ ! -f "$bmap" ]; then
    bmap=$work/image.bmap
    # Byte-identical to piha's own (tests/bmap.rs checks that).
    bmaptool -q create -o "$bmap" "$image"
fi
zst=$work/image.img.zst
zstd -q -T2 -3 -o "$zst" "$image"

cp "$repo/examples/qemu-lab.yaml" "$work/cluster.yaml"
"$piha" init --cluster "$work/cluster.yaml" >/dev/null

size=$(stat -c %s "$image")
mapped=$(awk -F'[<> ]+' '/<MappedBlocksCount>/ {m=$3} /<BlockSize>/ {b=$3} END {print m*b}' "$bmap")
echo "image: $image, $((size >> 20)) MiB, $((mapped >> 20)) MiB mapped; zstd: $(( $(stat -c %s "$zst") >> 20 )) MiB; load: $(cut -d' ' -f1-3 /proc/loadavg)"

started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }

declare -A secs
results=()

run_one() { # target format tool
    local target=$1 format=$2 tool=$3 src=$image out rc=0 written read=-
    [ "$format" = zst ] && src=$zst
    if [ "$target" = file ]; then
        out=$work/out.img
        rm -f "$out"
    else
        rm -f "$work/card.img"
        truncate -s $((size + 64 * 1024 * 1024)) "$work/card.img"
        loopdev=$(losetup --find --show "$work/card.img")
        out=$loopdev
        read -r _ _ r0 _ _ _ w0 _ < "/sys/block/${loopdev#/dev/}/stat"
    fi
    drop_caches
    local t0 t1
    t0=$(now)
    case $tool in
        piha | piha-nv)
            local extra=()
            [ "$tool" = piha-nv ] && extra=(--no-verify)
            if [ "$target" = file ]; then
                "$piha" flash "$src" --bmap "$bmap" --to-file "$out" --cluster "$work/cluster.yaml" --node w1 --yes "${extra[@]}" >/dev/null 2>"$work/err" || rc=$?
            else
                "$piha" flash "$src" --bmap "$bmap" --device "$out" --cluster "$work/cluster.yaml" --node w1 --yes --allow-non-removable "${extra[@]}" >/dev/null 2>"$work/err" || rc=$?
            fi ;;
        bmaptool)
            bmaptool -q copy --bmap "$bmap" "$src" "$out" 2>"$work/err" || rc=$? ;;
        dd)
            if [ "$format" = zst ]; then
                zstd -dc "$src" | dd of="$out" bs=4M iflag=fullblock conv=sparse,fsync status=none 2>"$work/err" || rc=$?
            else
                dd if="$src" of="$out" bs=4M conv=sparse,fsync status=none 2>"$work/err" || rc=$?
            fi ;;
    esac
    t1=$(now)
    [ $rc = 0 ] || { echo "$tool to $target ($format) failed:" >&2; cat "$work/err" >&2; }
    if [ "$target" = file ]; then
        written=$(( $(stat -c %b "$out") * 512 ))
    else
        sync
        read -r _ _ r1 _ _ _ w1 _ < "/sys/block/${loopdev#/dev/}/stat"
        written=$(( (w1 - w0) * 512 )); read=$(( (r1 - r0) * 512 ))
        partx -d "$loopdev" 2>/dev/null || true
        losetup -d "$loopdev"; loopdev=""
    fi
    local s
    s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    secs[$target/$format/$tool]=$s
    results+=("$target $format $tool $s $written $read")
}

# Each cell is run RUNS times (interleaved, so load from other work on the
# machine spreads over the tools) and the fastest run is kept.
runs=${RUNS:-3}
tools="bmaptool piha piha-nv dd"
declare -A best
for ((i = 1; i <= runs; i++)); do
    for target in file loop; do
        for format in img zst; do
            for tool in $tools; do
                run_one "$target" "$format" "$tool"
                key=$target/$format/$tool
                if [ -z "${best[$key]:-}" ] || awk -v a="${secs[$key]}" -v b="${best[$key]%% *}" 'BEGIN { exit !(a < b) }'; then
                    best[$key]="${results[-1]#* * * }"
                fi
            done
        done
    done
done
results=()
for target in file loop; do
    for format in img zst; do
        for tool in $tools; do
            results+=("$target $format $tool ${best[$target/$format/$tool]}")
            secs[$target/$format/$tool]=${best[$target/$format/$tool]%% *}
        done
    done
done

mib() { [ "$1" = - ] && echo - || echo "$(( $1 >> 20 )) MiB"; }
load=$(cut -d' ' -f1-3 /proc/loadavg)
printf '\nfastest of %s runs each; load average now: %s\n' "$runs" "$load"
printf '%-6s %-6s %-9s %9s %12s %12s %10s\n' target format tool seconds written read x-bmaptool
rows=()
for r in "${results[@]}"; do
    set -- $r
    ratio=$(awk -v a="$4" -v b="${secs[$1/$2/bmaptool]}" 'BEGIN { printf "%.2f", a / b }')
    printf '%-6s %-6s %-9s %9.2f %12s %12s %10s\n' "$1" "$2" "$3" "$4" "$(mib "$5")" "$(mib "$6")" "$ratio"
    rows+=("$(printf '{"target": "%s", "format": "%s", "tool": "%s", "seconds": %s, "written": %s, "read": %s, "x_bmaptool": %s}' \
        "$1" "$2" "$3" "$4" "$5" "$([ "$6" = - ] && echo null || echo "$6")" "$ratio")")
done
mkdir -p "$repo/bench/results"
json=$repo/bench/results/flash-$(date -u +%Y-%m-%d-%H%M%S).json
{
    printf '{\n  "started": "%s",\n  "host": {"cores": %s, "kernel": "%s"},\n' "$started" "$(nproc)" "$(uname -r)"
    printf '  "image": "%s",\n  "image_bytes": %s,\n  "mapped_bytes": %s,\n  "runs": %s,\n  "load_average": "%s",\n' \
        "$(basename "$image")" "$size" "$mapped" "$runs" "$load"
    printf '  "piha": "%s",\n  "fastest": [\n' "$("$piha" --version)"
    for ((i = 0; i < ${#rows[@]}; i++)); do
        printf '    %s%s\n' "${rows[$i]}" "$([ $i -lt $((${#rows[@]} - 1)) ] && echo ,)"
    done
    printf '  ]\n}\n'
} > "$json"
echo
echo "results: $json"
echo "piha: writes mapped ranges, verifies them by O_DIRECT read-back, writes the first MiB last, stamps PIHA-CFG."
echo "piha-nv: piha flash --no-verify, the same without the read-back."
echo "bmaptool: writes mapped ranges, checks range checksums while reading the image; no read-back."
echo "dd conv=sparse: reads everything, skips writing all-zero blocks; no verification."
