//! The fallback way to cross-build the agent: a Debian trixie build root made
//! by mmdebstrap, holding trixie's rustc 1.85, cargo, the target's Rust
//! standard library (`libstd-rust-dev:arm64`) and a cross gcc, entered with
//! `chroot`. It needs nothing on the host but mmdebstrap and root, works where
//! rustup cannot download targets, and takes about 40 s to make once.
//!
//! Layout under the cache directory:
//! ```text
//! buildroot-trixie-<hash>/           the root (hash of the recipe below)
//!   piha/vendor-<lock hash>/         `cargo vendor` of Cargo.lock: offline, reproducible builds
//!   piha/src-<source hash>/          the agent's source set (see `sources`)
//!   piha/target/                     cargo's target dir, kept for incremental rebuilds
//!   piha/cargo-home/                 cargo's cache when the root's cargo vendors (no host cargo)
//! ```
//! Everything is created through a temporary sibling and a rename, so a build
//! killed halfway leaves nothing that looks finished. Nothing is mounted:
//! rustc and cargo need neither /proc nor /sys (mmdebstrap's root mode leaves
//! the /dev nodes they open, like /dev/null).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use piha_runner::{Cmd, Runner};
use sha2::{Digest, Sha256};

use super::cross::{AGENT_CARGO_CONFIG, STATIC_RUSTFLAGS, linker_var};
use super::sources;
use crate::arch::Arch;
use crate::host::apt;

/// The build root's suite: the first Debian release whose rustc (1.85) can
/// build edition 2024 crates.
pub const SUITE: &str = "trixie";

/// Bumped when the recipe changes in a way the package list does not show.
const RECIPE_VERSION: &str = "1";

/// Old sources and vendor trees older than this are pruned; newer ones may
/// belong to a build running right now.
const PRUNE_AGE: Duration = Duration::from_secs(24 * 3600);

/// The packages of the build root for `target` on a host of Debian
/// architecture `host`: the host's rustc and cargo, the target's std, a cross
/// linker with its static C library, and CA certificates for `cargo vendor`.
pub fn packages(host: Arch, target: Arch) -> Vec<String> {
    let mut p: Vec<String> = ["rustc", "cargo", "ca-certificates"].iter().map(|s| s.to_string()).collect();
    if target != host {
        p.push(format!("libstd-rust-dev:{target}"));
        p.push(format!("gcc-{}", target.gnu_prefix().replace('_', "-")));
        p.push(format!("libc6-dev-{target}-cross"));
    }
    p
}

/// The build root directory for `target` under `cache_dir`.
pub fn root_dir(cache_dir: &Path, host: Arch, target: Arch) -> PathBuf {
    let mut h = Sha256::new();
    for part in [RECIPE_VERSION, SUITE, host.deb(), target.deb(), &packages(host, target).join(",")] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    cache_dir.join(format!("buildroot-{SUITE}-{}", &hex::encode(h.finalize())[..16]))
}

/// The Debian mirror for the build root: `explicit` (`piha build --mirror`
/// on a Debian build), else the host's apt source for trixie, else for any
/// other Debian release (one archive serves them all). No mirror host is
/// named here.
fn debian_mirror(explicit: Option<&str>) -> anyhow::Result<String> {
    if let Some(m) = explicit {
        return Ok(m.trim_end_matches('/').to_string());
    }
    let sources = apt::host_sources(Path::new("/"));
    let debian_suites = [SUITE, "bookworm", "forky", "sid", "unstable", "testing", "stable", "bullseye"];
    for suite in debian_suites {
        if let Some(m) = apt::mirror_for_suite(&sources, suite) {
            return Ok(m);
        }
    }
    bail!(
        "no Debian source in this host's apt configuration (/etc/apt/sources.list, sources.list.d/) to make the {SUITE} build root \
         that cross-builds piha-agent from (fix: pass --mirror URL of a Debian mirror, or install a rustup target or cross)"
    )
}

/// Makes the build root unless it exists; returns its path.
pub fn ensure(cache_dir: &Path, host: Arch, target: Arch, mirror: Option<&str>, runner: &dyn Runner) -> anyhow::Result<PathBuf> {
    let root = root_dir(cache_dir, host, target);
    if root.join("usr/bin/cargo").exists() {
        return Ok(root);
    }
    fs::create_dir_all(cache_dir).with_context(|| format!("creating {}", cache_dir.display()))?;
    let mirror = debian_mirror(mirror)?;
    // mmdebstrap wants a directory that does not exist or is empty; it is
    // renamed into place only once complete.
    let tmp = cache_dir.join(format!(
        ".{}.tmp-{}",
        root.file_name().and_then(|n| n.to_str()).unwrap_or("buildroot"),
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&tmp);
    let arches = if target == host {
        host.to_string()
    } else {
        format!("{host},{target}")
    };
    let cmd = Cmd::new("mmdebstrap")
        .arg("--variant=apt")
        .arg(format!("--architectures={arches}"))
        .arg(format!("--include={}", packages(host, target).join(",")))
        .arg("--quiet")
        .arg(SUITE)
        .arg(&tmp)
        .arg(&mirror);
    log::info!(
        "making the {SUITE} build root for {target} agents in {} (once; about a minute)",
        root.display()
    );
    if let Err(e) = runner.run(&cmd) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e).with_context(|| {
            format!(
                "making the {SUITE} build root {} from {mirror} (needs root and mmdebstrap)",
                root.display()
            )
        });
    }
    if let Err(e) = fs::rename(&tmp, &root) {
        let _ = fs::remove_dir_all(&tmp);
        // A concurrent build finished first; use its root.
        if !root.join("usr/bin/cargo").exists() {
            return Err(e).with_context(|| format!("renaming {} to {}", tmp.display(), root.display()));
        }
    }
    Ok(root)
}

/// `chroot ROOT env -i [VAR=value...] PROGRAM`: a clean environment, so
/// nothing of the caller's (RUSTFLAGS, CARGO_* of an outer `cargo test`)
/// leaks into the build; `extra_env` adds to it.
fn chroot_cmd(root: &Path, target: Arch, extra_env: &[String], program: &str) -> Cmd {
    Cmd::new("chroot")
        .arg(root)
        .args([
            "/usr/bin/env",
            "-i",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME=/root",
            "LANG=C.UTF-8",
        ])
        .arg("CARGO_HOME=/piha/cargo-home")
        .arg(format!("CARGO_ENCODED_RUSTFLAGS={STATIC_RUSTFLAGS}"))
        .arg(format!("{}={}-gcc", linker_var(target), target.gnu_prefix()))
        .args(extra_env)
        .arg(program)
}

/// Vendors the crates of `Cargo.lock` into the build root (once per lock);
/// returns the vendor directory as seen inside the root.
///
/// The host's cargo does it when there is one: it carries the host's network
/// setup (proxies, CA certificates, registry mirrors in `~/.cargo/config.toml`),
/// which the build root does not have. Without one, the root's cargo does it,
/// given the host's resolver, CA bundle and proxy variables.
fn ensure_vendor(root: &Path, src_in_root: &str, lock_hash: &str, target: Arch, runner: &dyn Runner) -> anyhow::Result<String> {
    let name = format!("vendor-{}", &lock_hash[..16]);
    let inside = format!("/piha/{name}");
    let host_path = root.join("piha").join(&name);
    if host_path.is_dir() {
        return Ok(inside);
    }
    let tmp_inside = format!("/piha/.{name}.tmp-{}", std::process::id());
    let tmp = root.join(tmp_inside.trim_start_matches('/'));
    let _ = fs::remove_dir_all(&tmp);
    let vendor_args = ["vendor", "--locked", "--versioned-dirs", "--quiet", "--manifest-path"];
    let cmd = if runner.run(&Cmd::new("cargo").arg("--version")).is_ok() {
        Cmd::new("cargo")
            .args(vendor_args)
            .arg(root.join(src_in_root.trim_start_matches('/')).join("Cargo.toml"))
            .arg(&tmp)
    } else {
        fs::copy("/etc/resolv.conf", root.join("etc/resolv.conf")).context("copying /etc/resolv.conf into the build root")?;
        // `env -i` drops the caller's environment; put back what reaches the network.
        let mut env = Vec::new();
        let host_ca = Path::new("/etc/ssl/certs/ca-certificates.crt");
        if host_ca.is_file() {
            fs::copy(host_ca, root.join("piha/host-ca.crt")).with_context(|| format!("copying {}", host_ca.display()))?;
            env.push("CARGO_HTTP_CAINFO=/piha/host-ca.crt".to_string());
        }
        for var in ["https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY"] {
            if let Ok(v) = std::env::var(var) {
                env.push(format!("{var}={v}"));
            }
        }
        chroot_cmd(root, target, &env, "cargo")
            .args(vendor_args)
            .arg(format!("{src_in_root}/Cargo.toml"))
            .arg(&tmp_inside)
    };
    if let Err(e) = runner.run(&cmd) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e)
            .context("vendoring the agent's crates from crates.io (is Cargo.lock up to date? run `cargo build` in the checkout once)");
    }
    if let Err(e) = fs::rename(&tmp, &host_path) {
        let _ = fs::remove_dir_all(&tmp);
        if !host_path.is_dir() {
            return Err(e).with_context(|| format!("renaming {} to {}", tmp.display(), host_path.display()));
        }
    }
    Ok(inside)
}

/// Builds the agent in the build root at `root`; returns the binary's path
/// on the host.
pub fn build(root: &Path, workspace: &Path, source_hash: &str, target: Arch, runner: &dyn Runner) -> anyhow::Result<PathBuf> {
    let files = sources::list(workspace)?;
    let src_name = format!("src-{}", &source_hash[..16]);
    let src_inside = format!("/piha/{src_name}");
    sources::stage(workspace, &files, &root.join("piha").join(&src_name))?;
    let lock_hash = sources::lock_hash(workspace)?;
    let vendor = ensure_vendor(root, &src_inside, &lock_hash, target, runner)?;
    prune(&root.join("piha"), &[src_name.as_str(), &format!("vendor-{}", &lock_hash[..16])]);

    let cmd = chroot_cmd(root, target, &[], "cargo")
        .args([
            "build",
            "--release",
            "--locked",
            "--offline",
            "-p",
            "piha-agent",
            "--target",
            target.rust_target(),
        ])
        .arg("--manifest-path")
        .arg(format!("{src_inside}/Cargo.toml"))
        .args(["--target-dir", "/piha/target", "--config", AGENT_CARGO_CONFIG])
        .args(["--config", "source.crates-io.replace-with=\"piha-vendored\""])
        .arg("--config")
        .arg(format!("source.piha-vendored.directory=\"{vendor}\""));
    runner.run(&cmd).with_context(|| {
        format!(
            "building piha-agent for {} with {SUITE}'s rustc 1.85 in {} (the agent, piha-config and piha-runner must build on Rust 1.85)",
            target.rust_target(),
            root.display()
        )
    })?;
    let bin = root.join("piha/target").join(target.rust_target()).join("release/piha-agent");
    if !bin.is_file() {
        bail!("cargo finished but {} is missing", bin.display());
    }
    Ok(bin)
}

/// Removes `src-*` and `vendor-*` trees under `dir` older than a day, except `keep`.
fn prune(dir: &Path, keep: &[&str]) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    let now = SystemTime::now();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("src-") || name.starts_with("vendor-")) || keep.contains(&name.as_str()) {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > PRUNE_AGE);
        if old {
            log::info!("pruning {}", e.path().display());
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use piha_runner::RecordingRunner;

    use super::{chroot_cmd, debian_mirror, packages, root_dir};
    use crate::arch::Arch;

    #[test]
    fn arm64_packages_on_amd64() {
        assert_eq!(
            packages(Arch::Amd64, Arch::Arm64),
            [
                "rustc",
                "cargo",
                "ca-certificates",
                "libstd-rust-dev:arm64",
                "gcc-aarch64-linux-gnu",
                "libc6-dev-arm64-cross"
            ]
        );
        assert_eq!(
            packages(Arch::Arm64, Arch::Amd64)[3..],
            ["libstd-rust-dev:amd64", "gcc-x86-64-linux-gnu", "libc6-dev-amd64-cross"]
        );
    }

    #[test]
    fn explicit_mirror_wins() {
        assert_eq!(debian_mirror(Some("http://m.example/debian/")).unwrap(), "http://m.example/debian");
    }

    #[test]
    fn root_depends_on_recipe() {
        let a = root_dir(Path::new("/c"), Arch::Amd64, Arch::Arm64);
        let b = root_dir(Path::new("/c"), Arch::Amd64, Arch::Amd64);
        assert_ne!(a, b);
        assert!(a.to_string_lossy().starts_with("/c/buildroot-trixie-"), "{}", a.display());
    }

    #[test]
    fn chroot_environment_is_clean_and_static() {
        let runner = RecordingRunner::new();
        let cmd = chroot_cmd(Path::new("/r"), Arch::Arm64, &["X=1".to_string()], "cargo").arg("build");
        piha_runner::Runner::run(&runner, &cmd).unwrap();
        let line = &runner.command_lines()[0];
        assert!(line.starts_with("chroot /r /usr/bin/env -i "), "{line}");
        assert!(line.contains("CARGO_ENCODED_RUSTFLAGS=-Ctarget-feature=+crt-static"), "{line}");
        assert!(
            line.contains("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc"),
            "{line}"
        );
        assert!(line.ends_with("X=1 cargo build"), "{line}");
    }
}
