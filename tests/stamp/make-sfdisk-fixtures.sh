#!/bin/sh
# Regenerates the captured `sfdisk -J` outputs that builder/src/partition.rs
# parses in its unit tests: a GPT disk laid out like a UEFI piha image
# (ESP, PIHA-CFG, root) and an MBR disk laid out like a Raspberry Pi image
# (system-boot, PIHA-CFG, writable). Fixed ids keep the output stable.
# Usage: tests/stamp/make-sfdisk-fixtures.sh   (needs sfdisk from fdisk/util-linux)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"

truncate -s 96M gpt.img
sfdisk --quiet --no-reread gpt.img <<'TABLE'
label: gpt
label-id: 8C6B1E2A-5D0F-4F7E-9B1A-3C2D4E5F6A7B
start=2048, size=65536, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=11111111-2222-4333-8444-555555555501, name="EFI"
start=67584, size=32768, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, uuid=11111111-2222-4333-8444-555555555502, name="PIHA-CFG"
start=100352, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid=11111111-2222-4333-8444-555555555503, name="root"
TABLE
sfdisk -J gpt.img > "$here/sfdisk-gpt.json"

truncate -s 96M mbr.img
sfdisk --quiet --no-reread mbr.img <<'TABLE'
label: dos
label-id: 0x70696861
start=2048, size=65536, type=c, bootable
start=67584, size=32768, type=c
start=100352, type=83
TABLE
sfdisk -J mbr.img > "$here/sfdisk-mbr.json"
