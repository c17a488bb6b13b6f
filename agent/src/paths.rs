//! Where the agent reads and writes. Everything on the node lives under
//! `root` (`/` on a node, a scratch directory in tests); the config partition
//! is a separate directory (its mount point on a node), not joined to `root`.

use std::path::PathBuf;

use piha_config::node::NODE_FILE;
use piha_config::secrets::CARD_DIR;
use piha_config::status::STATUS_FILE;

/// The mount point of PIHA-CFG (`boot-piha.mount` in `overlays/agent`).
/// Not under /var/lib/piha, which holds the agent's own state.
pub const DEFAULT_CONFIG_DIR: &str = piha_config::node::CONFIG_MOUNT;
/// The agent's record of finished steps.
pub const STATE_FILE: &str = "/var/lib/piha/state.json";
/// Written by the hidden `--dry-run-commands` test hook instead of running commands.
pub const COMMAND_LOG: &str = "/var/lib/piha/commands.log";
/// Canned stdout for the dry-run hook: `<dir>/<program>.stdout`.
pub const DRY_RUN_DIR: &str = "/var/lib/piha/dry-run";
/// Where kubeadm and the PKI files live.
pub const KUBERNETES_DIR: &str = "/etc/kubernetes";
pub const PKI_DIR: &str = "/etc/kubernetes/pki";
pub const ADMIN_CONF: &str = "/etc/kubernetes/admin.conf";
/// The kubelet's own kubeconfig, and kubeadm join's bootstrap one (which holds the token).
pub const KUBELET_CONF: &str = "/etc/kubernetes/kubelet.conf";
pub const BOOTSTRAP_KUBELET_CONF: &str = "/etc/kubernetes/bootstrap-kubelet.conf";
/// Where `piha-agent certs` parks the static pod manifests while the kubelet
/// stops their pods (beside the manifests: a move is a rename).
pub const STATIC_PODS_PARKED: &str = "/etc/kubernetes/manifests.piha-parked";

/// The cluster CA's certificate, copied from the card for the init control
/// plane's probe of the VIP (`existing_cluster`).
pub const PROBE_CA: &str = "/run/piha/cluster-ca.crt";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub root: PathBuf,
    pub config_dir: PathBuf,
}

impl Paths {
    pub fn new(root: impl Into<PathBuf>, config_dir: impl Into<PathBuf>) -> Paths {
        Paths {
            root: root.into(),
            config_dir: config_dir.into(),
        }
    }

    /// An absolute node path (`/etc/hosts`) under the root.
    pub fn host(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    pub fn state_file(&self) -> PathBuf {
        self.host(STATE_FILE)
    }

    pub fn node_file(&self) -> PathBuf {
        self.config_dir.join(NODE_FILE)
    }

    pub fn status_file(&self) -> PathBuf {
        self.config_dir.join(STATUS_FILE)
    }

    pub fn card_secrets(&self) -> PathBuf {
        self.config_dir.join(CARD_DIR)
    }

    /// A secret's path on the card: `secrets/<rel>`.
    pub fn card_secret(&self, rel: &str) -> PathBuf {
        self.card_secrets().join(rel)
    }
}
