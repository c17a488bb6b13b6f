//! The `api` section: the VIP, the port, the VRRP router id and the VIP mode.

use super::Report;
use super::network::{check_vip_outside_cluster_subnets, cluster_subnets};
use crate::cluster::{ClusterFile, Role, VipMode};
use crate::render::realserver::APICHECK_PORT;

/// Port 0 and VRRP router id 0 are never usable; the API cannot share its
/// port with the control planes' health endpoint.
pub(super) fn check_numbers(r: &mut Report, port_path: &str, port: u16, vrid_path: &str, vrid: u8) {
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
