//! The files the agent writes on a node, for the example clusters: compared
//! with golden files under `tests/golden/<cluster>/<node>/<node path>` (with
//! `tests/golden/<cluster>/<node>.files` listing mode and path in order),
//! checked with the real `keepalived -t`, and read back into the typed
//! structs. The real `piha init` + `piha render` must produce the same files.
//!
//! Goldens are never edited by hand: `tests/golden/update.sh` rewrites them
//! (`PIHA_UPDATE_GOLDEN=1 cargo test -p piha --test render_golden`).

// Tests run the binaries under test, QEMU and the host tools that check
// their output directly, as a user's shell would; clippy.toml's ban on
// Command::new is for piha's own code, which goes through piha_runner.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeSet;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use piha::card::{network_renderer, node_config};
use piha_config::cluster::{ClusterFile, ProxyMode, Role};
use piha_config::node::{NetworkRenderer, NodeConfig};
use piha_config::render::kubeadm::{self, Document};
use piha_config::render::network::Netplan;
use piha_config::render::{
    JoinSecrets, KEEPALIVED_CONF, KUBEADM_CONFIG, NETPLAN_FILE, NETWORKD_FILE, RenderedFile, VIP_FILE, keepalived, node_files,
};
use piha_runner::{Cmd, Runner, SystemRunner};

const CLUSTERS: [&str; 2] = ["qemu-lab", "homelab"];
/// The init control plane, a joining control plane, a worker and a director.
const NODES: [&str; 4] = ["cp1", "cp2", "w1", "lb1"];

const FAKE_TOKEN: &str = "abcdef.0123456789abcdef";

fn fake_hash() -> String {
    format!("sha256:{}", "0123456789abcdef".repeat(4))
}

fn fake_secrets() -> JoinSecrets {
    JoinSecrets {
        token: FAKE_TOKEN.to_string(),
        ca_cert_hash: fake_hash(),
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("builder/ has a parent")
        .to_path_buf()
}

fn example(cluster: &str) -> PathBuf {
    root().join("examples").join(format!("{cluster}.yaml"))
}

fn golden_dir(cluster: &str) -> PathBuf {
    root().join("tests").join("golden").join(cluster)
}

/// Loads an example through the same validation every command uses.
fn load(cluster: &str) -> ClusterFile {
    let path = example(cluster);
    piha::inputs::cluster::load_cluster(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()))
}

fn secrets_for(cfg: &NodeConfig) -> Option<JoinSecrets> {
    (cfg.node.role != Role::Director).then(fake_secrets)
}

fn render(cluster: &ClusterFile, cluster_name: &str, node: &str) -> Vec<RenderedFile> {
    let cfg = node_config(cluster, &example(cluster_name), node, &cluster.distro).expect("node exists");
    node_files(&cfg, secrets_for(&cfg).as_ref()).unwrap_or_else(|e| panic!("{cluster_name}/{node}: {e}"))
}

fn manifest(files: &[RenderedFile]) -> String {
    files.iter().map(|f| format!("{:04o} {}\n", f.mode, f.path)).collect()
}

/// Every file under `dir`, as node paths (`/etc/hosts`).
fn files_under(dir: &Path) -> BTreeSet<String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        for e in entries {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.insert(format!("/{}", p.strip_prefix(base).expect("under base").display()));
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

fn write_golden(dir: &Path, manifest_path: &Path, files: &[RenderedFile]) {
    if dir.exists() {
        fs::remove_dir_all(dir).expect("remove old golden dir");
    }
    for f in files {
        let p = dir.join(f.path.trim_start_matches('/'));
        fs::create_dir_all(p.parent().expect("parent")).expect("create golden dir");
        fs::write(&p, &f.contents).expect("write golden");
    }
    fs::write(manifest_path, manifest(files)).expect("write manifest");
}

/// Differences between the rendered files and the goldens, as messages.
fn compare(dir: &Path, manifest_path: &Path, files: &[RenderedFile]) -> Vec<String> {
    let mut problems = Vec::new();
    match fs::read_to_string(manifest_path) {
        Ok(m) if m == manifest(files) => {}
        Ok(m) => problems.push(format!("{}: expected\n{m}rendered\n{}", manifest_path.display(), manifest(files))),
        Err(e) => problems.push(format!("{}: {e}", manifest_path.display())),
    }
    for f in files {
        let p = dir.join(f.path.trim_start_matches('/'));
        match fs::read_to_string(&p) {
            Ok(golden) if golden == f.contents => {}
            Ok(golden) => problems.push(format!("{} differs:\n{}", p.display(), line_diff(&golden, &f.contents))),
            Err(e) => problems.push(format!("{}: {e}", p.display())),
        }
    }
    let rendered: BTreeSet<String> = files.iter().map(|f| f.path.clone()).collect();
    for stale in files_under(dir).difference(&rendered) {
        problems.push(format!("{}{stale} is no longer rendered", dir.display()));
    }
    problems
}

fn line_diff(golden: &str, rendered: &str) -> String {
    let (g, r): (Vec<&str>, Vec<&str>) = (golden.lines().collect(), rendered.lines().collect());
    let mut out = String::new();
    for i in 0..g.len().max(r.len()) {
        let (a, b) = (g.get(i).copied(), r.get(i).copied());
        if a != b {
            out.push_str(&format!("  line {}: golden {:?}\n  line {}: render {:?}\n", i + 1, a, i + 1, b));
        }
    }
    out
}

#[test]
fn rendered_files_match_the_goldens() {
    let update = std::env::var_os("PIHA_UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut problems = Vec::new();
    for cluster_name in CLUSTERS {
        let cluster = load(cluster_name);
        for node in NODES {
            let files = render(&cluster, cluster_name, node);
            let dir = golden_dir(cluster_name).join(node);
            let manifest_path = golden_dir(cluster_name).join(format!("{node}.files"));
            if update {
                write_golden(&dir, &manifest_path, &files);
            } else {
                problems.extend(compare(&dir, &manifest_path, &files));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n(if the change is intended: tests/golden/update.sh)",
        problems.join("\n")
    );
}

/// `keepalived -t -f FILE` in a private network namespace holding a dummy
/// interface of the name the config uses (a dummy, or a veth where the kernel
/// has no dummy module): keepalived refuses a VRRP interface that does not
/// exist, and the test must not depend on this host's NICs.
fn keepalived_check(conf: &str, interface: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("keepalived.conf");
    fs::write(&file, conf).expect("write keepalived.conf");
    let cmd = Cmd::new("unshare")
        .args([
            "--net",
            "sh",
            "-ec",
            r#"ip link add "$1" type dummy 2>/dev/null || ip link add "$1" type veth peer name piha-peer; keepalived -t -f "$2""#,
            "sh",
        ])
        .arg(interface)
        .arg(&file);
    if let Err(e) = SystemRunner.run(&cmd) {
        panic!("keepalived -t rejected (needs root for unshare --net):\n{e}\n{conf}");
    }
}

/// A config keepalived must reject, so a pass means something.
#[test]
fn keepalived_t_rejects_a_broken_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("keepalived.conf");
    fs::write(&file, "virtual_server 10.0.2.100 6443 {\n    lvs_sched bogus\n}\n").expect("write");
    let cmd = Cmd::new("unshare").args(["--net", "keepalived", "-t", "-f"]).arg(&file);
    assert!(SystemRunner.run(&cmd).is_err(), "keepalived -t accepted an unknown scheduler");
}

#[test]
fn every_director_config_passes_keepalived_t() {
    for cluster_name in CLUSTERS {
        let cluster = load(cluster_name);
        for lb in cluster.nodes_with_role(Role::Director) {
            let cfg = node_config(&cluster, &example(cluster_name), &lb.name, &cluster.distro).expect("node");
            let conf = keepalived::config(&cfg).expect("renders").expect("a director has keepalived.conf");
            keepalived_check(&conf, &keepalived::vrrp_interface(&cfg));
        }
    }
}

/// A property over what validation lets through: for clusters made from
/// random values (cluster and node names, interface names of every
/// character validation allows, addresses, ports, VRRP ids; a fixed seed, so
/// a failure repeats), every one `piha validate` accepts renders a
/// keepalived.conf that the real `keepalived -t` accepts on each director.
/// The values that reach systemd do so through static units in `overlays/`
/// (`EnvironmentFile=/etc/piha/vip.env`, checked by `systemd-analyze verify`
/// in `agent_overlays.rs`), so no rendered file is a unit.
#[test]
fn every_cluster_validation_accepts_renders_a_keepalived_conf_keepalived_accepts() {
    let mut rng = XorShift(0x5eed_1234_abcd_0001);
    let iface_chars: Vec<char> = ('a'..='z').chain('A'..='Z').chain('0'..='9').chain("-_.".chars()).collect();
    let label_chars: Vec<char> = ('a'..='z').chain('0'..='9').collect();
    let catalog = piha_config::validate::Catalog {
        boards: vec!["amd64".into()],
        distros: vec!["debian-bookworm".into()],
        ..Default::default()
    };
    let mut accepted = 0;
    for case in 0..40 {
        let len = 1 + rng.below(20);
        let name = format!("c{}", rng.word(&label_chars, len));
        let len = 1 + rng.below(15);
        let iface = rng.word(&iface_chars, len);
        let net = format!("10.{}.{}", rng.below(256), rng.below(256));
        let port = [6443, 443, 8443, 1 + rng.below(65535)][rng.below(4) as usize];
        let vrid = 1 + rng.below(255);
        let lb = rng.word(&label_chars, 3);
        let text = format!(
            "name: {name}\ndistro: debian-bookworm\nkubernetes: {{version: \"1.34.1\", runtime: containerd}}\n\
             api: {{vip: {net}.100, port: {port}, vrrp_router_id: {vrid}}}\n\
             network: {{prefix: 24, gateway: {net}.1}}\n\
             nodes:\n  - {{name: lb{lb}, board: amd64, role: director, ip: {net}.10, interface: \"{iface}\"}}\n\
             \x20 - {{name: cp1, board: amd64, role: control-plane, ip: {net}.11}}\n"
        );
        let path = Path::new("random.yaml");
        let Ok(cluster) = ClusterFile::parse(path, &text) else { continue };
        if piha_config::validate::cluster(path, &cluster, &catalog).has_errors() {
            continue;
        }
        accepted += 1;
        let lb = cluster.nodes_with_role(Role::Director).next().expect("a director");
        let cfg = NodeConfig::for_node(&cluster, &lb.name, NetworkRenderer::Networkd).expect("node");
        let conf = keepalived::config(&cfg).expect("renders").expect("a director has keepalived.conf");
        eprintln!("case {case}: interface {iface:?}, port {port}, vrid {vrid}");
        keepalived_check(&conf, &keepalived::vrrp_interface(&cfg));
    }
    assert!(
        accepted >= 20,
        "only {accepted} of 40 random clusters were valid: the generator is off"
    );
}

/// xorshift64*: reproducible picks for the property test, without a crate.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }

    fn word(&mut self, chars: &[char], len: u64) -> String {
        (0..len).map(|_| chars[self.below(chars.len() as u64) as usize]).collect()
    }
}

/// Two directors: the first in cluster order is MASTER, the second BACKUP,
/// each with the other as unicast peer, and both pass `keepalived -t`.
#[test]
fn two_directors_pass_keepalived_t_as_master_and_backup() {
    // examples/qemu-lab.yaml has two directors; lb2 names its NIC here.
    let mut cluster = load("qemu-lab");
    let lb2 = cluster.nodes.iter_mut().find(|n| n.name == "lb2").expect("lb2");
    assert_eq!(lb2.ip, Ipv4Addr::new(10, 0, 2, 9));
    lb2.interface = Some("enp0s2".to_string());
    let configs: Vec<(String, String)> = ["lb1", "lb2"]
        .iter()
        .map(|n| {
            let cfg = NodeConfig::for_node(&cluster, n, NetworkRenderer::Networkd).expect("node");
            let conf = keepalived::config(&cfg).expect("renders").expect("director");
            keepalived_check(&conf, &keepalived::vrrp_interface(&cfg));
            (conf, keepalived::vrrp_interface(&cfg))
        })
        .collect();
    let (lb1, lb2) = (&configs[0].0, &configs[1].0);
    assert!(lb1.contains("state MASTER\n") && lb1.contains("priority 150\n"), "{lb1}");
    assert!(lb2.contains("state BACKUP\n") && lb2.contains("priority 100\n"), "{lb2}");
    assert!(lb1.contains("unicast_peer {\n        10.0.2.9\n    }"), "{lb1}");
    assert!(lb2.contains("unicast_peer {\n        10.0.2.10\n    }"), "{lb2}");
    assert_eq!(configs[1].1, "enp0s2");
    // Connection sync between the pair, on each one's VRRP interface.
    assert!(lb1.contains(&format!("    lvs_sync_daemon {} piha_api\n", configs[0].1)), "{lb1}");
    assert!(lb2.contains("    lvs_sync_daemon enp0s2 piha_api\n"), "{lb2}");
    // Switched off, it still passes keepalived -t, without the line.
    let cfg = NodeConfig::for_node(&cluster, "lb2", NetworkRenderer::Networkd).expect("node");
    let choices = keepalived::Choices {
        sync_daemon: false,
        ..keepalived::Choices::defaults(&cfg)
    };
    let off = keepalived::config_with(&cfg, &choices).expect("renders").expect("director");
    keepalived_check(&off, "enp0s2");
    assert!(!off.contains("lvs_sync_daemon"), "{off}");
    for ip in ["10.0.2.11", "10.0.2.12", "10.0.2.13"] {
        assert!(lb2.contains(&format!("real_server {ip} 6443 {{")), "{ip} missing:\n{lb2}");
    }
}

fn kubeadm_text(files: &[RenderedFile]) -> &str {
    &files
        .iter()
        .find(|f| f.path == KUBEADM_CONFIG)
        .expect("kubeadm config rendered")
        .contents
}

#[test]
fn kubeadm_configs_ask_for_the_right_things() {
    for cluster_name in CLUSTERS {
        let cluster = load(cluster_name);
        let init = render(&cluster, cluster_name, "cp1");
        let join_cp = render(&cluster, cluster_name, "cp2");
        let worker = render(&cluster, cluster_name, "w1");
        let director = render(&cluster, cluster_name, "lb1");
        for (name, files) in [("cp1", &init), ("cp2", &join_cp), ("w1", &worker)] {
            let text = kubeadm_text(files);
            // The CAs are pre-placed: nothing is ever uploaded or fetched with a key.
            for word in ["certificateKey", "upload-certs", "uploadCerts", "ipvs"] {
                assert!(!text.contains(word), "{cluster_name}/{name} mentions {word}:\n{text}");
            }
            let docs = kubeadm::parse(text).unwrap_or_else(|e| panic!("{cluster_name}/{name}: {e}"));
            let cfg = node_config(&cluster, &example(cluster_name), name, &cluster.distro).expect("node");
            assert_eq!(
                docs,
                kubeadm::documents(&cfg, Some(&fake_secrets())).expect("renders"),
                "{cluster_name}/{name} round trip"
            );
            let Some(Document::Kubelet(kubelet)) = docs.iter().find(|d| d.kind().as_str() == "KubeletConfiguration") else {
                panic!("{cluster_name}/{name}: no KubeletConfiguration")
            };
            assert_eq!(kubelet.cgroup_driver, "systemd");
            assert!(kubelet.rotate_certificates, "the kubelet rotates its own client certificate");
        }
        let docs = kubeadm::parse(kubeadm_text(&init)).expect("parses");
        let kinds: Vec<&str> = docs.iter().map(|d| d.kind().as_str()).collect();
        assert_eq!(
            kinds,
            [
                "InitConfiguration",
                "ClusterConfiguration",
                "KubeletConfiguration",
                "KubeProxyConfiguration"
            ]
        );
        let (Document::Init(i), Document::Cluster(c), Document::KubeProxy(p)) = (&docs[0], &docs[1], &docs[3]) else {
            panic!("document order")
        };
        assert_eq!(i.bootstrap_tokens[0].token, FAKE_TOKEN);
        assert_eq!(i.api_version.as_str(), "kubeadm.k8s.io/v1beta4");
        assert_eq!(c.control_plane_endpoint, format!("{}:{}", cluster.api.vip, cluster.api.port));
        assert!(c.api_server.cert_sans.contains(&cluster.api.vip.to_string()));
        assert_eq!(p.mode, cluster.kubernetes.proxy_mode.as_str());

        for (name, files, control_plane) in [("cp2", &join_cp, true), ("w1", &worker, false)] {
            let docs = kubeadm::parse(kubeadm_text(files)).expect("parses");
            let Document::Join(join) = &docs[0] else {
                panic!("{name}: first document is not a JoinConfiguration")
            };
            assert_eq!(join.discovery.bootstrap_token.token, FAKE_TOKEN);
            assert_eq!(join.discovery.bootstrap_token.ca_cert_hashes, [fake_hash()]);
            assert_eq!(
                join.discovery.bootstrap_token.api_server_endpoint,
                format!("{}:{}", cluster.api.vip, cluster.api.port)
            );
            assert_eq!(join.control_plane.is_some(), control_plane, "{cluster_name}/{name} controlPlane");
        }
        assert!(kubeadm_text(&join_cp).contains("controlPlane:\n  localAPIEndpoint:\n"));

        assert!(files_of(&init).contains(VIP_FILE) && files_of(&join_cp).contains(VIP_FILE));
        assert!(!files_of(&worker).contains(VIP_FILE), "workers never get the VIP");
        assert!(!files_of(&director).contains(KUBEADM_CONFIG) && files_of(&director).contains(KEEPALIVED_CONF));
    }
}

fn files_of(files: &[RenderedFile]) -> BTreeSet<&str> {
    files.iter().map(|f| f.path.as_str()).collect()
}

#[test]
fn kubernetes_1_30_gets_kubeadm_v1beta3() {
    let mut cluster = load("qemu-lab");
    cluster.kubernetes.version = "1.30.14".parse().expect("supported version");
    // nftables mode is alpha before 1.31; the renderer refuses it (checked in the unit tests).
    cluster.kubernetes.proxy_mode = ProxyMode::Iptables;
    for node in ["cp1", "cp2", "w1"] {
        let cfg = NodeConfig::for_node(&cluster, node, NetworkRenderer::Networkd).expect("node");
        let text = kubeadm::config(&cfg, Some(&fake_secrets())).expect("renders");
        assert!(text.contains("apiVersion: kubeadm.k8s.io/v1beta3\n"), "{node}:\n{text}");
        assert!(!text.contains("kubeadm.k8s.io/v1beta4"), "{node}:\n{text}");
        kubeadm::parse(&text).unwrap_or_else(|e| panic!("{node}: {e}"));
    }
}

#[test]
fn network_files_follow_the_distro() {
    // qemu-lab is Debian (networkd), homelab Ubuntu (netplan, read back into its struct).
    let qemu = render(&load("qemu-lab"), "qemu-lab", "w1");
    let networkd = qemu.iter().find(|f| f.path == NETWORKD_FILE).expect("networkd file");
    assert!(networkd.contents.contains("[Match]\nName=enp0s2\n"), "{}", networkd.contents);
    assert!(
        networkd.contents.contains("Address=10.0.2.21/24\nGateway=10.0.2.2\nDNS=10.0.2.3\n"),
        "{}",
        networkd.contents
    );
    assert_eq!(network_renderer("debian-bookworm").expect("distro file"), NetworkRenderer::Networkd);

    let homelab = load("homelab");
    for node in ["w1", "w2", "cp1"] {
        let files = render(&homelab, "homelab", node);
        let netplan = files.iter().find(|f| f.path == NETPLAN_FILE).expect("netplan file");
        assert_eq!(netplan.mode, 0o600, "netplan refuses world-readable files");
        let doc: Netplan = yaml_serde::from_str(&netplan.contents).unwrap_or_else(|e| panic!("{node}: {e}"));
        let (id, eth) = doc.network.ethernets.iter().next().expect("one ethernet");
        assert_eq!(eth.addresses.len(), 1);
        assert_eq!(eth.set_name.is_some(), node == "w2", "{node}: set-name only for a MAC match ({id})");
    }
}

fn piha(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_piha"))
        .args(args)
        .env("PIHA_DATA_DIR", root())
        .output()
        .expect("run piha")
}

/// The real binary: `piha init` then `piha render` writes the golden files,
/// with the cluster's real token and hash where the goldens have fake ones.
#[test]
fn piha_render_writes_the_golden_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cluster_file = tmp.path().join("qemu-lab.yaml");
    fs::copy(example("qemu-lab"), &cluster_file).expect("copy example");
    let c = cluster_file.to_str().expect("utf-8 path");

    let out = tmp.path().join("out");
    let o = out.to_str().expect("utf-8 path");
    let r = piha(&["render", "--cluster", c, "--node", "cp1", "--out", o]);
    assert!(!r.status.success(), "render without secrets must fail");
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("piha init"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(!out.exists(), "nothing is written when the secrets are missing");
    // A director needs no secrets.
    let lb = tmp.path().join("lb-only");
    let r = piha(&["render", "--cluster", c, "--node", "lb1", "--out", lb.to_str().expect("utf-8 path")]);
    assert!(
        r.status.success(),
        "director without secrets: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(lb.join("etc/keepalived/keepalived.conf").is_file());
    let r = piha(&["render", "--cluster", c, "--node", "nope", "--out", o]);
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("the nodes are: lb1, lb2, cp1"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );

    let i = piha(&["init", "--cluster", c]);
    assert!(i.status.success(), "piha init: {}", String::from_utf8_lossy(&i.stderr));
    let secrets = tmp.path().join("secrets");
    let token = fs::read_to_string(secrets.join(piha_config::secrets::BOOTSTRAP_TOKEN.rel)).expect("token");
    let hash = fs::read_to_string(secrets.join(piha_config::secrets::CA_CERT_HASH.rel)).expect("hash");

    for node in NODES {
        let dir = out.join(node);
        let d = dir.to_str().expect("utf-8 path");
        let r = piha(&["render", "--cluster", c, "--node", node, "--out", d]);
        assert!(r.status.success(), "piha render {node}: {}", String::from_utf8_lossy(&r.stderr));
        let listed = String::from_utf8_lossy(&r.stdout);
        let golden = golden_dir("qemu-lab").join(node);
        let manifest = fs::read_to_string(golden_dir("qemu-lab").join(format!("{node}.files"))).expect("manifest");
        assert_eq!(files_under(&dir), files_under(&golden), "{node}: file set");
        for line in manifest.lines() {
            let (mode, path) = line.split_once(' ').expect("mode path");
            let written = dir.join(path.trim_start_matches('/'));
            assert!(
                listed.contains(&format!("{mode} {}", written.display())),
                "{node}: {path} not listed:\n{listed}"
            );
            let meta = fs::metadata(&written).expect("written");
            assert_eq!(
                format!("{:04o}", std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777),
                mode,
                "{path}"
            );
            let expected = fs::read_to_string(golden.join(path.trim_start_matches('/'))).expect("golden");
            let expected = expected.replace(FAKE_TOKEN, token.trim()).replace(&fake_hash(), hash.trim());
            assert_eq!(fs::read_to_string(&written).expect("read"), expected, "{node}: {path}");
        }
    }

    // An invalid cluster file writes nothing.
    let broken = tmp.path().join("broken.yaml");
    fs::write(
        &broken,
        fs::read_to_string(&cluster_file)
            .expect("read")
            .replace("vip: 10.0.2.100", "vip: 10.0.2.11"),
    )
    .expect("write broken");
    let bad_out = tmp.path().join("bad-out");
    let r = piha(&[
        "render",
        "--cluster",
        broken.to_str().expect("utf-8"),
        "--secrets",
        secrets.to_str().expect("utf-8"),
        "--node",
        "lb1",
        "--out",
        bad_out.to_str().expect("utf-8"),
    ]);
    assert!(!r.status.success(), "an invalid cluster file must fail");
    assert!(!bad_out.exists(), "nothing is written when validation fails");
}
