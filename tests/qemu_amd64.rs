//! Proof in QEMU on amd64 of what the whole-cluster lab does not show: the
//! real CLI builds a Debian bookworm image with the test profile (the printed
//! offline route, once per test run and shared with tests/build_image.rs:
//! `support::shared`), stamps it for a node of `examples/qemu-lab.yaml`, and
//! boots it under qemu-system-x86_64 with OVMF and TCG on QEMU's user
//! network. The test image powers itself off once piha-agent is done; the
//! test then reads the serial console, `status.json` (via `piha status`),
//! what the test overlay recorded on PIHA-CFG and the root filesystem.
//!
//! What remains here: a card whose node.yaml is invalid is reported as such,
//! and nothing of it is applied. The init control plane and its second boot,
//! the joining control planes and the worker are covered by the `piha lab`
//! test (tests/lab.rs), which boots the whole examples/qemu-lab.yaml cluster
//! with real token discovery; the arm64 boots (tests/qemu_arm64.rs) still
//! assert the same per-role outcomes (`support::lab`) on their boards.

// Tests run the binaries under test, QEMU and the host tools that check
// their output directly, as a user's shell would; clippy.toml's ban on
// Command::new is for piha's own code, which goes through piha_runner.
#![allow(clippy::disallowed_methods)]

mod support;

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use support::image::{ext4_exists, extract, fat_list, fat_read, fat_write};
use support::lab::{Lab, assert_no_secret_bytes, boot_until_poweroff, kubeadm_calls, observed, root_fs, status, tail};
use support::qemu::{Boot, BootResult, Machine};
use support::{heavy, run_ok};

/// The shared amd64 image and one `piha init` per test binary.
fn fixture() -> &'static Lab {
    static F: OnceLock<Lab> = OnceLock::new();
    F.get_or_init(|| Lab::new("amd64", &[]))
}

fn boot_node(img: &Path, name: &str) -> BootResult {
    let console = img.with_file_name(format!("{name}.console.log"));
    let mut b = Boot::new(Machine::Amd64Uefi, img, &console);
    b.timeout = Duration::from_secs(900);
    boot_until_poweroff(&b, name)
}

#[test]
fn invalid_node_yaml_is_reported_and_nothing_is_applied() {
    let _g = heavy();
    // A control plane's card (the CA keys, the token) whose node.yaml is bad.
    let img = fixture().stamped("cp2");
    fat_write(&img, 2, "node.yaml", b"schema: 2\nnode:\n  name: Not_A_Valid_Name\n");
    let r = boot_node(&img, "invalid");
    assert!(r.console.contains("piha-agent["), "agent never started:\n{}", tail(&r.console));

    let s = status(&img);
    assert_eq!(s["phase"], "invalid-config", "{s:#}");
    let err = s["error"].as_str().unwrap_or_default();
    assert!(err.contains("node.yaml"), "error does not name the file: {err}");
    // A card the agent refuses gives nothing away when it is thrown away.
    assert!(err.contains("secrets were overwritten and removed"), "{err}");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = extract(&img, 2, dir.path());
    assert!(!fat_list(&cfg).iter().any(|f| f.starts_with("secrets")), "{:?}", fat_list(&cfg));
    assert_no_secret_bytes(
        fixture(),
        &std::fs::read(&cfg).expect("PIHA-CFG"),
        "the refused card's raw PIHA-CFG",
    );

    let o = observed(&img);
    assert_ne!(o["hostname"], "w1");
    let dir = tempfile::tempdir().expect("tempdir");
    let root = root_fs(&img, dir.path());
    assert!(
        !ext4_exists(&root, "/etc/systemd/network/10-piha.network"),
        "network config written despite invalid node.yaml"
    );
    assert!(
        !ext4_exists(&root, "/etc/piha/kubeadm.yaml"),
        "kubeadm config written despite invalid node.yaml"
    );
    assert!(kubeadm_calls(&root).is_empty());
}

/// A director's card (no API needed) booted with a second disk that also
/// holds a partition labelled PIHA-CFG (lb2's, as a USB stick might), and a
/// clock that starts in 2020 with no reachable NTP server: the agent reads
/// only the boot disk's own card, udev's helper says in the journal that it
/// ignored the other, the other disk is not touched, and the agent moves the
/// clock to the card's stamp time before anything else.
#[test]
fn another_disks_piha_cfg_is_ignored_and_a_clock_in_the_past_is_moved_forward() {
    let _g = heavy();
    let lab = fixture();
    let img = lab.stamped("lb1");
    let stick = img.with_file_name("stick.img");
    run_ok(
        support::piha()
            .args(["stamp", "--node", "lb2", "--partition-image"])
            .arg(&stick)
            .arg("--cluster")
            .arg(&lab.cluster),
    );
    let stick_before = std::fs::read(&stick).expect("stick");
    let console = img.with_file_name("lb1-stick.console.log");
    let mut b = Boot::new(Machine::Amd64Uefi, &img, &console);
    b.timeout = Duration::from_secs(900);
    b.extra = vec![
        "-drive".into(),
        format!("file={},format=raw,if=virtio", stick.display()),
        "-rtc".into(),
        "base=2020-01-01T00:00:00".into(),
    ];
    let r = boot_until_poweroff(&b, "lb1 with a second PIHA-CFG");
    assert!(r.console.contains("piha-agent["), "agent never started:\n{}", tail(&r.console));

    let s = status(&img);
    assert_eq!(s["phase"], "done", "{s:#}");
    assert_eq!(s["node"], "lb1", "{s:#}");
    assert_eq!(
        std::fs::read(&stick).expect("stick"),
        stick_before,
        "the other disk's PIHA-CFG was written"
    );
    let o = observed(&img);
    assert!(
        o["cfg_log"].contains("ignoring the PIHA-CFG filesystem on vdb (disk vdb)") && o["cfg_log"].contains("(vda)"),
        "{o:?}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = extract(&img, 2, dir.path());
    let journal = String::from_utf8_lossy(&fat_read(&cfg, "piha-test/piha-agent.journal").expect("the agent's journal")).into_owned();
    assert!(
        journal.contains("before this card was stamped") && journal.contains("moving it forward to the stamp time"),
        "{journal}"
    );
}
