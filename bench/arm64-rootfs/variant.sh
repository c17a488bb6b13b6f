#!/usr/bin/env bash
# Builds one Debian bookworm arm64 root filesystem with mmdebstrap under
# qemu-user and records how long each phase took, so variants of the recipe
# can be compared. Not part of the pipeline: the recipe that wins is
# written up in ../../scripts/arm64-rootfs-recipe.md.
#
# Usage: variant.sh NAME [KNOB=1 ...]
# Output (outside the repo): $EXP/NAME.tar, $EXP/NAME/{times,dpkg.log,log}
# with EXP=${EXP:-/work/arm64-exp}. Debs are cached in $EXP/debs after the first run.
#
# Knobs (each 0/1 unless noted):
#   VARIANT=apt|important|minbase   mmdebstrap variant (default apt)
#   NODOCS      dpkg path-exclude for man, doc (copyright kept), locale, info
#   MODLIST     MODULES=list with the explicit module list below
#   DEFER       update-initramfs and depmod diverted to no-ops while packages
#               install; one depmod + one update-initramfs -c at the end
#   NATIVE_DEPMOD  with DEFER: run the host's depmod -b on the tree (kmod reads
#               aarch64 modules fine) instead of the emulated one
#   EATMYDATA   mmdebstrap's eatmydata hook directory
#   MERGEDUSR   mmdebstrap's merged-usr hook directory: the /usr merge is made by
#               symlinks up front, so apt does not pull usrmerge (and perl) into
#               the essential set to convert the tree under emulation
#   SSHKEYS     placeholder /etc/ssh/ssh_host_*_key files while packages install
#               (openssh-server's postinst then skips ssh-keygen under emulation),
#               removed at the end: every node must make its own keys at first boot
#   NATIVE="/bin/dash /usr/bin/perl /usr/bin/dpkg-deb"  host builds of these
#               run the maintainer scripts and unpack the .debs (native-tools.sh),
#               diverted away again at the end
#   NATIVE_EARLY  with NATIVE: from the extract stage on (the essential
#               packages' own installation), not only after it
#   NOCACHE     do not use or fill the .deb cache
#   COMPRESS=gzip|zstd|lz4   initramfs compression (default: initramfs-tools' zstd)
set -euo pipefail

name=$1; shift
for kv in "$@"; do export "${kv?}"; done
EXP=${EXP:-/work/arm64-exp}
out=$EXP/$name
mkdir -p "$out" "$EXP/debs"
: > "$out/times"

# The host's Debian mirror (never hard-coded): first URI of a bookworm source.
mirror=$(awk '/^URIs:/{u=$2} /^Suites:/ && /bookworm( |$)/{ if (u!="") {print u; exit} }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
[ -n "$mirror" ] || { echo "no bookworm mirror in /etc/apt/sources.list.d/*.sources" >&2; exit 1; }

pkgs=${PKGS:-linux-image-arm64,initramfs-tools,zstd,systemd,systemd-sysv,udev,openssh-server,containerd,keepalived,ipvsadm,chrony,systemd-resolved,raspi-firmware,e2fsprogs,iproute2}
# Modules the initramfs must carry to find and mount the root filesystem:
# QEMU virt (virtio), Pi 4 SD (emmc2 = sdhci-iproc), Pi 3/4 sdhost (bcm2835),
# USB mass storage on the Pi 4 (VL805 xHCI behind the brcmstb PCIe bridge,
# whose firmware load needs reset-raspberrypi), and ext4.
modules="virtio_blk virtio_pci virtio_mmio virtio_scsi sd_mod mmc_block sdhci_iproc bcm2835 ext4 usb_storage uas xhci_pci pcie_brcmstb reset_raspberrypi"

stamp() { echo "$1 $(date +%s.%N)" >> "$out/times"; }
args=(--architectures=arm64 --variant="${VARIANT:-apt}" --components=main,non-free-firmware
      --include="$pkgs" --logfile="$out/log" -v)
stamp start
args+=(--setup-hook="echo setup \$(date +%s.%N) >> $out/times")
args+=(--extract-hook="echo extracted \$(date +%s.%N) >> $out/times")
args+=(--essential-hook="echo essential \$(date +%s.%N) >> $out/times")

if [ "${NOCACHE:-0}" != 1 ]; then
  # mmdebstrap(1) "cache .debs" recipe: seed apt's archive dir, copy it back out.
  args+=(--skip=download/empty --skip=essential/unlink
         --setup-hook='mkdir -p "$1"/var/cache/apt/archives/'
         --setup-hook="sync-in $EXP/debs /var/cache/apt/archives/"
         --customize-hook="sync-out /var/cache/apt/archives $EXP/debs")
fi
if [ "${NODOCS:-0}" = 1 ]; then
  args+=(--dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*'
         --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*'
         --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/lintian/*')
fi
if [ "${MODLIST:-0}" = 1 ]; then
  # conf.d and modules.d files belong to no package: no conffile prompt.
  args+=(--essential-hook='mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/usr/share/initramfs-tools/modules.d"'
         --essential-hook="echo MODULES=list > \"\$1/etc/initramfs-tools/conf.d/piha-modules.conf\""
         --essential-hook="printf '%s\n' $modules > \"\$1/usr/share/initramfs-tools/modules.d/piha\"")
fi
if [ -n "${COMPRESS:-}" ]; then
  args+=(--essential-hook="echo COMPRESS=$COMPRESS > \"\$1/etc/initramfs-tools/conf.d/piha-compress.conf\"")
fi
if [ "${DEFER:-0}" = 1 ]; then
  for tool in /usr/sbin/update-initramfs /sbin/depmod; do
    args+=(--essential-hook="chroot \"\$1\" dpkg-divert --quiet --local --rename --add $tool && printf '#!/bin/sh\nexit 0\n' > \"\$1$tool\" && chmod 755 \"\$1$tool\"")
  done
  args+=(--customize-hook="echo installed \$(date +%s.%N) >> $out/times")
  for tool in /usr/sbin/update-initramfs /sbin/depmod; do
    args+=(--customize-hook="rm -f \"\$1$tool\" && chroot \"\$1\" dpkg-divert --quiet --local --rename --remove $tool")
  done
  if [ "${NATIVE_DEPMOD:-0}" = 1 ]; then
    args+=(--customize-hook='for k in "$1"/lib/modules/*; do /sbin/depmod -b "$1" "$(basename "$k")"; done')
  else
    args+=(--customize-hook='chroot "$1" sh -c "for k in /lib/modules/*; do depmod \"\$(basename \$k)\"; done"')
  fi
  args+=(--customize-hook="echo depmod \$(date +%s.%N) >> $out/times")
  args+=(--customize-hook='chroot "$1" update-initramfs -c -k all')
fi
if [ "${SSHKEYS:-0}" = 1 ]; then
  args+=(--essential-hook='mkdir -p "$1/etc/ssh" && for t in rsa ecdsa ed25519; do touch "$1/etc/ssh/ssh_host_${t}_key"; done')
  args+=(--customize-hook='rm -f "$1"/etc/ssh/ssh_host_*_key "$1"/etc/ssh/ssh_host_*_key.pub')
fi
if [ "${MERGEDUSR:-0}" = 1 ]; then
  args+=(--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr)
fi
if [ "${EATMYDATA:-0}" = 1 ]; then
  args+=(--hook-dir=/usr/share/mmdebstrap/hooks/eatmydata)
fi
if [ -n "${NATIVE:-}" ]; then
  here=$(cd "$(dirname "$0")" && pwd)
  if [ "${NATIVE_EARLY:-0}" = 1 ]; then stage=--extract-hook; else stage=--essential-hook; fi
  args+=("$stage=$here/native-tools.sh install \"\$1\" $NATIVE")
  args+=(--customize-hook="$here/native-tools.sh remove \"\$1\"")
  # The swapped files must be byte-identical to the packages' again.
  args+=(--customize-hook='! chroot "$1" dpkg --verify dash perl-base dpkg | grep -v "^missing"')
fi
args+=(--customize-hook="echo customized \$(date +%s.%N) >> $out/times")
args+=(--customize-hook="copy-out /var/log/dpkg.log $out")
args+=(--customize-hook="chroot \"\$1\" sh -c 'ls -la /boot /boot/firmware; cat /boot/firmware/config.txt /boot/firmware/cmdline.txt; lsinitramfs /boot/initrd.img-* | grep -c ko\$' > $out/boot.txt 2>&1 || true")

# The host is shared: CPU seconds (user+sys of mmdebstrap and every emulated
# child) are the comparable number; wall time depends on the neighbours.
echo "load-before $(cut -d' ' -f1-3 /proc/loadavg)" > "$out/cpu"
/usr/bin/time -f "cpu-user %U\ncpu-sys %S\nwall %e" -a -o "$out/cpu" \
  mmdebstrap "${args[@]}" bookworm "$EXP/$name.tar" "$mirror"
echo "load-after $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/cpu"
stamp done
cat "$out/cpu"
awk 'NR==1{t0=$2} {printf "%-10s %7.1f s\n", $1, $2-t0}' "$out/times"
