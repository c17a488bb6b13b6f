//! Validation of cluster files (builder side) and node.yaml (agent side).
//!
//! Both return every problem at once, errors first, each naming the file, the
//! field path (`nodes[3].ip`), what is wrong and how to fix it. Parsing (types,
//! unknown fields, enum values) happens before, in `ClusterFile::parse` and
//! `NodeConfig::parse`; this module checks what the types cannot: names,
//! addresses and subnets, roles, versions, keys.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

use crate::cluster::{ClusterFile, ProxyMode, Role, VipMode};
use crate::k8s;
use crate::node::{NodeConfig, SCHEMA_VERSION};
use crate::problem::{Problem, Problems};

/// The boards and distros that exist (names of files in `boards/`, `distros/`).
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub boards: Vec<String>,
    pub distros: Vec<String>,
}

/// Node subnet prefixes piha accepts. Shorter than /8 is certainly a typo;
/// /31 and /32 leave no room for the nodes, the gateway and the VIP.
const PREFIXES: std::ops::RangeInclusive<u8> = 8..=30;

/// Linux's IFNAMSIZ is 16 including the terminating NUL.
const MAX_INTERFACE_NAME: usize = 15;

/// Collects problems for one file.
struct Report {
    file: PathBuf,
    problems: Vec<Problem>,
}

impl Report {
    fn new(file: &Path) -> Report {
        Report {
            file: file.to_path_buf(),
            problems: Vec::new(),
        }
    }

    fn error(&mut self, path: impl Into<String>, message: impl Into<String>, fix: impl Into<String>) {
        self.problems.push(Problem::error(&self.file, path, message, fix));
    }

    fn warning(&mut self, path: impl Into<String>, message: impl Into<String>, fix: impl Into<String>) {
        self.problems.push(Problem::warning(&self.file, path, message, fix));
    }

    /// Errors first, each group in the order found (file order).
    fn finish(mut self) -> Problems {
        self.problems.sort_by_key(|p| !p.is_error());
        Problems(self.problems)
    }
}

/// Checks a parsed cluster file against every rule piha knows.
pub fn cluster(file: &Path, c: &ClusterFile, catalog: &Catalog) -> Problems {
    let mut r = Report::new(file);

    check_name(&mut r, "name", &c.name, "cluster name");
    if !catalog.distros.contains(&c.distro) {
        r.error(
            "distro",
            format!("unknown distro `{}`; piha knows: {}", c.distro, list(&catalog.distros)),
            format!("use one of them, or add distros/{}.yaml", c.distro),
        );
    }
    check_version(&mut r, "kubernetes.version", &c.kubernetes.version);
    check_proxy_mode(&mut r, "kubernetes.proxy_mode", c.kubernetes.proxy_mode, &c.kubernetes.version);
    check_pod_subnet_size(&mut r, c);
    check_api_numbers(&mut r, "api.port", c.api.port, "api.vrrp_router_id", c.api.vrrp_router_id);
    check_ssh_keys(&mut r, &c.ssh_authorized_keys);
    if let Some(domain) = &c.network.domain {
        check_domain(&mut r, "network.domain", domain);
    }
    for (i, ntp) in c.network.ntp.iter().enumerate() {
        if ntp.is_empty() || ntp.chars().any(char::is_whitespace) {
            r.error(
                format!("network.ntp[{i}]"),
                format!("`{ntp}` is not a host name or address"),
                "write one NTP server per entry, e.g. pool.ntp.org",
            );
        }
    }

    let subnet = node_subnet(&mut r, c);
    check_unicast(&mut r, "network.gateway", c.network.gateway);
    check_unicast(&mut r, "api.vip", c.api.vip);
    if let Some(net) = subnet {
        let whose = format!("the node subnet {net} (nodes[0].ip with network.prefix {})", c.network.prefix);
        check_in_subnet(
            &mut r,
            "network.gateway",
            c.network.gateway,
            net,
            &whose,
            "the gateway must be on the nodes' own network",
        );
        check_in_subnet(
            &mut r,
            "api.vip",
            c.api.vip,
            net,
            &whose,
            "LVS direct routing needs the VIP on the nodes' L2 segment",
        );
        for (i, n) in c.nodes.iter().enumerate() {
            check_in_subnet(
                &mut r,
                &format!("nodes[{i}].ip"),
                n.ip,
                net,
                &whose,
                "every node must be on one L2 segment (LVS-DR)",
            );
        }
        check_subnets(
            &mut r,
            net,
            "the node subnet",
            c.kubernetes.pod_subnet,
            c.kubernetes.service_subnet,
            "kubernetes.",
        );
    } else {
        check_subnets_pair(&mut r, c.kubernetes.pod_subnet, c.kubernetes.service_subnet, "kubernetes.");
    }
    if c.api.vip == c.network.gateway {
        r.error(
            "api.vip",
            format!("{} is the gateway (network.gateway)", c.api.vip),
            "use an unused address of the node subnet for the VIP",
        );
    }
    check_vip_outside_cluster_subnets(
        &mut r,
        "api.vip",
        c.api.vip,
        c.kubernetes.pod_subnet,
        c.kubernetes.service_subnet,
        "kubernetes.",
    );

    check_nodes(&mut r, c, catalog);
    r.finish()
}

/// The node subnet (nodes[0].ip/prefix), or None when it cannot be computed;
/// reports a bad prefix or an empty node list.
fn node_subnet(r: &mut Report, c: &ClusterFile) -> Option<Ipv4Net> {
    if !PREFIXES.contains(&c.network.prefix) {
        r.error(
            "network.prefix",
            format!("/{} is outside {}..={}", c.network.prefix, PREFIXES.start(), PREFIXES.end()),
            "use the prefix length of the nodes' network, e.g. 24 for 255.255.255.0",
        );
        return None;
    }
    if c.nodes.is_empty() {
        r.error(
            "nodes",
            "the cluster has no nodes",
            "list at least one control-plane node and one director",
        );
        return None;
    }
    c.node_subnet()
}

fn check_nodes(r: &mut Report, c: &ClusterFile, catalog: &Catalog) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut ips: HashMap<Ipv4Addr, usize> = HashMap::new();
    let mut init: Option<usize> = None;
    for (i, n) in c.nodes.iter().enumerate() {
        let at = |field: &str| format!("nodes[{i}].{field}");
        check_name(r, &at("name"), &n.name, "node name");
        if let Some(j) = names.insert(&n.name, i) {
            names.insert(&n.name, j);
            r.error(
                at("name"),
                format!("`{}` is also the name of nodes[{j}]", n.name),
                "give every node its own name (it becomes its hostname)",
            );
        }
        if !catalog.boards.contains(&n.board) {
            r.error(
                at("board"),
                format!("unknown board `{}`; piha knows: {}", n.board, list(&catalog.boards)),
                format!("use one of them, or add boards/{}.yaml", n.board),
            );
        }
        check_unicast(r, &at("ip"), n.ip);
        if let Some(j) = ips.insert(n.ip, i) {
            ips.insert(n.ip, j);
            r.error(
                at("ip"),
                format!("{} is also the address of nodes[{j}] ({})", n.ip, c.nodes[j].name),
                "give every node its own address",
            );
        }
        if n.ip == c.api.vip {
            r.error(
                at("ip"),
                format!("{} is the VIP (api.vip)", n.ip),
                "the VIP must be an unused address of the node subnet: change api.vip or this ip",
            );
        }
        if n.ip == c.network.gateway {
            r.error(
                at("ip"),
                format!("{} is the gateway (network.gateway)", n.ip),
                "give the node an address other than the router's",
            );
        }
        check_nic_match(r, n.interface.as_deref(), n.mac.as_deref(), &format!("nodes[{i}]"));
        if n.init {
            if n.role != Role::ControlPlane {
                r.error(
                    at("init"),
                    format!("init: true on a {} node; only a control plane runs `kubeadm init`", n.role.as_str()),
                    "remove init here and set it on one control-plane node",
                );
            } else if let Some(j) = init {
                r.error(
                    at("init"),
                    format!("nodes[{j}] ({}) is already the init control plane", c.nodes[j].name),
                    "set init: true on exactly one control plane",
                );
            } else {
                init = Some(i);
            }
        }
    }

    let control_planes = c.nodes_with_role(Role::ControlPlane).count();
    if control_planes == 0 && !c.nodes.is_empty() {
        r.error(
            "nodes",
            "no node has role: control-plane, so nothing would run `kubeadm init`",
            "give at least one node role: control-plane",
        );
    } else if control_planes % 2 == 0 && control_planes > 0 {
        r.warning(
            "nodes",
            format!(
                "{control_planes} control planes tolerate no more failures than {}; etcd needs a majority ({} of {control_planes}) to keep working",
                control_planes - 1,
                control_planes / 2 + 1
            ),
            "use an odd number of control planes: 1, 3 or 5",
        );
    }

    match c.api.mode {
        VipMode::LvsDr => {
            let directors: Vec<&str> = c.nodes_with_role(Role::Director).map(|n| n.name.as_str()).collect();
            if directors.is_empty() && !c.nodes.is_empty() {
                r.error(
                    "api.mode",
                    "lvs-dr needs one or two nodes with role: director to announce the VIP, found none",
                    "add a node with role: director (an amd64 box is fine)",
                );
            } else if directors.len() > 2 {
                r.error(
                    "api.mode",
                    format!(
                        "lvs-dr supports one or two directors (a VRRP pair), found {}: {}",
                        directors.len(),
                        directors.join(", ")
                    ),
                    "keep two directors and make the others workers",
                );
            }
        }
    }
}

/// Checks `node.yaml` as read by the agent: what the builder checked and the
/// single node can still check on its own.
pub fn node_config(file: &Path, c: &NodeConfig) -> Problems {
    let mut r = Report::new(file);
    let restamp = "re-stamp the card with `piha stamp`";
    if c.schema == 0 || c.schema > SCHEMA_VERSION {
        r.error(
            "schema",
            format!("schema {} is not one this agent reads (it reads {SCHEMA_VERSION})", c.schema),
            "re-stamp the card with the piha that built this image, or rebuild the image",
        );
    }
    let n = &c.node;
    let f = &c.cluster;
    check_name(&mut r, "node.name", &n.name, "node name");
    check_name(&mut r, "cluster.name", &f.name, "cluster name");
    check_version(&mut r, "cluster.kubernetes_version", &f.kubernetes_version);
    check_api_numbers(&mut r, "cluster.api_port", f.api_port, "cluster.vrrp_router_id", f.vrrp_router_id);
    check_ssh_keys(&mut r, &c.ssh_authorized_keys);
    if let Some(domain) = &n.domain {
        check_domain(&mut r, "node.domain", domain);
    }
    if n.init && n.role != Role::ControlPlane {
        r.error("node.init", format!("init: true on a {} node", n.role.as_str()), restamp);
    }
    check_nic_match(&mut r, n.interface.as_deref(), n.mac.as_deref(), "node");

    check_unicast(&mut r, "node.address", n.address.addr());
    check_unicast(&mut r, "node.gateway", n.gateway);
    check_unicast(&mut r, "cluster.vip", f.vip);
    if PREFIXES.contains(&n.address.prefix_len()) {
        let net = n.address.trunc();
        let whose = format!("this node's subnet {net}");
        if n.address.addr() == net.network() || n.address.addr() == net.broadcast() {
            r.error(
                "node.address",
                format!("{} is the network or broadcast address of {net}", n.address),
                restamp,
            );
        }
        check_in_subnet(
            &mut r,
            "node.gateway",
            n.gateway,
            net,
            &whose,
            "the gateway must be on the node's network",
        );
        check_in_subnet(
            &mut r,
            "cluster.vip",
            f.vip,
            net,
            &whose,
            "LVS direct routing needs the VIP on the node's L2 segment",
        );
        check_subnets(&mut r, net, "this node's subnet", f.pod_subnet, f.service_subnet, "cluster.");
    } else {
        r.error(
            "node.address",
            format!(
                "prefix /{} is outside {}..={}",
                n.address.prefix_len(),
                PREFIXES.start(),
                PREFIXES.end()
            ),
            restamp,
        );
        check_subnets_pair(&mut r, f.pod_subnet, f.service_subnet, "cluster.");
    }
    if f.vip == n.address.addr() {
        r.error("cluster.vip", format!("{} is this node's own address", f.vip), restamp);
    }
    check_vip_outside_cluster_subnets(&mut r, "cluster.vip", f.vip, f.pod_subnet, f.service_subnet, "cluster.");

    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut ips: HashMap<Ipv4Addr, usize> = HashMap::new();
    for (i, p) in c.peers.iter().enumerate() {
        check_name(&mut r, &format!("peers[{i}].name"), &p.name, "node name");
        if let Some(j) = names.insert(&p.name, i) {
            names.insert(&p.name, j);
            r.error(format!("peers[{i}].name"), format!("`{}` is also peers[{j}]", p.name), restamp);
        }
        if let Some(j) = ips.insert(p.ip, i) {
            ips.insert(p.ip, j);
            r.error(
                format!("peers[{i}].ip"),
                format!("{} is also the address of peers[{j}]", p.ip),
                restamp,
            );
        }
    }
    match c.peers.iter().position(|p| p.name == n.name) {
        None => r.error("peers", format!("this node ({}) is not among the peers", n.name), restamp),
        Some(i) => {
            let me = &c.peers[i];
            if me.ip != n.address.addr() {
                r.error(
                    format!("peers[{i}].ip"),
                    format!("{} differs from node.address {}", me.ip, n.address.addr()),
                    restamp,
                );
            }
            if me.role != n.role {
                r.error(
                    format!("peers[{i}].role"),
                    format!("{} differs from node.role {}", me.role.as_str(), n.role.as_str()),
                    restamp,
                );
            }
        }
    }
    r.finish()
}

/// An RFC 1123 label: what hostnames, kubeadm node names and image names need.
pub fn rfc1123_label(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!("is {} characters long; it must have 1 to 63", name.len()));
    }
    if let Some(bad) = name
        .chars()
        .find(|ch| !(ch.is_ascii_lowercase() || ch.is_ascii_digit() || *ch == '-'))
    {
        return Err(format!("contains `{bad}`; only lowercase letters, digits and '-' are allowed"));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("starts or ends with '-'".to_string());
    }
    Ok(())
}

fn check_name(r: &mut Report, path: &str, name: &str, what: &str) {
    if let Err(why) = rfc1123_label(name) {
        r.error(
            path,
            format!("{what} `{name}` is not an RFC 1123 label: it {why}"),
            "use lowercase letters, digits and '-', 1 to 63 characters, starting and ending with a letter or digit (e.g. cp1)",
        );
    }
}

fn check_domain(r: &mut Report, path: &str, domain: &str) {
    let labels: Vec<&str> = domain.trim_end_matches('.').split('.').collect();
    if domain.len() > 253 || labels.iter().any(|l| rfc1123_label(l).is_err()) {
        r.error(
            path,
            format!("`{domain}` is not a DNS domain name"),
            "write lowercase labels separated by dots, e.g. lab.example.org",
        );
    }
}

fn check_version(r: &mut Report, path: &str, version: &str) {
    if let Err(e) = k8s::parse(version) {
        r.error(
            path,
            e.to_string(),
            format!(
                "use a released version from 1.{} to 1.{}, quoted, e.g. \"1.34.1\"",
                k8s::SUPPORTED_MINORS.start(),
                k8s::SUPPORTED_MINORS.end()
            ),
        );
    }
}

/// kube-proxy's nftables mode is beta (on by default) from Kubernetes 1.31;
/// below that it is an alpha feature gate piha does not turn on.
/// <https://kubernetes.io/docs/reference/networking/virtual-ips/#proxy-mode-nftables>
fn check_proxy_mode(r: &mut Report, path: &str, mode: ProxyMode, version: &str) {
    if let (ProxyMode::Nftables, Ok(v)) = (mode, k8s::parse(version)) {
        if v.major == 1 && v.minor < NFTABLES_SINCE_MINOR {
            r.error(
                path,
                format!("kube-proxy's nftables mode needs Kubernetes 1.{NFTABLES_SINCE_MINOR} or later; {version} only has it as an alpha feature"),
                format!("use `proxy_mode: iptables`, or kubernetes.version 1.{NFTABLES_SINCE_MINOR} or later"),
            );
        }
    }
}

/// The first minor whose kube-proxy nftables mode is on by default (beta).
const NFTABLES_SINCE_MINOR: u32 = 31;

/// kube-controller-manager gives every node a /24 of the pod subnet
/// (`--node-cidr-mask-size`, default 24); flannel needs one per node that runs
/// pods (control planes and workers).
fn check_pod_subnet_size(r: &mut Report, c: &ClusterFile) {
    let pod = c.kubernetes.pod_subnet;
    let nodes = c.nodes.iter().filter(|n| n.role != Role::Director).count();
    let per_node_prefix = 24u8;
    let available: u64 = if pod.prefix_len() >= per_node_prefix { 0 } else { 1u64 << (per_node_prefix - pod.prefix_len()) };
    if (available as usize) < nodes.max(1) {
        r.error(
            "kubernetes.pod_subnet",
            format!("{pod} holds {available} per-node /24 pod range(s), but {nodes} node(s) run pods"),
            "use a larger pod subnet, e.g. 10.244.0.0/16",
        );
    }
}

fn check_api_numbers(r: &mut Report, port_path: &str, port: u16, vrid_path: &str, vrid: u8) {
    if port == 0 {
        r.error(
            port_path,
            "port 0 is not a port clients can connect to",
            "use 6443, kubeadm's default",
        );
    }
    if vrid == 0 {
        r.error(
            vrid_path,
            "VRRP router id 0 is reserved",
            "use 1 to 255, unique on the L2 segment (default 51)",
        );
    }
}

fn check_ssh_keys(r: &mut Report, keys: &[String]) {
    if keys.is_empty() {
        r.warning(
            "ssh_authorized_keys",
            "no SSH key: nobody can log in to the nodes (no password is ever set)",
            "add the line of your ~/.ssh/id_ed25519.pub",
        );
    }
    for (i, key) in keys.iter().enumerate() {
        let path = format!("ssh_authorized_keys[{i}]");
        if key.contains("PRIVATE KEY") {
            r.error(
                path,
                "this is a PRIVATE key",
                "remove it at once and paste the public key (the .pub file) instead",
            );
        } else if let Err(e) = ssh_key::PublicKey::from_openssh(key) {
            r.error(
                path,
                format!("not an OpenSSH public key ({e})"),
                "paste one line of a .pub file, e.g. `ssh-ed25519 AAAAC3... you@laptop`, without authorized_keys options",
            );
        }
    }
}

/// Addresses a node, gateway or VIP can never be.
fn check_unicast(r: &mut Report, path: &str, ip: Ipv4Addr) {
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() {
        r.error(
            path,
            format!("{ip} is not a unicast host address"),
            "use an address of the nodes' LAN, e.g. 192.168.50.11",
        );
    }
}

/// `ip` must lie inside `net` and be neither its network nor its broadcast address.
fn check_in_subnet(r: &mut Report, path: &str, ip: Ipv4Addr, net: Ipv4Net, whose: &str, why: &str) {
    if !net.contains(&ip) {
        r.error(
            path,
            format!("{ip} is outside {whose}; {why}"),
            format!("use an address inside {net}, or correct network.prefix"),
        );
    } else if ip == net.network() {
        r.error(
            path,
            format!("{ip} is the network address of {net}"),
            format!("use a host address of {net}"),
        );
    } else if ip == net.broadcast() {
        r.error(
            path,
            format!("{ip} is the broadcast address of {net}"),
            format!("use a host address of {net}"),
        );
    }
}

/// The node, pod and service subnets must not overlap pairwise.
fn check_subnets(r: &mut Report, node: Ipv4Net, node_what: &str, pod: Ipv4Net, service: Ipv4Net, prefix: &str) {
    for (name, net) in [("pod_subnet", pod), ("service_subnet", service)] {
        if overlaps(node, net) {
            r.error(
                format!("{prefix}{name}"),
                format!("{net} overlaps {node_what} {node}"),
                "pick a private range the LAN does not use (defaults: pod 10.244.0.0/16, service 10.96.0.0/12)",
            );
        }
    }
    check_subnets_pair(r, pod, service, prefix);
}

fn check_subnets_pair(r: &mut Report, pod: Ipv4Net, service: Ipv4Net, prefix: &str) {
    for (name, net) in [("pod_subnet", pod), ("service_subnet", service)] {
        if net.addr() != net.network() {
            r.error(
                format!("{prefix}{name}"),
                format!("{net} has host bits set"),
                format!("write it as {}", net.trunc()),
            );
        }
    }
    if overlaps(pod, service) {
        r.error(
            format!("{prefix}service_subnet"),
            format!("{service} overlaps the pod subnet {pod}"),
            "pick non-overlapping ranges (defaults: pod 10.244.0.0/16, service 10.96.0.0/12)",
        );
    }
}

fn check_vip_outside_cluster_subnets(r: &mut Report, path: &str, vip: Ipv4Addr, pod: Ipv4Net, service: Ipv4Net, prefix: &str) {
    for (name, net) in [("pod_subnet", pod), ("service_subnet", service)] {
        if net.contains(&vip) {
            r.error(
                path,
                format!("{vip} lies inside {prefix}{name} {net}"),
                "the VIP must be a LAN address outside the pod and service subnets",
            );
        }
    }
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// `interface` and `mac` are alternatives; each must be well-formed.
fn check_nic_match(r: &mut Report, interface: Option<&str>, mac: Option<&str>, at: &str) {
    if interface.is_some() && mac.is_some() {
        r.error(
            format!("{at}.mac"),
            "interface and mac are both set; the NIC is matched by one of them",
            "keep either interface or mac",
        );
    }
    if let Some(name) = interface {
        if let Err(why) = interface_name(name) {
            r.error(
                format!("{at}.interface"),
                format!("`{name}` is not a Linux interface name: {why}"),
                "use the name the kernel gives the NIC, e.g. eth0, end0 or enp1s0, or match by mac instead",
            );
        }
    }
    if let Some(m) = mac {
        if !is_mac(m) {
            r.error(
                format!("{at}.mac"),
                format!("`{m}` is not a MAC address"),
                "write six hex pairs separated by ':', quoted, e.g. \"dc:a6:32:01:02:03\"",
            );
        }
    }
}

/// Linux's `dev_valid_name`: 1..=15 bytes, not `.`/`..`, no '/', ':' or whitespace.
pub fn interface_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_INTERFACE_NAME {
        return Err(format!("it has {} characters; Linux allows 1 to {MAX_INTERFACE_NAME}", name.len()));
    }
    if name == "." || name == ".." {
        return Err("`.` and `..` are reserved".to_string());
    }
    if let Some(bad) = name.chars().find(|ch| *ch == '/' || *ch == ':' || ch.is_whitespace()) {
        return Err(format!("it contains {bad:?}"));
    }
    Ok(())
}

/// `xx:xx:xx:xx:xx:xx` with hex digits in either case.
pub fn is_mac(text: &str) -> bool {
    let parts: Vec<&str> = text.split(':').collect();
    parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "(none: is PIHA_DATA_DIR right?)".to_string()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests;
