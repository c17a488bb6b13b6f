#!/bin/sh
# patch-dtb.sh IN.dtb OUT.dtb
#
# TEST ONLY. Writes a copy of a Raspberry Pi 4 device tree (Debian bookworm's
# linux-image-arm64 bcm2711-rpi-4-b.dtb) that boots to a login prompt on
# `qemu-system-aarch64 -M raspi4b` (QEMU 10). IN is never modified.
#
# QEMU's raspi4b maps nothing at the registers of several blocks; the first
# CPU access there is a synchronous external abort. In a built-in driver that
# is a kernel panic before the initramfs runs. Each node below says what
# happens without the change. The list was derived with unmapped-nodes.py
# (each enabled node's registers against QEMU's memory map) and confirmed by
# booting with every entry of part 1 put back one at a time; README.md has
# the runs.
#
# Needs fdtput and fdtget (Debian package device-tree-compiler).
set -eu

usage() {
    echo "usage: $0 IN.dtb OUT.dtb" >&2
    exit 2
}

[ "$#" -eq 2 ] || usage
in=$1
out=$2

for tool in fdtput fdtget; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "$0: $tool not found: install the device-tree-compiler package" >&2
        exit 1
    }
done
[ -f "$in" ] || {
    echo "$0: $in: no such file" >&2
    exit 1
}
if [ -e "$out" ] && [ "$in" -ef "$out" ]; then
    echo "$0: refusing to patch $in in place: OUT must be another file (the image's own DTB stays untouched)" >&2
    exit 1
fi

tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT INT TERM
cp "$in" "$tmp"

# A missing node fails the run: another DTB needs its own list, and a silently
# skipped node would only show up later as a panic in the guest.
need_node() {
    fdtget "$tmp" "$1" compatible >/dev/null 2>&1 || {
        echo "$0: $in has no node $1: this list is for Debian bookworm's bcm2711-rpi-4-b.dtb (Linux 6.1); re-derive it as tests/raspi4b/README.md describes" >&2
        exit 1
    }
}

disable() {
    need_node "$1"
    fdtput -t s "$tmp" "$1" status disabled
}

# === Part 1: needed. Without each one the boot stops or loses the console. ===

# brcm,bcm2711-l2-intc, the HDMI block's interrupt controller at 0xfef00100
# (BRCMSTB_L2_IRQ=y): not mapped. Panics at ~3 s in brcmstb_l2_intc_of_init.
disable /soc/interrupt-controller@7ef00100

# brcm,bcm2711-hdmi-i2c, the two HDMI DDC buses at 0xfef04500 and 0xfef09500
# (I2C_BRCMSTB=y): not mapped. Panics at ~4 s in brcmstb_i2c_probe.
disable /soc/i2c@7ef04500
disable /soc/i2c@7ef09500

# brcm,brcm2711-dvp, the HDMI clock/reset block at 0xfef00000
# (CLK_BCM2711_DVP=y): not mapped. Panics at ~8 s in clk_gate_is_enabled
# when the kernel turns off unused clocks.
disable /soc/clock@7ef00000

# The SD card. QEMU attaches it to the Arasan SDHCI at 0xfe300000
# (mmc@7e300000, the Wi-Fi's SDIO slot on a real Pi 4), not to EMMC2. That
# node names wifi-pwrseq as its mmc-pwrseq; the power sequence's reset line is
# on the firmware GPIO expander, and QEMU's firmware mailbox does not answer
# the GPIO tags, so pwrseq_simple fails with -EIO, the SDHCI never probes and
# the initramfs gives up: "ALERT! LABEL=writable does not exist".
need_node /soc/mmc@7e300000
if fdtget "$tmp" /soc/mmc@7e300000 mmc-pwrseq >/dev/null 2>&1; then
    fdtput -d "$tmp" /soc/mmc@7e300000 mmc-pwrseq
fi
disable /wifi-pwrseq

# The console. QEMU's first -serial is the PL011 at 0xfe201000 (ttyAMA0). On a
# Pi 4 that UART drives the Bluetooth chip, described as this serdev child:
# the kernel console still prints, but ttyAMA0 stays a serdev controller, so
# there is no /dev/ttyAMA0 for serial-getty and no login prompt. (ttyS1, the
# mini UART, is no way around it: QEMU's bcm2835_aux reads IER bit 0 as the
# TX interrupt, so when agetty opens ttyS1 the 8250 driver's RX enable raises
# an endless interrupt that stalls a CPU: RCU stalls, then SDHCI timeouts.)
disable /soc/serial@7e201000/bluetooth

# === Part 2: not needed with Linux 6.1.0-50, disabled anyway. ================
# Nothing is mapped at these registers either, but the drivers (modules,
# loaded by udev) give up before touching them: the vc4 DRM master fails to
# bind ("Couldn't get core clock"), v3d hits the deferred-probe timeout, pwm
# and avs-monitor are never used. A kernel update that gets further would
# Oops inside udev, so they stay off; it also saves loading vc4 and v3d.

# brcm,bcm2711-hdmi0/1 (0xfef00700.., 0xfef05700..).
disable /soc/hdmi@7ef00700
disable /soc/hdmi@7ef05700
# brcm,bcm2711-hvs (0xfe400000).
disable /soc/hvs@7e400000
# brcm,bcm2711-pixelvalve0/1/2/4.
disable /soc/pixelvalve@7e206000
disable /soc/pixelvalve@7e207000
disable /soc/pixelvalve@7e20a000
disable /soc/pixelvalve@7e216000
# brcm,bcm2835-txp: an "unimplemented" stub in QEMU, a vc4 component.
disable /soc/txp@7e004000
# brcm,bcm2711-vc5, the vc4 DRM master of the components above.
disable /gpu
# brcm,2711-v3d: QEMU stubs the first 16 KiB, 0xfec04000 is not mapped.
disable /scb/gpu@7ec00000
# brcm,bcm2835-pwm (0xfe20c800), the audio PWM.
disable /soc/pwm@7e20c800
# brcm,bcm2711-avs-monitor (0xfd5d2000), the thermal sensor's syscon.
disable /soc/avs-monitor@7d5d2000
# QEMU 10 itself removes the first node of each of these compatibles
# (raspi4_modify_dtb: PCIe, RNG200, thermal, GENET are not emulated);
# disabled here too so the copy does not depend on that.
disable /soc/rng@7e104000
disable /scb/pcie@7d500000
disable /scb/ethernet@7d580000
# brcm,bcm2711-emmc2 (the Pi 4's real card slot): mapped but QEMU puts no
# card on it, and its regulators sit on the firmware GPIO expander, so it
# defers forever. Off so the emulated card is the only MMC host and is always
# mmcblk0, whatever the probe order.
disable /emmc2bus/mmc@7e340000

mv "$tmp" "$out"
trap - EXIT INT TERM
