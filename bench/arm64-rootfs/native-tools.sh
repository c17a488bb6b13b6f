#!/bin/sh
# Runs host (amd64) builds of a few programs inside a foreign-architecture
# root while its packages install, so maintainer scripts are interpreted
# natively and .debs are decompressed natively; only the programs the scripts
# start run under qemu-user. Then puts the packages' own files back.
#
#   native-tools.sh install ROOT /bin/dash /usr/bin/perl /usr/bin/dpkg-deb
#   native-tools.sh remove ROOT
#
# Each path is the path the package ships. It is diverted with dpkg-divert
# (--local --rename) so a package unpacked meanwhile (at the extract stage:
# dash, perl-base and dpkg themselves) writes its file beside it, not over
# the host binary. `remove` deletes the host binaries and removes the
# diversions, which renames the packages' files back; `dpkg --verify` then
# passes.
#
# Only for programs that are never copied into an image or initramfs:
# mkinitramfs copies modprobe, udevadm, busybox... (checked by
# initrd-elf-check.py). The host's libraries go to the host's multiarch
# directory (/usr/lib/x86_64-linux-gnu), which no arm64 package uses, and the
# x86-64 loader to /.piha-native/ld.so: the copies' PT_INTERP is rewritten to
# that path, because the arm64 usr-is-merged postinst deletes /lib64. The same Debian release on both sides keeps perl's
# pure-Perl modules and the host perl's own modules (perl-base, copied) at one
# version.
set -eu
mode=$1; root=$(cd "$2" && pwd); shift 2
list="$root/.piha-native-files"
suffix=.piha-foreign
case "$mode" in
install)
  : > "$list"
  add() { # copy host file $1 to the same path in the root, remember it
    [ -e "$root$1" ] && return 0
    mkdir -p "$(dirname "$root$1")"
    cp -L "$1" "$root$1"
    echo "FILE $1" >> "$list"
  }
  mkdir -p "$root/.piha-native"
  echo "LOADER /.piha-native" >> "$list"
  for tool in "$@"; do
    for lib in $(ldd "$tool" | awk '$3 ~ /^\// {print $3} $1 ~ /^\/lib64/ {print $1}'); do
      case "$lib" in
        /lib64/ld-linux-x86-64.so.2) cp -L "$lib" "$root/.piha-native/ld.so" ;;
        /lib/*) add "/usr$lib" ;;
        *) add "$lib" ;;
      esac
    done
    dpkg-divert --root="$root" --local --rename --quiet --divert "$tool$suffix" --add "$tool"
    # Same length, NUL-padded: only the bytes of the .interp string change.
    python3 -c 'import sys
old = b"/lib64/ld-linux-x86-64.so.2\0"
new = b"/.piha-native/ld.so".ljust(len(old), b"\0")
data = open(sys.argv[1], "rb").read()
assert data.count(old) == 1, "no unique PT_INTERP string in " + sys.argv[1]
open(sys.argv[2], "wb").write(data.replace(old, new))' "$tool" "$root$tool"
    chmod 755 "$root$tool"
    echo "DIVERT $tool" >> "$list"
    case "$tool" in
      */perl)
        for d in /usr/lib/x86_64-linux-gnu/perl-base /usr/lib/x86_64-linux-gnu/perl; do
          if [ -d "$d" ] && [ ! -e "$root$d" ]; then
            cp -a "$d" "$root$d" && echo "TREE $d" >> "$list"
          fi
        done ;;
    esac
  done
  ;;
remove)
  [ -f "$list" ] || exit 0
  while read -r kind path; do
    case "$kind" in
      DIVERT) rm -f "$root$path"
              dpkg-divert --root="$root" --local --rename --quiet --divert "$path$suffix" --remove "$path" ;;
      TREE) rm -rf "${root:?}$path" ;;
      LOADER) rm -rf "${root:?}$path" ;;
      FILE) rm -f "$root$path" ;;
    esac
  done < "$list"
  rm -f "$list"
  rmdir "$root/usr/lib/x86_64-linux-gnu" 2>/dev/null || true
  ;;
esac
