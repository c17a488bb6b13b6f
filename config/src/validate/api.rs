//! The `api` section: the VIP, the port, the VRRP router id and the VIP mode.

use super::Report;
use super::network::{check_vip_outside_cluster_subnets, cluster_subnets};
use crate::cluster::{ClusterFile, Role, VipMode};
use crate::render::realserver::APICHECK_PORT;

/// Ports other Kubernetes components listen on, on every node or every
/// control plane: the API server cannot take one of them.
const RESERVED_PORTS: [(u16, &str); 9] = [
    (2379, "etcd's client port"),
    (2380, "etcd's peer port"),
    (10248, "the kubelet's healthz port"),
    (10249, "kube-proxy's metrics port"),
    (10250, "the kubelet's API port"),
    (10255, "the kubelet's read-only port"),
    (10256, "kube-proxy's healthz port"),
    (10257, "kube-controller-manager's port"),
    (10259, "kube-scheduler's port"),
];
/// The default NodePort range: a Service may take any of them on every node.
const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// Port 0 and VRRP router id 0 are never usable; the API cannot share its
/// port with the control planes' health endpoint or another component's.
pub(super) fn check_numbers(r: &mut Report, port_path: &str, port: u16, vrid_path: &str, vrid: u8) {
    if let Some((_, whose)) = RESERVED_PORTS.iter().find(|(p, _)| *p == port) {
        r.error(port_path, format!("port {port} is {whose}"), "use 6443, kubeadm's default");
    }
    if NODE_PORTS.contains(&port) {
        r.error(
            port_path,
            format!("port {port} is in the NodePort range 30000-32767, which Services take on every node"),
            "use 6443, kubeadm's default",
        );
    }
    if port == 0 {
        r.error(
            port_path,
            "port 0 is not a port clients can connect to",
            "use 6443, kubeadm's default",
        );
    }
    if port == APICHECK_PORT {
        r.error(
            port_path,
            format!("port {APICHECK_PORT} is the control planes' health endpoint (piha-apicheck), which the directors check"),
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

/// The VIP is neither the gateway nor inside the pod or service subnet (its
/// place in the node subnet is checked with the other addresses).
pub(super) fn check_cluster_vip(r: &mut Report, c: &ClusterFile) {
    if c.api.vip == c.network.gateway {
        r.error(
            "api.vip",
            format!("{} is the gateway (network.gateway)", c.api.vip),
            "use an unused address of the node subnet for the VIP",
        );
    }
    check_vip_outside_cluster_subnets(r, "api.vip", c.api.vip, &cluster_subnets(c));
}

/// lvs-dr: one director, or a VRRP pair of two, announces the VIP.
pub(super) fn check_mode(r: &mut Report, c: &ClusterFile) {
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
