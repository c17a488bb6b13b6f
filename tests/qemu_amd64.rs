//! Proof in QEMU on amd64: the real CLI builds a Debian bookworm image with
//! the test profile (the printed offline route, once per test run and shared
//! with tests/build_image.rs: `support::shared`), stamps it per node of the
//! `examples/qemu-lab.yaml` cluster, and boots it under qemu-system-x86_64 with
//! OVMF and TCG. The test image powers itself off once piha-agent is done; the
//! tests then read the serial console, `status.json` (via `piha status`) and
//! what the test overlay recorded on PIHA-CFG (`piha-test/`) and in the root
//! filesystem. The build, the readers and the per-role assertions are
//! `support::lab`'s, shared with the arm64 boots (tests/qemu_arm64.rs).
//!
//! A joining node needs an API at VIP:6443: QEMU's user network forwards the
//! guest's connections to 10.0.2.100:6443 to a listener this test runs on
//! 127.0.0.1 (`guestfwd`), so the agent's wait really waits for it.

// Tests run the binaries under test, QEMU and the host tools that check
// their output directly, as a user's shell would; clippy.toml's ban on
// Command::new is for piha's own code, which goes through piha_runner.
#![allow(clippy::disallowed_methods)]

mod support;

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use support::heavy;
use support::image::{ext4_exists, fat_write};
use support::lab::{
    Lab, api_forward, api_listener, assert_booted, assert_console_shows_boot, assert_done, assert_init_control_plane, assert_second_boot,
    assert_secrets_gone, assert_worker_joined, boot_until_poweroff, calls_of, kubeadm_calls, observed, recorded_config, root_fs, status,
    tail, vip_on_lo,
};
use support::qemu::{Boot, BootResult, Machine};

/// The shared amd64 image and one `piha init` per test binary.
fn fixture() -> &'static Lab {
    static F: OnceLock<Lab> = OnceLock::new();
    F.get_or_init(|| Lab::new("amd64", &[]))
}

fn boot_node(img: &Path, name: &str, api_port: Option<u16>) -> BootResult {
    let console = img.with_file_name(format!("{name}.console.log"));
    let mut b = Boot::new(Machine::Amd64Uefi, img, &console);
    b.timeout = Duration::from_secs(900);
    if let Some(port) = api_port {
        b.net_extra.push(api_forward(port));
    }
    boot_until_poweroff(&b, name)
}

#[test]
fn init_control_plane_boots_runs_kubeadm_init_and_second_boot_does_not_rerun_it() {
    let _g = heavy();
    let img = fixture().stamped("cp1");
    let r = boot_node(&img, "cp1", None);
    assert_init_control_plane(&img, &r, "cp1", "10.0.2.11/24");

    // Second boot: identity and report only; kubeadm is not run again.
    let r2 = boot_node(&img, "cp1-second-boot", None);
    assert_second_boot(&img, &r2, "cp1");
}

#[test]
fn joining_control_plane_gets_the_vip_only_after_its_join() {
    let _g = heavy();
    let lab = fixture();
    let img = lab.stamped("cp2");
    let port = api_listener();
    let r = boot_node(&img, "cp2", Some(port));
    assert_console_shows_boot(&r, "cp2");
    assert_booted(&img, "cp2");
    assert_done(&img, "cp2", "control-plane");
    assert_secrets_gone(&img);

    let dir = tempfile::tempdir().expect("tempdir");
    let root = root_fs(&img, dir.path());
    let calls = kubeadm_calls(&root);
    let joins = calls_of(&calls, "join");
    assert_eq!(joins.len(), 1, "{calls:?}");
    // The VIP was not on lo while kubeadm join ran ...
    let lo_at_join = joins[0]["lo"].as_str().expect("lo");
    assert!(!lo_at_join.contains("10.0.2.100"), "VIP was on lo during the join: {lo_at_join}");
    // ... and is there afterwards.
    let o = observed(&img);
    assert!(vip_on_lo(&o), "VIP not on lo after the join: {o:?}");
    assert_eq!(o["hostname"], "cp2");

    let config = recorded_config(&root, joins[0]);
    let token = lab.secret("bootstrap-token");
    let hash = lab.secret("ca-cert-hash");
    assert!(config.contains("kind: JoinConfiguration"), "{config}");
    assert!(config.contains(&token), "join config lacks the token:\n{config}");
    assert!(config.contains(&hash), "join config lacks the caCertHashes:\n{config}");
    assert!(
        config.contains("controlPlane:"),
        "control-plane join without controlPlane:\n{config}"
    );
    assert!(config.contains("apiServerEndpoint: 10.0.2.100:6443"), "{config}");
}

#[test]
fn worker_joins_with_token_and_ca_hash_and_never_gets_the_vip() {
    let _g = heavy();
    let lab = fixture();
    let img = lab.stamped("w1");
    let port = api_listener();
    let r = boot_node(&img, "w1", Some(port));
    // examples/qemu-lab.yaml matches w1's NIC by name (enp0s2, PCI slot 2).
    assert_worker_joined(lab, &img, &r, "w1", "enp0s2=10.0.2.21/24");
}

#[test]
fn invalid_node_yaml_is_reported_and_nothing_is_applied() {
    let _g = heavy();
    let img = fixture().stamped("w1");
    fat_write(&img, 2, "node.yaml", b"schema: 1\nnode:\n  name: Not_A_Valid_Name\n");
    let r = boot_node(&img, "invalid", None);
    assert!(r.console.contains("piha-agent["), "agent never started:\n{}", tail(&r.console));

    let s = status(&img);
    assert_eq!(s["phase"], "invalid-config", "{s:#}");
    let err = s["error"].as_str().unwrap_or_default();
    assert!(err.contains("node.yaml"), "error does not name the file: {err}");

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
