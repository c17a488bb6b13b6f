//! `node.yaml` as the agent reads it: what the builder checked, and what the
//! single node can still check on its own.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;

use super::api::check_numbers;
use super::kubernetes::{check_bootstrap_token_ttl, check_version};
use super::names::{check_cluster_name, check_domain, check_name};
use super::network::{
    ClusterSubnets, NodeSubnet, PREFIXES, check_dns, check_in_subnet, check_subnets, check_subnets_pair, check_unicast,
    check_vip_outside_cluster_subnets,
};
use super::nic::check_nic_match;
use super::ssh::check_keys;
use super::{Report, first_seen};
use crate::cluster::Role;
use crate::node::{NodeConfig, SCHEMA_VERSION};
use crate::problem::Problems;

/// The fix for every problem a user cannot correct in node.yaml itself.
const RESTAMP: &str = "re-stamp the card with `piha stamp`";

/// Checks `node.yaml` as read by the agent.
pub(crate) fn node_config(file: &Path, c: &NodeConfig) -> Problems {
    let mut r = Report::new(file);
    check_schema(&mut r, c.schema);
    check_facts(&mut r, c);
    check_addresses(&mut r, c);
    check_peers(&mut r, c);
    check_self_among_peers(&mut r, c);
    check_card(&mut r, c);
    r.finish()
}

/// The `card` section: a stamp time, the CA's start for a node that runs
/// kubeadm, and a digest for exactly the secret files its role gets.
fn check_card(r: &mut Report, c: &NodeConfig) {
    if c.card.stamped_at == 0 {
        r.error("card.stamped_at", "the card has no stamp time", RESTAMP);
    }
    if c.node.role != Role::Director && c.card.ca_not_before.is_none() {
        r.error("card.ca_not_before", "the CA's start time is missing", RESTAMP);
    }
    let wanted: Vec<&str> = c.secret_files().iter().map(|s| s.rel).collect();
    let listed: Vec<&str> = c.card.secrets.keys().map(String::as_str).collect();
    let mut wanted_sorted = wanted.clone();
    wanted_sorted.sort_unstable();
    if listed != wanted_sorted {
        r.error(
            "card.secrets",
            format!(
                "lists [{}], but a {} node's card holds [{}]",
                listed.join(", "),
                c.node.role.as_str(),
                wanted.join(", ")
            ),
            RESTAMP,
        );
    }
    for (rel, digest) in &c.card.secrets {
        let hex = digest.strip_prefix("sha256:").unwrap_or_default();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            r.error(format!("card.secrets.{rel}"), "is not `sha256:` and 64 hex digits", RESTAMP);
        }
    }
}

fn check_schema(r: &mut Report, schema: u32) {
    if schema == 0 || schema > SCHEMA_VERSION {
        r.error(
            "schema",
            format!("schema {schema} is not one this agent reads (it reads {SCHEMA_VERSION})"),
            "re-stamp the card with the piha that built this image, or rebuild the image",
        );
    }
}

/// Names, version, API numbers, keys, domain, role and NIC.
fn check_facts(r: &mut Report, c: &NodeConfig) {
    let (n, f) = (&c.node, &c.cluster);
    check_name(r, "node.name", &n.name, "node name");
    check_cluster_name(r, "cluster.name", &f.name);
    check_version(r, "cluster.kubernetes_version", f.kubernetes_version);
    check_bootstrap_token_ttl(r, "cluster.bootstrap_token_ttl", &f.bootstrap_token_ttl);
    check_numbers(r, "cluster.api_port", f.api_port, "cluster.vrrp_router_id", f.vrrp_router_id);
    check_keys(r, &c.ssh_authorized_keys);
    if let Some(domain) = &n.domain {
        check_domain(r, "node.domain", domain);
    }
    if n.init && n.role != Role::ControlPlane {
        r.error("node.init", format!("init: true on a {} node", n.role.as_str()), RESTAMP);
    }
    check_nic_match(r, n.interface.as_deref(), n.mac.as_deref(), "node");
}

/// The node's address, gateway and VIP against the node's subnet and the
/// cluster's pod and service subnets.
fn check_addresses(r: &mut Report, c: &NodeConfig) {
    let (n, f) = (&c.node, &c.cluster);
    let subnets = ClusterSubnets {
        pod: f.pod_subnet,
        service: f.service_subnet,
        prefix: "cluster.",
    };
    check_unicast(r, "node.address", n.address.addr());
    check_unicast(r, "node.gateway", n.gateway);
    check_unicast(r, "cluster.vip", f.vip);
    check_dns(r, "node.dns", &n.dns, Some(n.address.trunc()));
    if PREFIXES.contains(&n.address.prefix_len()) {
        check_in_node_subnet(r, c, &subnets);
    } else {
        r.error(
            "node.address",
            format!(
                "prefix /{} is outside {}..={}",
                n.address.prefix_len(),
                PREFIXES.start(),
                PREFIXES.end()
            ),
            RESTAMP,
        );
        check_subnets_pair(r, &subnets);
    }
    if f.vip == n.address.addr() {
        r.error("cluster.vip", format!("{} is this node's own address", f.vip), RESTAMP);
    }
    check_vip_outside_cluster_subnets(r, "cluster.vip", f.vip, &subnets);
}

/// The address is a host address of its subnet, the gateway and the VIP lie
/// inside it, and the pod and service subnets outside.
fn check_in_node_subnet(r: &mut Report, c: &NodeConfig, subnets: &ClusterSubnets) {
    let (n, f) = (&c.node, &c.cluster);
    let net = n.address.trunc();
    let node = NodeSubnet {
        net,
        what: "this node's subnet",
        whose: format!("this node's subnet {net}"),
    };
    if n.address.addr() == net.network() || n.address.addr() == net.broadcast() {
        r.error(
            "node.address",
            format!("{} is the network or broadcast address of {net}", n.address),
            RESTAMP,
        );
    }
    check_in_subnet(r, "node.gateway", n.gateway, &node, "the gateway must be on the node's network");
    let vip_why = "LVS direct routing needs the VIP on the node's L2 segment";
    check_in_subnet(r, "cluster.vip", f.vip, &node, vip_why);
    check_subnets(r, &node, subnets);
}

/// Every peer has its own name and address.
fn check_peers(r: &mut Report, c: &NodeConfig) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut ips: HashMap<Ipv4Addr, usize> = HashMap::new();
    for (i, p) in c.peers.iter().enumerate() {
        check_name(r, &format!("peers[{i}].name"), &p.name, "node name");
        if let Some(j) = first_seen(&mut names, p.name.as_str(), i) {
            r.error(format!("peers[{i}].name"), format!("`{}` is also peers[{j}]", p.name), RESTAMP);
        }
        if let Some(j) = first_seen(&mut ips, p.ip, i) {
            r.error(
                format!("peers[{i}].ip"),
                format!("{} is also the address of peers[{j}]", p.ip),
                RESTAMP,
            );
        }
    }
}

/// This node is among the peers, with the same address and role.
fn check_self_among_peers(r: &mut Report, c: &NodeConfig) {
    let n = &c.node;
    let Some(i) = c.peers.iter().position(|p| p.name == n.name) else {
        r.error("peers", format!("this node ({}) is not among the peers", n.name), RESTAMP);
        return;
    };
    let me = &c.peers[i];
    if me.ip != n.address.addr() {
        r.error(
            format!("peers[{i}].ip"),
            format!("{} differs from node.address {}", me.ip, n.address.addr()),
            RESTAMP,
        );
    }
    if me.role != n.role {
        r.error(
            format!("peers[{i}].role"),
            format!("{} differs from node.role {}", me.role.as_str(), n.role.as_str()),
            RESTAMP,
        );
    }
}
