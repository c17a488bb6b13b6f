//! Builds the `piha-agent` binary an image carries, for the image's
//! architecture, from this checkout.
//!
//! Four ways, tried in this order by [`detect`] (and printed by `piha doctor`):
//! 1. native: the image's architecture is the host's; plain `cargo`;
//! 2. an installed rustup target plus its cross gcc (`aarch64-linux-gnu-gcc`);
//! 3. `cross`, when a container engine actually answers (`docker info`), not
//!    just when a docker CLI is installed;
//! 4. a Debian trixie build root made by mmdebstrap (see [`super::buildroot`]): needs
//!    nothing but mmdebstrap and root, so it is the fallback that always works.
//!
//! Every way, native included, links statically (`+crt-static`): the binary then runs on any
//! glibc userland of its architecture, Debian 12 and Ubuntu 24.04 alike, no
//! matter which glibc the build used. Binaries are cached under
//! `<cache>/agent/<triple>-<way>-<hash>/piha-agent`, keyed by the agent's
//! source set (see [`super::sources`]), so a warm build costs one hash.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use piha_runner::{Cmd, Runner};
use sha2::{Digest, Sha256};

use super::{buildroot, elf, sources};
use crate::arch::Arch;
use crate::pipeline::cache::Cache;

/// Link the C runtime statically (as `CARGO_ENCODED_RUSTFLAGS`; with an
/// explicit `--target` it applies to the agent, not to build scripts or proc macros).
pub const STATIC_RUSTFLAGS: &str = "-Ctarget-feature=+crt-static";

/// Cargo `--config` for the agent's build: no LTO. The workspace's release
/// profile uses thin LTO for `piha`; for the agent it made a one-line change
/// cost 72 s instead of 20 s in the trixie build root (2 cores), for a
/// binary 5% smaller (4.04 vs 4.24 MB).
pub const AGENT_CARGO_CONFIG: &str = "profile.release.lto=false";

/// How the agent will be built for an architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentBuildPath {
    /// The host's own architecture: the host's cargo.
    Native,
    /// `rustup target add` was done and the cross gcc is installed.
    RustupTarget,
    /// `cross` with a working container engine.
    Cross,
    /// A Debian trixie build root with rustc 1.85 (mmdebstrap + chroot).
    TrixieBuildroot,
}

impl AgentBuildPath {
    /// A short name for cache keys and logs.
    pub fn slug(self) -> &'static str {
        match self {
            AgentBuildPath::Native => "native",
            AgentBuildPath::RustupTarget => "rustup",
            AgentBuildPath::Cross => "cross",
            AgentBuildPath::TrixieBuildroot => "trixie",
        }
    }
}

impl fmt::Display for AgentBuildPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AgentBuildPath::Native => "native cargo build",
            AgentBuildPath::RustupTarget => "cargo with the installed rustup target and cross gcc",
            AgentBuildPath::Cross => "cross (container engine)",
            AgentBuildPath::TrixieBuildroot => "Debian trixie build root (mmdebstrap + chroot, rustc 1.85)",
        })
    }
}

/// Which way [`build_agent`] will build for `arch` on this host; the probes
/// (`rustup`, the cross gcc, `cross`, `docker info`) are run by `runner`.
pub fn detect(arch: Arch, runner: &dyn Runner) -> AgentBuildPath {
    if Arch::host() == Some(arch) {
        return AgentBuildPath::Native;
    }
    let succeeds = |cmd: Cmd| runner.run(&cmd).is_ok();
    let has_target = runner
        .run(&Cmd::new("rustup").args(["target", "list", "--installed"]))
        .is_ok_and(|o| o.stdout_str().lines().any(|l| l.trim() == arch.rust_target()));
    if has_target && succeeds(Cmd::new(format!("{}-gcc", arch.gnu_prefix())).arg("--version")) {
        return AgentBuildPath::RustupTarget;
    }
    if succeeds(Cmd::new("cross").arg("--version")) && succeeds(Cmd::new(container_engine(runner)).arg("info")) {
        return AgentBuildPath::Cross;
    }
    AgentBuildPath::TrixieBuildroot
}

/// The engine `cross` will use: `$CROSS_CONTAINER_ENGINE`, else docker when
/// its CLI is installed, else podman (cross's own rule). A docker CLI without
/// a daemon then fails `docker info`, as `cross` itself would.
fn container_engine(runner: &dyn Runner) -> String {
    if let Ok(e) = std::env::var("CROSS_CONTAINER_ENGINE") {
        return e;
    }
    if runner.run(&Cmd::new("docker").arg("--version")).is_ok() {
        "docker".to_string()
    } else {
        "podman".to_string()
    }
}

/// Where the agent is built from and kept.
#[derive(Debug, Clone, Copy)]
pub struct Workspace<'a> {
    /// The piha checkout holding the agent's sources.
    pub checkout: &'a Path,
    /// The cache: built binaries, cargo's target directories, the build root.
    pub cache_dir: &'a Path,
    /// The Debian mirror a trixie build root is made from; `None`: the host's
    /// apt configuration's.
    pub debian_mirror: Option<&'a str>,
}

/// Builds (or finds in the cache) the statically linked `piha-agent` for
/// `arch` along `way` (from [`detect`]); returns its path under the cache
/// and whether it was there already.
pub fn build_agent(arch: Arch, way: AgentBuildPath, ws: &Workspace, runner: &dyn Runner) -> anyhow::Result<(PathBuf, Cache)> {
    let files = sources::list(ws.checkout)?;
    let hash = sources::hash(ws.checkout, &files)?;
    // The key also covers how the binary is built, so changing that rebuilds it.
    let key = hex::encode(Sha256::digest(format!("{hash}\0{STATIC_RUSTFLAGS}\0{AGENT_CARGO_CONFIG}")));
    let dir = ws
        .cache_dir
        .join("agent")
        .join(format!("{}-{}-{}", arch.rust_target(), way.slug(), &key[..16]));
    let bin = dir.join("piha-agent");
    if bin.is_file() {
        log::info!("piha-agent for {arch}: cached {}", bin.display());
        return Ok((bin, Cache::Hit));
    }
    log::info!("building piha-agent for {arch} by {way}");
    let built = match way {
        AgentBuildPath::Native | AgentBuildPath::RustupTarget => cargo_build(way, "cargo", ws, arch, runner)?,
        AgentBuildPath::Cross => cargo_build(way, "cross", ws, arch, runner)?,
        AgentBuildPath::TrixieBuildroot => {
            let host = Arch::host().context("the build root needs a host of an architecture piha builds for (amd64 or arm64)")?;
            let root = buildroot::ensure(ws.cache_dir, host, arch, ws.debian_mirror, runner)?;
            buildroot::build(&root, ws.checkout, &hash, arch, runner)?
        }
    };
    let data = fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    elf::check_static(&built, &data, arch)?;
    sources::write_atomic(&bin, &data, 0o755)?;
    Ok((bin, Cache::Miss))
}

/// `cargo`/`cross build` on the host, into a target dir of piha's own (not the
/// workspace's: different RUSTFLAGS would make the two evict each other).
/// The explicit `--target` keeps the static RUSTFLAGS off build scripts and
/// proc macros, the host's architecture included.
fn cargo_build(way: AgentBuildPath, program: &str, ws: &Workspace, arch: Arch, runner: &dyn Runner) -> anyhow::Result<PathBuf> {
    let triple = arch.rust_target();
    let target_dir = ws.cache_dir.join(format!("agent-target-{}", way.slug()));
    let mut cmd = Cmd::new(program)
        .args(["build", "--release", "--locked", "-p", "piha-agent", "--target", triple])
        .arg("--manifest-path")
        .arg(ws.checkout.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .args(["--config", AGENT_CARGO_CONFIG])
        .env("CARGO_ENCODED_RUSTFLAGS", STATIC_RUSTFLAGS);
    if way == AgentBuildPath::RustupTarget {
        cmd = cmd.env(linker_var(arch), format!("{}-gcc", arch.gnu_prefix()));
    }
    if way == AgentBuildPath::Cross {
        // cross passes the command line, not the host's environment, into its container.
        cmd = cmd
            .arg("--config")
            .arg(format!("target.{triple}.rustflags=[\"-C\", \"target-feature=+crt-static\"]"));
    }
    runner
        .run(&cmd)
        .with_context(|| format!("building piha-agent for {triple} ({way}) from {}", ws.checkout.display()))?;
    Ok(target_dir.join(triple).join("release/piha-agent"))
}

/// Cargo's variable naming the linker for `arch`'s target.
pub fn linker_var(arch: Arch) -> String {
    format!("CARGO_TARGET_{}_LINKER", arch.rust_target().to_uppercase().replace('-', "_"))
}

#[cfg(test)]
mod tests {
    use piha_runner::{Output, RecordingRunner};

    use super::{AgentBuildPath, detect};
    use crate::arch::Arch;

    fn ok(stdout: &str) -> Result<Output, String> {
        Ok(Output {
            stdout: stdout.as_bytes().to_vec(),
            stderr: Vec::new(),
        })
    }

    fn host() -> Arch {
        Arch::host().expect("tests run on amd64 or arm64")
    }

    fn foreign() -> Arch {
        if host() == Arch::Amd64 { Arch::Arm64 } else { Arch::Amd64 }
    }

    #[test]
    fn host_arch_is_native() {
        assert_eq!(detect(host(), &RecordingRunner::new()), AgentBuildPath::Native);
    }

    #[test]
    fn installed_rustup_target_with_linker() {
        let r = RecordingRunner::new();
        r.respond("rustup", ok(&format!("x86_64-unknown-linux-gnu\n{}\n", foreign().rust_target())));
        assert_eq!(detect(foreign(), &r), AgentBuildPath::RustupTarget);
    }

    #[test]
    fn rustup_target_without_linker_is_not_enough() {
        let r = RecordingRunner::new();
        r.respond("rustup", ok(foreign().rust_target()));
        r.respond(&format!("{}-gcc", foreign().gnu_prefix()), Err("not found".into()));
        r.respond("cross", Err("not found".into()));
        assert_eq!(detect(foreign(), &r), AgentBuildPath::TrixieBuildroot);
    }

    #[test]
    fn docker_cli_without_daemon_is_not_cross() {
        let r = RecordingRunner::new();
        r.respond("rustup", ok("x86_64-unknown-linux-gnu\n"));
        r.respond("cross", ok("cross 0.2.5"));
        r.respond("docker", ok("Docker version 27"));
        r.respond("docker", Err("Cannot connect to the Docker daemon".into()));
        assert_eq!(detect(foreign(), &r), AgentBuildPath::TrixieBuildroot);
        let lines = r.command_lines();
        assert!(lines.contains(&"docker info".to_string()), "{lines:?}");
    }

    #[test]
    fn cross_with_working_engine() {
        let r = RecordingRunner::new();
        r.respond("rustup", ok(""));
        assert_eq!(detect(foreign(), &r), AgentBuildPath::Cross);
    }
}
