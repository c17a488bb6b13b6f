//! Kubernetes versions piha knows how to install and configure.
//!
//! A version is `X.Y.Z` (a leading `v` is accepted). The minor pins the
//! pkgs.k8s.io repository (`https://pkgs.k8s.io/core:/stable:/v1.34/deb/`) and
//! decides the kubeadm configuration API: `kubeadm.k8s.io/v1beta4` from 1.31 on,
//! `v1beta3` below (<https://kubernetes.io/docs/reference/config-api/kubeadm-config.v1beta4/>).

use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;

/// Minor versions of Kubernetes 1.x that piha supports. 1.28 is the oldest
/// minor still published on pkgs.k8s.io when piha was written; the upper bound
/// leaves room for releases that do not exist yet but keep v1beta4.
pub const SUPPORTED_MINORS: RangeInclusive<u32> = 28..=37;

/// The first minor whose kubeadm understands `kubeadm.k8s.io/v1beta4`.
const V1BETA4_SINCE_MINOR: u32 = 31;

/// A parsed Kubernetes version, e.g. `1.34.1`.
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

/// The kubeadm configuration API version to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KubeadmApi {
    V1beta3,
    V1beta4,
}

impl KubeadmApi {
    /// The `apiVersion:` of kubeadm's InitConfiguration/ClusterConfiguration/JoinConfiguration.
    pub fn api_version(self) -> &'static str {
        match self {
            KubeadmApi::V1beta3 => "kubeadm.k8s.io/v1beta3",
            KubeadmApi::V1beta4 => "kubeadm.k8s.io/v1beta4",
        }
    }
}

impl Version {
    /// Parses `X.Y.Z` or `vX.Y.Z` without checking support (see [`parse`]).
    pub fn parse_any(text: &str) -> Result<Version, VersionError> {
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
    pub fn is_supported(self) -> bool {
        self.major == 1 && SUPPORTED_MINORS.contains(&self.minor)
    }

    pub fn kubeadm_api(self) -> KubeadmApi {
        if self.major > 1 || self.minor >= V1BETA4_SINCE_MINOR {
            KubeadmApi::V1beta4
        } else {
            KubeadmApi::V1beta3
        }
    }

    /// `v1.34`: the pkgs.k8s.io repository path component for this minor.
    pub fn repo_minor(self) -> String {
        format!("v{}.{}", self.major, self.minor)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl FromStr for Version {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

/// Parses a version and checks that piha supports it.
pub fn parse(text: &str) -> Result<Version, VersionError> {
    let v = Version::parse_any(text)?;
    if v.is_supported() {
        Ok(v)
    } else {
        Err(VersionError::Unsupported { version: v.to_string() })
    }
}

/// The kubeadm configuration API for a (supported) version string.
pub fn kubeadm_api(version: &str) -> Result<KubeadmApi, VersionError> {
    parse(version).map(Version::kubeadm_api)
}

/// The pkgs.k8s.io repository pin for a (supported) version string: `1.34.1` → `v1.34`.
pub fn minor(version: &str) -> Result<String, VersionError> {
    parse(version).map(Version::repo_minor)
}

#[cfg(test)]
mod tests {
    use super::{KubeadmApi, Version, VersionError, kubeadm_api, minor, parse};

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
        assert_eq!(kubeadm_api("1.30.14"), Ok(KubeadmApi::V1beta3));
        assert_eq!(kubeadm_api("1.31.0"), Ok(KubeadmApi::V1beta4));
        assert_eq!(kubeadm_api("v1.34.1"), Ok(KubeadmApi::V1beta4));
        assert_eq!(KubeadmApi::V1beta4.api_version(), "kubeadm.k8s.io/v1beta4");
        assert!(kubeadm_api("1.20.0").is_err());
    }

    #[test]
    fn minor_is_the_repo_pin() {
        assert_eq!(minor("1.34.1"), Ok("v1.34".to_string()));
        assert_eq!(minor("v1.28.15"), Ok("v1.28".to_string()));
    }
}
