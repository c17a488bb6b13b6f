//! Distro files (`distros/<name>.yaml`): one distribution release — where its
//! packages come from (mirror, suites, components, keyring), which package
//! names fill each role, how the node's network is configured, and where the
//! Kubernetes and CRI-O packages come from (their apt repositories, pinned to
//! the cluster's minor version, or a local bundle given at build time).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use piha_config::cluster::Runtime;
use piha_config::node::NetworkRenderer;
use serde::{Deserialize, Serialize};

use crate::arch::Arch;
use crate::inputs::board::Family;
use crate::inputs::catalog;

/// `distros/<name>.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Distro {
    /// Must equal the file name without `.yaml`.
    pub name: String,
    pub family: Family,
    /// The release's suite (codename), e.g. `bookworm`, `noble`.
    pub suite: String,
    pub components: Vec<String>,
    /// The archive keyring on the build host; the same path exists in the
    /// image once its keyring package is installed.
    pub keyring: PathBuf,
    pub mirror: Mirror,
    /// More suites from the same mirror, e.g. `bookworm-updates`.
    #[serde(default)]
    pub updates: Vec<String>,
    /// Security updates: a suite on its own mirror.
    #[serde(default)]
    pub security: Option<SecuritySuite>,
    pub network_renderer: NetworkRenderer,
    pub packages: Packages,
    /// pkgs.k8s.io for kubeadm, kubelet, kubectl, cri-tools. Absent: the
    /// distro has no source, and production builds need `--k8s-bundle`.
    #[serde(default)]
    pub kubernetes_source: Option<PackageSource>,
    /// The CRI-O repository, used when the cluster's runtime is crio.
    #[serde(default)]
    pub crio_source: Option<PackageSource>,
    /// The major version of the containerd package the archive ships:
    /// Kubernetes 1.36 and later refuse containerd 1.x.
    #[serde(default)]
    pub containerd_major: Option<u32>,
}

/// Where a suite's packages come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// A URL, or `host`: the mirror the build host's apt uses for this suite.
    pub url: String,
    /// Used when `url` is `host` and the host has no source for the suite.
    #[serde(default)]
    pub fallback: Option<String>,
    /// Per-architecture URLs (Ubuntu serves arm64 from ports.ubuntu.com).
    #[serde(default)]
    pub arch: BTreeMap<Arch, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySuite {
    pub suite: String,
    pub mirror: Mirror,
}

/// Package names per role. Every image gets every role's packages: the image
/// is the same for every node of a board, and the card decides the role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Packages {
    /// systemd, udev, openssh-server, sudo, chrony, iproute2, kmod, … and
    /// what kubeadm's preflight checks for (conntrack, iptables, socat, ethtool).
    pub base: Vec<String>,
    pub runtime: RuntimePackages,
    /// From `kubernetes_source` (or a bundle).
    pub kubernetes: Vec<String>,
    /// keepalived and ipvsadm for director nodes.
    pub director: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimePackages {
    /// From `crio_source` when set, else from the distro's archive.
    pub crio: Vec<String>,
    pub containerd: Vec<String>,
}

impl RuntimePackages {
    pub fn for_runtime(&self, r: Runtime) -> &[String] {
        match r {
            Runtime::Crio => &self.crio,
            Runtime::Containerd => &self.containerd,
        }
    }
}

/// An extra package source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageSource {
    pub apt: AptRepo,
}

/// A flat apt repository (`deb URL /`) and its signing key. `{minor}` in
/// either is replaced by the cluster's Kubernetes minor, e.g. `1.34`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AptRepo {
    pub url: String,
    pub key: String,
}

impl AptRepo {
    /// The repository pinned to a Kubernetes minor (`1.34`).
    pub fn pinned(&self, minor: &str) -> AptRepo {
        AptRepo {
            url: self.url.replace("{minor}", minor),
            key: self.key.replace("{minor}", minor),
        }
    }

    /// The URL preflight fetches: the flat repository's Release file.
    pub fn release_url(&self) -> String {
        format!("{}/Release", self.url.trim_end_matches('/'))
    }
}

impl Distro {
    pub fn parse(file: &Path, text: &str) -> anyhow::Result<Distro> {
        let d: Distro = super::parse_yaml(file, text, "see distros/debian-bookworm.yaml for every field")?;
        d.check(file)?;
        Ok(d)
    }

    fn check(&self, file: &Path) -> anyhow::Result<()> {
        let f = file.display();
        if let Some(stem) = file.file_stem().and_then(|s| s.to_str()) {
            if stem != self.name {
                bail!("{f}: name: is {:?} but the file is {stem}.yaml (fix: make them equal)", self.name);
            }
        }
        if self.components.is_empty() {
            bail!("{f}: components: empty (fix: e.g. [main])");
        }
        check_mirror(file, "mirror", &self.mirror)?;
        if let Some(s) = &self.security {
            check_mirror(file, "security.mirror", &s.mirror)?;
        }
        for (field, src) in [("kubernetes_source", &self.kubernetes_source), ("crio_source", &self.crio_source)] {
            if let Some(s) = src {
                for (sub, url) in [("url", &s.apt.url), ("key", &s.apt.key)] {
                    if !is_url(url) {
                        bail!("{f}: {field}.apt.{sub}: {url:?} is not a URL (fix: https://...)");
                    }
                }
            }
        }
        if self.packages.base.is_empty() {
            bail!("{f}: packages.base: empty (fix: list systemd, udev, openssh-server, ...)");
        }
        Ok(())
    }
}

fn is_url(s: &str) -> bool {
    ["http://", "https://", "file://"].iter().any(|p| s.starts_with(p))
}

fn check_mirror(file: &Path, field: &str, m: &Mirror) -> anyhow::Result<()> {
    let f = file.display();
    if m.url != "host" && !is_url(&m.url) {
        bail!(
            "{f}: {field}.url: {:?} is neither `host` nor a URL (fix: http://... or host)",
            m.url
        );
    }
    for url in m.fallback.iter().chain(m.arch.values()) {
        if !is_url(url) {
            bail!("{f}: {field}: {url:?} is not a URL (fix: http://...)");
        }
    }
    Ok(())
}

pub fn path(name: &str) -> PathBuf {
    catalog::data_dir().join("distros").join(format!("{name}.yaml"))
}

/// Loads a distro by name; also returns its path and raw text (the text goes
/// into the rootfs cache key).
pub fn load(name: &str) -> anyhow::Result<(Distro, PathBuf, String)> {
    let file = path(name);
    if !file.exists() {
        let known = catalog::catalog().map(|c| c.distros.join(", ")).unwrap_or_default();
        bail!("there is no distro {name:?} (no {}); the distros are: {known}", file.display());
    }
    let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    Ok((Distro::parse(&file, &text)?, file, text))
}

/// The network renderer of a distro by name (for `piha stamp`).
pub fn network_renderer(name: &str) -> anyhow::Result<NetworkRenderer> {
    Ok(load(name)?.0.network_renderer)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{AptRepo, Distro};

    #[test]
    fn pinned_repo() {
        let r = AptRepo {
            url: "https://pkgs.k8s.io/core:/stable:/v{minor}/deb/".into(),
            key: "https://x/v{minor}/Release.key".into(),
        };
        let p = r.pinned("1.34");
        assert_eq!(p.url, "https://pkgs.k8s.io/core:/stable:/v1.34/deb/");
        assert_eq!(p.release_url(), "https://pkgs.k8s.io/core:/stable:/v1.34/deb/Release");
        assert_eq!(p.key, "https://x/v1.34/Release.key");
    }

    #[test]
    fn bad_mirror_is_named() {
        let text = r#"
name: d
family: debian
suite: bookworm
components: [main]
keyring: /usr/share/keyrings/debian-archive-keyring.gpg
mirror: {url: mirror.invalid}
network_renderer: networkd
packages: {base: [systemd], runtime: {crio: [], containerd: [containerd]}, kubernetes: [], director: []}
"#;
        let err = Distro::parse(Path::new("distros/d.yaml"), text).unwrap_err().to_string();
        assert!(err.contains("distros/d.yaml: mirror.url"), "{err}");
    }
}
