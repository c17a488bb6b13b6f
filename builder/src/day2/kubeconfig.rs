//! An admin kubeconfig for the workstation, minted from the cluster CA in
//! `secrets/` without touching a node (`piha kubeconfig`).
//!
//! The client certificate is what kubeadm's own `admin.conf` holds since
//! Kubernetes 1.29: subject `O=kubeadm:cluster-admins`, a group that
//! `kubeadm init` binds to `cluster-admin` with a ClusterRoleBinding (so the
//! binding can be removed to lock the certificate out, unlike
//! `system:masters`, which bypasses authorization and is what kubeadm used
//! before 1.29; older clusters get that group, as their kubeadm would give).
//! The common name says who minted it: `piha-admin@<workstation>`, which the
//! API server's audit log then shows.
//!
//! Kubernetes cannot revoke a client certificate (kubernetes/kubernetes#18982),
//! so the default lifetime is short: 30 days, `--days` up to 365 (kubeadm's
//! admin.conf lasts a year). Minting another is one command.

use std::path::Path;

use anyhow::{Context, bail};
use piha_config::cluster::ClusterFile;
use piha_config::k8s::Version;
use piha_config::secrets::{CA_CRT, CA_KEY};
use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use serde_json::json;
use time::{Duration, OffsetDateTime};

use crate::card::pki;
use crate::card::secrets::Secrets;

/// The group kubeadm (≥ 1.29) binds to `cluster-admin`.
pub const ADMINS_GROUP: &str = "kubeadm:cluster-admins";
/// The group that bypasses authorization: kubeadm's admin group before 1.29.
pub const MASTERS_GROUP: &str = "system:masters";
/// Days a minted certificate lasts unless `--days` says otherwise.
pub const DEFAULT_DAYS: u32 = 30;
/// The longest: kubeadm's own client certificates' year.
pub const MAX_DAYS: u32 = 365;

/// A client certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The admin group for a cluster of this Kubernetes version.
pub fn admin_group(version: &Version) -> &'static str {
    if (version.major, version.minor) >= (1, 29) {
        ADMINS_GROUP
    } else {
        MASTERS_GROUP
    }
}

/// A client certificate `CN=common_name, O=group` signed by the cluster CA in
/// `secrets`, valid from five minutes ago (kubeadm's backdating) for `days`.
pub fn client_cert(cluster: &ClusterFile, secrets: &Secrets, common_name: &str, group: &str, days: u32) -> anyhow::Result<ClientCert> {
    let ca = ca_issuer(secrets)?;
    let key = pki::generate_key(cluster.kubernetes.key_algorithm)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).context("client certificate parameters")?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, group);
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(i64::from(days));
    params.serial_number = Some(pki::random_serial());
    let cert = params
        .signed_by(&key, &ca.cert, &ca.key)
        .context("signing the client certificate with the cluster CA")?;
    Ok(ClientCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The cluster CA, ready to sign: its certificate as rcgen knows it (the same
/// subject and key, so what it signs verifies against `ca.crt`) and its key.
pub struct CaIssuer {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
}

pub fn ca_issuer(secrets: &Secrets) -> anyhow::Result<CaIssuer> {
    let crt_path = secrets.path(CA_CRT);
    let key_path = secrets.path(CA_KEY);
    let crt = String::from_utf8(secrets.read(CA_CRT)?).with_context(|| format!("{} is not text", crt_path.display()))?;
    let key = String::from_utf8(secrets.read(CA_KEY)?).with_context(|| format!("{} is not text", key_path.display()))?;
    let key = KeyPair::from_pem(&key).with_context(|| format!("{} is not a private key rcgen can read", key_path.display()))?;
    let params = CertificateParams::from_ca_cert_pem(&crt).with_context(|| format!("{} is not a CA certificate", crt_path.display()))?;
    let cert = params.self_signed(&key).context("loading the cluster CA")?;
    if cert.der().as_ref().is_empty() || !same_public_key(&crt, &key)? {
        bail!(
            "{} and {} are not a pair (fix: restore both from the same backup, or `piha rotate-secrets --yes` and re-stamp every card)",
            crt_path.display(),
            key_path.display()
        );
    }
    Ok(CaIssuer { cert, key })
}

/// Whether the certificate's public key is the key pair's.
fn same_public_key(cert_pem: &str, key: &KeyPair) -> anyhow::Result<bool> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|e| anyhow::anyhow!("not a PEM certificate: {e}"))?;
    let cert = pem.parse_x509().map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
    Ok(cert.tbs_certificate.subject_pki.raw == key.public_key_der().as_slice())
}

/// The kubeconfig: one cluster (`https://VIP:port`, the CA inline), one
/// user (the client certificate inline), one context, current.
pub fn render(cluster: &ClusterFile, ca_pem: &[u8], client: &ClientCert, user: &str) -> anyhow::Result<String> {
    use base64::Engine as _;
    let encode = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let name = &cluster.name;
    let context = format!("{user}@{name}");
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": name,
            "cluster": {
                "server": format!("https://{}:{}", cluster.api.vip, cluster.api.port),
                "certificate-authority-data": encode(ca_pem),
            },
        }],
        "users": [{
            "name": user,
            "user": {
                "client-certificate-data": encode(client.cert_pem.as_bytes()),
                "client-key-data": encode(client.key_pem.as_bytes()),
            },
        }],
        "contexts": [{
            "name": context,
            "context": {"cluster": name, "user": user},
        }],
        "current-context": context,
        "preferences": {},
    });
    yaml_serde::to_string(&doc).context("writing the kubeconfig as YAML")
}

/// Where the kubeconfig goes unless `--out` says: `<cluster name>.kubeconfig`
/// beside the cluster file.
pub fn default_out(cluster_file: &Path, cluster: &ClusterFile) -> std::path::PathBuf {
    cluster_file
        .parent()
        .unwrap_or(Path::new("."))
        .join(format!("{}.kubeconfig", cluster.name))
}
