//! Where each secret lives: in the workstation's secrets directory, on the
//! PIHA-CFG partition (`secrets/...`), and on the node (`/etc/kubernetes/pki`).
//! Which role gets which file is decided here, once.

use crate::cluster::Role;

/// One secret file, named by its path relative to the secrets directory; the
/// same relative path is used under `secrets/` on PIHA-CFG and, for PKI files,
/// under `/etc/kubernetes/pki` on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecretFile {
    pub rel: &'static str,
    /// Private material: 0600 everywhere, never on a worker's card.
    pub private: bool,
    /// Installed under /etc/kubernetes/pki on control planes.
    pub pki: bool,
}

const fn file(rel: &'static str, private: bool, pki: bool) -> SecretFile {
    SecretFile { rel, private, pki }
}

pub const CA_CRT: SecretFile = file("pki/ca.crt", false, true);
pub const CA_KEY: SecretFile = file("pki/ca.key", true, true);
pub const ETCD_CA_CRT: SecretFile = file("pki/etcd/ca.crt", false, true);
pub const ETCD_CA_KEY: SecretFile = file("pki/etcd/ca.key", true, true);
pub const FRONT_PROXY_CA_CRT: SecretFile = file("pki/front-proxy-ca.crt", false, true);
pub const FRONT_PROXY_CA_KEY: SecretFile = file("pki/front-proxy-ca.key", true, true);
pub const SA_KEY: SecretFile = file("pki/sa.key", true, true);
pub const SA_PUB: SecretFile = file("pki/sa.pub", false, true);
/// `abcdef.0123456789abcdef`, kubeadm's bootstrap token format.
pub const BOOTSTRAP_TOKEN: SecretFile = file("bootstrap-token", true, false);
/// `sha256:<hex>` of the cluster CA's SubjectPublicKeyInfo.
pub const CA_CERT_HASH: SecretFile = file("ca-cert-hash", false, false);

pub const ALL: [SecretFile; 10] =
    [CA_CRT, CA_KEY, ETCD_CA_CRT, ETCD_CA_KEY, FRONT_PROXY_CA_CRT, FRONT_PROXY_CA_KEY, SA_KEY, SA_PUB, BOOTSTRAP_TOKEN, CA_CERT_HASH];

/// The directory on PIHA-CFG that holds a node's secrets until it has joined.
pub const CARD_DIR: &str = "secrets";

/// What a node of `role` gets on its card. Control planes: the CAs, the SA
/// key pair, the token and the hash (kubeadm init and join --control-plane reuse
/// the CAs, so nothing is uploaded or copied between nodes). Workers: token and
/// CA hash only. Directors: nothing.
pub fn for_role(role: Role) -> &'static [SecretFile] {
    match role {
        Role::ControlPlane => &ALL,
        Role::Worker => &[BOOTSTRAP_TOKEN, CA_CERT_HASH],
        Role::Director => &[],
    }
}
