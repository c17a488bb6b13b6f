//! Addresses and subnets: the `network` section, and the rules every node
//! address, gateway, VIP, pod and service subnet follows (the agent checks
//! its node.yaml with the same rules).

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use ipnet::Ipv4Net;

use super::Report;
use super::names::check_domain;
use crate::cluster::ClusterFile;

/// Node subnet prefixes piha accepts. Shorter than /8 is certainly a typo;
/// /31 and /32 leave no room for the nodes, the gateway and the VIP.
pub(super) const PREFIXES: RangeInclusive<u8> = 8..=30;

/// The pod and service subnets, and the prefix of their field paths
/// (`kubernetes.` in the cluster file, `cluster.` in node.yaml).
pub(super) struct ClusterSubnets<'a> {
    pub(super) pod: Ipv4Net,
    pub(super) service: Ipv4Net,
    pub(super) prefix: &'a str,
}

/// The subnet the nodes share, as messages name it: `what` alone
/// ("the node subnet"), `whose` with the address and where it comes from.
pub(super) struct NodeSubnet {
    pub(super) net: Ipv4Net,
    pub(super) what: &'static str,
    pub(super) whose: String,
}

/// The cluster file's pod and service subnets.
pub(super) fn cluster_subnets(c: &ClusterFile) -> ClusterSubnets<'static> {
    ClusterSubnets {
        pod: c.kubernetes.pod_subnet,
        service: c.kubernetes.service_subnet,
        prefix: "kubernetes.",
    }
}

/// The `network` section, and where the gateway, the VIP and every node sit
/// relative to the node subnet and the cluster's subnets.
pub(super) fn check_cluster(r: &mut Report, c: &ClusterFile) {
    if let Some(domain) = &c.network.domain {
        check_domain(r, "network.domain", domain);
    }
    check_ntp(r, &c.network.ntp);
    let subnet = node_subnet(r, c);
    check_dns(r, "network.dns", &c.network.dns, subnet);
    check_unicast(r, "network.gateway", c.network.gateway);
    check_unicast(r, "api.vip", c.api.vip);
    match subnet {
        Some(net) => {
            let node = NodeSubnet {
                net,
                what: "the node subnet",
                whose: format!("the node subnet {net} (nodes[0].ip with network.prefix {})", c.network.prefix),
            };
            check_placement(r, c, &node);
            check_subnets(r, &node, &cluster_subnets(c));
        }
        None => check_subnets_pair(r, &cluster_subnets(c)),
    }
}

fn check_ntp(r: &mut Report, servers: &[String]) {
    for (i, ntp) in servers.iter().enumerate() {
        if ntp.is_empty() || ntp.chars().any(char::is_whitespace) {
            r.error(
                format!("network.ntp[{i}]"),
                format!("`{ntp}` is not a host name or address"),
                "write one NTP server per entry, e.g. pool.ntp.org",
            );
        }
    }
}

/// Each DNS server is a unicast address, never the node subnet's broadcast.
pub(super) fn check_dns(r: &mut Report, path: &str, servers: &[Ipv4Addr], subnet: Option<Ipv4Net>) {
    for (i, &dns) in servers.iter().enumerate() {
        let at = format!("{path}[{i}]");
        check_unicast(r, &at, dns);
        if let Some(net) = subnet.filter(|net| dns == net.broadcast() || dns == net.network()) {
            r.error(
                at,
                format!("{dns} is the network or broadcast address of the node subnet {net}"),
                "use the address of a DNS server, e.g. the router's",
            );
        }
    }
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

/// The gateway, the VIP and every node are host addresses of the node subnet.
fn check_placement(r: &mut Report, c: &ClusterFile, node: &NodeSubnet) {
    let gateway_why = "the gateway must be on the nodes' own network";
    check_in_subnet(r, "network.gateway", c.network.gateway, node, gateway_why);
    let vip_why = "LVS direct routing needs the VIP on the nodes' L2 segment";
    check_in_subnet(r, "api.vip", c.api.vip, node, vip_why);
    for (i, n) in c.nodes.iter().enumerate() {
        let why = "every node must be on one L2 segment (LVS-DR)";
        check_in_subnet(r, &format!("nodes[{i}].ip"), n.ip, node, why);
    }
}

/// Addresses a node, gateway or VIP can never be.
pub(super) fn check_unicast(r: &mut Report, path: &str, ip: Ipv4Addr) {
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() {
        r.error(
            path,
            format!("{ip} is not a unicast host address"),
            "use an address of the nodes' LAN, e.g. 192.168.50.11",
        );
    }
}

/// `ip` must lie inside `net` and be neither its network nor its broadcast address.
pub(super) fn check_in_subnet(r: &mut Report, path: &str, ip: Ipv4Addr, node: &NodeSubnet, why: &str) {
    let net = node.net;
    if !net.contains(&ip) {
        r.error(
            path,
            format!("{ip} is outside {}; {why}", node.whose),
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
pub(super) fn check_subnets(r: &mut Report, node: &NodeSubnet, subnets: &ClusterSubnets) {
    for (name, net) in subnets.named() {
        if overlaps(node.net, net) {
            r.error(
                format!("{}{name}", subnets.prefix),
                format!("{net} overlaps {} {}", node.what, node.net),
                "pick a private range the LAN does not use (defaults: pod 10.244.0.0/16, service 10.96.0.0/12)",
            );
        }
    }
    check_subnets_pair(r, subnets);
}

/// The largest service subnet the API server accepts (`--service-cluster-ip-range`
/// must be /12 or longer for IPv4).
const SERVICE_PREFIX_LARGEST: u8 = 12;
/// The smallest service subnet whose 10th address, the cluster DNS service,
/// exists: /28 has 16 addresses, /29 only 8.
const SERVICE_PREFIX_SMALLEST: u8 = 28;
/// A pod subnet shorter than this swallows most of the IPv4 space: a typo.
const POD_PREFIX_LARGEST: u8 = 8;

/// The pod and service subnets are written without host bits, have sizes
/// Kubernetes accepts, and do not overlap.
pub(super) fn check_subnets_pair(r: &mut Report, subnets: &ClusterSubnets) {
    let service = subnets.service;
    if service.prefix_len() < SERVICE_PREFIX_LARGEST {
        r.error(
            format!("{}service_subnet", subnets.prefix),
            format!("{service} is larger than /{SERVICE_PREFIX_LARGEST}, the largest service range the API server accepts"),
            "use a /12 to /28, e.g. 10.96.0.0/12 (the default)",
        );
    } else if service.prefix_len() > SERVICE_PREFIX_SMALLEST {
        r.error(
            format!("{}service_subnet", subnets.prefix),
            format!(
                "{service} has {} addresses; the cluster DNS service takes the 10th, so it needs a /{SERVICE_PREFIX_SMALLEST} or larger",
                1u64 << (32 - service.prefix_len())
            ),
            "use a /12 to /28, e.g. 10.96.0.0/12 (the default)",
        );
    }
    if subnets.pod.prefix_len() < POD_PREFIX_LARGEST {
        r.error(
            format!("{}pod_subnet", subnets.prefix),
            format!("{} is larger than /{POD_PREFIX_LARGEST}", subnets.pod),
            "use a private range such as 10.244.0.0/16 (the default)",
        );
    }
    for (name, net) in subnets.named() {
        if net.addr() != net.network() {
            r.error(
                format!("{}{name}", subnets.prefix),
                format!("{net} has host bits set"),
                format!("write it as {}", net.trunc()),
            );
        }
    }
    let (pod, service) = (subnets.pod, subnets.service);
    if overlaps(pod, service) {
        r.error(
            format!("{}service_subnet", subnets.prefix),
            format!("{service} overlaps the pod subnet {pod}"),
            "pick non-overlapping ranges (defaults: pod 10.244.0.0/16, service 10.96.0.0/12)",
        );
    }
}

/// The VIP is a LAN address, never one of the pod or service subnet.
pub(super) fn check_vip_outside_cluster_subnets(r: &mut Report, path: &str, vip: Ipv4Addr, subnets: &ClusterSubnets) {
    for (name, net) in subnets.named() {
        if net.contains(&vip) {
            r.error(
                path,
                format!("{vip} lies inside {}{name} {net}", subnets.prefix),
                "the VIP must be a LAN address outside the pod and service subnets",
            );
        }
    }
}

impl ClusterSubnets<'_> {
    /// Each subnet with its field name.
    fn named(&self) -> [(&'static str, Ipv4Net); 2] {
        [("pod_subnet", self.pod), ("service_subnet", self.service)]
    }
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}
