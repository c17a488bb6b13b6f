//! The amd64 image as the printed offline route builds it (Debian bookworm
//! from the host's mirror, test profile, the QEMU lab cluster), built once
//! per test run and shared with the boots (`support::shared`), checked with
//! the real tools: `sfdisk -J` against the board file, `fsck.vfat -n` and
//! `e2fsck -fn` on every partition, debugfs and mtools for what the
//! filesystems hold, the agent's ELF headers, and the manifest against
//! SHA256SUMS.

// Tests run the binaries under test, QEMU and the host tools that check
// their output directly, as a user's shell would; clippy.toml's ban on
// Command::new is for piha's own code, which goes through piha_runner.
#![allow(clippy::disallowed_methods)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

use support::image::{self, Partition};
use support::shared::{Shared, shared_build};

/// The shared build and this binary's copies of its partitions.
struct Built {
    shared: &'static Shared,
    /// Partitions copied out of the image, by number.
    parts: Vec<PathBuf>,
}

fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let _guard = support::heavy();
        let shared = shared_build("amd64");
        let parts_dir = support::repo().join("target/piha-test-out/build_image/parts");
        let _ = std::fs::remove_dir_all(&parts_dir);
        std::fs::create_dir_all(&parts_dir).unwrap();
        let parts = (1..=image::table(&shared.image).partitions.len())
            .map(|i| image::extract(&shared.image, i, &parts_dir))
            .collect();
        Built { shared, parts }
    })
}

fn board() -> Value {
    let text = std::fs::read_to_string(support::repo().join("boards/amd64.yaml")).unwrap();
    let yaml: yaml_serde::Value = yaml_serde::from_str(&text).unwrap();
    serde_json::to_value(yaml).unwrap()
}

fn root() -> &'static Path {
    &built().parts[2]
}

fn ext4(path: &str) -> String {
    String::from_utf8(image::ext4_read(root(), path).unwrap_or_else(|| panic!("{path} is not in the root filesystem"))).unwrap()
}

#[test]
fn every_partition_passes_fsck() {
    let b = built();
    for (i, part) in b.parts.iter().enumerate() {
        let mut cmd = if i == 2 {
            Command::new("e2fsck")
        } else {
            Command::new("fsck.vfat")
        };
        cmd.arg(if i == 2 { "-fn" } else { "-n" }).arg(part);
        support::run_ok(&mut cmd);
    }
}

#[test]
fn the_layout_is_what_the_board_file_asks_for() {
    let b = built();
    let board = board();
    let t = image::table(&b.shared.image);
    assert_eq!(t.label, "gpt");
    assert_eq!(t.partitions.len(), 3);
    let mib = |p: &Partition| p.size * t.sectorsize / (1 << 20);
    let names: Vec<Option<String>> = t.partitions.iter().map(|p| p.name.clone()).collect();
    assert_eq!(
        names,
        vec![
            Some(board["partitions"]["boot"]["label"].as_str().unwrap().to_string()),
            Some("PIHA-CFG".to_string()),
            Some(board["partitions"]["root"]["label"].as_str().unwrap().to_string()),
        ]
    );
    assert_eq!(mib(&t.partitions[0]), board["partitions"]["boot"]["size_mib"].as_u64().unwrap());
    assert_eq!(mib(&t.partitions[1]), board["partitions"]["config"]["size_mib"].as_u64().unwrap());
    assert_eq!(t.partitions[0].kind, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "ESP type");
    assert_eq!(t.partitions[2].kind, "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "x86-64 root type");
    for p in &t.partitions {
        assert_eq!(p.start * t.sectorsize % (1 << 20), 0, "{} is MiB-aligned", p.node);
    }
}

#[test]
fn the_esp_boots_the_kernel_with_the_board_cmdline() {
    let esp = &built().parts[0];
    let files = image::fat_list(esp);
    for f in [
        "EFI/BOOT/BOOTX64.EFI",
        "vmlinuz",
        "initrd.img",
        "loader/loader.conf",
        "loader/entries/piha.conf",
    ] {
        assert!(files.iter().any(|x| x.eq_ignore_ascii_case(f)), "{f} not on the ESP: {files:?}");
    }
    let entry = String::from_utf8(image::fat_read(esp, "loader/entries/piha.conf").unwrap()).unwrap();
    assert!(
        entry.contains("linux /vmlinuz") && entry.contains("options root=LABEL=piha-root"),
        "{entry}"
    );
    assert!(entry.contains("console=ttyS0,115200"), "{entry}");
    let kernel = image::fat_read(esp, "vmlinuz").unwrap();
    assert_eq!(&kernel[0x202..0x206], b"HdrS", "vmlinuz is a bzImage");
}

#[test]
fn piha_cfg_says_what_the_image_is() {
    let b = built();
    let info: Value = serde_json::from_slice(&image::fat_read(&b.parts[1], "image.json").expect("image.json on PIHA-CFG")).unwrap();
    assert_eq!(info["board"], "amd64");
    assert_eq!(info["distro"], "debian-bookworm");
    assert_eq!(info["arch"], "amd64");
    assert_eq!(info["profile"], "test");
    assert_eq!(info["input_hash"], b.shared.summary_field("input hash"));
}

#[test]
fn no_account_has_a_password() {
    let shadow = ext4("/etc/shadow");
    for user in ["root", "piha"] {
        let line = shadow
            .lines()
            .find(|l| l.starts_with(&format!("{user}:")))
            .unwrap_or_else(|| panic!("no {user} in /etc/shadow"));
        let hash = line.split(':').nth(1).unwrap();
        assert!(hash.starts_with('*') || hash.starts_with('!'), "{user} has a password: {line}");
    }
    let passwd = ext4("/etc/passwd");
    assert!(passwd.lines().any(|l| l.starts_with("piha:x:1000:1000:")), "{passwd}");
    assert!(ext4("/etc/group").lines().any(|l| l.starts_with("sudo:") && l.ends_with("piha")));
    assert!(ext4("/etc/sudoers.d/piha").contains("NOPASSWD"));
}

#[test]
fn the_cluster_keys_are_authorized_for_the_admin_user() {
    let keys = ext4("/home/piha/.ssh/authorized_keys");
    assert!(
        keys.contains("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOZxurD8U1Lk/PGlDFJlnQTHb0FZEjo026lcX1Oktx3Q tester@piha"),
        "{keys}"
    );
    let stat = Command::new("debugfs")
        .args(["-R", "stat /home/piha/.ssh/authorized_keys"])
        .arg(root())
        .output()
        .unwrap();
    let stat = String::from_utf8_lossy(&stat.stdout);
    assert!(
        stat.contains("User:  1000") && stat.contains("Group:  1000") && stat.contains("Mode:  0600"),
        "{stat}"
    );
}

#[test]
fn each_node_makes_its_own_identity() {
    assert_eq!(ext4("/etc/machine-id"), "uninitialized\n");
    let ls = Command::new("debugfs").args(["-R", "ls /etc/ssh"]).arg(root()).output().unwrap();
    let ls = String::from_utf8_lossy(&ls.stdout);
    assert!(!ls.contains("ssh_host_"), "host keys baked into the image: {ls}");
    assert!(image::ext4_exists(
        root(),
        "/etc/systemd/system/multi-user.target.wants/piha-ssh-hostkeys.service"
    ));
    assert!(image::ext4_exists(root(), "/usr/bin/piha-agent"));
}

#[test]
fn the_manifest_lists_packages_and_artifacts() {
    let s = built().shared;
    assert_eq!(s.summary_path("image"), s.image, "{}", s.summary);
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(s.summary_path("manifest")).unwrap()).unwrap();
    assert_eq!(manifest["board"], "amd64");
    assert_eq!(manifest["profile"], "test");
    assert_eq!(manifest["input_hash"], s.summary_field("input hash"));
    let packages: Vec<&str> = manifest["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for want in [
        "systemd",
        "linux-image-amd64",
        "containerd",
        "keepalived",
        "ipvsadm",
        "chrony",
        "openssh-server",
        "systemd-boot-efi",
    ] {
        assert!(packages.contains(&want), "{want} not in the manifest");
    }
    assert!(!packages.contains(&"kubeadm"), "the test profile installs no kubeadm package");
    assert_eq!(manifest["skipped"][0]["role"], "kubernetes");
    let sums = std::fs::read_to_string(s.out.join("SHA256SUMS")).unwrap();
    for a in manifest["artifacts"].as_array().unwrap() {
        let file = a["file"].as_str().unwrap();
        assert_eq!(
            std::fs::metadata(s.out.join(file)).unwrap().len(),
            a["size"].as_u64().unwrap(),
            "{file}"
        );
        if file != "SHA256SUMS" {
            assert!(
                sums.contains(&format!("{}  {file}", a["sha256"].as_str().unwrap())),
                "{file} not in SHA256SUMS"
            );
        }
    }
    let total = s.summary_field("seconds").rsplit("total ").next().unwrap();
    assert!(total.parse::<f64>().unwrap() > 0.0, "{}", s.summary);
    let rootfs = s.summary_field("rootfs");
    assert!(rootfs.starts_with("hit cache") || rootfs.starts_with("miss cache"), "{rootfs}");
}

/// The agent `piha build` put into the image, not one built on the side: a
/// static x86-64 executable, so it runs on every userland piha builds.
#[test]
fn the_agent_in_the_image_is_a_static_x86_64_executable() {
    let agent = image::ext4_read(root(), "/usr/bin/piha-agent").expect("/usr/bin/piha-agent in the root filesystem");
    let (machine, interp) = image::elf_facts(&agent);
    const EM_X86_64: u16 = 62;
    assert_eq!(machine, EM_X86_64, "piha-agent is not an x86-64 binary");
    assert!(!interp, "piha-agent asks for a dynamic loader (PT_INTERP): it must be static");
}
