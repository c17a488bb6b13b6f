//! Renderers for every file the agent writes on a node. `piha render` and the
//! agent call the same functions, so what a user reviews on the workstation is
//! byte for byte what lands on the node.
//!
//! Structured formats (kubeadm, netplan) are typed serde structs; INI/conf-style
//! files come from handlebars templates under `overlays/templates/`, embedded at
//! compile time so the agent binary carries them.

pub mod cni;
pub mod host_prep;
pub(crate) mod hosts;
pub mod keepalived;
pub mod kubeadm;
pub mod network;
pub mod realserver;
pub(crate) mod runtime;
pub(crate) mod ssh;
pub(crate) mod template;
pub(crate) mod timesync;

use crate::cluster::Role;
use crate::k8s::VersionError;
use crate::node::NodeConfig;

pub use cni::{CNI_DIR, FLANNEL_MANIFEST};

/// The kubeadm configuration (`kubeadm init|join --config`). Holds the token: 0600.
pub const KUBEADM_CONFIG: &str = "/etc/piha/kubeadm.yaml";
/// `VIP=<vip>` and `API_PORT=<port>`: read by the realServer unit and the
/// health endpoint (piha-apicheck) on control planes.
pub const VIP_FILE: &str = "/etc/piha/vip.env";
/// keepalived's configuration on directors.
pub const KEEPALIVED_CONF: &str = "/etc/keepalived/keepalived.conf";
pub const HOSTNAME: &str = "/etc/hostname";
pub const HOSTS: &str = "/etc/hosts";
/// systemd-networkd (Debian). `10-` sorts before the distro's catch-all files.
pub const NETWORKD_FILE: &str = "/etc/systemd/network/10-piha.network";
/// netplan (Ubuntu).
pub const NETPLAN_FILE: &str = "/etc/netplan/10-piha.yaml";
pub const MODULES_FILE: &str = "/etc/modules-load.d/piha-k8s.conf";
pub const SYSCTL_FILE: &str = "/etc/sysctl.d/90-piha-k8s.conf";
pub const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
/// A drop-in: CRI-O merges `crio.conf.d/*.conf` over its packaged defaults.
pub(crate) const CRIO_CONFIG: &str = "/etc/crio/crio.conf.d/10-piha.conf";
/// Where CNI configurations live; the kubelet's runtime takes the first.
pub const CNI_CONF_DIR: &str = "/etc/cni/net.d";
/// Whether a file of [`CNI_CONF_DIR`] is a bridge network a CRI-O package
/// ships (`10-crio-bridge.conf[list]`, `11-crio-ipv4-bridge.conflist`, ...,
/// on 10.85.0.0/16 before 1.29): it sorts before Flannel's and clashes with it.
pub fn is_packaged_crio_bridge(file_name: &str) -> bool {
    file_name.contains("crio") && file_name.contains("bridge") && (file_name.ends_with(".conf") || file_name.ends_with(".conflist"))
}
pub const CHRONY_SOURCES: &str = "/etc/chrony/sources.d/piha.sources";
pub const AUTHORIZED_KEYS: &str = "/home/piha/.ssh/authorized_keys";

/// The admin user the image creates (no password; SSH keys only).
pub const ADMIN_USER: &str = "piha";
pub(crate) const ADMIN_HOME: &str = "/home/piha";
pub const ADMIN_UID: u32 = 1000;
pub(crate) const ADMIN_GID: u32 = 1000;

/// The bootstrap token and discovery hash from the card's `secrets/`. Control
/// planes and workers need them; directors have none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinSecrets {
    /// `abcdef.0123456789abcdef`.
    pub token: String,
    /// `sha256:<64 hex>`.
    pub ca_cert_hash: String,
}

/// One file to write on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    /// Absolute path on the node, e.g. `/etc/hosts`.
    pub path: String,
    /// Permission bits, e.g. `0o644`.
    pub mode: u32,
    pub contents: String,
}

impl RenderedFile {
    pub fn new(path: &str, mode: u32, contents: String) -> Self {
        RenderedFile {
            path: path.to_string(),
            mode,
            contents,
        }
    }

    /// The (uid, gid) that should own the file and any directory created for
    /// it: the admin user under its home, root elsewhere.
    pub fn owner(&self) -> (u32, u32) {
        if self.path.starts_with(&format!("{ADMIN_HOME}/")) {
            (ADMIN_UID, ADMIN_GID)
        } else {
            (0, 0)
        }
    }
}

/// Why a node's files cannot be rendered. Each message names the field and the fix.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("node.yaml: cluster.kubernetes_version: {error} (fix: set kubernetes.version in the cluster file and re-stamp the card)")]
    Version { error: VersionError },
    #[error(
        "node.yaml: cluster.proxy_mode: kube-proxy's nftables mode needs Kubernetes 1.{since} or newer (it is alpha in {version}) \
         (fix: set kubernetes.proxy_mode: iptables in the cluster file, or a newer kubernetes.version)",
        since = crate::k8s::NFTABLES_SINCE_MINOR
    )]
    NftablesTooOld { version: String },
    #[error(
        "{node} is a {role} and needs the bootstrap token and CA cert hash, but none were given \
         (fix: run `piha init --cluster FILE`, then render or stamp again)"
    )]
    MissingSecrets { node: String, role: &'static str },
    #[error("{node} is a director: it runs keepalived, not kubeadm, so it has no kubeadm configuration")]
    NoKubeadm { node: String },
    /// `found` describes the value without echoing a secret.
    #[error("secrets/{file}: {found} is not {expected} (fix: restore the file from the secrets directory `piha init` wrote)")]
    BadSecret {
        file: &'static str,
        found: String,
        expected: &'static str,
    },
    #[error("node.yaml: {field}: `{value}` is not {expected} (fix: correct it in the cluster file and re-stamp the card)")]
    BadField {
        field: String,
        value: String,
        expected: &'static str,
    },
    #[error("rendering {template}: {error}")]
    Template {
        template: &'static str,
        error: handlebars::RenderError,
    },
    #[error("serializing {what}: {error}")]
    Yaml { what: &'static str, error: yaml_serde::Error },
}

/// Every file the agent writes on this node, in a stable order: identity,
/// host preparation, container runtime, then the role's files.
pub fn node_files(cfg: &NodeConfig, secrets: Option<&JoinSecrets>) -> Result<Vec<RenderedFile>, RenderError> {
    let mut files = identity_files(cfg)?;
    files.extend(host_prep_files(cfg)?);
    files.extend(runtime_files(cfg)?);
    files.extend(role_files(cfg, secrets)?);
    Ok(files)
}

/// Re-applied on every boot, so a re-stamped card changes the node: hostname,
/// /etc/hosts, the static network and the admin user's SSH keys.
pub fn identity_files(cfg: &NodeConfig) -> Result<Vec<RenderedFile>, RenderError> {
    let mut files = vec![
        RenderedFile::new(HOSTNAME, 0o644, hosts::hostname(cfg)),
        RenderedFile::new(HOSTS, 0o644, hosts::etc_hosts(cfg)?),
    ];
    files.extend(network::files(cfg)?);
    files.push(RenderedFile::new(AUTHORIZED_KEYS, 0o600, ssh::authorized_keys(cfg)));
    Ok(files)
}

/// Kernel modules, sysctls and time sync.
pub fn host_prep_files(cfg: &NodeConfig) -> Result<Vec<RenderedFile>, RenderError> {
    let mut files = vec![RenderedFile::new(MODULES_FILE, 0o644, host_prep::modules_load(cfg))];
    if let Some(sysctl) = host_prep::sysctl(cfg) {
        files.push(RenderedFile::new(SYSCTL_FILE, 0o644, sysctl));
    }
    if let Some(sources) = timesync::chrony_sources(cfg)? {
        files.push(RenderedFile::new(CHRONY_SOURCES, 0o644, sources));
    }
    Ok(files)
}

/// The container runtime's configuration (none on directors).
pub fn runtime_files(cfg: &NodeConfig) -> Result<Vec<RenderedFile>, RenderError> {
    Ok(runtime::file(cfg)?.into_iter().collect())
}

/// The role's files: kubeadm config and the realServer VIP file on control
/// planes (plus the CNI manifest on the init control plane), kubeadm config on
/// workers, keepalived.conf on directors.
pub fn role_files(cfg: &NodeConfig, secrets: Option<&JoinSecrets>) -> Result<Vec<RenderedFile>, RenderError> {
    let mut files = Vec::new();
    match cfg.node.role {
        Role::ControlPlane | Role::Worker => {
            files.push(RenderedFile::new(KUBEADM_CONFIG, 0o600, kubeadm::config(cfg, secrets)?));
            if let Some(vip) = realserver::vip_env(cfg) {
                files.push(RenderedFile::new(VIP_FILE, 0o644, vip));
            }
            if let Some(manifest) = cni::flannel(cfg)? {
                files.push(RenderedFile::new(FLANNEL_MANIFEST, 0o644, manifest));
            }
        }
        Role::Director => {
            if let Some(conf) = keepalived::config(cfg)? {
                files.push(RenderedFile::new(KEEPALIVED_CONF, 0o644, conf));
            }
        }
    }
    Ok(files)
}

/// Refuses a value that would break out of its line or field in a
/// line-oriented config file: empty, whitespace or control characters.
pub(crate) fn check_word(field: &str, value: &str, expected: &'static str) -> Result<(), RenderError> {
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(RenderError::BadField {
            field: field.to_string(),
            value: value.to_string(),
            expected,
        });
    }
    Ok(())
}

/// The header every generated file starts with (`comment` is the format's
/// comment leader), so someone reading the node's /etc knows where it came from.
pub(crate) fn header(comment: &str, cfg: &NodeConfig) -> String {
    format!(
        "{comment} Generated by piha from node.yaml (node {node}, cluster {cluster}); `piha render` shows the same file.\n\
         {comment} Do not edit: change the cluster file and re-stamp the card.\n",
        node = cfg.node.name,
        cluster = cfg.cluster.name
    )
}

#[cfg(test)]
pub(crate) mod testing {
    //! A small cluster for the renderers' unit tests.

    use crate::cluster::ClusterFile;
    use crate::node::{NetworkRenderer, NodeConfig};

    use super::JoinSecrets;

    pub(crate) const CLUSTER: &str = r#"
name: lab
distro: debian-bookworm
kubernetes: {version: "1.34.1", runtime: containerd, key_algorithm: ecdsa-p256}
api: {vip: 10.1.0.100}
network: {prefix: 24, gateway: 10.1.0.1, dns: [10.1.0.1, 1.1.1.1], ntp: [10.1.0.1, time.example.org], domain: lab.example}
ssh_authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOZxurD8U1Lk/PGlDFJlnQTHb0FZEjo026lcX1Oktx3Q a@b"]
nodes:
  - {name: lb1, board: amd64, role: director, ip: 10.1.0.10, interface: ens3}
  - {name: lb2, board: amd64, role: director, ip: 10.1.0.9}
  - {name: cp1, board: amd64, role: control-plane, ip: 10.1.0.11}
  - {name: cp2, board: amd64, role: control-plane, ip: 10.1.0.12, init: true}
  - {name: w1, board: rpi4, role: worker, ip: 10.1.0.21, mac: "dc:a6:32:00:00:21"}
"#;

    pub(crate) fn cluster() -> ClusterFile {
        ClusterFile::parse(std::path::Path::new("lab.yaml"), CLUSTER).expect("test cluster parses")
    }

    pub(crate) fn node(name: &str, renderer: NetworkRenderer) -> NodeConfig {
        NodeConfig::for_node(&cluster(), name, renderer).expect("node exists")
    }

    pub(crate) fn secrets() -> JoinSecrets {
        JoinSecrets {
            token: "abcdef.0123456789abcdef".to_string(),
            ca_cert_hash: format!("sha256:{}", "0a".repeat(32)),
        }
    }
}
