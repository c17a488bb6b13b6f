//! Proof in QEMU on amd64 (issues 3 and 4): the real CLI builds a Debian
//! bookworm image with the test profile, stamps it per node of the
//! `examples/qemu-lab.yaml` cluster, and boots it under qemu-system-x86_64 with
//! OVMF and TCG. The test image powers itself off once piha-agent is done; the
//! tests then read the serial console, `status.json` (via `piha status`) and
//! what the test overlay recorded on PIHA-CFG (`piha-test/`) and in the root
//! filesystem.
//!
//! A joining node needs an API at VIP:6443: QEMU's user network forwards the
//! guest's connections to 10.0.2.100:6443 to a listener this test runs on
//! 127.0.0.1 (`guestfwd`), so the agent's wait really waits for it.

mod support;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use support::image::{copy_sparse, ext4_exists, ext4_read, extract, fat_read, fat_write};
use support::qemu::{Boot, BootResult, Machine, boot};
use support::{heavy, piha, repo, run_ok};

struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    cluster: PathBuf,
    image: PathBuf,
}

/// One build and one `piha init` per test binary.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let cluster = dir.join("cluster.yaml");
        std::fs::copy(repo().join("examples/qemu-lab.yaml"), &cluster).expect("copy cluster file");
        run_ok(piha().arg("init").arg("--cluster").arg(&cluster));
        let out = dir.join("out");
        run_ok(
            piha()
                .args(["build", "--board", "amd64", "--distro", "debian-bookworm", "--profile", "test", "--cluster"])
                .arg(&cluster)
                .arg("--out")
                .arg(&out),
        );
        let image = out.join("qemu-lab-amd64.img");
        assert!(image.exists(), "build wrote no {}", image.display());
        Fixture { _dir: tmp, dir, cluster, image }
    })
}

/// A fresh copy of the built image stamped for `node`.
fn stamped(node: &str) -> PathBuf {
    let f = fixture();
    let img = f.dir.join(format!("{node}.img"));
    copy_sparse(&f.image, &img);
    run_ok(piha().arg("stamp").arg("--cluster").arg(&f.cluster).arg("--node").arg(node).arg(&img));
    img
}

/// Serves the API port on 127.0.0.1 for the guest's VIP:6443 (accepts and
/// closes connections, as the agent only checks that the API answers).
fn api_listener() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            drop(c);
        }
    });
    port
}

fn boot_node(img: &Path, name: &str, api_port: Option<u16>) -> BootResult {
    let console = img.with_file_name(format!("{name}.console.log"));
    let mut b = Boot::new(Machine::Amd64Uefi, img, &console);
    b.timeout = Duration::from_secs(900);
    if let Some(port) = api_port {
        b.net_extra.push(format!("guestfwd=tcp:10.0.2.100:6443-tcp:127.0.0.1:{port}"));
    }
    let r = boot(&b, None);
    eprintln!("{name}: powered off {} after {:?}", r.powered_off, r.elapsed);
    assert!(r.powered_off, "{name} did not power off within {:?}; console tail:\n{}", b.timeout, tail(&r.console));
    r
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

fn status(img: &Path) -> Value {
    serde_json::from_str(&run_ok(piha().arg("status").arg("--json").arg(img))).expect("status.json")
}

/// `piha-test/observed.env` from the card: what the node looked like when the agent finished.
fn observed(img: &Path) -> BTreeMap<String, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = extract(img, 2, dir.path());
    let text = fat_read(&cfg, "piha-test/observed.env").expect("piha-test/observed.env on PIHA-CFG");
    String::from_utf8_lossy(&text)
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

/// Every recorded kubeadm call (from the root filesystem).
fn kubeadm_calls(root: &Path) -> Vec<Value> {
    let text = ext4_read(root, "/var/lib/piha-test/kubeadm-calls.jsonl").unwrap_or_default();
    String::from_utf8_lossy(&text).lines().map(|l| serde_json::from_str(l).expect("kubeadm call line")).collect()
}

fn root_fs(img: &Path, dir: &Path) -> PathBuf {
    extract(img, 3, dir)
}

fn argv(call: &Value) -> Vec<String> {
    call["argv"].as_array().expect("argv").iter().map(|a| a.as_str().expect("arg").to_string()).collect()
}

fn assert_console_shows_boot(r: &BootResult, node: &str) {
    assert!(r.console.contains("Linux version"), "{node}: no kernel on the console");
    assert!(
        r.console.contains("Reached target") && r.console.contains("Multi-User System"),
        "{node}: systemd never reported reaching multi-user.target:\n{}",
        tail(&r.console)
    );
    // systemd shortens descriptions on the console; the unit name and the
    // agent's own log lines (piha-agent[PID]: ...) are what is always there.
    assert!(
        r.console.contains("piha-agent.servic") && r.console.contains("piha-agent["),
        "{node}: the agent unit never started:\n{}",
        tail(&r.console)
    );
}

/// The boot finished (multi-user.target reached, no job left) before the
/// test overlay recorded the node and powered it off.
fn assert_booted(img: &Path, node: &str) {
    let o = observed(img);
    assert!(
        matches!(o.get("system_state").map(String::as_str), Some("running" | "degraded")),
        "{node}: systemd did not finish booting: {o:?}"
    );
}

fn assert_done(img: &Path, node: &str, role: &str) -> Value {
    let s = status(img);
    assert_eq!(s["phase"], "done", "{node}: {s:#}");
    assert_eq!(s["node"], node);
    assert_eq!(s["role"], role);
    for step in s["steps"].as_array().expect("steps") {
        assert_ne!(step["outcome"], "failed", "{node}: {step:#}");
    }
    s
}

fn assert_secrets_gone(img: &Path) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = extract(img, 2, dir.path());
    assert!(fat_read(&cfg, "node.yaml").is_some(), "node.yaml must stay");
    let files = support::image::fat_list(&cfg);
    assert!(!files.iter().any(|f| f.starts_with("secrets")), "secrets left on PIHA-CFG: {files:?}");
}

#[test]
fn init_control_plane_boots_runs_kubeadm_init_and_second_boot_does_not_rerun_it() {
    let _g = heavy();
    let img = stamped("cp1");
    let r = boot_node(&img, "cp1", None);
    assert_console_shows_boot(&r, "cp1");
    assert_booted(&img, "cp1");

    let s = assert_done(&img, "cp1", "control-plane");
    assert_eq!(s["boots"], 1);
    assert_secrets_gone(&img);

    let o = observed(&img);
    assert_eq!(o["hostname"], "cp1");
    assert!(o["addresses"].contains("10.0.2.11/24"), "static IP not applied: {o:?}");
    assert!(o["lo_addresses"].split(' ').any(|a| a == "10.0.2.100/32"), "VIP not on lo: {o:?}");
    for key in ["arp_ignore.all", "arp_ignore.lo"] {
        assert_eq!(o[key], "1", "{key}: {o:?}");
    }
    for key in ["arp_announce.all", "arp_announce.lo"] {
        assert_eq!(o[key], "2", "{key}: {o:?}");
    }
    assert_eq!(o["active.piha-realserver.service"], "active");
    assert_eq!(o["active.containerd.service"], "active", "the real containerd must run: {o:?}");
    assert_eq!(o["swaps"], "0");

    let dir = tempfile::tempdir().expect("tempdir");
    let root = root_fs(&img, dir.path());
    let calls = kubeadm_calls(&root);
    let inits: Vec<&Value> = calls.iter().filter(|c| argv(c).first().map(String::as_str) == Some("init")).collect();
    assert_eq!(inits.len(), 1, "{calls:?}");
    let args = argv(inits[0]);
    assert!(args.contains(&"--config".to_string()), "{args:?}");
    assert!(!args.iter().any(|a| a.contains("upload-certs")), "{args:?}");
    let config = ext4_read(&root, &format!("/var/lib/piha-test/{}", inits[0]["config"].as_str().expect("config copy"))).expect("config");
    let config = String::from_utf8_lossy(&config);
    for want in ["kind: InitConfiguration", "kind: ClusterConfiguration", "controlPlaneEndpoint: 10.0.2.100:6443", "cgroupDriver: systemd", "unix:///var/run/containerd/containerd.sock"] {
        assert!(config.contains(want), "init config lacks {want}:\n{config}");
    }
    assert!(!config.contains("certificateKey"), "{config}");
    assert!(ext4_exists(&root, "/etc/kubernetes/pki/ca.key"), "CA not placed");
    assert_eq!(String::from_utf8_lossy(&ext4_read(&root, "/etc/hostname").expect("hostname")).trim(), "cp1");

    // Second boot: identity and report only; kubeadm is not run again.
    let r2 = boot_node(&img, "cp1-second-boot", None);
    assert_console_shows_boot(&r2, "cp1 (second boot)");
    let s2 = assert_done(&img, "cp1", "control-plane");
    assert_eq!(s2["boots"], 2, "{s2:#}");
    let root2 = root_fs(&img, dir.path());
    let calls2 = kubeadm_calls(&root2);
    assert_eq!(
        calls2.iter().filter(|c| matches!(argv(c).first().map(String::as_str), Some("init" | "join" | "reset"))).count(),
        1,
        "kubeadm ran again on the second boot: {calls2:?}"
    );
    let o2 = observed(&img);
    assert!(o2["lo_addresses"].split(' ').any(|a| a == "10.0.2.100/32"), "VIP not back on lo after reboot: {o2:?}");
}

#[test]
fn joining_control_plane_gets_the_vip_only_after_its_join() {
    let _g = heavy();
    let img = stamped("cp2");
    let port = api_listener();
    let r = boot_node(&img, "cp2", Some(port));
    assert_console_shows_boot(&r, "cp2");
    assert_booted(&img, "cp2");
    assert_done(&img, "cp2", "control-plane");
    assert_secrets_gone(&img);

    let dir = tempfile::tempdir().expect("tempdir");
    let root = root_fs(&img, dir.path());
    let calls = kubeadm_calls(&root);
    let joins: Vec<&Value> = calls.iter().filter(|c| argv(c).first().map(String::as_str) == Some("join")).collect();
    assert_eq!(joins.len(), 1, "{calls:?}");
    // The VIP was not on lo while kubeadm join ran ...
    let lo_at_join = joins[0]["lo"].as_str().expect("lo");
    assert!(!lo_at_join.contains("10.0.2.100"), "VIP was on lo during the join: {lo_at_join}");
    // ... and is there afterwards.
    let o = observed(&img);
    assert!(o["lo_addresses"].split(' ').any(|a| a == "10.0.2.100/32"), "VIP not on lo after the join: {o:?}");
    assert_eq!(o["hostname"], "cp2");

    let config = ext4_read(&root, &format!("/var/lib/piha-test/{}", joins[0]["config"].as_str().expect("config copy"))).expect("config");
    let config = String::from_utf8_lossy(&config);
    let secrets = fixture().dir.join("secrets");
    let token = std::fs::read_to_string(secrets.join("bootstrap-token")).expect("token");
    let hash = std::fs::read_to_string(secrets.join("ca-cert-hash")).expect("hash");
    assert!(config.contains("kind: JoinConfiguration"), "{config}");
    assert!(config.contains(token.trim()), "join config lacks the token:\n{config}");
    assert!(config.contains(hash.trim()), "join config lacks the caCertHashes:\n{config}");
    assert!(config.contains("controlPlane:"), "control-plane join without controlPlane:\n{config}");
    assert!(config.contains("apiServerEndpoint: 10.0.2.100:6443"), "{config}");
}

#[test]
fn worker_joins_with_token_and_ca_hash_and_never_gets_the_vip() {
    let _g = heavy();
    let img = stamped("w1");
    let port = api_listener();
    let r = boot_node(&img, "w1", Some(port));
    assert_console_shows_boot(&r, "w1");
    assert_booted(&img, "w1");
    assert_done(&img, "w1", "worker");
    assert_secrets_gone(&img);

    let o = observed(&img);
    assert_eq!(o["hostname"], "w1");
    assert!(o["addresses"].contains("10.0.2.21/24"), "{o:?}");
    assert!(!o["lo_addresses"].contains("10.0.2.100"), "a worker got the VIP: {o:?}");

    let dir = tempfile::tempdir().expect("tempdir");
    let root = root_fs(&img, dir.path());
    let calls = kubeadm_calls(&root);
    let joins: Vec<&Value> = calls.iter().filter(|c| argv(c).first().map(String::as_str) == Some("join")).collect();
    assert_eq!(joins.len(), 1, "{calls:?}");
    let config = ext4_read(&root, &format!("/var/lib/piha-test/{}", joins[0]["config"].as_str().expect("config copy"))).expect("config");
    let config = String::from_utf8_lossy(&config);
    let secrets = fixture().dir.join("secrets");
    let token = std::fs::read_to_string(secrets.join("bootstrap-token")).expect("token");
    let hash = std::fs::read_to_string(secrets.join("ca-cert-hash")).expect("hash");
    assert!(config.contains(token.trim()) && config.contains(hash.trim()), "{config}");
    assert!(!config.contains("controlPlane:"), "worker join with controlPlane:\n{config}");
    assert!(!ext4_exists(&root, "/etc/kubernetes/pki/ca.key"), "a worker must never hold the CA key");
}

#[test]
fn invalid_node_yaml_is_reported_and_nothing_is_applied() {
    let _g = heavy();
    let img = stamped("w1");
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
    assert!(!ext4_exists(&root, "/etc/systemd/network/10-piha.network"), "network config written despite invalid node.yaml");
    assert!(!ext4_exists(&root, "/etc/piha/kubeadm.yaml"), "kubeadm config written despite invalid node.yaml");
    assert!(kubeadm_calls(&root).is_empty());
}
