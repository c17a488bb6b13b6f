#!/bin/bash
# Assembly benchmark: the same root tar into the same
# GPT layout (128 MiB FAT32 ESP with kernel, initrd and systemd-boot; 16 MiB
# PIHA-CFG; ext4 root sized to fit plus 1 GiB free), once by piha and once by
# genimage, in one run. Prints seconds and the ratio piha/genimage. No pass/fail.
#
# usage: [RUNS=3] [KEEP=1] bench/assemble.sh [ROOT_TAR]
#   RUNS: runs of each tool, alternating (median reported); KEEP=1 keeps the work directory
#
# ROOT_TAR defaults to the newest *rootfs*.tar under $PIHA_CACHE_DIR,
# target/piha-test-cache or ~/.cache/piha; without one, a synthetic ~500 MB tar
# is generated. Run as root (genimage's input is the tar extracted with owners).
#
# What is timed, and why it is fair:
# - piha: `piha::assemble::assemble` (bench/assemble.rs, release build): scan
#   the tar, build both FATs in memory, `mke2fs -d root.tar` straight into the
#   image, zero the journal, write the GPT.
# - genimage cannot read a tar, so its run from the same input is
#   `tar -x` + `genimage` (which itself copies the root tree, runs mke2fs -d DIR,
#   e2fsck -pvfD, mkdosfs + mcopy, and copies each partition image into the
#   disk). Its mke2fs gets piha's exact options (bench/genimage/make-config.sh),
#   so both ask for the same filesystem. genimage without the extraction is
#   printed too.
# - Before every run, pending writes are flushed and the tar is read once, so
#   both start with it cached, as after stage 2 of a real build.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/var/tmp}/piha-bench-assemble.XXXXXX")
[ -n "${KEEP:-}" ] && echo "keeping $work" >&2 || trap 'rm -rf "$work"' EXIT

for tool in genimage mke2fs mkdosfs mcopy e2fsck python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/setup-host" >&2; exit 1; }
done

find_tar() {
  local d
  for d in "${PIHA_CACHE_DIR:-}" "$repo/target/piha-test-cache" "$HOME/.cache/piha"; do
    [ -n "$d" ] && [ -d "$d" ] || continue
    find "$d" -name '*rootfs*.tar' -size +50M -printf '%T@ %p\n' 2>/dev/null
  done | sort -rn | head -1 | cut -d' ' -f2-
}

tar_path=${1:-$(find_tar)}
if [ -z "$tar_path" ]; then
  tar_path=$work/synthetic-rootfs.tar
  echo "no root tar found: generating a synthetic one (~500 MB)" >&2
  python3 - "$tar_path" <<'PY'
# Roughly a Debian root: many small files, a few large ones, half compressible.
import io, os, random, sys, tarfile
random.seed(1)
t = tarfile.open(sys.argv[1], "w", format=tarfile.PAX_FORMAT)
def add_dir(p):
    i = tarfile.TarInfo(p); i.type = tarfile.DIRTYPE; i.mode = 0o755; i.mtime = 1700000000; t.addfile(i)
add_dir("./")
for d in ["./boot", "./etc", "./usr", "./usr/bin", "./usr/lib", "./usr/share", "./var"]:
    add_dir(d)
total, n = 0, 0
while total < 500 << 20:
    d = "./usr/lib/pkg%03d" % (n // 40)
    if n % 40 == 0:
        add_dir(d)
    size = min(int(random.lognormvariate(8.5, 2.0)), 40 << 20)
    data = os.urandom(size // 2) + bytes(size - size // 2)
    i = tarfile.TarInfo("%s/file%05d" % (d, n)); i.size = size; i.mode = 0o644; i.mtime = 1700000000
    t.addfile(i, io.BytesIO(data)); total += size; n += 1
for name, size in [("./boot/vmlinuz-synthetic", 8 << 20), ("./boot/initrd.img-synthetic", 30 << 20)]:
    i = tarfile.TarInfo(name); i.size = size; i.mode = 0o644; i.mtime = 1700000000
    t.addfile(i, io.BytesIO(os.urandom(size)))
t.close()
PY
fi
echo "root tar: $tar_path ($(du -h --apparent-size "$tar_path" | cut -f1))"

# The ESP: kernel, initrd and systemd-boot from the tar, as piha build puts
# them. PIHA-CFG: one small file (genimage cannot make an empty vfat).
esp=$work/input/esp
cfg=$work/input/cfg
mkdir -p "$esp/EFI/BOOT" "$esp/loader/entries" "$cfg"
printf 'This partition holds the node identity piha stamp writes.\n' >"$cfg/README.txt"
members=$(tar -tf "$tar_path")
pick() { grep -E "$1" <<<"$members" | sort | tail -1; }
kernel=$(pick '^(\./)?boot/vmlinuz-' || true)
initrd=$(pick '^(\./)?boot/initrd\.img-' || true)
sdboot=$(pick 'systemd-bootx64\.efi$' || true)
[ -n "$kernel" ] && [ -n "$initrd" ] || { echo "$tar_path has no boot/vmlinuz-* and boot/initrd.img-*" >&2; exit 1; }
tar -xOf "$tar_path" "$kernel" >"$esp/vmlinuz"
tar -xOf "$tar_path" "$initrd" >"$esp/initrd.img"
if [ -n "$sdboot" ]; then tar -xOf "$tar_path" "$sdboot" >"$esp/EFI/BOOT/BOOTX64.EFI"; else head -c 140000 /dev/urandom >"$esp/EFI/BOOT/BOOTX64.EFI"; fi
printf 'title piha\nlinux /vmlinuz\ninitrd /initrd.img\noptions root=LABEL=piha-root ro\n' >"$esp/loader/entries/piha.conf"

echo "building the timing harness (cargo --release)…" >&2
(cd "$repo" && cargo build --quiet --release -p piha --example assemble-bench)
bench_bin=$repo/target/release/examples/assemble-bench

runs=${RUNS:-3}

# Before each run: the previous run's writes flushed, the tar in the page
# cache (as it is in a real build, where stage 2 has just written it).
settle() {
  sync
  cat "$tar_path" >/dev/null
}
# One piha run: prints its key=value lines.
run_piha() {
  rm -rf "$work/piha"
  settle
  SOURCE_DATE_EPOCH=1700000000 "$bench_bin" "$tar_path" "$esp" "$cfg" "$work/piha" 2>"$work/piha.log"
}
# One genimage run from the tar: prints "extract_seconds genimage_seconds".
run_genimage() {
  rm -rf "$work/root" "$work/gi-tmp" "$work/gi-out"
  mkdir -p "$work/root"
  settle
  local t0 t1 t2
  t0=$(date +%s.%N)
  tar -xpf "$tar_path" --numeric-owner --xattrs --xattrs-include='*' -C "$work/root"
  t1=$(date +%s.%N)
  E2FSPROGS_FAKE_TIME=1700000000 genimage --config "$work/genimage.cfg" --rootpath "$work/root" \
    --tmppath "$work/gi-tmp" --inputpath "$work/input" --outputpath "$work/gi-out" >"$work/genimage.log" 2>&1 ||
    { tail -30 "$work/genimage.log" >&2; exit 1; }
  t2=$(date +%s.%N)
  echo "$(echo "$t1 - $t0" | bc) $(echo "$t2 - $t1" | bc)"
}
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# The first piha run also gives the sizes and identifiers genimage's config needs.
piha_out=$(run_piha)
get() { sed -n "s/^$1=//p" <<<"$piha_out"; }
"$repo/bench/genimage/make-config.sh" "$work/input" "$(get esp_size_bytes)" "$(get cfg_size_bytes)" \
  "$(get root_size_bytes)" "$(get root_inodes)" "$(get root_uuid)" >"$work/genimage.cfg"
piha_times=()
gi_extract=()
gi_only=()
gi_total=()
pair_ratio=()
for i in $(seq "$runs"); do
  [ "$i" -gt 1 ] && piha_out=$(run_piha)
  piha_times+=("$(get piha_assemble_s)")
  read -r ex gi < <(run_genimage)
  gi_extract+=("$ex")
  gi_only+=("$gi")
  gi_total+=("$(echo "$ex + $gi" | bc)")
  pair_ratio+=("$(echo "scale=4; ${piha_times[-1]} / ${gi_total[-1]}" | bc)")
  printf 'run %d: piha %6.2f s   genimage %6.2f s (tar -x %.2f s + genimage %.2f s)\n' \
    "$i" "${piha_times[-1]}" "${gi_total[-1]}" "$ex" "$gi" >&2
done
gi_image_bytes=$(stat -c %s "$work/gi-out/disk.img")

piha_s=$(printf '%s\n' "${piha_times[@]}" | median)
total_s=$(printf '%s\n' "${gi_total[@]}" | median)
only_s=$(printf '%s\n' "${gi_only[@]}" | median)
extract_s=$(printf '%s\n' "${gi_extract[@]}" | median)
printf '\nassembly of %s into GPT ESP+PIHA-CFG+ext4, median of %d runs\n' "$(basename "$tar_path")" "$runs"
printf '  image: piha %s bytes, genimage %s bytes\n' "$(get image_bytes)" "$gi_image_bytes"
printf '  piha assemble, from the tar                  %7.2f s\n' "$piha_s"
printf '  genimage, from the tar (tar -x + genimage)   %7.2f s  (tar -x %.2f s, genimage %.2f s)\n' "$total_s" "$extract_s" "$only_s"
printf '  ratio piha/genimage, same input              %7.2f\n' "$(echo "scale=4; $piha_s / $total_s" | bc)"
printf '  ratio piha/genimage, genimage on a ready tree %6.2f\n' "$(echo "scale=4; $piha_s / $only_s" | bc)"
printf '  median of the per-run ratios (same input)    %7.2f  (each run pairs the two tools back to back)\n' \
  "$(printf '%s\n' "${pair_ratio[@]}" | median)"
printf '  load average at the end: %s (2 cores shared; expect noise)\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
