#!/bin/sh
# Captures the lsblk JSON fixtures that builder/src/flash/safety.rs parses:
# a loop device holding a GPT with three partitions (what the flash tests
# write to) and the host's root disk. Run as root from the repository root:
#   sh tests/flash/capture-lsblk.sh
set -eu
out=$(dirname "$0")
cols=NAME,SIZE,RM,TRAN,MODEL,SERIAL,TYPE,MOUNTPOINTS
tmp=$(mktemp -d)
trap '[ -n "${dev:-}" ] && losetup -d "$dev" 2>/dev/null || true; rm -rf "$tmp"' EXIT
truncate -s 64M "$tmp/disk.img"
printf 'label: gpt\nsize=16M, type=U\nsize=16M, type=L, name=PIHA-CFG\ntype=L\n' | sfdisk -q "$tmp/disk.img"
dev=$(losetup --find --show --partscan "$tmp/disk.img")
# Some kernels (this build host's) parse no partition tables themselves; partx
# adds the partitions from userspace.
partx -u "$dev"
lsblk -J -b -o "$cols" "$dev" > "$out/lsblk-loop.json"
root=$(findmnt -n -o SOURCE /)
lsblk -J -b -o "$cols" "$root" > "$out/lsblk-vda.json"
echo "captured lsblk of $dev and $root into $out"
