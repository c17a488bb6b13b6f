//! Proof in QEMU on arm64: the real CLI builds the `arm64-uefi` and `rpi4`
//! images (the printed offline route: Debian bookworm, test profile, the
//! aarch64 piha-agent cross-built from this checkout; once per test run,
//! `support::shared`), stamps them per node of
//! `examples/qemu-lab.yaml` moved onto that board, and boots them under
//! qemu-system-aarch64 `-M virt` with TCG:
//! - `arm64-uefi` through AAVMF and the image's own systemd-boot, as the init
//!   control plane, twice;
//! - `rpi4` with the kernel, initrd and command line taken from its own
//!   `system-boot` partition (what the Pi firmware would load), booted
//!   directly on `-M virt` as a worker: the same root filesystem a Pi boots,
//!   on a machine QEMU emulates fully. (How far the card gets on
//!   `-M raspi4b` is tests/raspi4b's business.) Its join's token discovery
//!   is real: QEMU's user network forwards the VIP's API port to the test
//!   overlay's own stand-in API server, run on the host with the lab's CA and
//!   bootstrap token (`support::lab::ApiServer`).
//!
//! Each disk is grown by 1 GiB before its first boot, as flashing onto a card
//! bigger than the image does, and the root partition and filesystem must have
//! grown into it (piha-growroot.service).
//!
//! The agent outcomes asserted are `support::lab`'s, the same as on amd64.
//! aarch64 under TCG is slow: three boots in all, each with a generous
//! timeout; the wall time of each is printed (`--nocapture`).

// Tests run the binaries under test, QEMU and the host tools that check
// their output directly, as a user's shell would; clippy.toml's ban on
// Command::new is for piha's own code, which goes through piha_runner.
#![allow(clippy::disallowed_methods)]

mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use support::heavy;
use support::image::{extract, fat_list, fat_read, table};
use support::lab::{
    Lab, api_forward, assert_init_control_plane, assert_second_boot, assert_worker_joined, boot_until_poweroff, observed, tail,
};
use support::qemu::{Boot, BootResult, Machine};
use support::run_ok;

/// How long one aarch64 TCG boot may take, agent and test collection included.
const BOOT_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// What each disk is grown by before its first boot.
const GROW_BY: u64 = 1 << 30;

/// The `arm64-uefi` build: every node of the lab on that board.
fn uefi_lab() -> &'static Lab {
    static F: OnceLock<Lab> = OnceLock::new();
    F.get_or_init(|| Lab::new("arm64-uefi", &[]))
}

/// The `rpi4` build. Debian's raspi-firmware writes `net.ifnames=0` into
/// cmdline.txt, so a Pi's NIC is `eth0` (asserted below): w1 matches it by
/// that name instead of the amd64 lab's `enp0s2`.
fn rpi4_lab() -> &'static Lab {
    static F: OnceLock<Lab> = OnceLock::new();
    F.get_or_init(|| Lab::new("rpi4", &[("interface: enp0s2", "interface: eth0")]))
}

/// The size of the root partition (3) as built, in bytes.
fn root_part_bytes(img: &Path) -> u64 {
    let t = table(img);
    t.partitions[2].size * t.sectorsize
}

/// Grows the disk image by `by` bytes (a bigger card), returning the new size.
fn grow_disk(img: &Path, by: u64) -> u64 {
    run_ok(std::process::Command::new("truncate").arg("-s").arg(format!("+{by}")).arg(img));
    std::fs::metadata(img).expect("grown image").len()
}

/// piha-growroot.service grew partition 3 to the end of the card's grown
/// disk and ext4 with it, beyond the partition size as built.
fn assert_root_grown(card: &GrownCard, node: &str) {
    let (img, built, disk_bytes) = (&card.img, card.built, card.disk_bytes);
    let o = observed(img);
    let keys = ["root_fs_bytes", "root_part_bytes", "disk_bytes", "growroot_result"];
    let missing: Vec<&str> = keys.iter().copied().filter(|k| !o.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "{node}: observed.env lacks {missing:?}: the test overlay (overlays/test/usr/lib/piha/test/collect) does not \
         record root growth yet, or this image predates piha-growroot.service; observed.env: {o:?}"
    );
    let num = |k: &str| {
        o[k].parse::<u64>()
            .unwrap_or_else(|e| panic!("{node}: observed.env {k}={}: {e}", o[k]))
    };
    assert_eq!(o["growroot_result"], "success", "{node}: piha-growroot.service: {o:?}");
    eprintln!(
        "{node}: {}",
        o.get("growroot_log").map(String::as_str).unwrap_or("(no growroot_log)")
    );
    assert_eq!(num("disk_bytes"), disk_bytes, "{node}: the guest did not see the grown disk: {o:?}");

    // The table on the disk says the same as the kernel did, and partition 3
    // now ends within 2 MiB of the disk's end (GPT keeps its 33-sector backup
    // table there; growpart aligns).
    let t = table(img);
    let p3 = &t.partitions[2];
    assert_eq!(
        p3.size * t.sectorsize,
        num("root_part_bytes"),
        "{node}: partition table and kernel disagree: {o:?} {t:?}"
    );
    let end = (p3.start + p3.size) * t.sectorsize;
    assert!(
        disk_bytes - end <= 2 << 20,
        "{node}: partition 3 ends {} bytes before the disk's end: {t:?}",
        disk_bytes - end
    );
    assert!(
        num("root_part_bytes") > built,
        "{node}: root partition not grown (built {built} bytes): {o:?}"
    );
    // df's size leaves out ext4's own metadata, so beating the whole built
    // partition is only possible if resize2fs grew the filesystem.
    assert!(
        num("root_fs_bytes") > built,
        "{node}: ext4 not grown past the built partition ({built} bytes): {o:?}"
    );
}

fn boot_logged(mut b: Boot, name: &str) -> BootResult {
    b.timeout = BOOT_TIMEOUT;
    boot_until_poweroff(&b, name)
}

/// A stamped copy of a lab's image on a disk `GROW_BY` bigger than built.
struct GrownCard {
    img: PathBuf,
    /// The root partition's size as built, in bytes.
    built: u64,
    /// The grown disk's size, in bytes.
    disk_bytes: u64,
}

fn grown_card(lab: &Lab, node: &str) -> GrownCard {
    let built = root_part_bytes(&lab.image);
    let img = lab.stamped(node);
    let disk_bytes = grow_disk(&img, GROW_BY);
    GrownCard { img, built, disk_bytes }
}

/// The kernel that booted is Debian's arm64 flavour (the image's own).
fn assert_arm64_kernel(r: &BootResult, name: &str) {
    let line = r
        .console
        .lines()
        .find(|l| l.contains("Linux version"))
        .unwrap_or_else(|| panic!("{name}: no kernel on the console"));
    assert!(line.contains("-arm64 "), "{name}: not Debian's arm64 kernel: {line}");
}

#[test]
fn arm64_uefi_init_control_plane_boots_under_aavmf_grows_its_root_and_second_boot_does_not_rerun_kubeadm() {
    let _g = heavy();
    let card = grown_card(uefi_lab(), "cp1");
    let img = &card.img;

    let console = img.with_file_name("cp1.console.log");
    let r = boot_logged(Boot::new(Machine::Arm64Uefi, img, &console), "arm64-uefi cp1");
    assert_arm64_kernel(&r, "cp1");
    assert_init_control_plane(uefi_lab(), img, &r, "cp1", "10.0.2.11/24");
    assert_root_grown(&card, "cp1");

    let console2 = img.with_file_name("cp1-second-boot.console.log");
    let r2 = boot_logged(Boot::new(Machine::Arm64Uefi, img, &console2), "arm64-uefi cp1 (second boot)");
    assert_second_boot(img, &r2, "cp1");
}

/// The boot files the Pi firmware would use, from the image's `system-boot`:
/// the kernel and initrd `config.txt` names, and `cmdline.txt`.
struct PiBoot {
    kernel: PathBuf,
    initrd: PathBuf,
    cmdline: String,
}

/// `config.txt`'s `kernel=` and `initramfs FILE [followkernel]` (the last of
/// each wins, as in the firmware).
fn config_txt_boot_files(config: &str) -> (Option<String>, Option<String>) {
    let mut kernel = None;
    let mut initrd = None;
    for line in config.lines().map(str::trim) {
        if let Some(k) = line.strip_prefix("kernel=") {
            kernel = Some(k.trim().to_string());
        } else if let Some(rest) = line.strip_prefix("initramfs ") {
            initrd = rest.split_whitespace().next().map(str::to_string);
        }
    }
    (kernel, initrd)
}

fn pi_boot_files(img: &Path, dir: &Path) -> PiBoot {
    let boot = extract(img, 1, dir);
    let files = fat_list(&boot);
    let text = |name: &str| {
        String::from_utf8(fat_read(&boot, name).unwrap_or_else(|| panic!("no {name} on system-boot: {files:?}"))).expect("utf-8")
    };
    let (kernel, initrd) = config_txt_boot_files(&text("config.txt"));
    let kernel = kernel.unwrap_or_else(|| panic!("config.txt names no kernel=:\n{}", text("config.txt")));
    let initrd = initrd.unwrap_or_else(|| panic!("config.txt names no initramfs:\n{}", text("config.txt")));
    let copy = |name: &str| {
        let bytes = fat_read(&boot, name).unwrap_or_else(|| panic!("config.txt names {name}, not on system-boot: {files:?}"));
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write boot file");
        path
    };
    PiBoot {
        kernel: copy(&kernel),
        initrd: copy(&initrd),
        cmdline: text("cmdline.txt"),
    }
}

/// cmdline.txt with its consoles replaced by `-M virt`'s PL011 (`ttyAMA0`);
/// everything else (root=, rootwait, the cgroup switches, ...) as the card has it.
fn virt_cmdline(cmdline: &str) -> String {
    std::iter::once("console=ttyAMA0,115200")
        .chain(cmdline.split_whitespace().filter(|w| !w.starts_with("console=")))
        .collect::<Vec<&str>>()
        .join(" ")
}

#[test]
fn rpi4_root_filesystem_boots_on_virt_with_its_own_kernel_and_joins_as_a_worker() {
    let _g = heavy();
    let lab = rpi4_lab();
    let card = grown_card(lab, "w1");
    let img = &card.img;
    let dir = tempfile::tempdir().expect("tempdir");
    let pi = pi_boot_files(img, dir.path());
    let words: Vec<&str> = pi.cmdline.split_whitespace().collect();
    for want in [
        "root=LABEL=writable",
        "rootwait",
        "cgroup_enable=memory",
        "cgroup_memory=1",
        "net.ifnames=0",
    ] {
        assert!(words.contains(&want), "cmdline.txt lacks {want}: {}", pi.cmdline);
    }

    let console = img.with_file_name("w1.console.log");
    let mut b = Boot::new(Machine::Arm64Direct, img, &console);
    b.kernel = Some(pi.kernel);
    b.initrd = Some(pi.initrd);
    b.append = Some(virt_cmdline(&pi.cmdline));
    // Token discovery against the VIP reaches the host's stand-in API
    // server, set up with this lab's CA and bootstrap token.
    let api = lab.api_server();
    b.net_extra.push(api_forward(api.port));
    let r = boot_logged(b, "rpi4 w1 on virt");
    eprintln!("the host's stand-in API server for w1:\n{}", api.log());
    drop(api);
    assert_arm64_kernel(&r, "w1");
    // The initrd found the card's root (partition 3 of the virtio disk) by its label.
    assert!(
        r.console.contains("EXT4-fs (vda3)"),
        "the root filesystem was not mounted from vda3:\n{}",
        tail(&r.console)
    );
    assert_worker_joined(lab, img, &r, "w1", "eth0=10.0.2.21/24");
    assert_root_grown(&card, "w1");
}

#[test]
fn config_txt_names_the_last_kernel_and_initramfs() {
    let (k, i) = config_txt_boot_files(
        "[all]\nkernel=vmlinuz-1\ninitramfs initrd.img-1 followkernel\n[pi4]\nkernel=vmlinuz-2\ninitramfs initrd.img-2\n",
    );
    assert_eq!((k.as_deref(), i.as_deref()), (Some("vmlinuz-2"), Some("initrd.img-2")));
    assert_eq!(config_txt_boot_files("arm_64bit=1\n"), (None, None));
}

#[test]
fn virt_cmdline_replaces_only_the_consoles() {
    let card = "console=tty0 console=ttyS1,115200 root=LABEL=writable rw fsck.repair=yes net.ifnames=0 rootwait cgroup_enable=memory\n";
    assert_eq!(
        virt_cmdline(card),
        "console=ttyAMA0,115200 root=LABEL=writable rw fsck.repair=yes net.ifnames=0 rootwait cgroup_enable=memory"
    );
}
