//! The rpi4 image, built by the real CLI: the offline route piha prints,
//! `piha build --board rpi4 --distro debian-bookworm --profile test --cluster
//! examples/qemu-lab.yaml`, built once per test run and shared with the boots
//! (`support::shared`). Three kinds of checks:
//!
//! - structure, no boot: the MBR against `boards/rpi4.yaml`, what the Pi 4
//!   firmware needs on `system-boot` (config.txt parsed, every file it names
//!   present), cmdline.txt, `fsck.vfat -n` / `e2fsck -fn`, an arm64 kernel
//!   and a static aarch64 agent, `/boot/firmware` a mount point, no host keys;
//! - a boot on `qemu-system-aarch64 -M raspi4b` of the kernel, initrd and
//!   DTB from the image's own boot partition (DTB patched by
//!   `tests/raspi4b/patch-dtb.sh`, a test-only copy), asserting how far it
//!   gets and printing where it stops;
//! - a kernel reinstall in a loop-mounted copy (root only), chrooted under
//!   qemu-user: Debian's hooks must bring a stale boot partition back in
//!   line, as on a running node.
//!
//! The cluster copy with its nodes moved to `board: rpi4`, for stamping, is
//! `support::lab`'s (`Lab::new("rpi4", ..)`); this binary's own files go to
//! `target/piha-test-out/build_rpi4/` and stay there.
//!
//! And rpi5, which cannot be built here (Ubuntu-only, ports.ubuntu.com is
//! unreachable): refused up front for Debian, and its board file checked.

// Tests run the binaries under test, QEMU and the host tools that check
// their output directly, as a user's shell would; clippy.toml's ban on
// Command::new is for piha's own code, which goes through piha_runner.
#![allow(clippy::disallowed_methods)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use support::disk::Loop;
use support::image::{self, Partition};
use support::lab::{Lab, observed, status, tail, test_build};
use support::qemu::{Boot, Machine, boot};
use support::{cache_dir, heavy, repo, run_ok};

/// The build every test here inspects, made once.
struct Built {
    lab: Lab,
    /// This binary's own work (boot copies, console logs, the upgraded
    /// image), kept after the run for a look by hand.
    dir: PathBuf,
    /// Partitions copied out of the image: system-boot, PIHA-CFG, writable.
    parts: Vec<PathBuf>,
}

/// `examples/qemu-lab.yaml` with every node on `board: rpi4`, in `dir`.
fn rpi4_cluster(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("examples/qemu-lab.yaml")).expect("read examples/qemu-lab.yaml");
    assert!(
        text.contains("board: amd64"),
        "examples/qemu-lab.yaml has no `board: amd64` to replace"
    );
    let cluster = dir.join("cluster.yaml");
    std::fs::write(&cluster, text.replace("board: amd64", "board: rpi4")).expect("write cluster.yaml");
    cluster
}

fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let _guard = heavy();
        let lab = Lab::new("rpi4", &[]);
        let dir = repo().join("target/piha-test-out/build_rpi4");
        let _ = std::fs::remove_dir_all(&dir);
        let parts_dir = dir.join("parts");
        std::fs::create_dir_all(&parts_dir).expect("create the test dir");
        let parts = (1..=image::table(&lab.image).partitions.len())
            .map(|i| image::extract(&lab.image, i, &parts_dir))
            .collect();
        Built { lab, dir, parts }
    })
}

fn board(name: &str) -> Value {
    let text = std::fs::read_to_string(repo().join(format!("boards/{name}.yaml"))).expect("read the board file");
    let yaml: yaml_serde::Value = yaml_serde::from_str(&text).expect("board file is YAML");
    serde_json::to_value(yaml).expect("board file as JSON")
}

fn boot_fs() -> &'static Path {
    &built().parts[0]
}

fn root_fs() -> &'static Path {
    &built().parts[2]
}

fn fat_text(fs: &Path, path: &str) -> String {
    String::from_utf8(image::fat_read(fs, path).unwrap_or_else(|| panic!("{path} is not on {}", fs.display()))).expect("UTF-8")
}

fn ext4_file(fs: &Path, path: &str) -> Vec<u8> {
    image::ext4_read(fs, path).unwrap_or_else(|| panic!("{path} is not in {}", fs.display()))
}

/// Whether a FAT file list holds `name` (FAT names are case-insensitive, and so is the Pi firmware).
fn has(files: &[String], name: &str) -> bool {
    files.iter().any(|f| f.eq_ignore_ascii_case(name))
}

/// The kernel release the image boots (`6.1.0-56-arm64`): the one `vmlinuz-*` on system-boot.
fn kernel_release(files: &[String]) -> String {
    let kernels: Vec<&String> = files.iter().filter(|f| f.starts_with("vmlinuz-")).collect();
    assert_eq!(kernels.len(), 1, "not exactly one kernel on system-boot: {files:?}");
    kernels[0].trim_start_matches("vmlinuz-").to_string()
}

/// The settings of a config.txt that apply to a Pi 4: lines before any
/// section, in `[all]` and in `[pi4]` (other filters, e.g. `[pi3]`, `[none]`,
/// are for other boards). `initramfs FILE [followkernel]` becomes
/// `initramfs=FILE`. See
/// <https://www.raspberrypi.com/documentation/computers/config_txt.html#conditional-filters>.
fn pi4_settings(config_txt: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut applies = true;
    for line in config_txt.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            applies = matches!(section, "all" | "pi4");
            continue;
        }
        if !applies {
            continue;
        }
        if let Some(rest) = line.strip_prefix("initramfs ") {
            let file = rest.split_whitespace().next().expect("initramfs names a file");
            out.insert("initramfs".to_string(), file.to_string());
        } else if let Some((k, v)) = line.split_once('=') {
            out.insert(k.trim().to_string(), v.trim().to_string());
        } else {
            panic!("config.txt line {line:?} is neither a setting, a section nor `initramfs FILE`");
        }
    }
    out
}

/// The files a Pi 4's firmware loads from the boot partition for `settings`,
/// with the firmware's defaults where config.txt is silent
/// (<https://www.raspberrypi.com/documentation/computers/config_txt.html#boot-options>).
fn firmware_loads(settings: &BTreeMap<String, String>) -> Vec<String> {
    let get = |k: &str, default: &str| settings.get(k).cloned().unwrap_or_else(|| default.to_string());
    let prefix = get("os_prefix", "");
    let mut files = vec![
        get("start_file", "start4.elf"),
        get("fixup_file", "fixup4.dat"),
        format!("{prefix}{}", get("kernel", "kernel8.img")),
        format!("{prefix}{}", get("cmdline", "cmdline.txt")),
        // upstream_kernel=1: the firmware looks for the upstream name, which
        // for a Pi 4 B is also the downstream one.
        format!("{prefix}{}", get("device_tree", "bcm2711-rpi-4-b.dtb")),
    ];
    if let Some(initrd) = settings.get("initramfs") {
        files.push(format!("{prefix}{initrd}"));
    }
    files
}

fn cmdline_words(fs: &Path) -> Vec<String> {
    let text = fat_text(fs, "cmdline.txt");
    assert_eq!(
        text.trim_end_matches('\n').lines().count(),
        1,
        "cmdline.txt must be one line: {text:?}"
    );
    text.split_whitespace().map(str::to_string).collect()
}

/// What cmdline.txt must hold on any rpi4 image: root by the board's label,
/// memory cgroups for the kubelet, a serial console.
fn assert_cmdline(words: &[String]) {
    let root_label = board("rpi4")["partitions"]["root"]["label"]
        .as_str()
        .expect("root label")
        .to_string();
    let has_word = |w: &str| words.iter().any(|x| x == w);
    assert!(has_word(&format!("root=LABEL={root_label}")), "{words:?}");
    assert!(has_word("cgroup_enable=memory") && has_word("cgroup_memory=1"), "{words:?}");
    // The Pi 4's GPIO serial console with Debian's upstream kernel and DTB (the mini UART).
    assert!(has_word("console=ttyS1,115200"), "no serial console: {words:?}");
    assert!(has_word("rootwait"), "an SD card or USB disk appears late: {words:?}");
    assert!(
        !words.iter().any(|w| w.starts_with("cma=")),
        "cma= can leave a Pi 4 unbootable: {words:?}"
    );
}

/// config.txt settings every rpi4 image needs, returned for more checks.
fn assert_config_txt(config_txt: &str, release: &str) -> BTreeMap<String, String> {
    let s = pi4_settings(config_txt);
    assert_eq!(s.get("arm_64bit").map(String::as_str), Some("1"), "{config_txt}");
    assert_eq!(s.get("enable_uart").map(String::as_str), Some("1"), "{config_txt}");
    // Debian's kernel and DTBs are upstream ones.
    assert_eq!(s.get("upstream_kernel").map(String::as_str), Some("1"), "{config_txt}");
    assert_eq!(
        s.get("kernel").map(String::as_str),
        Some(format!("vmlinuz-{release}").as_str()),
        "{config_txt}"
    );
    assert_eq!(
        s.get("initramfs").map(String::as_str),
        Some(format!("initrd.img-{release}").as_str()),
        "{config_txt}"
    );
    s
}

// ---------------------------------------------------------------- structure

#[test]
fn the_mbr_layout_is_what_the_board_file_asks_for() {
    let b = built();
    let board = board("rpi4");
    let t = image::table(&b.lab.image);
    assert_eq!(t.label, "dos", "the Pi boot ROM reads only an MBR");
    assert_eq!(t.partitions.len(), 3, "{t:?}");
    let mib = |p: &Partition| p.size * t.sectorsize / (1 << 20);
    let (boot, cfg, root) = (&t.partitions[0], &t.partitions[1], &t.partitions[2]);
    // builder/src/disk.rs place(): the first partition at 1 MiB, each one MiB-aligned, no gaps.
    assert_eq!(boot.start * t.sectorsize, 1 << 20, "system-boot starts at 1 MiB");
    for w in t.partitions.windows(2) {
        assert_eq!(
            w[0].start + w[0].size,
            w[1].start,
            "gap or overlap between {} and {}",
            w[0].node,
            w[1].node
        );
    }
    for p in &t.partitions {
        assert_eq!(p.start * t.sectorsize % (1 << 20), 0, "{} is MiB-aligned", p.node);
    }
    assert_eq!(boot.kind, "c", "system-boot is FAT32 (LBA)");
    assert_eq!(boot.bootable, Some(true), "system-boot is the active partition");
    assert_eq!(cfg.kind, "c", "PIHA-CFG is FAT (LBA)");
    assert_eq!(root.kind, "83", "the root is a Linux partition");
    assert_eq!(mib(boot), board["partitions"]["boot"]["size_mib"].as_u64().expect("boot.size_mib"));
    assert_eq!(
        mib(cfg),
        board["partitions"]["config"]["size_mib"].as_u64().expect("config.size_mib")
    );

    let label = |tool: &str, part: &Path| run_ok(Command::new(tool).arg(part)).trim().to_string();
    assert_eq!(
        label("fatlabel", &b.parts[0]),
        board["partitions"]["boot"]["label"].as_str().expect("boot.label")
    );
    assert_eq!(label("fatlabel", &b.parts[1]), "PIHA-CFG");
    assert_eq!(
        label("e2label", &b.parts[2]),
        board["partitions"]["root"]["label"].as_str().expect("root.label")
    );
    // The firmware reads system-boot as FAT32 (board file: fat: fat32).
    let boot_sector = std::fs::read(&b.parts[0]).expect("read system-boot");
    assert_eq!(&boot_sector[0x52..0x5a], b"FAT32   ", "system-boot is not FAT32");

    // free_mib: room for the node's own packages and kernel upgrades.
    let dump = run_ok(Command::new("dumpe2fs").arg("-h").arg(&b.parts[2]));
    let field = |name: &str| -> u64 {
        dump.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().parse::<u64>().expect("a number")))
            .unwrap_or_else(|| panic!("no {name} in dumpe2fs -h:\n{dump}"))
    };
    let free_mib = (field("Free blocks:") * field("Block size:")) >> 20;
    let want = board["partitions"]["root"]["free_mib"].as_u64().expect("root.free_mib");
    assert!(free_mib >= want, "writable has {free_mib} MiB free, the board file asks for {want}");
}

#[test]
fn every_partition_passes_fsck() {
    let b = built();
    run_ok(Command::new("fsck.vfat").arg("-n").arg(&b.parts[0]));
    run_ok(Command::new("fsck.vfat").arg("-n").arg(&b.parts[1]));
    run_ok(Command::new("e2fsck").arg("-fn").arg(&b.parts[2]));
}

#[test]
fn system_boot_holds_everything_the_pi4_firmware_loads() {
    let files = image::fat_list(boot_fs());
    eprintln!("system-boot: {files:?}");
    for f in ["start4.elf", "fixup4.dat", "config.txt", "cmdline.txt", "bcm2711-rpi-4-b.dtb"] {
        assert!(has(&files, f), "{f} not on system-boot: {files:?}");
    }
    // The Pi 400 and CM4 boot the same card (boards/rpi4.yaml description).
    for f in ["bcm2711-rpi-400.dtb", "bcm2711-rpi-cm4-io.dtb"] {
        assert!(has(&files, f), "{f} not on system-boot: {files:?}");
    }
    let release = kernel_release(&files);
    let settings = assert_config_txt(&fat_text(boot_fs(), "config.txt"), &release);
    for f in firmware_loads(&settings) {
        assert!(
            has(&files, &f),
            "config.txt makes the firmware load {f}, which is not on system-boot: {files:?}"
        );
    }
}

#[test]
fn cmdline_txt_finds_root_by_label_with_memory_cgroups_and_a_serial_console() {
    let words = cmdline_words(boot_fs());
    eprintln!("cmdline.txt: {}", words.join(" "));
    assert_cmdline(&words);
    // From /etc/default/raspi-extra-cmdline (board file rootfs_files).
    assert!(words.iter().any(|w| w == "systemd.firstboot=off"), "{words:?}");
}

#[test]
fn the_boot_files_are_the_installed_kernel_initrd_and_device_trees() {
    let files = image::fat_list(boot_fs());
    let release = kernel_release(&files);
    let kernel = image::fat_read(boot_fs(), &format!("vmlinuz-{release}")).expect("kernel");
    // arm64 Image header: "ARM\x64" at 0x38 (Documentation/arch/arm64/booting.rst).
    assert_eq!(&kernel[0x38..0x3c], b"ARM\x64", "vmlinuz-{release} is not an arm64 Image");
    assert!(
        kernel == ext4_file(root_fs(), &format!("/boot/vmlinuz-{release}")),
        "the kernel on system-boot is not /boot/vmlinuz-{release}"
    );
    assert!(
        image::fat_read(boot_fs(), &format!("initrd.img-{release}")).expect("initrd")
            == ext4_file(root_fs(), &format!("/boot/initrd.img-{release}")),
        "the initrd on system-boot is not /boot/initrd.img-{release}"
    );
    let dtbs: Vec<&String> = files.iter().filter(|f| f.ends_with(".dtb")).collect();
    assert!(!dtbs.is_empty());
    for dtb in dtbs {
        assert!(
            image::fat_read(boot_fs(), dtb).expect("dtb")
                == ext4_file(root_fs(), &format!("/usr/lib/linux-image-{release}/broadcom/{dtb}")),
            "{dtb} on system-boot is not the installed kernel's"
        );
    }
}

#[test]
fn the_agent_is_a_static_aarch64_executable() {
    let agent = ext4_file(root_fs(), "/usr/bin/piha-agent");
    let (machine, interp) = image::elf_facts(&agent);
    const EM_AARCH64: u16 = 183;
    assert_eq!(machine, EM_AARCH64, "piha-agent is not an aarch64 binary");
    // No dynamic loader: runs on Debian 12 and Ubuntu 24.04 userlands alike.
    assert!(!interp, "piha-agent asks for a dynamic loader (PT_INTERP): it must be static");
}

#[test]
fn boot_firmware_is_the_boot_partition_mounted_by_label() {
    let board = board("rpi4");
    let mount = board["partitions"]["boot"]["mount"].as_str().expect("boot.mount");
    let label = board["partitions"]["boot"]["label"].as_str().expect("boot.label");
    // Nothing under the mount point: the files live on system-boot, and
    // anything here would only be shadowed once it is mounted.
    let ls = run_ok(Command::new("debugfs").arg("-R").arg(format!("ls {mount}")).arg(root_fs()));
    let entries: Vec<&str> = ls
        .split_whitespace()
        .filter(|w| !w.starts_with('(') && w.parse::<u64>().is_err())
        .collect();
    assert_eq!(entries, [".", ".."], "{mount} in the root filesystem is not empty: {ls}");
    let fstab = String::from_utf8(ext4_file(root_fs(), "/etc/fstab")).expect("UTF-8");
    let line: Vec<&str> = fstab
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<&str>>())
        .find(|f| f.get(1) == Some(&mount))
        .unwrap_or_else(|| panic!("no {mount} in /etc/fstab:\n{fstab}"));
    assert_eq!(line[0], format!("LABEL={label}"), "{fstab}");
    assert_eq!(line[2], "vfat", "{fstab}");
    // raspi-firmware's hooks write here; a card without it must still boot.
    assert!(line[3].split(',').any(|o| o == "nofail"), "{fstab}");
    // The hooks that keep it current (see a_kernel_reinstall_rewrites_the_boot_partition).
    for hook in [
        "/etc/kernel/postinst.d/z50-raspi-firmware",
        "/etc/initramfs/post-update.d/z50-raspi-firmware",
    ] {
        assert!(image::ext4_exists(root_fs(), hook), "{hook} missing");
    }
    let defaults = String::from_utf8(ext4_file(root_fs(), "/etc/default/raspi-firmware")).expect("UTF-8");
    assert!(defaults.contains("ROOTPART=\"LABEL=writable\""), "{defaults}");
}

#[test]
fn each_node_makes_its_own_identity() {
    let ls = run_ok(Command::new("debugfs").args(["-R", "ls /etc/ssh"]).arg(root_fs()));
    assert!(!ls.contains("ssh_host_"), "host keys baked into the image: {ls}");
    assert_eq!(ext4_file(root_fs(), "/etc/machine-id"), b"uninitialized\n");
}

#[test]
fn piha_cfg_says_what_the_image_is() {
    let b = built();
    let info: Value = serde_json::from_slice(&image::fat_read(&b.parts[1], "image.json").expect("image.json on PIHA-CFG")).expect("JSON");
    assert_eq!(info["board"], "rpi4");
    assert_eq!(info["arch"], "arm64");
    assert_eq!(info["distro"], "debian-bookworm");
    assert_eq!(info["profile"], "test");
    let manifest = b.lab.image.with_extension("manifest.json");
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(&manifest).expect("read the manifest")).expect("manifest JSON");
    assert_eq!(info["input_hash"], manifest["input_hash"]);
    let packages: Vec<&str> = manifest["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    for want in board("rpi4")["packages"]["debian"].as_array().expect("packages.debian") {
        let want = want.as_str().expect("package name");
        assert!(
            packages.contains(&want),
            "{want} (boards/rpi4.yaml packages.debian) not in the manifest"
        );
    }
}

// ---------------------------------------------------------------- raspi4b boot

/// Milestones of the boot on `-M raspi4b`, in the order they appear, each
/// with the console text that proves it.
const MILESTONES: &[(&str, &str)] = &[
    ("kernel up", "Booting Linux on physical CPU"),
    ("initramfs runs", "Run /init as init process"),
    ("SD card found (on the Arasan SDHCI)", "mmcblk0: p1 p2 p3"),
    ("root mounted from the SD card", "EXT4-fs (mmcblk0p3): mounted"),
    ("systemd started", "Welcome to Debian GNU/Linux"),
    ("system-boot mounted at /boot/firmware", "Mounted boot-firmware.mount"),
    ("PIHA-CFG mounted", "Mounted boot-piha.mount"),
    ("serial login prompt", "login:"),
    ("root grown to fill the card", "EXT4-fs (mmcblk0p3): resized filesystem"),
    ("piha-agent ran", "piha-agent["),
    ("powered off by the test overlay", "reboot: Power down"),
];

/// The console without ANSI colour and cursor sequences (systemd's status lines use them).
fn plain(console: &str) -> String {
    let mut out = String::with_capacity(console.len());
    let mut chars = console.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Why a boot went no further, from its console.
fn stop_reason(console: &str) -> &'static str {
    if console.contains("Kernel panic") {
        "kernel panic"
    } else if console.contains("ALERT!") {
        "the initramfs did not find the root filesystem"
    } else if console.contains("detected stall") || console.contains("soft lockup") {
        "a CPU stall"
    } else {
        "the time limit"
    }
}

/// The unstamped test image on QEMU's Raspberry Pi 4: the firmware's part
/// (config.txt's kernel and initramfs, the board's DTB) done by hand, the rest
/// is the image's own. No network (QEMU emulates no GENET or PCIe), so the
/// card is left unstamped: the agent finds no node.yaml, reports that to
/// PIHA-CFG, and the test overlay records the node and powers it off.
#[test]
fn boots_on_qemu_raspi4b_from_its_own_boot_partition() {
    let b = built();
    let _g = heavy();
    let dir = b.dir.join("raspi4b");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create dir");

    // What the Pi firmware would load: the files config.txt names, from the image itself.
    let release = kernel_release(&image::fat_list(boot_fs()));
    let settings = pi4_settings(&fat_text(boot_fs(), "config.txt"));
    let take = |name: &str| {
        let to = dir.join(name);
        std::fs::write(
            &to,
            image::fat_read(boot_fs(), name).unwrap_or_else(|| panic!("{name} not on system-boot")),
        )
        .expect("write");
        to
    };
    let kernel = take(&settings["kernel"]);
    let initrd = take(&settings["initramfs"]);
    let dtb = take("bcm2711-rpi-4-b.dtb");
    // A test-only copy with what QEMU does not emulate disabled (tests/raspi4b/README.md).
    let patched = dir.join("qemu-raspi4b.dtb");
    run_ok(
        Command::new("sh")
            .arg(repo().join("tests/raspi4b/patch-dtb.sh"))
            .arg(&dtb)
            .arg(&patched),
    );

    // QEMU takes only SD cards whose size is a power of 2; grow a copy (the MBR stays valid).
    let sd = dir.join("sd.img");
    image::copy_sparse(&b.lab.image, &sd);
    let size = std::fs::metadata(&sd).expect("stat").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&sd)
        .and_then(|f| f.set_len(size.next_power_of_two()))
        .expect("grow the SD card copy");

    let console = dir.join("console.log");
    let mut vm = Boot::new(Machine::Raspi4b, &sd, &console);
    vm.mem_mib = 2048; // raspi4b has 2 GiB and refuses any other -m.
    vm.kernel = Some(kernel);
    vm.initrd = Some(initrd);
    vm.dtb = Some(patched);
    // The PL011 (ttyAMA0) is QEMU's first serial port; the mini UART that
    // cmdline.txt names (ttyS1) storms interrupts under QEMU (README.md).
    // piha.test-poweroff=1: raspi4b has no fw_cfg to ask the test overlay to
    // power off once the agent is done.
    vm.append = Some(format!(
        "console=ttyAMA0,115200 earlycon=pl011,mmio32,0xfe201000 root=LABEL={} rootwait rw piha.test-poweroff=1",
        board("rpi4")["partitions"]["root"]["label"].as_str().expect("root label")
    ));
    vm.timeout = Duration::from_secs(1200);
    // The guest powers itself off; stop early only when it cannot get there.
    let hopeless = |c: &str| {
        let c = plain(c);
        c.contains("Kernel panic") || c.contains("ALERT!")
    };
    let r = boot(&vm, Some(&hopeless));
    let text = plain(&r.console);

    eprintln!(
        "raspi4b boot of {release}: powered off {} after {:?} wall",
        r.powered_off, r.elapsed
    );
    for (what, needle) in MILESTONES {
        let line = text.lines().find(|l| l.contains(needle)).unwrap_or("");
        let mark = if line.is_empty() { "NOT reached" } else { "reached" };
        eprintln!("  {mark:11} {what}: {}", line.trim());
    }
    if let Some((what, _)) = MILESTONES.iter().find(|(_, needle)| !text.contains(needle)) {
        panic!(
            "raspi4b: stopped before {what:?} ({}); console tail:\n{}",
            stop_reason(&text),
            tail(&text)
        );
    }
    assert!(r.powered_off, "{}", tail(&text));

    // The aarch64 agent read the card and said, on the card, what is missing.
    let status = status(&sd);
    assert_eq!(status["phase"], "invalid-config", "{status:#}");
    assert!(status["error"].as_str().unwrap_or_default().contains("node.yaml"), "{status:#}");
    assert_eq!(status["versions"]["kernel"], release.as_str(), "{status:#}");
    let observed = observed(&sd);
    eprintln!("  observed: {observed:?}");
    assert!(
        matches!(observed.get("system_state").map(String::as_str), Some("running" | "degraded")),
        "systemd did not finish booting: {observed:?}"
    );
    // piha-growroot grew partition 3 of mmcblk0 (the p-separated name of an SD card) to the card's end.
    assert_eq!(observed.get("growroot_result").map(String::as_str), Some("success"), "{observed:?}");
    assert_eq!(
        observed.get("disk_bytes").map(String::as_str),
        Some(size.next_power_of_two().to_string().as_str())
    );
    let root_part: u64 = observed["root_part_bytes"].parse().expect("root_part_bytes");
    let t = image::table(&b.lab.image);
    let p3 = &t.partitions[2];
    let end = p3.start * t.sectorsize + root_part;
    assert!(
        root_part > p3.size * t.sectorsize && size.next_power_of_two() - end < 1 << 20,
        "the root partition does not reach the end of the card: {observed:?}"
    );
    // No GENET under QEMU: the node has no address but loopback's.
    eprintln!(
        "  addresses: {:?} (QEMU's raspi4b emulates no GENET ethernet)",
        observed.get("addresses")
    );
    // The card after a power-off by systemd: clean filesystems.
    let parts = dir.join("parts");
    std::fs::create_dir_all(&parts).expect("create dir");
    run_ok(Command::new("fsck.vfat").arg("-n").arg(image::extract(&sd, 1, &parts)));
    run_ok(Command::new("fsck.vfat").arg("-n").arg(image::extract(&sd, 2, &parts)));
    run_ok(Command::new("e2fsck").arg("-fn").arg(image::extract(&sd, 3, &parts)));
}

// ---------------------------------------------------------------- kernel upgrades

/// How system-boot is mounted at `/boot/firmware` in a [`Chroot`].
enum BootMount {
    /// By the host kernel's vfat, as on a node.
    Vfat,
    /// The host kernel has no vfat (this CI machine's Firecracker kernel has
    /// none, and no modules): a tmpfs mount point holding the FAT's files,
    /// written back to the FAT with mtools by [`Chroot::sync_boot`].
    TmpfsCopy,
}

/// A loop device over an image copy with its root filesystem mounted at
/// `root`, system-boot at `root/boot/firmware` (a mount point, as on a
/// node), and proc, sys and dev inside, for `chroot`. Everything is unmounted
/// and detached on drop, whatever happened.
struct Chroot {
    root: PathBuf,
    /// Detached by its own drop, after [`Chroot`]'s unmounts.
    dev: Loop,
    mounts: Vec<PathBuf>,
    boot: BootMount,
}

impl Chroot {
    fn new(image: &Path, root: &Path) -> Chroot {
        let mut c = Chroot {
            root: root.to_path_buf(),
            dev: Loop::attach_partitioned(image),
            mounts: Vec::new(),
            boot: BootMount::Vfat,
        };
        assert!(Path::new(&c.part(3)).exists(), "no {} after partx --add", c.part(3));
        c.mount(&[&c.part(3)], root);
        let firmware = root.join("boot/firmware");
        let vfat = Command::new("mount")
            .args(["-t", "vfat", &c.part(1)])
            .arg(&firmware)
            .output()
            .expect("run mount");
        if vfat.status.success() {
            c.mounts.push(firmware);
        } else {
            eprintln!(
                "mount -t vfat failed ({}): system-boot copied to a tmpfs mount point instead",
                String::from_utf8_lossy(&vfat.stderr).trim()
            );
            c.mount(&["-t", "tmpfs", "system-boot"], &firmware);
            c.boot = BootMount::TmpfsCopy;
            run_ok(
                Command::new("mcopy")
                    .args(["-s", "-n", "-m", "-i", &c.part(1), "::*"])
                    .arg(format!("{}/", firmware.display())),
            );
        }
        c.mount(&["-t", "proc", "proc"], &root.join("proc"));
        c.mount(&["--bind", "/sys"], &root.join("sys"));
        c.mount(&["--bind", "/dev"], &root.join("dev"));
        c
    }

    fn part(&self, n: u32) -> String {
        self.dev.part(n).display().to_string()
    }

    fn mount(&mut self, args: &[&str], at: &Path) {
        run_ok(Command::new("mount").args(args).arg(at));
        self.mounts.push(at.to_path_buf());
    }

    /// Runs a command inside (aarch64, so under qemu-user through binfmt_misc).
    fn run(&self, args: &[&str]) -> String {
        run_ok(
            Command::new("chroot")
                .arg(&self.root)
                .args(args)
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .env("LC_ALL", "C.UTF-8"),
        )
    }

    fn firmware(&self, name: &str) -> PathBuf {
        self.root.join("boot/firmware").join(name)
    }

    /// With [`BootMount::TmpfsCopy`], makes the FAT hold exactly the files
    /// under `/boot/firmware` (flat, as Debian's hooks write it).
    fn sync_boot(&self) {
        if matches!(self.boot, BootMount::Vfat) {
            return;
        }
        let dev = self.part(1);
        let mut names = Vec::new();
        for entry in std::fs::read_dir(self.firmware("")).expect("read /boot/firmware") {
            let entry = entry.expect("dir entry");
            assert!(
                entry.file_type().expect("file type").is_file(),
                "{:?}: only files expected",
                entry.path()
            );
            names.push(entry.file_name().into_string().expect("UTF-8 name"));
        }
        for old in image::fat_list(Path::new(&dev)) {
            if !names.iter().any(|n| n.eq_ignore_ascii_case(&old)) {
                run_ok(Command::new("mdel").args(["-i", &dev, &format!("::{old}")]));
            }
        }
        for n in &names {
            run_ok(
                Command::new("mcopy")
                    .args(["-o", "-m", "-i", &dev])
                    .arg(self.firmware(n))
                    .arg(format!("::{n}")),
            );
        }
    }
}

impl Drop for Chroot {
    fn drop(&mut self) {
        for m in self.mounts.iter().rev() {
            let ok = Command::new("umount").arg(m).status().map(|s| s.success()).unwrap_or(false);
            if !ok {
                let _ = Command::new("umount").arg("--lazy").arg(m).status();
            }
        }
    }
}

/// The cached .deb of the installed `linux-image-<release>`, if the build left it in the cache.
fn cached_kernel_deb(release: &str, version: &str) -> Option<PathBuf> {
    // dpkg's file name: epoch colon as %3a.
    let name = format!("linux-image-{release}_{}_arm64.deb", version.replace(':', "%3a"));
    let deb = cache_dir().join("debs/debian-bookworm-arm64").join(name);
    deb.exists().then_some(deb)
}

/// Kernel upgrades on a running node must keep the boot partition current:
/// in a copy of the image, with system-boot at /boot/firmware as
/// fstab mounts it, a stale boot partition (old kernel, initrd, config.txt,
/// cmdline.txt, a missing DTB, an older kernel's leftovers) is brought back
/// in line by what an upgrade runs: the kernel package's postinst, i.e.
/// update-initramfs and raspi-firmware's z50 hook.
#[test]
fn a_kernel_reinstall_rewrites_the_boot_partition() {
    // Loop devices and mounts need root; say so rather than fail obscurely.
    let euid = run_ok(Command::new("id").arg("-u"));
    assert_eq!(euid.trim(), "0", "this test loop-mounts an image: run it as root");
    let b = built();
    let _g = heavy();
    let dir = b.dir.join("kernel-upgrade");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("root")).expect("create dir");
    let copy = dir.join("node.img");
    image::copy_sparse(&b.lab.image, &copy);
    let release = kernel_release(&image::fat_list(boot_fs()));
    let old = "6.1.0-1-arm64"; // an older kernel, gone from /boot

    let (built_modules, new_modules) = {
        let c = Chroot::new(&copy, &dir.join("root"));
        for f in [
            format!("vmlinuz-{release}"),
            format!("initrd.img-{release}"),
            "config.txt".into(),
            "cmdline.txt".into(),
        ] {
            std::fs::write(c.firmware(&f), "stale\n").expect("write a stale file");
        }
        std::fs::remove_file(c.firmware("bcm2711-rpi-4-b.dtb")).expect("remove the DTB");
        for f in [format!("vmlinuz-{old}"), format!("initrd.img-{old}")] {
            std::fs::write(c.firmware(&f), "old kernel\n").expect("write an old kernel file");
        }

        let version = c.run(&["dpkg-query", "--show", "--showformat=${Version}", &format!("linux-image-{release}")]);
        match cached_kernel_deb(&release, &version) {
            Some(deb) => {
                // What apt runs for a kernel upgrade: unpack and configure the
                // package, whose postinst runs /etc/kernel/postinst.d
                // (update-initramfs, then raspi-firmware's z50 hook).
                std::fs::copy(&deb, c.root.join("tmp/kernel.deb")).expect("copy the .deb in");
                let out = c.run(&["dpkg", "--install", "/tmp/kernel.deb"]);
                std::fs::remove_file(c.root.join("tmp/kernel.deb")).expect("remove the .deb");
                eprintln!("kernel upgrade: dpkg --install {}:\n{out}", deb.display());
            }
            None => {
                // No .deb: the initramfs update alone, whose post-update hook
                // runs the same raspi-firmware hook.
                let out = c.run(&["update-initramfs", "-u", "-k", "all"]);
                eprintln!("kernel upgrade: no cached linux-image-{release} {version} .deb, update-initramfs -u -k all only:\n{out}");
            }
        }
        c.sync_boot();
        // The modules of the built initrd and of the regenerated one.
        let built_initrd = image::fat_read(boot_fs(), &format!("initrd.img-{release}")).expect("built initrd");
        std::fs::write(c.root.join("tmp/built-initrd.img"), built_initrd).expect("copy the built initrd in");
        let modules = |initrd: &str| -> Vec<String> {
            let mut m: Vec<String> = c
                .run(&["lsinitramfs", initrd])
                .lines()
                .filter(|l| l.ends_with(".ko"))
                .map(str::to_string)
                .collect();
            m.sort();
            m
        };
        let listings = (modules("/tmp/built-initrd.img"), modules(&format!("/boot/initrd.img-{release}")));
        std::fs::remove_file(c.root.join("tmp/built-initrd.img")).expect("remove the built initrd copy");
        listings
    };

    let parts = dir.join("parts");
    std::fs::create_dir_all(&parts).expect("create dir");
    let boot = image::extract(&copy, 1, &parts);
    let root = image::extract(&copy, 3, &parts);
    run_ok(Command::new("fsck.vfat").arg("-n").arg(&boot));
    run_ok(Command::new("e2fsck").arg("-fn").arg(&root));
    let files = image::fat_list(&boot);
    eprintln!("system-boot after the upgrade: {files:?}");
    assert_eq!(kernel_release(&files), release, "{files:?}");
    for f in [format!("vmlinuz-{old}"), format!("initrd.img-{old}")] {
        assert!(
            !has(&files, &f),
            "{f}, a kernel gone from /boot, is still on system-boot: {files:?}"
        );
    }
    assert!(
        image::fat_read(&boot, &format!("vmlinuz-{release}")).expect("kernel") == ext4_file(&root, &format!("/boot/vmlinuz-{release}")),
        "system-boot's kernel is not /boot/vmlinuz-{release}"
    );
    let initrd = image::fat_read(&boot, &format!("initrd.img-{release}")).expect("initrd");
    assert!(
        initrd == ext4_file(&root, &format!("/boot/initrd.img-{release}")),
        "system-boot's initrd is not /boot/initrd.img-{release}"
    );
    let built_initrd = image::fat_read(boot_fs(), &format!("initrd.img-{release}")).expect("built initrd");
    eprintln!(
        "initrd regenerated: {}",
        if initrd == built_initrd {
            "same bytes as built"
        } else {
            "new bytes"
        }
    );
    assert!(
        image::fat_read(&boot, "bcm2711-rpi-4-b.dtb").expect("the DTB is back")
            == ext4_file(&root, &format!("/usr/lib/linux-image-{release}/broadcom/bcm2711-rpi-4-b.dtb")),
        "bcm2711-rpi-4-b.dtb"
    );
    let settings = assert_config_txt(&fat_text(&boot, "config.txt"), &release);
    for f in firmware_loads(&settings) {
        assert!(
            has(&files, &f),
            "after the upgrade config.txt names {f}, which is not on system-boot: {files:?}"
        );
    }
    assert_cmdline(&cmdline_words(&boot));
    // The regenerated initrd holds the board's module list (MODULES=list) as the built one does.
    assert!(
        built_modules.iter().any(|m| m.ends_with("/sdhci-iproc.ko")) && built_modules.iter().any(|m| m.ends_with("/ext4.ko")),
        "{built_modules:?}"
    );
    assert_eq!(
        new_modules, built_modules,
        "the regenerated initrd has other modules than the built one"
    );
}

// ---------------------------------------------------------------- rpi5

#[test]
fn rpi5_with_debian_is_refused_before_anything_is_built() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = rpi4_cluster(dir.path());
    let out_dir = dir.path().join("out");
    let out = test_build("rpi5", &cluster, &out_dir).output().expect("run piha");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "piha built rpi5 for Debian:\n{stderr}");
    // The file, the field and the fix.
    for want in ["boards/rpi5.yaml", "packages", "debian", "fix"] {
        assert!(stderr.contains(want), "the refusal does not say {want:?}:\n{stderr}");
    }
    assert!(!out_dir.exists(), "a refused build wrote {}", out_dir.display());
}

#[test]
fn rpi5_board_file_boots_from_the_eeprom_with_bcm2712_device_trees() {
    let b = board("rpi5");
    assert_eq!(b["partition_table"], "mbr");
    assert_eq!(b["arch"], "arm64");
    assert_eq!(b["partitions"]["boot"]["fat"], "fat32");
    assert_eq!(b["partitions"]["boot"]["label"], board("rpi4")["partitions"]["boot"]["label"]);
    // Debian 12's 6.1 kernel predates the Pi 5.
    let packages = b["packages"].as_object().expect("packages");
    assert!(!packages.contains_key("debian"), "{packages:?}");
    let ubuntu: Vec<&str> = packages["ubuntu"]
        .as_array()
        .expect("ubuntu")
        .iter()
        .map(|p| p.as_str().expect("name"))
        .collect();
    for p in ["linux-raspi", "flash-kernel"] {
        assert!(ubuntu.contains(&p), "{ubuntu:?}");
    }

    let rules = b["boot"]["files"].as_array().expect("boot.files");
    let from = |r: &Value| r["from"].as_str().expect("from").to_string();
    // The Pi 5 boots from its EEPROM: nothing copies start*.elf or fixup*.dat.
    for r in rules {
        let f = from(r);
        assert!(!f.contains("start") && !f.contains("fixup"), "rpi5 copies GPU firmware: {f}");
    }
    let dtb_rules: Vec<String> = rules.iter().map(from).filter(|f| f.ends_with(".dtb")).collect();
    assert!(
        !dtb_rules.is_empty() && dtb_rules.iter().all(|f| f.contains("bcm2712")),
        "{dtb_rules:?}"
    );

    // config.txt: 64-bit, no GPU firmware, and every file it names is put on
    // the partition by a boot.files rule or a boot.config entry.
    let config = b["boot"]["config"]["config.txt"].as_str().expect("config.txt template");
    let s = pi4_settings(config);
    assert_eq!(s.get("arm_64bit").map(String::as_str), Some("1"), "{config}");
    assert!(!s.contains_key("start_file") && !s.contains_key("fixup_file"), "{config}");
    let made: Vec<String> = rules
        .iter()
        .map(|r| r["to"].as_str().expect("to").trim_start_matches('/').to_string())
        .chain(b["boot"]["config"].as_object().expect("boot.config").keys().cloned())
        .collect();
    for key in ["kernel", "initramfs", "cmdline"] {
        let f = s.get(key).unwrap_or_else(|| panic!("config.txt has no {key}: {config}"));
        assert!(
            made.contains(f),
            "config.txt names {f} ({key}), which nothing puts on system-boot: {made:?}"
        );
    }
    let cmdline = b["cmdline"].as_str().expect("cmdline");
    for w in [
        "root=LABEL={{root_label}}",
        "cgroup_enable=memory",
        "cgroup_memory=1",
        "console=serial0,115200",
        "rootwait",
    ] {
        assert!(cmdline.split_whitespace().any(|x| x == w), "rpi5 cmdline lacks {w}: {cmdline}");
    }
}
