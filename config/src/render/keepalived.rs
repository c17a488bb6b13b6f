//! keepalived.conf for directors: an LVS-DR `virtual_server VIP:port` over
//! every control plane with a TCP health check, and a VRRP instance that puts
//! the VIP on the director's NIC (MASTER/BACKUP when there are two).
//!
//! Keywords are keepalived 2.2's (`lvs_sched`/`lvs_method`; the older
//! `lb_algo`/`lb_kind` are only aliases). Every rendered file is checked with
//! the real `keepalived -t` in the tests.

use serde::Serialize;

use crate::cluster::Role;
use crate::node::{NetworkRenderer, NodeConfig};

use super::network::MAC_MATCHED_NAME;
use super::template::{self, KEEPALIVED};
use super::{RenderError, check_word, header};

/// VRRP interface when the cluster file names none. keepalived needs a real
/// interface name and cannot find "the NIC holding this address" itself; eth0
/// is keepalived's own default and the name on Raspberry Pi OS/Ubuntu. Set
/// `interface:` on director nodes whose NIC is named otherwise, or let the
/// agent pass the NIC it found to [`config_on`].
pub(crate) const DEFAULT_INTERFACE: &str = "eth0";

/// The interface keepalived's VRRP instance and the VIP use: the node's
/// `interface`, else the name netplan gives a MAC-matched NIC, else
/// [`DEFAULT_INTERFACE`].
pub fn vrrp_interface(cfg: &NodeConfig) -> String {
    match (&cfg.node.interface, &cfg.node.mac, cfg.cluster.network_renderer) {
        (Some(name), _, _) => name.clone(),
        (None, Some(_), NetworkRenderer::Netplan) => MAC_MATCHED_NAME.to_string(),
        _ => DEFAULT_INTERFACE.to_string(),
    }
}

/// VRRP priority of the MASTER (the first director in cluster-file order).
pub(crate) const MASTER_PRIORITY: u8 = 150;
/// VRRP priority of the BACKUP.
pub(crate) const BACKUP_PRIORITY: u8 = 100;

#[derive(Serialize)]
struct Data {
    header: String,
    router_id: String,
    single: bool,
    director_count: usize,
    state: &'static str,
    interface: String,
    router_vrid: u8,
    priority: u8,
    node_ip: String,
    peers: Vec<String>,
    vip: String,
    prefix: u8,
    port: u16,
    real_servers: Vec<RealServer>,
}

#[derive(Serialize)]
struct RealServer {
    name: String,
    ip: String,
}

/// `/etc/keepalived/keepalived.conf` on a director (VRRP on
/// [`vrrp_interface`]); `None` on every other role.
pub fn config(cfg: &NodeConfig) -> Result<Option<String>, RenderError> {
    config_on(cfg, &vrrp_interface(cfg))
}

/// As [`config`], with VRRP and the VIP on `interface` (e.g. the NIC the agent
/// found holding the node's address).
pub fn config_on(cfg: &NodeConfig, interface: &str) -> Result<Option<String>, RenderError> {
    if cfg.node.role != Role::Director {
        return Ok(None);
    }
    check_word("node.interface", interface, "a network interface name")?;
    let directors: Vec<_> = cfg.directors().collect();
    let index = directors.iter().position(|d| d.name == cfg.node.name).unwrap_or(0);
    let (state, priority) = if index == 0 {
        ("MASTER", MASTER_PRIORITY)
    } else {
        // A third director is refused by validation; should one appear, it
        // ranks below the second rather than fighting for MASTER.
        let rank = index.saturating_sub(1).min(9) as u8;
        ("BACKUP", BACKUP_PRIORITY - 10 * rank)
    };
    let data = Data {
        header: header("#", cfg),
        router_id: cfg.node.name.clone(),
        single: directors.len() <= 1,
        director_count: directors.len(),
        state,
        interface: interface.to_string(),
        router_vrid: cfg.cluster.vrrp_router_id,
        priority,
        node_ip: cfg.node.address.addr().to_string(),
        peers: directors
            .iter()
            .filter(|d| d.name != cfg.node.name)
            .map(|d| d.ip.to_string())
            .collect(),
        vip: cfg.cluster.vip.to_string(),
        prefix: cfg.node.address.prefix_len(),
        port: cfg.cluster.api_port,
        real_servers: cfg
            .control_planes()
            .map(|p| RealServer {
                name: p.name.clone(),
                ip: p.ip.to_string(),
            })
            .collect(),
    };
    template::render(KEEPALIVED, &data).map(Some)
}

#[cfg(test)]
mod tests {
    use crate::node::NetworkRenderer;
    use crate::render::testing::node;

    use super::{config, config_on, vrrp_interface};

    #[test]
    fn only_directors_get_keepalived() {
        assert_eq!(config(&node("cp1", NetworkRenderer::Networkd)).expect("renders"), None);
        assert_eq!(config(&node("w1", NetworkRenderer::Networkd)).expect("renders"), None);
    }

    #[test]
    fn two_directors_are_master_and_backup_with_unicast_peers() {
        let lb1 = config(&node("lb1", NetworkRenderer::Networkd)).expect("renders").expect("director");
        assert!(lb1.contains("state MASTER\n    interface ens3\n"), "{lb1}");
        assert!(lb1.contains("priority 150\n"));
        assert!(
            lb1.contains("unicast_src_ip 10.1.0.10\n    unicast_peer {\n        10.1.0.9\n    }\n"),
            "{lb1}"
        );
        let lb2 = config(&node("lb2", NetworkRenderer::Networkd)).expect("renders").expect("director");
        assert!(lb2.contains("state BACKUP\n    interface eth0\n"), "{lb2}");
        assert!(lb2.contains("priority 100\n"));
        assert!(lb2.contains("10.1.0.100/24 dev eth0\n"));
    }

    #[test]
    fn every_control_plane_is_a_real_server() {
        let lb1 = config(&node("lb1", NetworkRenderer::Networkd)).expect("renders").expect("director");
        assert!(
            lb1.contains("virtual_server 10.1.0.100 6443 {\n    delay_loop 6\n    lvs_sched rr\n    lvs_method DR\n"),
            "{lb1}"
        );
        for ip in ["10.1.0.11", "10.1.0.12"] {
            assert!(lb1.contains(&format!("real_server {ip} 6443 {{\n")), "{ip}:\n{lb1}");
        }
        assert!(!lb1.contains("real_server 10.1.0.21"), "workers are not real servers");
        assert!(lb1.contains("connect_port 6443\n"));
    }

    #[test]
    fn interface_follows_the_cluster_file_or_the_caller() {
        let mut cfg = node("lb2", NetworkRenderer::Netplan);
        assert_eq!(vrrp_interface(&cfg), "eth0");
        cfg.node.mac = Some("52:54:00:00:00:09".to_string());
        assert_eq!(vrrp_interface(&cfg), "piha0");
        let text = config_on(&cfg, "enp1s0").expect("renders").expect("director");
        assert!(text.contains("interface enp1s0\n"));
        assert!(config_on(&cfg, "bad name").is_err());
    }
}
