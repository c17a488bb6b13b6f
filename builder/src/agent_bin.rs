//! The `piha-agent` binary that goes into an image, built for the image's
//! architecture from this checkout: `$PIHA_AGENT_BIN` when set (checked to be
//! an ELF for the right machine), else `cargo build --release -p piha-agent`
//! of the workspace at `catalog::data_dir()` for the host's architecture, else
//! a cross build along the way `crate::cross::detect` picks (rustup target,
//! `cross`, or the Debian trixie build root).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use piha_runner::{Cmd, Runner};
use serde::Deserialize;

use crate::board::Arch;
use crate::catalog;
use crate::cross;
use crate::plan::sha256_hex;
use crate::progress::Progress;

/// Where an agent binary came from and its content.
#[derive(Debug, Clone)]
pub struct AgentBinary {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    pub sha256: String,
    /// `PIHA_AGENT_BIN` or `cargo build`.
    pub origin: String,
}

/// The ELF `e_machine` of a binary, if it is an ELF file.
fn elf_machine(bytes: &[u8]) -> Option<u16> {
    if bytes.len() < 20 || &bytes[..4] != b"\x7fELF" {
        return None;
    }
    // e_machine at offset 18, little-endian for both architectures piha builds.
    Some(u16::from_le_bytes([bytes[18], bytes[19]]))
}

fn machine_of(arch: Arch) -> u16 {
    match arch {
        Arch::Amd64 => 62,  // EM_X86_64
        Arch::Arm64 => 183, // EM_AARCH64
    }
}

/// Checks that `bytes` is an executable for `arch`.
pub fn check_arch(path: &Path, bytes: &[u8], arch: Arch) -> anyhow::Result<()> {
    match elf_machine(bytes) {
        Some(m) if m == machine_of(arch) => Ok(()),
        Some(m) => bail!(
            "{} is an ELF binary for machine {m}, not for {arch} (fix: build piha-agent for {})",
            path.display(),
            arch.rust_target()
        ),
        None => bail!(
            "{} is not an ELF executable (fix: point PIHA_AGENT_BIN at a piha-agent binary)",
            path.display()
        ),
    }
}

/// Finds or builds the agent for `arch`. `cache` holds cross-built agents and
/// the build root; `debian_mirror` is the mirror a trixie build root is made
/// from when the host's apt configuration has no Debian source.
pub fn agent_binary(
    arch: Arch,
    cache: &Path,
    debian_mirror: Option<&str>,
    runner: &dyn Runner,
    progress: &Progress,
) -> anyhow::Result<AgentBinary> {
    if let Some(p) = std::env::var_os("PIHA_AGENT_BIN").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(p);
        return load(&path, arch, "PIHA_AGENT_BIN");
    }
    let root = catalog::data_dir();
    let manifest = root.join("Cargo.toml");
    if !root.join("agent/Cargo.toml").exists() {
        bail!(
            "{} is not a piha source checkout, so piha-agent cannot be built from it (fix: set PIHA_AGENT_BIN to a piha-agent binary, or PIHA_DATA_DIR to a checkout)",
            root.display()
        );
    }
    if Some(arch) != Arch::host() {
        let way = cross::detect_with(arch.deb(), runner);
        let task = progress.task(&format!("agent: {} for {}", way, arch.rust_target()));
        let path = cross::build_agent_with_mirror(arch.deb(), way, &root, cache, debian_mirror, runner)
            .with_context(|| format!("cross-building piha-agent for {arch} ({way})"))?;
        task.finish();
        return load(&path, arch, &format!("cross build: {way}"));
    }
    let task = progress.task("agent: cargo build --release -p piha-agent");
    runner
        .run(
            &Cmd::new("cargo")
                .args(["build", "--release", "--locked", "-p", "piha-agent", "--manifest-path"])
                .arg(&manifest),
        )
        .context("building piha-agent")?;
    let target_dir = target_dir(runner, &manifest)?;
    task.finish();
    load(&target_dir.join("release/piha-agent"), arch, "cargo build --release -p piha-agent")
}

#[derive(Deserialize)]
struct Metadata {
    target_directory: PathBuf,
}

/// The workspace's target directory (honours CARGO_TARGET_DIR and config).
fn target_dir(runner: &dyn Runner, manifest: &Path) -> anyhow::Result<PathBuf> {
    let out = runner.run(
        &Cmd::new("cargo")
            .args(["metadata", "--format-version", "1", "--no-deps", "--manifest-path"])
            .arg(manifest),
    )?;
    let meta: Metadata = serde_json::from_slice(&out.stdout).context("parsing `cargo metadata` output")?;
    Ok(meta.target_directory)
}

fn load(path: &Path, arch: Arch, origin: &str) -> anyhow::Result<AgentBinary> {
    let bytes = std::fs::read(path).with_context(|| format!("reading the agent binary {} ({origin})", path.display()))?;
    check_arch(path, &bytes, arch)?;
    Ok(AgentBinary {
        path: path.to_path_buf(),
        sha256: sha256_hex(&bytes),
        bytes,
        origin: origin.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::check_arch;
    use crate::board::Arch;

    #[test]
    fn elf_machine_is_checked() {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[18..20].copy_from_slice(&62u16.to_le_bytes());
        assert!(check_arch(Path::new("a"), &elf, Arch::Amd64).is_ok());
        let err = check_arch(Path::new("a"), &elf, Arch::Arm64).unwrap_err().to_string();
        assert!(err.contains("not for arm64"), "{err}");
        assert!(check_arch(Path::new("a"), b"#!/bin/sh", Arch::Amd64).is_err());
    }
}
