//! The resolved build plan: cluster + board + distro + profile turned into
//! exactly what each stage will use — apt sources with their mirrors
//! resolved, the package list, the overlays, what was skipped and why — and
//! the hashes that key the caches and name the build.
//!
//! Resolving is pure (the host's apt sources are passed in), so the rules are
//! testable without a network: which sources a build needs, when a test
//! profile skips the Kubernetes packages, when a production build has no way
//! to get them.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use piha_config::cluster::{ClusterFile, Runtime};
use serde::Serialize;

use crate::arch::Arch;
use crate::host::apt::{self, AptSource};
use crate::inputs::board::Board;
use crate::inputs::distro::{AptRepo, Distro, Mirror};
use crate::pipeline::manifest::Skipped;

/// Bumped whenever the rootfs stage changes in a way its inputs do not show
/// (hook scripts, mmdebstrap options), so old cached tarballs are not reused.
pub const ROOTFS_RECIPE_VERSION: u32 = 2;

pub use crate::image::info::Profile;

/// Where an archive mirror's URL came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MirrorSource {
    /// `piha build --mirror URL`.
    Flag,
    /// The distro file's URL (or its per-architecture URL).
    DistroFile,
    /// `url: host`: the build host's apt source for the suite.
    HostApt,
    /// `url: host` without a host source: the distro file's fallback.
    Fallback,
}

impl fmt::Display for MirrorSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MirrorSource::Flag => "--mirror",
            MirrorSource::DistroFile => "the distro file",
            MirrorSource::HostApt => "the host's apt sources",
            MirrorSource::Fallback => "the distro file's fallback",
        })
    }
}

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct Request {
    pub board: Board,
    pub board_file: PathBuf,
    pub distro: Distro,
    pub distro_file: PathBuf,
    /// The distro file's text: part of the rootfs cache key.
    pub distro_text: String,
    pub cluster: ClusterFile,
    /// The cluster file's path, or a description of the embedded defaults.
    pub cluster_label: String,
    pub profile: Profile,
    pub k8s_bundle: Option<PathBuf>,
    pub mirror: Option<String>,
}

/// One apt source of the archive: `deb [signed-by=KEYRING] URL SUITE COMPONENTS`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArchiveSource {
    pub url: String,
    /// Where `url` came from.
    pub from: MirrorSource,
    pub suite: String,
    pub components: Vec<String>,
    /// For messages: "debian-bookworm mirror", "debian-bookworm security".
    pub what: String,
}

impl ArchiveSource {
    /// The source line mmdebstrap gets (and writes into the image's sources.list).
    pub fn line(&self, keyring: &Path) -> String {
        format!(
            "deb [signed-by={}] {} {} {}",
            keyring.display(),
            self.url,
            self.suite,
            self.components.join(" ")
        )
    }

    /// What preflight fetches.
    pub fn release_url(&self) -> String {
        format!("{}/dists/{}/Release", self.url.trim_end_matches('/'), self.suite)
    }
}

/// A flat repository outside the distro (pkgs.k8s.io, CRI-O).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExtraRepo {
    /// File-name-safe name, e.g. `kubernetes`, `cri-o`.
    pub name: String,
    pub repo: AptRepo,
    pub what: String,
}

/// A URL preflight must be able to fetch, and what it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reachable {
    pub url: String,
    pub what: String,
}

/// Everything the stages need, resolved.
#[derive(Debug, Clone)]
pub struct Plan {
    pub req: Request,
    pub arch: Arch,
    /// `1.34`: pins the Kubernetes and CRI-O repositories.
    pub k8s_minor: String,
    pub sources: Vec<ArchiveSource>,
    pub extra_repos: Vec<ExtraRepo>,
    /// Package names for mmdebstrap's --include, in role order.
    pub packages: Vec<String>,
    /// Local .deb files from --k8s-bundle, also installed.
    pub bundle_debs: Vec<PathBuf>,
    pub skipped: Vec<Skipped>,
    /// Overlay trees, in order.
    pub overlays: Vec<PathBuf>,
    /// The tree of rootfs templates (`*.hbs`).
    pub templates: PathBuf,
}

impl Plan {
    /// Resolves a request. `host` is the build host's apt sources (for `mirror: host`).
    pub fn resolve(req: Request, host: &[AptSource], data_dir: &Path) -> anyhow::Result<Plan> {
        let version = req.cluster.kubernetes.version;
        let k8s_minor = format!("{}.{}", version.major, version.minor);
        let sources = archive_sources(&req, host)?;
        let bundle_debs = match &req.k8s_bundle {
            Some(dir) => bundle_debs(dir)?,
            None => Vec::new(),
        };
        let mut packages = req.board.packages_for(req.distro.family, &req.board_file)?.to_vec();
        packages.extend(req.distro.packages.base.iter().cloned());
        packages.extend(req.distro.packages.director.iter().cloned());
        let runtime = runtime_packages(&req, &k8s_minor, &bundle_debs)?;
        let kubernetes = kubernetes_packages(&req, &k8s_minor, !bundle_debs.is_empty())?;
        let mut extra_repos = Vec::new();
        let mut skipped = Vec::new();
        for part in [runtime, kubernetes] {
            packages.extend(part.packages);
            extra_repos.extend(part.repo);
            skipped.extend(part.skipped);
        }
        dedup_keep_order(&mut packages);
        let overlays_root = data_dir.join("overlays");
        Ok(Plan {
            arch: req.board.arch,
            k8s_minor,
            sources,
            extra_repos,
            packages,
            bundle_debs,
            skipped,
            overlays: overlays(&overlays_root, req.profile),
            templates: overlays_root.join("image-templates"),
            req,
        })
    }

    /// Every URL the build will fetch from, for preflight.
    pub fn reachables(&self) -> Vec<Reachable> {
        let mut out: Vec<Reachable> = self
            .sources
            .iter()
            .map(|s| Reachable {
                url: s.release_url(),
                what: s.what.clone(),
            })
            .collect();
        for r in &self.extra_repos {
            out.push(Reachable {
                url: r.repo.release_url(),
                what: r.what.clone(),
            });
            out.push(Reachable {
                url: r.repo.key.clone(),
                what: format!("{} signing key", r.what),
            });
        }
        out
    }

    /// Sources as the manifest lists them.
    pub fn source_lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self.sources.iter().map(|s| s.line(&self.req.distro.keyring)).collect();
        out.extend(self.extra_repos.iter().map(|r| format!("deb {} /", r.repo.url)));
        out.extend(self.bundle_debs.iter().map(|p| format!("bundle {}", p.display())));
        out
    }
}

/// What one role adds to the plan: packages, maybe the repository they come
/// from, or why they were left out.
#[derive(Debug, Default)]
struct Part {
    packages: Vec<String>,
    repo: Option<ExtraRepo>,
    skipped: Option<Skipped>,
}

/// The distro archive's sources: the suite and its updates from the main
/// mirror, then the security suite from its own.
fn archive_sources(req: &Request, host: &[AptSource]) -> anyhow::Result<Vec<ArchiveSource>> {
    let d = &req.distro;
    let df = req.distro_file.display();
    let arch = req.board.arch;
    let (main_url, main_from) = match &req.mirror {
        Some(m) => (m.trim_end_matches('/').to_string(), MirrorSource::Flag),
        None => resolve_mirror(&d.mirror, &d.suite, arch, host).with_context(|| format!("{df}: mirror"))?,
    };
    let mut sources = Vec::new();
    for suite in std::iter::once(&d.suite).chain(&d.updates) {
        let what = if *suite == d.suite {
            format!("{} mirror", d.name)
        } else {
            format!("{} {suite}", d.name)
        };
        sources.push(ArchiveSource {
            url: main_url.clone(),
            from: main_from,
            suite: suite.clone(),
            components: d.components.clone(),
            what,
        });
    }
    if let Some(sec) = &d.security {
        let (url, from) = resolve_mirror(&sec.mirror, &sec.suite, arch, host).with_context(|| format!("{df}: security.mirror"))?;
        sources.push(ArchiveSource {
            url,
            from,
            suite: sec.suite.clone(),
            components: d.components.clone(),
            what: format!("{} security", d.name),
        });
    }
    Ok(sources)
}

/// The container runtime: containerd from the archive; CRI-O from its
/// repository unless the bundle carries it.
fn runtime_packages(req: &Request, k8s_minor: &str, bundle_debs: &[PathBuf]) -> anyhow::Result<Part> {
    let d = &req.distro;
    let runtime = req.cluster.kubernetes.runtime;
    let packages = d.packages.runtime.for_runtime(runtime).to_vec();
    let bundle_has_crio = bundle_debs
        .iter()
        .any(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("cri-o")));
    match runtime {
        Runtime::Crio if bundle_has_crio => Ok(Part::default()),
        Runtime::Crio => {
            let Some(src) = &d.crio_source else {
                bail!(
                    "{}: crio_source: the cluster's runtime is crio but {} has no CRI-O source (fix: add crio_source, use runtime: containerd, or pass --k8s-bundle DIR with the cri-o .deb)",
                    req.distro_file.display(),
                    d.name
                );
            };
            let repo = ExtraRepo {
                name: "cri-o".into(),
                repo: src.apt.pinned(k8s_minor),
                what: format!("CRI-O {k8s_minor} repository"),
            };
            Ok(Part {
                packages,
                repo: Some(repo),
                skipped: None,
            })
        }
        Runtime::Containerd => Ok(Part {
            packages,
            ..Part::default()
        }),
    }
}

/// Kubernetes: the bundle's .debs satisfy the names (apt resolves their
/// dependencies), else the distro's repository; the test profile goes
/// without (its overlay's recording kubeadm stands in).
fn kubernetes_packages(req: &Request, k8s_minor: &str, bundled: bool) -> anyhow::Result<Part> {
    let d = &req.distro;
    let k8s = d.packages.kubernetes.clone();
    if bundled {
        return Ok(Part::default());
    }
    if req.profile == Profile::Test {
        return Ok(Part {
            skipped: Some(Skipped {
                role: "kubernetes".into(),
                packages: k8s,
                reason:
                    "test profile: the recording kubeadm of overlays/test stands in; no kubelet, kubeadm or kubectl package is installed"
                        .into(),
            }),
            ..Part::default()
        });
    }
    let Some(src) = &d.kubernetes_source else {
        bail!(
            "{}: kubernetes_source: {} has no Kubernetes package source and no --k8s-bundle was given. Two routes: pass --k8s-bundle DIR holding the kubeadm, kubelet, kubectl, cri-tools and kubernetes-cni .debs for {k8s_minor}, or build a test image with --profile test (recording kubeadm, not for production)",
            req.distro_file.display(),
            d.name
        );
    };
    let repo = ExtraRepo {
        name: "kubernetes".into(),
        repo: src.apt.pinned(k8s_minor),
        what: format!("Kubernetes {k8s_minor} repository (pkgs.k8s.io)"),
    };
    Ok(Part {
        packages: k8s,
        repo: Some(repo),
        skipped: None,
    })
}

/// The overlay trees, in order: the test overlay only for the test profile.
fn overlays(root: &Path, profile: Profile) -> Vec<PathBuf> {
    let mut overlays = vec![root.join("base"), root.join("agent")];
    if profile == Profile::Test {
        overlays.push(root.join("test"));
    }
    overlays
}

/// A mirror's URL for `suite` on `arch`, and where it came from: the
/// per-arch URL, the URL, or for `host` the host's apt source for the
/// suite, else the fallback.
pub fn resolve_mirror(m: &Mirror, suite: &str, arch: Arch, host: &[AptSource]) -> anyhow::Result<(String, MirrorSource)> {
    if let Some(url) = m.arch.get(&arch) {
        return Ok((url.trim_end_matches('/').to_string(), MirrorSource::DistroFile));
    }
    if m.url != "host" {
        return Ok((m.url.trim_end_matches('/').to_string(), MirrorSource::DistroFile));
    }
    if let Some(url) = apt::mirror_for_suite(host, suite) {
        return Ok((url, MirrorSource::HostApt));
    }
    match &m.fallback {
        Some(f) => Ok((f.trim_end_matches('/').to_string(), MirrorSource::Fallback)),
        None => bail!("url: host, but no apt source on this machine serves {suite} (fix: pass --mirror URL or set a fallback)"),
    }
}

/// The .deb files of a bundle directory, sorted.
fn bundle_debs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("--k8s-bundle {}: no such directory", dir.display()))?;
    let mut debs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading --k8s-bundle {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    debs.sort();
    if debs.is_empty() {
        bail!(
            "--k8s-bundle {}: holds no .deb files (fix: put the kubeadm, kubelet, kubectl, cri-tools and kubernetes-cni .debs there)",
            dir.display()
        );
    }
    for p in &debs {
        if p.to_string_lossy().contains([',', ' ']) {
            bail!(
                "--k8s-bundle: {}: a path with a comma or space cannot be passed to mmdebstrap (fix: rename it)",
                p.display()
            );
        }
    }
    Ok(debs)
}

fn dedup_keep_order(v: &mut Vec<String>) {
    let mut seen = std::collections::BTreeSet::new();
    v.retain(|x| seen.insert(x.clone()));
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use piha_config::cluster::{ClusterFile, Runtime};

    use super::{MirrorSource, Plan, Profile, Request, resolve_mirror};
    use crate::arch::Arch;
    use crate::host::apt::parse_deb822;
    use crate::inputs::board::Board;
    use crate::inputs::distro::{Distro, Mirror};

    fn data() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
    }

    fn request(distro: &str, profile: Profile, runtime: Runtime) -> Request {
        let root = data();
        let bf = root.join("boards/amd64.yaml");
        let board = Board::parse(&bf, &std::fs::read_to_string(&bf).unwrap()).unwrap();
        let df = root.join(format!("distros/{distro}.yaml"));
        let text = std::fs::read_to_string(&df).unwrap();
        let distro = Distro::parse(&df, &text).unwrap();
        let cf = root.join("examples/qemu-lab.yaml");
        let mut cluster = ClusterFile::load(&cf).unwrap();
        cluster.kubernetes.runtime = runtime;
        Request {
            board,
            board_file: bf,
            distro,
            distro_file: df,
            distro_text: text,
            cluster,
            cluster_label: cf.display().to_string(),
            profile,
            k8s_bundle: None,
            mirror: None,
        }
    }

    fn host() -> Vec<crate::host::apt::AptSource> {
        parse_deb822(
            Path::new("debian.sources"),
            "Types: deb\nURIs: http://mirror.test/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://mirror.test/debian-security\nSuites: bookworm-security\nComponents: main\n",
        )
    }

    #[test]
    fn test_profile_skips_kubernetes_and_uses_host_mirror() {
        let p = Plan::resolve(request("debian-bookworm", Profile::Test, Runtime::Containerd), &host(), &data()).unwrap();
        assert_eq!(p.sources[0].release_url(), "http://mirror.test/debian/dists/bookworm/Release");
        assert_eq!(p.sources[2].url, "http://mirror.test/debian-security");
        assert_eq!(p.sources[0].from, MirrorSource::HostApt);
        assert!(p.extra_repos.is_empty());
        assert!(!p.packages.iter().any(|x| x == "kubeadm"));
        assert!(p.packages.iter().any(|x| x == "containerd"));
        assert!(p.packages.iter().any(|x| x == "keepalived"));
        assert_eq!(p.skipped[0].role, "kubernetes");
        assert!(p.overlays.iter().any(|o| o.ends_with("overlays/test")));
    }

    #[test]
    fn production_uses_pinned_repositories_and_never_the_test_overlay() {
        let p = Plan::resolve(request("debian-bookworm", Profile::Production, Runtime::Crio), &host(), &data()).unwrap();
        let urls: Vec<String> = p.reachables().into_iter().map(|r| r.url).collect();
        assert!(
            urls.contains(&"https://pkgs.k8s.io/core:/stable:/v1.34/deb/Release".to_string()),
            "{urls:?}"
        );
        assert!(urls.iter().any(|u| u.contains("cri-o:/stable:/v1.34/deb/Release")), "{urls:?}");
        assert!(p.packages.iter().any(|x| x == "kubeadm"));
        assert!(p.packages.iter().any(|x| x == "cri-o"));
        assert!(p.skipped.is_empty());
        assert!(!p.overlays.iter().any(|o| o.ends_with("test")));
    }

    #[test]
    fn mirror_flag_wins_for_the_main_suites() {
        let mut req = request("debian-bookworm", Profile::Test, Runtime::Containerd);
        req.mirror = Some("http://flag.test/debian/".into());
        let p = Plan::resolve(req, &host(), &data()).unwrap();
        assert_eq!(
            (p.sources[0].url.as_str(), p.sources[0].from),
            ("http://flag.test/debian", MirrorSource::Flag)
        );
        assert_eq!(p.sources[2].from, MirrorSource::HostApt, "security keeps its own mirror");
    }

    #[test]
    fn production_without_a_source_explains_both_routes() {
        let mut req = request("debian-bookworm", Profile::Production, Runtime::Containerd);
        req.distro.kubernetes_source = None;
        let err = format!("{:#}", Plan::resolve(req, &host(), &data()).unwrap_err());
        assert!(err.contains("--k8s-bundle") && err.contains("--profile test"), "{err}");
    }

    #[test]
    fn a_bundle_replaces_the_repositories() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "kubeadm_1.34.1-1.1_amd64.deb",
            "kubelet_1.34.1-1.1_amd64.deb",
            "cri-o_1.34.1-1.1_amd64.deb",
            "README",
        ] {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        let mut req = request("ubuntu-noble", Profile::Production, Runtime::Crio);
        req.k8s_bundle = Some(dir.path().to_path_buf());
        let p = Plan::resolve(req, &[], &data()).unwrap();
        assert!(p.extra_repos.is_empty(), "{:?}", p.extra_repos);
        assert_eq!(p.bundle_debs.len(), 3);
        assert!(!p.packages.iter().any(|x| x == "kubeadm" || x == "cri-o"));
        assert!(
            p.source_lines()
                .iter()
                .any(|l| l.starts_with("bundle ") && l.ends_with("kubeadm_1.34.1-1.1_amd64.deb"))
        );
        let empty = tempfile::tempdir().unwrap();
        let mut req = request("ubuntu-noble", Profile::Production, Runtime::Containerd);
        req.k8s_bundle = Some(empty.path().to_path_buf());
        assert!(format!("{:#}", Plan::resolve(req, &[], &data()).unwrap_err()).contains("holds no .deb files"));
    }

    #[test]
    fn ubuntu_arm64_uses_ports() {
        let m = Mirror {
            url: "http://archive.ubuntu.com/ubuntu".into(),
            fallback: None,
            arch: [(Arch::Arm64, "http://ports.ubuntu.com/ubuntu-ports".into())].into(),
        };
        assert_eq!(
            resolve_mirror(&m, "noble", Arch::Arm64, &[]).unwrap(),
            ("http://ports.ubuntu.com/ubuntu-ports".to_string(), MirrorSource::DistroFile)
        );
        assert_eq!(
            resolve_mirror(&m, "noble", Arch::Amd64, &[]).unwrap().0,
            "http://archive.ubuntu.com/ubuntu"
        );
        let host_only = Mirror {
            url: "host".into(),
            fallback: None,
            arch: Default::default(),
        };
        assert!(resolve_mirror(&host_only, "bookworm", Arch::Amd64, &[]).is_err());
    }
}
