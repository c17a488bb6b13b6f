//! Builds the `piha-agent` binary an image carries, for the image's
//! architecture, from this checkout.
//!
//! Four ways, tried in this order by [`detect`] (and printed by `piha doctor`):
//! 1. native: the image's architecture is the host's; plain `cargo`;
//! 2. an installed rustup target plus its cross gcc (`aarch64-linux-gnu-gcc`);
//! 3. `cross`, when a container engine actually answers (`docker info`), not
//!    just when a docker CLI is installed;
//! 4. a Debian trixie build root made by mmdebstrap (see [`buildroot`]): needs
//!    nothing but mmdebstrap and root, so it is the fallback that always works.
//!
//! Every way links statically (`+crt-static`): the binary then runs on any
//! glibc userland of its architecture, Debian 12 and Ubuntu 24.04 alike, no
//! matter which glibc the build used. Binaries are cached under
//! `<cache>/agent/<triple>-<way>-<hash>/piha-agent`, keyed by the agent's
//! source set (see [`sources`]), so a warm build costs one hash.

pub mod buildroot;
pub mod sources;

use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use piha_runner::{Cmd, Runner, SystemRunner};
use sha2::{Digest, Sha256};

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

/// An architecture piha builds agents for.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    /// Debian's name: `arm64`.
    pub deb: &'static str,
    /// Rust's target triple: `aarch64-unknown-linux-gnu`.
    pub triple: &'static str,
    /// The GNU toolchain prefix: `aarch64-linux-gnu` (`aarch64-linux-gnu-gcc`).
    pub gnu_prefix: &'static str,
    /// ELF `e_machine` of its binaries (EM_AARCH64 = 183, EM_X86_64 = 62).
    pub elf_machine: u16,
}

const TARGETS: &[Target] = &[
    Target {
        deb: "arm64",
        triple: "aarch64-unknown-linux-gnu",
        gnu_prefix: "aarch64-linux-gnu",
        elf_machine: 183,
    },
    Target {
        deb: "amd64",
        triple: "x86_64-unknown-linux-gnu",
        gnu_prefix: "x86_64-linux-gnu",
        elf_machine: 62,
    },
];

/// The target for a Debian (`arm64`) or Rust/kernel (`aarch64`) architecture name.
pub fn target(arch: &str) -> anyhow::Result<&'static Target> {
    TARGETS
        .iter()
        .find(|t| t.deb == arch || t.triple.split('-').next() == Some(arch))
        .with_context(|| format!("no agent build for architecture {arch:?} (piha builds arm64 and amd64)"))
}

/// The host's Debian architecture name.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Which way [`build_agent`] will build for `arch` on this host.
pub fn detect(arch: &str) -> AgentBuildPath {
    detect_with(arch, &SystemRunner)
}

/// [`detect`] with its probes (`rustup`, `cross`, `docker info`) run by `runner`.
pub fn detect_with(arch: &str, runner: &dyn Runner) -> AgentBuildPath {
    let Ok(t) = target(arch) else {
        return AgentBuildPath::TrixieBuildroot;
    };
    if t.deb == host_arch() {
        return AgentBuildPath::Native;
    }
    let succeeds = |cmd: Cmd| runner.run(&cmd).is_ok();
    let has_target = runner
        .run(&Cmd::new("rustup").args(["target", "list", "--installed"]))
        .is_ok_and(|o| o.stdout_str().lines().any(|l| l.trim() == t.triple));
    if has_target && succeeds(Cmd::new(format!("{}-gcc", t.gnu_prefix)).arg("--version")) {
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

/// Builds (or finds in the cache) the `piha-agent` binary for `arch` from the
/// checkout at `workspace`; returns its path under `cache_dir`.
pub fn build_agent(arch: &str, workspace: &Path, cache_dir: &Path, runner: &dyn Runner) -> anyhow::Result<PathBuf> {
    build_agent_with_mirror(arch, detect_with(arch, runner), workspace, cache_dir, None, runner)
}

/// [`build_agent`] along `way` (from [`detect_with`]), with the Debian mirror
/// the trixie build root (if that is the way) is made from; `None`: the
/// host's apt configuration's.
pub fn build_agent_with_mirror(
    arch: &str,
    way: AgentBuildPath,
    workspace: &Path,
    cache_dir: &Path,
    debian_mirror: Option<&str>,
    runner: &dyn Runner,
) -> anyhow::Result<PathBuf> {
    let t = target(arch)?;
    let files = sources::list(workspace)?;
    let hash = sources::hash(workspace, &files)?;
    // The key also covers how the binary is built, so changing that rebuilds it.
    let key = hex::encode(Sha256::digest(format!("{hash}\0{STATIC_RUSTFLAGS}\0{AGENT_CARGO_CONFIG}")));
    let dir = cache_dir.join("agent").join(format!("{}-{}-{}", t.triple, way.slug(), &key[..16]));
    let bin = dir.join("piha-agent");
    if bin.is_file() {
        log::info!("piha-agent for {}: cached {}", t.deb, bin.display());
        return Ok(bin);
    }
    log::info!("building piha-agent for {} by {way}", t.deb);
    let built = match way {
        AgentBuildPath::Native | AgentBuildPath::RustupTarget => cargo_build(way, "cargo", workspace, cache_dir, t, runner)?,
        AgentBuildPath::Cross => cargo_build(way, "cross", workspace, cache_dir, t, runner)?,
        AgentBuildPath::TrixieBuildroot => {
            let root = buildroot::ensure(cache_dir, host_arch(), t, debian_mirror, runner)?;
            buildroot::build(&root, workspace, &hash, t, runner)?
        }
    };
    check_elf(&built, t)?;
    let data = fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    sources::write_atomic(&bin, &data, 0o755)?;
    Ok(bin)
}

/// `cargo`/`cross build` on the host, into a target dir of piha's own (not the
/// workspace's: different RUSTFLAGS would make the two evict each other).
fn cargo_build(
    way: AgentBuildPath,
    program: &str,
    workspace: &Path,
    cache_dir: &Path,
    t: &Target,
    runner: &dyn Runner,
) -> anyhow::Result<PathBuf> {
    let target_dir = cache_dir.join(format!("agent-target-{}", way.slug()));
    let mut cmd = Cmd::new(program)
        .args(["build", "--release", "--locked", "-p", "piha-agent", "--target", t.triple])
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .args(["--config", AGENT_CARGO_CONFIG])
        .env("CARGO_ENCODED_RUSTFLAGS", STATIC_RUSTFLAGS);
    if way == AgentBuildPath::RustupTarget {
        let var = format!("CARGO_TARGET_{}_LINKER", t.triple.to_uppercase().replace('-', "_"));
        cmd = cmd.env(var, format!("{}-gcc", t.gnu_prefix));
    }
    if way == AgentBuildPath::Cross {
        // cross passes the command line, not the host's environment, into its container.
        cmd = cmd
            .arg("--config")
            .arg(format!("target.{}.rustflags=[\"-C\", \"target-feature=+crt-static\"]", t.triple));
    }
    runner
        .run(&cmd)
        .with_context(|| format!("building piha-agent for {} ({way}) from {}", t.triple, workspace.display()))?;
    Ok(target_dir.join(t.triple).join("release/piha-agent"))
}

/// What the ELF header and program headers of a binary say.
#[derive(Debug, PartialEq, Eq)]
pub struct ElfInfo {
    pub machine: u16,
    /// A PT_INTERP header: the binary needs a dynamic loader.
    pub dynamic: bool,
}

/// Reads the ELF64 little-endian header and program headers of `path`.
pub fn elf_info(path: &Path) -> anyhow::Result<ElfInfo> {
    let mut data = Vec::new();
    fs::File::open(path)
        .and_then(|mut f| f.by_ref().take(1 << 20).read_to_end(&mut data))
        .with_context(|| format!("reading {}", path.display()))?;
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| data.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let u64_at = |o: usize| data.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    if data.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        bail!("{} is not a 64-bit little-endian ELF file", path.display());
    }
    let short = || anyhow::anyhow!("{} has a truncated ELF header", path.display());
    let machine = u16_at(18).ok_or_else(short)?;
    let phoff = u64_at(32).ok_or_else(short)? as usize;
    let phentsize = u16_at(54).ok_or_else(short)? as usize;
    let phnum = u16_at(56).ok_or_else(short)? as usize;
    let mut dynamic = false;
    for i in 0..phnum {
        // PT_INTERP = 3
        if u32_at(phoff + i * phentsize).ok_or_else(short)? == 3 {
            dynamic = true;
        }
    }
    Ok(ElfInfo { machine, dynamic })
}

/// The binary is for `t` and statically linked, or the build went wrong.
fn check_elf(path: &Path, t: &Target) -> anyhow::Result<()> {
    let info = elf_info(path)?;
    if info.machine != t.elf_machine {
        bail!(
            "{} was built for ELF machine {}, not {} ({})",
            path.display(),
            info.machine,
            t.elf_machine,
            t.triple
        );
    }
    if info.dynamic {
        bail!(
            "{} is dynamically linked; the agent must be static (RUSTFLAGS {STATIC_RUSTFLAGS} was overridden?)",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use piha_runner::{Output, RecordingRunner};

    use super::{AgentBuildPath, detect_with, elf_info, host_arch, target};

    fn ok(stdout: &str) -> Result<Output, String> {
        Ok(Output {
            stdout: stdout.as_bytes().to_vec(),
            stderr: Vec::new(),
        })
    }

    fn foreign() -> &'static str {
        if host_arch() == "amd64" { "arm64" } else { "amd64" }
    }

    #[test]
    fn targets_by_either_name() {
        assert_eq!(target("arm64").unwrap().triple, "aarch64-unknown-linux-gnu");
        assert_eq!(target("aarch64").unwrap().deb, "arm64");
        assert_eq!(target("x86_64").unwrap().elf_machine, 62);
        assert!(target("riscv64").unwrap_err().to_string().contains("riscv64"));
    }

    #[test]
    fn host_arch_is_native() {
        assert_eq!(detect_with(host_arch(), &RecordingRunner::new()), AgentBuildPath::Native);
    }

    #[test]
    fn installed_rustup_target_with_linker() {
        let r = RecordingRunner::new();
        let t = target(foreign()).unwrap();
        r.respond("rustup", ok(&format!("x86_64-unknown-linux-gnu\n{}\n", t.triple)));
        assert_eq!(detect_with(foreign(), &r), AgentBuildPath::RustupTarget);
    }

    #[test]
    fn rustup_target_without_linker_is_not_enough() {
        let r = RecordingRunner::new();
        let t = target(foreign()).unwrap();
        r.respond("rustup", ok(t.triple));
        r.respond(&format!("{}-gcc", t.gnu_prefix), Err("not found".into()));
        r.respond("cross", Err("not found".into()));
        assert_eq!(detect_with(foreign(), &r), AgentBuildPath::TrixieBuildroot);
    }

    #[test]
    fn docker_cli_without_daemon_is_not_cross() {
        let r = RecordingRunner::new();
        r.respond("rustup", ok("x86_64-unknown-linux-gnu\n"));
        r.respond("cross", ok("cross 0.2.5"));
        r.respond("docker", ok("Docker version 27"));
        r.respond("docker", Err("Cannot connect to the Docker daemon".into()));
        assert_eq!(detect_with(foreign(), &r), AgentBuildPath::TrixieBuildroot);
        let lines = r.command_lines();
        assert!(lines.contains(&"docker info".to_string()), "{lines:?}");
    }

    #[test]
    fn cross_with_working_engine() {
        let r = RecordingRunner::new();
        r.respond("rustup", ok(""));
        assert_eq!(detect_with(foreign(), &r), AgentBuildPath::Cross);
    }

    #[test]
    fn elf_of_the_test_binary() {
        let exe = std::env::current_exe().unwrap();
        let info = elf_info(&exe).unwrap();
        assert_eq!(info.machine, target(host_arch()).unwrap().elf_machine);
    }

    #[test]
    fn not_elf_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        assert!(elf_info(&p).unwrap_err().to_string().contains("not a 64-bit"));
    }
}
