//! `node.yaml`: one node's identity and the cluster facts it needs, as written
//! to the PIHA-CFG partition by `piha stamp` and read by `piha-agent`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cluster::{ClusterFile, KeyAlgorithm, ProxyMode, Role, Runtime};
use crate::k8s::Version;
use crate::problem::{Problem, Problems};

/// Bumped when a change would make an older agent misread the file.
/// 2: the `card` section (secret digests, stamp time) and the seal line.
pub(crate) const SCHEMA_VERSION: u32 = 2;
/// node.yaml's last line: the sha256 of every byte before it. A stamp cut
/// short leaves a file without it, or with one that does not match.
const SEAL: &str = "# sha256: ";

/// The file name on PIHA-CFG.
pub const NODE_FILE: &str = "node.yaml";
/// The FAT volume label of the config partition.
pub const CONFIG_LABEL: &str = "PIHA-CFG";
/// Where a node mounts it (`boot-piha.mount` in `overlays/agent`); root-only.
pub const CONFIG_MOUNT: &str = "/boot/piha";

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
    /// What `piha stamp` put beside node.yaml, and when.
    pub card: CardFacts,
}

/// The card this node.yaml was stamped onto: what lets the agent tell a
/// complete card from a torn one, and a sane clock from one in the past.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardFacts {
    /// When the card was stamped, in Unix seconds. On every boot the agent
    /// moves a clock that is behind it forward (a Pi has no RTC).
    pub stamped_at: u64,
    /// The cluster CA's notBefore, in Unix seconds: kubeadm waits until the
    /// clock has passed it. None on a director (no CA on its card).
    #[serde(default)]
    pub ca_not_before: Option<u64>,
    /// `sha256:<hex>` of each file under `secrets/`, by its path there.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
}

impl CardFacts {
    /// The facts of a card stamped at `stamped_at` holding `secrets`
    /// (each file's path under `secrets/` and its bytes).
    pub fn new(stamped_at: u64, ca_not_before: Option<u64>, secrets: &[(&str, &[u8])]) -> CardFacts {
        CardFacts {
            stamped_at,
            ca_not_before,
            secrets: secrets.iter().map(|(rel, bytes)| (rel.to_string(), secret_digest(bytes))).collect(),
        }
    }

    /// Stand-in facts for tests that never read the secrets back: a stamp
    /// time, a CA start, and the digest of `test material for <rel>`.
    #[cfg(test)]
    pub(crate) fn for_tests(role: Role) -> CardFacts {
        let files: Vec<(&str, Vec<u8>)> = crate::secrets::for_role(role)
            .iter()
            .map(|s| (s.rel, format!("test material for {}\n", s.rel).into_bytes()))
            .collect();
        let refs: Vec<(&str, &[u8])> = files.iter().map(|(r, b)| (*r, b.as_slice())).collect();
        CardFacts::new(1_700_000_000, (role != Role::Director).then_some(1_699_990_000), &refs)
    }
}

/// `sha256:<hex>` of `bytes`, as [`CardFacts::secrets`] holds it.
pub fn secret_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
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
    /// The bootstrap token's lifetime after `kubeadm init` (`24h`).
    pub bootstrap_token_ttl: String,
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
                bootstrap_token_ttl: cluster.kubernetes.bootstrap_token_ttl.clone(),
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
            card: CardFacts::default(),
        })
    }

    /// Parses `node.yaml` as read from a card, and validates it with the same
    /// rules the builder used (`validate::node_config`).
    pub fn parse(file: &std::path::Path, text: &str) -> Result<NodeConfig, Problems> {
        const FIX: &str = "re-stamp the card with `piha stamp`";
        let body = unseal(text).map_err(|why| Problems(vec![Problem::error(file, "", why, FIX)]))?;
        let cfg: NodeConfig = crate::yaml::from_str(file, body, FIX)?;
        let problems = crate::validate::node_config(file, &cfg);
        if problems.has_errors() { Err(problems) } else { Ok(cfg) }
    }

    /// The file's text: a header, the YAML and the seal line.
    pub fn to_yaml(&self) -> String {
        let body = yaml_serde::to_string(self).expect("NodeConfig serializes");
        let body = format!(
            "# piha node identity for {}. Written by `piha stamp`; do not edit: the last line is a checksum\n\
             # of the rest, which `piha-agent` checks. To change the node, re-stamp the card.\n{body}",
            self.node.name
        );
        seal(&body)
    }

    /// The secret files this node's card must hold until it has joined.
    pub fn secret_files(&self) -> &'static [crate::secrets::SecretFile] {
        crate::secrets::for_role(self.node.role)
    }

    /// The control planes, in cluster-file order (the director's real servers).
    pub(crate) fn control_planes(&self) -> impl Iterator<Item = &Peer> {
        self.peers.iter().filter(|p| p.role == Role::ControlPlane)
    }

    pub(crate) fn directors(&self) -> impl Iterator<Item = &Peer> {
        self.peers.iter().filter(|p| p.role == Role::Director)
    }
}

/// `body` with its seal line: the sha256 of every byte of `body`.
pub fn seal(body: &str) -> String {
    format!("{body}{SEAL}{}\n", hex::encode(Sha256::digest(body.as_bytes())))
}

/// `text` without its seal line, whether or not it matches: for tests and
/// tools that edit a node.yaml on purpose and seal it again.
pub fn unsealed(text: &str) -> &str {
    match text.rfind(SEAL) {
        Some(i) => &text[..i],
        None => text,
    }
}

/// The YAML of a sealed node.yaml, once its seal line matches.
fn unseal(text: &str) -> Result<&str, String> {
    let trimmed = text.strip_suffix('\n').unwrap_or(text);
    let Some(at) = trimmed
        .rfind('\n')
        .map(|i| i + 1)
        .or(Some(0))
        .filter(|&i| trimmed[i..].starts_with(SEAL))
    else {
        return Err("the file does not end with its checksum line: it is incomplete (a stamp cut short?) or was edited".to_string());
    };
    let (body, seal) = (&text[..at], &trimmed[at + SEAL.len()..]);
    if hex::encode(Sha256::digest(body.as_bytes())) != seal.trim() {
        return Err("the file does not match its checksum line: it is torn (a stamp cut short?) or was edited".to_string());
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::cluster::ClusterFile;

    use super::{NetworkRenderer, NodeConfig};

    fn cp1() -> NodeConfig {
        let text = include_str!("../../examples/qemu-lab.yaml");
        let cluster = ClusterFile::parse(Path::new("qemu-lab.yaml"), text).expect("example");
        let mut cfg = NodeConfig::for_node(&cluster, "cp1", NetworkRenderer::Networkd).expect("cp1");
        cfg.card = super::CardFacts::for_tests(cfg.node.role);
        cfg
    }

    #[test]
    fn a_sealed_file_reads_back_and_any_change_or_cut_is_refused() {
        let cfg = cp1();
        let text = cfg.to_yaml();
        assert_eq!(NodeConfig::parse(Path::new("node.yaml"), &text).expect("sealed"), cfg);
        let edited = text.replacen("api_port: 6443", "api_port: 6444", 1);
        assert_ne!(edited, text);
        let err = NodeConfig::parse(Path::new("node.yaml"), &edited).expect_err("edited").to_string();
        assert!(err.contains("does not match its checksum line"), "{err}");
        // Cut at every line: never read as a node.
        for (i, _) in text.match_indices('\n').filter(|(i, _)| i + 1 < text.len()) {
            let err = NodeConfig::parse(Path::new("node.yaml"), &text[..i]).expect_err("cut").to_string();
            assert!(err.contains("checksum line"), "cut at {i}: {err}");
        }
    }
}
