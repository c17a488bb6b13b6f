//! `node.yaml`: one node's identity and the cluster facts it needs, as written
//! to the PIHA-CFG partition by `piha stamp` and read by `piha-agent`.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::cluster::{ClusterFile, KeyAlgorithm, ProxyMode, Role, Runtime};
use crate::k8s::Version;
use crate::problem::Problems;

/// Bumped when a change would make an older agent misread the file.
pub(crate) const SCHEMA_VERSION: u32 = 1;

/// The file name on PIHA-CFG.
pub const NODE_FILE: &str = "node.yaml";
/// The FAT volume label of the config partition.
pub const CONFIG_LABEL: &str = "PIHA-CFG";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub schema: u32,
    pub node: Identity,
    pub cluster: ClusterFacts,
    /// Every node of the cluster, for /etc/hosts and the director's real servers.
    pub peers: Vec<Peer>,
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub name: String,
    pub role: Role,
    /// True on the one control plane that runs `kubeadm init`.
    #[serde(default)]
    pub init: bool,
    pub board: String,
    /// Address with the node subnet's prefix, e.g. `192.168.50.11/24`.
    pub address: Ipv4Net,
    pub gateway: Ipv4Addr,
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub ntp: Vec<String>,
    #[serde(default)]
    pub interface: Option<String>,
    #[serde(default)]
    pub mac: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFacts {
    pub name: String,
    pub kubernetes_version: Version,
    pub runtime: Runtime,
    pub proxy_mode: ProxyMode,
    pub vip: Ipv4Addr,
    pub api_port: u16,
    pub pod_subnet: Ipv4Net,
    pub service_subnet: Ipv4Net,
    /// VRRP router id for a director pair.
    pub vrrp_router_id: u8,
    /// Which network configuration the image's userland uses.
    pub network_renderer: NetworkRenderer,
    /// Key algorithm of the cluster CAs (kubeadm v1beta4 `encryptionAlgorithm`).
    #[serde(default)]
    pub key_algorithm: KeyAlgorithm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkRenderer {
    /// Ubuntu: /etc/netplan/*.yaml.
    Netplan,
    /// Debian: /etc/systemd/network/*.network.
    Networkd,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub name: String,
    pub ip: Ipv4Addr,
    pub role: Role,
}

impl NodeConfig {
    /// Builds the node.yaml content for `node_name` of a validated cluster file.
    pub fn for_node(cluster: &ClusterFile, node_name: &str, network_renderer: NetworkRenderer) -> Option<NodeConfig> {
        let node = cluster.node(node_name)?;
        let init = cluster.init_node().is_some_and(|n| n.name == node.name);
        Some(NodeConfig {
            schema: SCHEMA_VERSION,
            node: Identity {
                name: node.name.clone(),
                role: node.role,
                init,
                board: node.board.clone(),
                address: Ipv4Net::new(node.ip, cluster.network.prefix).ok()?,
                gateway: cluster.network.gateway,
                dns: cluster.network.dns.clone(),
                domain: cluster.network.domain.clone(),
                ntp: cluster.network.ntp.clone(),
                interface: node.interface.clone(),
                mac: node.mac.clone(),
            },
            cluster: ClusterFacts {
                name: cluster.name.clone(),
                kubernetes_version: cluster.kubernetes.version,
                runtime: cluster.kubernetes.runtime,
                proxy_mode: cluster.kubernetes.proxy_mode,
                vip: cluster.api.vip,
                api_port: cluster.api.port,
                pod_subnet: cluster.kubernetes.pod_subnet,
                service_subnet: cluster.kubernetes.service_subnet,
                vrrp_router_id: cluster.api.vrrp_router_id,
                network_renderer,
                key_algorithm: cluster.kubernetes.key_algorithm,
            },
            peers: cluster
                .nodes
                .iter()
                .map(|n| Peer {
                    name: n.name.clone(),
                    ip: n.ip,
                    role: n.role,
                })
                .collect(),
            ssh_authorized_keys: cluster.ssh_authorized_keys.clone(),
        })
    }

    /// Parses `node.yaml` as read from a card, and validates it with the same
    /// rules the builder used (`validate::node_config`).
    pub fn parse(file: &std::path::Path, text: &str) -> Result<NodeConfig, Problems> {
        let cfg: NodeConfig = crate::yaml::from_str(file, text, "re-stamp the card with `piha stamp`")?;
        let problems = crate::validate::node_config(file, &cfg);
        if problems.has_errors() { Err(problems) } else { Ok(cfg) }
    }

    pub fn to_yaml(&self) -> String {
        let body = yaml_serde::to_string(self).expect("NodeConfig serializes");
        format!(
            "# piha node identity for {}. Written by `piha stamp`; edit with care, `piha-agent` validates it.\n{body}",
            self.node.name
        )
    }

    /// The control planes, in cluster-file order (the director's real servers).
    pub(crate) fn control_planes(&self) -> impl Iterator<Item = &Peer> {
        self.peers.iter().filter(|p| p.role == Role::ControlPlane)
    }

    pub(crate) fn directors(&self) -> impl Iterator<Item = &Peer> {
        self.peers.iter().filter(|p| p.role == Role::Director)
    }
}
