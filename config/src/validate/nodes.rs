//! The `nodes` list: each node's name, board, address, NIC and init flag,
//! and the roles of the cluster as a whole.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::names::check_name;
use super::network::check_unicast;
use super::nic::check_nic_match;
use super::{Catalog, Report, first_seen, list};
use crate::cluster::{ClusterFile, Node, Role};
use crate::render::hosts::api_name;

/// What earlier nodes already claimed: names, addresses, the init control plane.
#[derive(Default)]
struct Seen<'a> {
    names: HashMap<&'a str, usize>,
    macs: HashMap<String, usize>,
    ips: HashMap<Ipv4Addr, usize>,
    init: Option<usize>,
}

pub(super) fn check(r: &mut Report, c: &ClusterFile, catalog: &Catalog) {
    let mut seen = Seen::default();
    for (i, n) in c.nodes.iter().enumerate() {
        check_identity(r, c, catalog, &mut seen, i);
        check_address(r, c, &mut seen, i);
        check_nic_match(r, n.interface.as_deref(), n.mac.as_deref(), &format!("nodes[{i}]"));
        if let Some(mac) = &n.mac {
            if let Some(j) = first_seen(&mut seen.macs, mac.to_ascii_lowercase(), i) {
                r.error(
                    format!("nodes[{i}].mac"),
                    format!("`{mac}` is also the MAC of nodes[{j}] ({})", c.nodes[j].name),
                    "every node has its own NIC: copy each MAC from its own board",
                );
            }
        }
        check_init(r, c, &mut seen, i);
    }
    check_control_planes(r, c);
}

/// Name and board of nodes[i].
fn check_identity<'a>(r: &mut Report, c: &'a ClusterFile, catalog: &Catalog, seen: &mut Seen<'a>, i: usize) {
    let n: &'a Node = &c.nodes[i];
    check_name(r, &format!("nodes[{i}].name"), &n.name, "node name");
    if let Some(j) = first_seen(&mut seen.names, n.name.as_str(), i) {
        r.error(
            format!("nodes[{i}].name"),
            format!("`{}` is also the name of nodes[{j}]", n.name),
            "give every node its own name (it becomes its hostname)",
        );
    }
    if let Some(why) = reserved_node_name(&c.name, &n.name) {
        r.error(
            format!("nodes[{i}].name"),
            format!("`{}` is {why}", n.name),
            "give the node a name of its own, e.g. cp1",
        );
    }
    if !catalog.boards.contains(&n.board) {
        r.error(
            format!("nodes[{i}].board"),
            format!("unknown board `{}`; piha knows: {}", n.board, list(&catalog.boards)),
            format!("use one of them, or add boards/{}.yaml", n.board),
        );
    }
}

/// Why `name` cannot be a node's name in cluster `cluster`: a name that
/// /etc/hosts on every node already gives to something else.
fn reserved_node_name(cluster: &str, name: &str) -> Option<String> {
    if name == "localhost" {
        Some("the name of the loopback address on every host".to_string())
    } else if name == api_name(cluster) {
        Some("the name every node's /etc/hosts gives the VIP".to_string())
    } else {
        None
    }
}

/// nodes[i].ip: a unicast address of its own, neither the VIP nor the gateway.
fn check_address(r: &mut Report, c: &ClusterFile, seen: &mut Seen, i: usize) {
    let ip = c.nodes[i].ip;
    let path = format!("nodes[{i}].ip");
    check_unicast(r, &path, ip);
    if let Some(j) = first_seen(&mut seen.ips, ip, i) {
        r.error(
            path.as_str(),
            format!("{ip} is also the address of nodes[{j}] ({})", c.nodes[j].name),
            "give every node its own address",
        );
    }
    if ip == c.api.vip {
        r.error(
            path.as_str(),
            format!("{ip} is the VIP (api.vip)"),
            "the VIP must be an unused address of the node subnet: change api.vip or this ip",
        );
    }
    if ip == c.network.gateway {
        r.error(
            path,
            format!("{ip} is the gateway (network.gateway)"),
            "give the node an address other than the router's",
        );
    }
}

/// `init: true` only on a control plane, and on one at most.
fn check_init(r: &mut Report, c: &ClusterFile, seen: &mut Seen, i: usize) {
    let n = &c.nodes[i];
    if !n.init {
        return;
    }
    if n.role != Role::ControlPlane {
        r.error(
            format!("nodes[{i}].init"),
            format!("init: true on a {} node; only a control plane runs `kubeadm init`", n.role.as_str()),
            "remove init here and set it on one control-plane node",
        );
    } else if let Some(j) = seen.init {
        r.error(
            format!("nodes[{i}].init"),
            format!("nodes[{j}] ({}) is already the init control plane", c.nodes[j].name),
            "set init: true on exactly one control plane",
        );
    } else {
        seen.init = Some(i);
    }
}

/// At least one control plane; an even number works but buys nothing.
fn check_control_planes(r: &mut Report, c: &ClusterFile) {
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
}
