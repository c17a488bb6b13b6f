//! `manifest.json` beside the image: what was built from what — board,
//! distro, profile, every installed package with its version (read from the
//! image's own `var/lib/dpkg/status`), the input hash, piha's version, and
//! every artifact with its size and SHA-256.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::pipeline::plan::Profile;

/// One installed package, as dpkg records it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub architecture: String,
}

/// Parses dpkg's status file; only packages whose status is `install ok installed`.
pub fn parse_dpkg_status(text: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for paragraph in text.split("\n\n") {
        let (mut name, mut version, mut arch, mut installed) = (None, None, None, false);
        for line in paragraph.lines() {
            if let Some(v) = line.strip_prefix("Package: ") {
                name = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("Version: ") {
                version = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("Architecture: ") {
                arch = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("Status: ") {
                installed = v.trim() == "install ok installed";
            }
        }
        if let (Some(name), Some(version), true) = (name, version, installed) {
            out.push(Package {
                name,
                version,
                architecture: arch.unwrap_or_default(),
            });
        }
    }
    out.sort();
    out
}

/// A file the build wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// File name inside the output directory.
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

/// Packages the plan left out, and why (the test profile's stand-in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub role: String,
    pub packages: Vec<String>,
    pub reason: String,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub piha_version: String,
    pub cluster: String,
    pub board: String,
    pub distro: String,
    pub arch: String,
    pub profile: Profile,
    pub kubernetes_version: String,
    pub runtime: String,
    /// sha256 over every input: see `identity::input_hash`.
    pub input_hash: String,
    pub rootfs_key: String,
    /// Where the packages came from (apt sources, bundle files).
    pub sources: Vec<String>,
    pub skipped: Vec<Skipped>,
    pub packages: Vec<Package>,
    pub artifacts: Vec<Artifact>,
}

impl Manifest {
    /// Writes the manifest as pretty JSON.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let mut text = serde_json::to_string_pretty(self).context("serializing manifest.json")?;
        text.push('\n');
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::{Package, parse_dpkg_status};

    #[test]
    fn dpkg_status_installed_only() {
        let text = "Package: zlib1g\nStatus: install ok installed\nVersion: 1:1.2.13.dfsg-1\nArchitecture: amd64\nDescription: x\n more\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1\n\nPackage: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2.15-2+b7\n";
        assert_eq!(
            parse_dpkg_status(text),
            vec![
                Package {
                    name: "bash".into(),
                    version: "5.2.15-2+b7".into(),
                    architecture: "amd64".into()
                },
                Package {
                    name: "zlib1g".into(),
                    version: "1:1.2.13.dfsg-1".into(),
                    architecture: "amd64".into()
                },
            ]
        );
    }
}
