//! Kubernetes versions piha knows how to install and configure.
//!
//! A version is `X.Y.Z` (a leading `v` is accepted). The minor pins the
//! pkgs.k8s.io repository (`https://pkgs.k8s.io/core:/stable:/v1.34/deb/`) and
//! decides the kubeadm configuration API: `kubeadm.k8s.io/v1beta4` from 1.31 on,
//! `v1beta3` below (<https://kubernetes.io/docs/reference/config-api/kubeadm-config.v1beta4/>).
//!
//! The cluster file and node.yaml carry the version as a [`Version`]: its
//! syntax is checked once, when the file is parsed; whether piha supports it is
//! a validation rule, so that one bad file reports every problem at once.

use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Minor versions of Kubernetes 1.x that piha supports. 1.28 is the oldest
/// minor still published on pkgs.k8s.io when piha was written; the upper bound
/// leaves room for releases that do not exist yet but keep v1beta4.
pub(crate) const SUPPORTED_MINORS: RangeInclusive<u32> = 28..=37;

/// The first minor whose kubeadm understands `kubeadm.k8s.io/v1beta4`.
const V1BETA4_SINCE_MINOR: u32 = 31;

/// The first minor whose kube-proxy nftables mode is beta (on by default);
/// below it, nftables is an alpha feature gate piha does not turn on
/// (<https://kubernetes.io/docs/reference/networking/virtual-ips/#proxy-mode-nftables>).
pub(crate) const NFTABLES_SINCE_MINOR: u32 = 31;

/// A Kubernetes version, e.g. `1.34.1`. In YAML it is the string `"1.34.1"`
/// (a leading `v` is accepted and dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

/// Why a version string is not one piha can install.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error("`{0}` is not a Kubernetes version of the form X.Y.Z (e.g. 1.34.1)")]
    Syntax(String),
    #[error("Kubernetes {version} is not supported: piha supports 1.{} to 1.{}", SUPPORTED_MINORS.start(), SUPPORTED_MINORS.end())]
    Unsupported { version: String },
}

/// What to do about a [`VersionError`], in the words of a cluster file.
pub(crate) fn version_fix() -> String {
    format!(
        "use a released version from 1.{} to 1.{}, quoted, e.g. \"1.34.1\"",
        SUPPORTED_MINORS.start(),
        SUPPORTED_MINORS.end()
    )
}

/// The kubeadm configuration API version to generate: the `apiVersion:` of
/// kubeadm's InitConfiguration, ClusterConfiguration and JoinConfiguration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KubeadmApi {
    #[serde(rename = "kubeadm.k8s.io/v1beta3")]
    V1beta3,
    #[serde(rename = "kubeadm.k8s.io/v1beta4")]
    V1beta4,
}

impl KubeadmApi {
    pub fn as_str(self) -> &'static str {
        match self {
            KubeadmApi::V1beta3 => "kubeadm.k8s.io/v1beta3",
            KubeadmApi::V1beta4 => "kubeadm.k8s.io/v1beta4",
        }
    }
}

impl fmt::Display for KubeadmApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Version {
    /// Parses `X.Y.Z` or `vX.Y.Z` without checking support (see [`Version::supported`]).
    pub(crate) fn parse_any(text: &str) -> Result<Version, VersionError> {
        let syntax = || VersionError::Syntax(text.to_string());
        let bare = text.strip_prefix('v').unwrap_or(text);
        let mut parts = bare.split('.');
        let mut number = || -> Result<u32, VersionError> {
            let p = parts.next().ok_or_else(syntax)?;
            // `u32::from_str` accepts a leading '+'; a version never has one.
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(syntax());
            }
            p.parse().map_err(|_| syntax())
        };
        let v = Version {
            major: number()?,
            minor: number()?,
            patch: number()?,
        };
        if parts.next().is_some() {
            return Err(syntax());
        }
        Ok(v)
    }

    /// True if piha can install and configure this version.
    pub(crate) fn is_supported(self) -> bool {
        self.major == 1 && SUPPORTED_MINORS.contains(&self.minor)
    }

    /// This version, or why piha cannot install it.
    pub(crate) fn supported(self) -> Result<Version, VersionError> {
        if self.is_supported() {
            Ok(self)
        } else {
            Err(VersionError::Unsupported { version: self.to_string() })
        }
    }

    pub(crate) fn kubeadm_api(self) -> KubeadmApi {
        if self.major > 1 || self.minor >= V1BETA4_SINCE_MINOR {
            KubeadmApi::V1beta4
        } else {
            KubeadmApi::V1beta3
        }
    }

    /// True if kube-proxy's nftables mode is on by default (beta or later).
    pub(crate) fn has_nftables_proxy(self) -> bool {
        self.major > 1 || self.minor >= NFTABLES_SINCE_MINOR
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Parses a version and checks that piha supports it.
impl FromStr for Version {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Version::parse_any(s)?.supported()
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Checks the syntax only: support is a validation rule, reported with the others.
impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(VersionVisitor)
    }
}

/// Parses inside the visitor, so a YAML error names the field (`kubernetes.version`).
struct VersionVisitor;

impl Visitor<'_> for VersionVisitor {
    type Value = Version;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Version, E> {
        Version::parse_any(text).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::{KubeadmApi, Version, VersionError};

    fn parse(text: &str) -> Result<Version, VersionError> {
        text.parse()
    }

    #[test]
    fn parses_plain_and_v_prefixed() {
        assert_eq!(
            parse("1.34.1"),
            Ok(Version {
                major: 1,
                minor: 34,
                patch: 1
            })
        );
        assert_eq!(
            parse("v1.30.0"),
            Ok(Version {
                major: 1,
                minor: 30,
                patch: 0
            })
        );
        assert_eq!(parse("1.34.1").map(|v| v.to_string()), Ok("1.34.1".to_string()));
    }

    #[test]
    fn rejects_bad_syntax() {
        for bad in [
            "",
            "1.34",
            "1.34.1.2",
            "1..1",
            "v",
            "vv1.34.1",
            "1.34.x",
            "+1.34.1",
            "1.34.1-rc.0",
            " 1.34.1",
            "1.34.-1",
        ] {
            assert!(
                matches!(parse(bad), Err(VersionError::Syntax(_))),
                "{bad:?} should be a syntax error"
            );
        }
    }

    #[test]
    fn supported_range_is_1_28_to_1_37() {
        assert!(parse("1.28.0").is_ok());
        assert!(parse("1.37.9").is_ok());
        for bad in ["1.27.16", "1.38.0", "2.31.0", "0.31.0"] {
            assert!(
                matches!(parse(bad), Err(VersionError::Unsupported { .. })),
                "{bad} should be unsupported"
            );
        }
        let msg = parse("1.27.1").unwrap_err().to_string();
        assert!(msg.contains("1.28 to 1.37"), "{msg}");
    }

    #[test]
    fn kubeadm_api_switches_at_1_31() {
        let api = |text: &str| parse(text).map(Version::kubeadm_api);
        assert_eq!(api("1.30.14"), Ok(KubeadmApi::V1beta3));
        assert_eq!(api("1.31.0"), Ok(KubeadmApi::V1beta4));
        assert_eq!(api("v1.34.1"), Ok(KubeadmApi::V1beta4));
        assert_eq!(KubeadmApi::V1beta4.to_string(), "kubeadm.k8s.io/v1beta4");
        assert_eq!(yaml_serde::to_string(&KubeadmApi::V1beta3).unwrap(), "kubeadm.k8s.io/v1beta3\n");
    }

    #[test]
    fn nftables_proxy_is_on_by_default_from_1_31() {
        assert!(!parse("1.30.14").unwrap().has_nftables_proxy());
        assert!(parse("1.31.0").unwrap().has_nftables_proxy());
    }

    #[test]
    fn yaml_is_the_version_string_and_support_is_checked_later() {
        let v: Version = yaml_serde::from_str("\"v1.34.1\"").expect("parses");
        assert_eq!(yaml_serde::to_string(&v).unwrap(), "1.34.1\n");
        let old: Version = yaml_serde::from_str("1.20.0").expect("syntax is fine");
        assert!(!old.is_supported());
        let err = yaml_serde::from_str::<Version>("\"1.34\"").expect_err("syntax error");
        assert!(
            err.to_string().contains("`1.34` is not a Kubernetes version of the form X.Y.Z"),
            "{err}"
        );
    }
}
