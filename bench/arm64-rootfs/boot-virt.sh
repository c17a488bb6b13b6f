#!/usr/bin/env bash
# Boots a root filesystem tarball made by variant.sh on qemu-system-aarch64
# -M virt (TCG, direct kernel boot, virtio-blk root) and waits for the serial
# login prompt: the quick check that a recipe still yields a bootable system.
# Usage: boot-virt.sh ROOTFS.tar [TIMEOUT_SECONDS]
set -euo pipefail
tar_file=$1; limit=${2:-600}
work=$(mktemp -d "${TMPDIR:-/tmp}/boot-virt.XXXXXX")
trap 'rm -rf "$work"' EXIT
kver=$(tar -tf "$tar_file" --wildcards './boot/vmlinuz-*' | sed -n 's#^\./boot/vmlinuz-##p' | head -1)
tar -xf "$tar_file" -C "$work" "./boot/vmlinuz-$kver" "./boot/initrd.img-$kver"
mke2fs -q -t ext4 -L writable -d "$tar_file" "$work/root.img" 3G
start=$(date +%s)
# -nic none: the guest gets no network at all.
timeout "$limit" qemu-system-aarch64 -M virt -cpu cortex-a72 -accel tcg -smp 2 -m 1024 -nographic -nic none \
  -kernel "$work/boot/vmlinuz-$kver" -initrd "$work/boot/initrd.img-$kver" \
  -append "root=/dev/vda rw console=ttyAMA0" \
  -drive "file=$work/root.img,format=raw,if=none,id=root" -device virtio-blk-pci,drive=root \
  > "$work/serial.log" 2>&1 &
qemu=$!
while kill -0 "$qemu" 2>/dev/null; do
  if grep -q "login:" "$work/serial.log"; then
    echo "login prompt after $(( $(date +%s) - start )) s"
    kill "$qemu"; wait "$qemu" 2>/dev/null || true
    grep -E "Debian GNU/Linux|Failed|EXT4-fs \(vda\)" "$work/serial.log" | head -20
    exit 0
  fi
  sleep 2
done
echo "no login prompt within $limit s; serial log tail:" >&2
tail -40 "$work/serial.log" >&2
exit 1
