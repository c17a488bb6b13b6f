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

pub const ALL: [SecretFile; 10] = [
    CA_CRT,
    CA_KEY,
    ETCD_CA_CRT,
    ETCD_CA_KEY,
    FRONT_PROXY_CA_CRT,
    FRONT_PROXY_CA_KEY,
    SA_KEY,
    SA_PUB,
    BOOTSTRAP_TOKEN,
    CA_CERT_HASH,
];

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

/// True if `token` has kubeadm's bootstrap token format `[a-z0-9]{6}.[a-z0-9]{16}`
/// (<https://kubernetes.io/docs/reference/access-authn-authz/bootstrap-tokens/#token-format>).
pub fn is_bootstrap_token(token: &str) -> bool {
    let ok = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    match token.split_once('.') {
        Some((id, secret)) => ok(id, 6) && ok(secret, 16),
        None => false,
    }
}

/// True if `hash` has the form of kubeadm's discovery hash: `sha256:` and 64
/// lowercase hex digits.
pub(crate) fn is_ca_cert_hash(hash: &str) -> bool {
    match hash.strip_prefix("sha256:") {
        Some(hex) => hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::{is_bootstrap_token, is_ca_cert_hash};

    #[test]
    fn token_format() {
        assert!(is_bootstrap_token("abcdef.0123456789abcdef"));
        for bad in [
            "abcdef0123456789abcdef",
            "abcdef.0123456789abcde",
            "ABCDEF.0123456789abcdef",
            "abcde.0123456789abcdefg",
            "",
        ] {
            assert!(!is_bootstrap_token(bad), "{bad}");
        }
    }

    #[test]
    fn ca_cert_hash_format() {
        assert!(is_ca_cert_hash(&format!("sha256:{}", "0a".repeat(32))));
        for bad in ["sha256:abc", &format!("sha256:{}", "0A".repeat(32)), &"0a".repeat(32)] {
            assert!(!is_ca_cert_hash(bad), "{bad}");
        }
    }
}
