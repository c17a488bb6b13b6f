//! The cluster's PKI, made the way `kubeadm init` would make it, so that every
//! control plane can be handed the same CAs on its card and kubeadm reuses them
//! (<https://kubernetes.io/docs/setup/production-environment/tools/kubeadm/kubeadm-certs/#custom-certificates>).
//!
//! rcgen builds and signs the certificates. ring (rcgen's backend) cannot
//! generate RSA keys, so RSA keys come from the `rsa` crate and are handed to
//! rcgen as PKCS#8.

use anyhow::Context;
use piha_config::cluster::KeyAlgorithm;
/// The format check has one home, the config crate, whose kubeadm renderer uses it too.
pub use piha_config::secrets::is_bootstrap_token;
use rand::Rng;
use rand::rngs::OsRng;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    PKCS_RSA_SHA256, SerialNumber,
};
use rsa::pkcs8::EncodePrivateKey;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

/// kubeadm's CA lifetime (`constants.CACertificateValidityPeriod`): ten years.
const CA_VALIDITY: Duration = Duration::days(365 * 10);
/// kubeadm backdates certificates (`constants.CertificateBackdate`) so a node
/// whose clock is a little behind still accepts them.
const BACKDATE: Duration = Duration::minutes(5);
const RSA_BITS: usize = 2048;

/// The common names kubeadm gives its three CAs.
pub const CLUSTER_CA_CN: &str = "kubernetes";
pub const ETCD_CA_CN: &str = "etcd-ca";
pub const FRONT_PROXY_CA_CN: &str = "front-proxy-ca";

/// A self-signed CA: certificate and PKCS#8 private key, both PEM.
#[derive(Debug, Clone)]
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A bare key pair (the service-account signing key): PKCS#8 private key and
/// SubjectPublicKeyInfo public key, both PEM.
#[derive(Debug, Clone)]
pub struct KeyPairPem {
    pub private_pem: String,
    pub public_pem: String,
}

/// Generates a key pair of the cluster's algorithm.
pub fn generate_key(alg: KeyAlgorithm) -> anyhow::Result<KeyPair> {
    match alg {
        KeyAlgorithm::Rsa2048 => {
            let key = rsa::RsaPrivateKey::new(&mut OsRng, RSA_BITS).context("generating an RSA-2048 key")?;
            let der = key.to_pkcs8_der().context("encoding the RSA key as PKCS#8")?;
            KeyPair::from_pkcs8_der_and_sign_algo(&der.as_bytes().into(), &PKCS_RSA_SHA256).context("loading the RSA key into rcgen")
        }
        KeyAlgorithm::EcdsaP256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("generating an ECDSA P-256 key"),
    }
}

/// A self-signed CA like kubeadm's: subject and DNS SAN `common_name`,
/// CA:TRUE, keyCertSign + cRLSign + digitalSignature + keyEncipherment, ten years.
pub fn ca(common_name: &str, alg: KeyAlgorithm) -> anyhow::Result<Ca> {
    let key = generate_key(alg)?;
    let mut params = CertificateParams::new(vec![common_name.to_string()]).with_context(|| format!("CA parameters for {common_name}"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_VALIDITY;
    params.serial_number = Some(random_serial());
    let cert = params
        .self_signed(&key)
        .with_context(|| format!("self-signing the {common_name} CA"))?;
    Ok(Ca {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A positive 128-bit random serial, as kubeadm uses.
pub fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = OsRng.r#gen();
    // The MSB clear keeps the DER INTEGER positive without a padding byte.
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// The service-account key pair the API server signs tokens with.
pub fn service_account_key(alg: KeyAlgorithm) -> anyhow::Result<KeyPairPem> {
    let key = generate_key(alg)?;
    Ok(KeyPairPem {
        private_pem: key.serialize_pem(),
        public_pem: key.public_key_pem(),
    })
}

/// A bootstrap token `[a-z0-9]{6}.[a-z0-9]{16}` from the OS CSPRNG
/// (<https://kubernetes.io/docs/reference/access-authn-authz/bootstrap-tokens/#token-format>).
pub fn bootstrap_token() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = OsRng;
    let mut pick = |n: usize| -> String { (0..n).map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())])).collect() };
    let id = pick(6);
    let secret = pick(16);
    format!("{id}.{secret}")
}

/// kubeadm's discovery hash: `sha256:` + hex SHA-256 of the CA certificate's
/// DER SubjectPublicKeyInfo, as read from the certificate itself
/// (<https://kubernetes.io/docs/reference/setup-tools/kubeadm/kubeadm-join/#token-based-discovery-with-ca-pinning>).
pub fn ca_cert_hash(cert_pem: &[u8]) -> anyhow::Result<String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem).map_err(|e| anyhow::anyhow!("not a PEM certificate: {e}"))?;
    let cert = pem.parse_x509().map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
    let spki = cert.tbs_certificate.subject_pki.raw;
    Ok(format!("sha256:{}", hex::encode(Sha256::digest(spki))))
}

/// When a certificate starts to be valid (notBefore), in Unix seconds.
pub fn not_before(cert_pem: &[u8]) -> anyhow::Result<u64> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem).map_err(|e| anyhow::anyhow!("not a PEM certificate: {e}"))?;
    let cert = pem.parse_x509().map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
    u64::try_from(cert.validity().not_before.timestamp()).context("a notBefore before 1970")
}

#[cfg(test)]
mod tests {
    use super::{bootstrap_token, ca, ca_cert_hash, is_bootstrap_token, service_account_key};
    use piha_config::cluster::KeyAlgorithm;
    use x509_parser::extensions::ParsedExtension;

    #[test]
    fn token_format() {
        for _ in 0..50 {
            let t = bootstrap_token();
            assert!(is_bootstrap_token(&t), "{t}");
        }
        assert_ne!(bootstrap_token(), bootstrap_token());
    }

    #[test]
    fn ecdsa_ca_is_a_ca_and_hash_matches_its_key() {
        let c = ca("etcd-ca", KeyAlgorithm::EcdsaP256).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(c.cert_pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        assert_eq!(cert.subject().to_string(), "CN=etcd-ca");
        assert_eq!(cert.issuer(), cert.subject());
        let mut ca_true = false;
        let mut cert_sign = false;
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::BasicConstraints(bc) => ca_true = bc.ca,
                ParsedExtension::KeyUsage(ku) => cert_sign = ku.key_cert_sign() && ku.crl_sign() && ku.digital_signature(),
                _ => {}
            }
        }
        assert!(ca_true && cert_sign);
        let validity = cert.validity().time_to_expiration().unwrap();
        assert!(validity.whole_days() >= 3649, "{validity}");
        let key = rcgen::KeyPair::from_pem(&c.key_pem).unwrap();
        let expected = format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(key.public_key_der()))
        );
        assert_eq!(ca_cert_hash(c.cert_pem.as_bytes()).unwrap(), expected);
    }

    #[test]
    fn sa_key_pem_kinds() {
        let k = service_account_key(KeyAlgorithm::EcdsaP256).unwrap();
        assert!(k.private_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(k.public_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    }
}
