//! The cluster file: what a user writes once to describe a whole cluster.
//!
//! Every struct denies unknown fields so a typo is an error, never a silent
//! default. Loading only parses; `validate::cluster` checks the meaning.

use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::k8s::{self, Version};
use crate::problem::{Problem, Problems};

/// The cluster file as written by the user (`cluster.yaml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Cluster name: RFC 1123 label, used in image names and kubeadm's clusterName.
    pub name: String,
    /// Distribution release: a file in `distros/` (default `ubuntu-noble`).
    #[serde(default = "default_distro")]
    pub distro: String,
    pub kubernetes: Kubernetes,
    pub api: Api,
    pub network: Network,
    /// OpenSSH public keys written to the admin user's authorized_keys.
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    pub nodes: Vec<Node>,
}

fn default_distro() -> String {
    "ubuntu-noble".to_string()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kubernetes {
    /// Full Kubernetes version, e.g. `1.34.1`; pins the pkgs.k8s.io minor repo.
    pub version: Version,
    /// Container runtime: `crio` or `containerd`.
    pub runtime: Runtime,
    #[serde(default = "default_pod_subnet")]
    pub pod_subnet: Ipv4Net,
    #[serde(default = "default_service_subnet")]
    pub service_subnet: Ipv4Net,
    /// kube-proxy mode: `iptables` or `nftables` (never IPVS: it would remove
    /// the director's rules it did not create).
    #[serde(default)]
    pub proxy_mode: ProxyMode,
    /// Key algorithm for the cluster CAs and service-account key.
    #[serde(default)]
    pub key_algorithm: KeyAlgorithm,
    /// How long the bootstrap token stays valid after `kubeadm init`, as
    /// hours, minutes and seconds (`24h`, `90m`, `1h30m`); never forever.
    #[serde(default = "default_bootstrap_token_ttl")]
    pub bootstrap_token_ttl: String,
}

/// kubeadm's own default lifetime of a bootstrap token.
pub(crate) fn default_bootstrap_token_ttl() -> String {
    "24h".to_string()
}

fn default_pod_subnet() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 244, 0, 0), 16).expect("static prefix")
}

fn default_service_subnet() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 96, 0, 0), 12).expect("static prefix")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Crio,
    Containerd,
}

impl Runtime {
    /// The CRI socket kubeadm talks to.
    pub(crate) fn cri_socket(self) -> &'static str {
        match self {
            Runtime::Crio => "unix:///var/run/crio/crio.sock",
            Runtime::Containerd => "unix:///var/run/containerd/containerd.sock",
        }
    }

    /// The socket path on disk, without the scheme.
    pub fn socket_path(self) -> &'static str {
        self.cri_socket().trim_start_matches("unix://")
    }

    /// The systemd unit that runs it.
    pub fn service(self) -> &'static str {
        match self {
            Runtime::Crio => "crio.service",
            Runtime::Containerd => "containerd.service",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Crio => "crio",
            Runtime::Containerd => "containerd",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    Iptables,
    #[default]
    Nftables,
}

impl ProxyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyMode::Iptables => "iptables",
            ProxyMode::Nftables => "nftables",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    /// kubeadm's default.
    #[default]
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    EcdsaP256,
}

/// How clients reach the API servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Api {
    /// The virtual IP every client and joining node uses.
    pub vip: Ipv4Addr,
    #[serde(default = "default_api_port")]
    pub port: u16,
    /// `lvs-dr`: one or two director nodes run keepalived with an LVS direct-
    /// routing virtual server; control planes answer for the VIP on `lo`.
    #[serde(default)]
    pub mode: VipMode,
    /// VRRP virtual_router_id for two directors (1-255).
    #[serde(default = "default_vrid")]
    pub vrrp_router_id: u8,
}

fn default_api_port() -> u16 {
    6443
}

fn default_vrid() -> u8 {
    51
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VipMode {
    #[default]
    LvsDr,
}

/// Defaults for every node's network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Prefix length of the node subnet, e.g. 24.
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    /// NTP servers (names or addresses).
    #[serde(default)]
    pub ntp: Vec<String>,
    /// DNS search domain.
    #[serde(default)]
    pub domain: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub name: String,
    /// A file in `boards/`, e.g. `rpi4`, `amd64`.
    pub board: String,
    pub role: Role,
    pub ip: Ipv4Addr,
    /// Match the NIC by name (e.g. `eth0`, `end0`). At most one of interface/mac.
    #[serde(default)]
    pub interface: Option<String>,
    /// Match the NIC by MAC address.
    #[serde(default)]
    pub mac: Option<String>,
    /// The control plane that runs `kubeadm init`; default: the first listed.
    #[serde(default)]
    pub init: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    ControlPlane,
    Worker,
    Director,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ControlPlane => "control-plane",
            Role::Worker => "worker",
            Role::Director => "director",
        }
    }
}

impl ClusterFile {
    /// Parses a cluster file: the size and nesting gate of every YAML input
    /// (`yaml::gate`), then the schema. Every schema error is reported at
    /// once, each naming the field (`sections`); the first keeps its line.
    pub fn parse(file: &Path, text: &str) -> Result<ClusterFile, Problems> {
        let text = crate::yaml::gate(file, text, "keep the cluster file to the shape of `piha init`'s example")?;
        yaml_serde::from_str(text).map_err(|first| {
            let (first_path, first_message) = yaml_error_message(&first);
            let mut problems = crate::sections::problems(file, text);
            if let Some(p) = problems
                .iter_mut()
                .find(|p| p.path == first_path && first_message.starts_with(&p.message))
            {
                p.message = crate::problem::clip(&first_message);
            } else if problems.is_empty() {
                problems.push(Problem::error(file, first_path, first_message, yaml_error_fix(&first)));
            }
            Problems(problems)
        })
    }

    /// Reads and parses a cluster file.
    pub fn load(file: &Path) -> Result<ClusterFile, Problems> {
        let text = std::fs::read_to_string(file).map_err(|e| {
            Problems(vec![Problem::error(
                file,
                "",
                format!("cannot read: {e}"),
                "check the path given with --cluster",
            )])
        })?;
        Self::parse(file, &text)
    }

    /// The control plane that runs `kubeadm init`: the one marked `init`, else
    /// the first control plane listed. Only meaningful once validated.
    pub fn init_node(&self) -> Option<&Node> {
        self.nodes
            .iter()
            .find(|n| n.init && n.role == Role::ControlPlane)
            .or_else(|| self.nodes.iter().find(|n| n.role == Role::ControlPlane))
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn nodes_with_role(&self, role: Role) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(move |n| n.role == role)
    }

    /// The node subnet: every node IP and the VIP lie in it.
    pub(crate) fn node_subnet(&self) -> Option<Ipv4Net> {
        let first = self.nodes.first()?;
        Ipv4Net::new(first.ip, self.network.prefix).ok().map(|n| n.trunc())
    }
}

/// The field path yaml_serde puts in front of its message (`nodes[2].ip: ...`),
/// split off so it lands in `Problem::path`, and the message with its location.
pub(crate) fn yaml_error_message(e: &yaml_serde::Error) -> (String, String) {
    let mut text = e.to_string();
    if let Some(loc) = e.location() {
        if !text.contains("line ") {
            text = format!("{text} at line {} column {}", loc.line(), loc.column());
        }
    }
    let is_path = |head: &str| !head.is_empty() && head.chars().all(|ch| ch.is_ascii_alphanumeric() || "_-.[]".contains(ch));
    match text.split_once(": ") {
        Some((head, rest)) if is_path(head) => (head.to_string(), rest.to_string()),
        _ => (String::new(), text),
    }
}

pub(crate) fn yaml_error_fix(e: &yaml_serde::Error) -> String {
    let text = e.to_string();
    if text.contains("unknown field") {
        "remove or correct the field; see the README's cluster file reference".to_string()
    } else if text.contains("missing field") {
        "add the missing field; `piha init` writes a complete example".to_string()
    } else if text.contains("unknown variant") {
        "use one of the values listed".to_string()
    } else if text.contains("IPv4 address syntax") {
        "write a dotted-quad IPv4 address such as 192.168.50.11".to_string()
    } else if text.contains("IP address syntax") {
        "write an IPv4 network in CIDR form such as 10.244.0.0/16".to_string()
    } else if text.contains("is not a Kubernetes version") {
        k8s::version_fix()
    } else if text.contains("duplicate field") {
        "keep only one of the two entries".to_string()
    } else {
        "correct the value so it matches the README's cluster file reference".to_string()
    }
}
