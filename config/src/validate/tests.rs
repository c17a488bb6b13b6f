//! One test per validation rule, each starting from the valid example cluster
//! and breaking exactly one thing.

use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;

use super::names::rfc1123_label;
use super::nic::{interface_name, is_mac};
use super::{Catalog, cluster, node_config};
use crate::cluster::{ClusterFile, KeyAlgorithm, Role};
use crate::k8s::Version;
use crate::node::{NetworkRenderer, NodeConfig};
use crate::problem::{Problem, Severity};

const HOMELAB: &str = include_str!("../../../examples/homelab.yaml");
const QEMU_LAB: &str = include_str!("../../../examples/qemu-lab.yaml");

fn catalog() -> Catalog {
    Catalog {
        boards: ["amd64", "arm64-uefi", "rpi4", "rpi5"].map(String::from).to_vec(),
        distros: ["debian-bookworm", "ubuntu-noble"].map(String::from).to_vec(),
        containerd_major: [("debian-bookworm".to_string(), 1), ("ubuntu-noble".to_string(), 1)].into(),
    }
}

fn homelab() -> ClusterFile {
    ClusterFile::parse(Path::new("homelab.yaml"), HOMELAB).expect("example parses")
}

fn check(c: &ClusterFile) -> Vec<Problem> {
    cluster(Path::new("c.yaml"), c, &catalog()).0
}

/// The errors reported at `path`, as displayed.
fn errors_at(c: &ClusterFile, path: &str) -> Vec<String> {
    check(c)
        .iter()
        .filter(|p| p.is_error() && p.path == path)
        .map(|p| p.to_string())
        .collect()
}

/// Asserts exactly one error at `path` and that it contains `needle`.
fn assert_error(c: &ClusterFile, path: &str, needle: &str) {
    let all = check(c);
    let at = errors_at(c, path);
    assert_eq!(at.len(), 1, "expected one error at {path}, got: {all:#?}");
    assert!(at[0].contains(needle), "{:?} should contain {needle:?}", at[0]);
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

#[test]
fn examples_are_valid() {
    assert_eq!(check(&homelab()), Vec::new());
    let qemu = ClusterFile::parse(Path::new("qemu-lab.yaml"), QEMU_LAB).expect("example parses");
    assert_eq!(qemu.kubernetes.key_algorithm, KeyAlgorithm::EcdsaP256);
    assert_eq!(check(&qemu), Vec::new());
}

#[test]
fn names_must_be_rfc1123() {
    for good in ["a", "cp1", "node-01", &"x".repeat(63)] {
        assert_eq!(rfc1123_label(good), Ok(()), "{good}");
    }
    for bad in ["", "Cp1", "-cp", "cp-", "cp_1", "cp.1", "cp 1", &"x".repeat(64)] {
        assert!(rfc1123_label(bad).is_err(), "{bad:?}");
    }
    let mut c = homelab();
    c.name = "Home_Lab".into();
    c.nodes[1].name = "cp-".into();
    assert_error(&c, "name", "not an RFC 1123 label");
    assert_error(&c, "nodes[1].name", "starts or ends with '-'");
}

#[test]
fn duplicate_names() {
    let mut c = homelab();
    c.nodes[3].name = "cp1".into();
    assert_error(&c, "nodes[3].name", "also the name of nodes[1]");
}

#[test]
fn duplicate_ips_and_vip_or_gateway_as_node_ip() {
    let mut c = homelab();
    c.nodes[2].ip = ip("192.168.50.11");
    c.nodes[4].ip = c.api.vip;
    c.nodes[5].ip = c.network.gateway;
    assert_error(&c, "nodes[2].ip", "also the address of nodes[1] (cp1)");
    assert_error(&c, "nodes[4].ip", "is the VIP");
    assert_error(&c, "nodes[5].ip", "is the gateway");
}

#[test]
fn vip_must_be_in_node_subnet_and_a_host_address() {
    let mut c = homelab();
    c.api.vip = ip("192.168.51.100");
    assert_error(&c, "api.vip", "outside the node subnet 192.168.50.0/24");
    c.api.vip = ip("192.168.50.255");
    assert_error(&c, "api.vip", "broadcast address");
    c.api.vip = ip("192.168.50.0");
    assert_error(&c, "api.vip", "network address");
    c.api.vip = c.network.gateway;
    assert_error(&c, "api.vip", "is the gateway");
}

#[test]
fn every_node_and_the_gateway_in_one_subnet() {
    let mut c = homelab();
    c.nodes[4].ip = ip("192.168.60.21");
    c.network.gateway = ip("192.168.1.1");
    assert_error(&c, "nodes[4].ip", "outside the node subnet");
    assert_error(&c, "network.gateway", "outside the node subnet");
    let mut c = homelab();
    c.nodes[5].ip = ip("192.168.50.255");
    assert_error(&c, "nodes[5].ip", "broadcast address");
    c.nodes[5].ip = ip("127.0.0.1");
    assert!(
        errors_at(&c, "nodes[5].ip")
            .iter()
            .any(|e| e.contains("not a unicast host address"))
    );
}

#[test]
fn prefix_range() {
    let mut c = homelab();
    c.network.prefix = 31;
    assert_error(&c, "network.prefix", "outside 8..=30");
    c.network.prefix = 7;
    assert_error(&c, "network.prefix", "outside 8..=30");
}

#[test]
fn exactly_one_init_control_plane() {
    let mut c = homelab();
    c.nodes[2].init = true;
    assert_error(&c, "nodes[2].init", "nodes[1] (cp1) is already the init control plane");

    let mut c = homelab();
    c.nodes[4].init = true;
    assert_error(&c, "nodes[4].init", "init: true on a worker node");

    let mut c = homelab();
    for n in &mut c.nodes {
        if n.role == Role::ControlPlane {
            n.role = Role::Worker;
            n.init = false;
        }
    }
    assert_error(&c, "nodes", "no node has role: control-plane");

    // No explicit init is fine: the first control plane is implied.
    let mut c = homelab();
    c.nodes[1].init = false;
    assert_eq!(check(&c), Vec::new());
}

#[test]
fn lvs_dr_needs_one_or_two_directors() {
    let mut c = homelab();
    c.nodes[0].role = Role::Worker;
    assert_error(&c, "api.mode", "found none");
    let mut c = homelab();
    for i in [4, 5] {
        c.nodes[i].role = Role::Director;
    }
    assert_error(&c, "api.mode", "found 3: lb1, w1, w2");
    c.nodes[5].role = Role::Worker;
    assert_eq!(check(&c), Vec::new());
}

#[test]
fn subnets_must_not_overlap() {
    let mut c = homelab();
    c.kubernetes.pod_subnet = net("192.168.0.0/16");
    assert_error(&c, "kubernetes.pod_subnet", "overlaps the node subnet 192.168.50.0/24");
    let mut c = homelab();
    c.kubernetes.service_subnet = net("10.244.128.0/20");
    assert_error(&c, "kubernetes.service_subnet", "overlaps the pod subnet 10.244.0.0/16");
    let mut c = homelab();
    c.kubernetes.pod_subnet = net("10.244.1.0/16");
    assert_error(&c, "kubernetes.pod_subnet", "write it as 10.244.0.0/16");
}

#[test]
fn vip_not_in_pod_or_service_subnet() {
    let mut c = homelab();
    c.kubernetes.service_subnet = net("192.168.50.96/28");
    let errs = errors_at(&c, "api.vip");
    assert!(errs.iter().any(|e| e.contains("inside kubernetes.service_subnet")), "{errs:?}");
}

#[test]
fn unknown_board_distro_and_version() {
    let mut c = homelab();
    c.nodes[4].board = "rpi3".into();
    c.distro = "fedora".into();
    c.kubernetes.version = version("1.27.3");
    assert_error(
        &c,
        "nodes[4].board",
        "unknown board `rpi3`; piha knows: amd64, arm64-uefi, rpi4, rpi5",
    );
    assert_error(&c, "distro", "unknown distro `fedora`");
    assert_error(&c, "kubernetes.version", "not supported");
}

#[test]
fn version_syntax_is_a_parse_error_with_the_version_fix() {
    let text = HOMELAB.replace("version: \"1.34.1\"", "version: \"latest\"");
    assert_ne!(text, HOMELAB, "homelab.yaml changed; update this test");
    let problems = ClusterFile::parse(Path::new("c.yaml"), &text).expect_err("bad syntax").0;
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].path, "kubernetes.version");
    assert!(
        problems[0].message.starts_with("`latest` is not a Kubernetes version"),
        "{problems:#?}"
    );
    assert_eq!(problems[0].fix, "use a released version from 1.28 to 1.37, quoted, e.g. \"1.34.1\"");
}

/// A version that parses, supported or not.
fn version(text: &str) -> Version {
    yaml_serde::from_str(text).expect("version syntax")
}

#[test]
fn ssh_keys_must_parse() {
    let mut c = homelab();
    c.ssh_authorized_keys.push("ssh-ed25519 AAAAnotbase64!! me@x".into());
    c.ssh_authorized_keys.push("-----BEGIN OPENSSH PRIVATE KEY-----".into());
    assert_error(&c, "ssh_authorized_keys[1]", "not an OpenSSH public key");
    assert_error(&c, "ssh_authorized_keys[2]", "PRIVATE key");
    c.ssh_authorized_keys.clear();
    let warnings: Vec<Problem> = check(&c).into_iter().filter(|p| p.severity == Severity::Warning).collect();
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].path, "ssh_authorized_keys");
}

#[test]
fn nic_match() {
    for good in ["eth0", "end0", "enp0s31f6", "wlan0.100", "x23456789012345"] {
        assert_eq!(interface_name(good), Ok(()), "{good}");
    }
    for bad in ["", ".", "eth/0", "eth 0", "eth0:1", "x234567890123456"] {
        assert!(interface_name(bad).is_err(), "{bad:?}");
    }
    assert!(is_mac("dc:a6:32:00:00:22") && is_mac("DC:A6:32:00:00:22"));
    for bad in [
        "dc:a6:32:00:00",
        "dc-a6-32-00-00-22",
        "dc:a6:32:00:00:2g",
        "dca6.3200.0022",
        "dc:a6:32:00:00:222",
    ] {
        assert!(!is_mac(bad), "{bad}");
    }
    let mut c = homelab();
    c.nodes[4].mac = Some("dc:a6:32:00:00:21".into());
    c.nodes[5].mac = Some("dc:a6:32:00:00".into());
    c.nodes[3].interface = Some("a-very-long-interface".into());
    assert_error(&c, "nodes[4].mac", "interface and mac are both set");
    assert_error(&c, "nodes[5].mac", "not a MAC address");
    assert_error(&c, "nodes[3].interface", "Linux allows 1 to 15");
}

#[test]
fn port_and_vrrp_id_not_zero() {
    let mut c = homelab();
    c.api.port = 0;
    c.api.vrrp_router_id = 0;
    assert_error(&c, "api.port", "port 0");
    assert_error(&c, "api.vrrp_router_id", "reserved");
}

#[test]
fn the_api_port_is_not_the_health_endpoint_port() {
    let mut c = homelab();
    c.api.port = 6444;
    assert_error(&c, "api.port", "health endpoint (piha-apicheck)");
}

#[test]
fn even_control_planes_warn_about_quorum() {
    let mut c = homelab();
    c.nodes[3].role = Role::Worker;
    let all = check(&c);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].severity, Severity::Warning);
    assert_eq!(all[0].path, "nodes");
    assert!(
        all[0].message.contains("2 control planes tolerate no more failures than 1"),
        "{}",
        all[0].message
    );
    assert!(all[0].fix.contains("1, 3 or 5"));
}

#[test]
fn every_problem_at_once_errors_first() {
    let mut c = homelab();
    c.ssh_authorized_keys.clear();
    c.name = "Bad".into();
    c.nodes[2].ip = ip("192.168.50.11");
    c.api.port = 0;
    let all = check(&c);
    let paths: Vec<&str> = all.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, ["name", "api.port", "nodes[2].ip", "ssh_authorized_keys"]);
    assert_eq!(all[3].severity, Severity::Warning);
}

fn node_yaml(name: &str) -> NodeConfig {
    let mut cfg = NodeConfig::for_node(&homelab(), name, NetworkRenderer::Netplan).expect("node exists");
    cfg.card = crate::node::CardFacts::for_tests(cfg.node.role);
    cfg
}

fn node_errors(cfg: &NodeConfig) -> Vec<String> {
    node_config(Path::new("node.yaml"), cfg)
        .0
        .iter()
        .filter(|p| p.is_error())
        .map(|p| p.to_string())
        .collect()
}

#[test]
fn node_config_of_every_example_node_is_valid() {
    for n in homelab().nodes {
        assert_eq!(node_errors(&node_yaml(&n.name)), Vec::<String>::new(), "{}", n.name);
    }
}

#[test]
fn node_config_rules() {
    let mut cfg = node_yaml("cp2");
    cfg.node.name = "CP2".into();
    cfg.node.address = net("192.168.50.255/24");
    cfg.cluster.vip = ip("10.1.1.1");
    cfg.cluster.kubernetes_version = version("1.99.0");
    cfg.node.role = Role::Worker;
    cfg.node.init = true;
    cfg.peers[0].name = "cp1".into();
    let errs = node_errors(&cfg);
    for needle in [
        "node.name: node name `CP2`",
        "node.address: 192.168.50.255/24 is the network or broadcast address",
        "cluster.vip: 10.1.1.1 is outside this node's subnet",
        "cluster.kubernetes_version: Kubernetes 1.99.0 is not supported",
        "node.init: init: true on a worker node",
        "peers: this node (CP2) is not among the peers",
        "peers[1].name: `cp1` is also peers[0]",
    ] {
        assert!(errs.iter().any(|e| e.contains(needle)), "missing {needle:?} in {errs:#?}");
    }

    let mut cfg = node_yaml("w1");
    cfg.peers[4].ip = ip("192.168.50.99");
    cfg.cluster.vip = ip("192.168.50.21");
    let errs = node_errors(&cfg);
    assert!(
        errs.iter()
            .any(|e| e.contains("peers[4].ip: 192.168.50.99 differs from node.address 192.168.50.21")),
        "{errs:#?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("cluster.vip: 192.168.50.21 is this node's own address")),
        "{errs:#?}"
    );
}
