//! The `piha-agent` binary that goes into an image, built for the image's
//! architecture from this checkout: `$PIHA_AGENT_BIN` when set (checked to be
//! an ELF for the right machine), else a static build along the way
//! [`cross::detect`] picks (native cargo, rustup target, `cross`, or the
//! Debian trixie build root), cached by the agent's sources.

pub(crate) mod buildroot;
pub mod cross;
pub(crate) mod elf;
pub mod sources;

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use piha_runner::Runner;

use self::cross::{AgentBuildPath, Workspace};
use crate::arch::Arch;
use crate::inputs::catalog;
use crate::pipeline::cache::Cache;
use crate::pipeline::identity::sha256_hex;
use crate::progress::Progress;

/// Where an agent binary came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `$PIHA_AGENT_BIN`.
    Given,
    /// Built from the checkout (or found built in the cache).
    Built(AgentBuildPath, Cache),
}

impl Origin {
    /// Whether a built agent came from the cache; `None` for a given one.
    pub fn cache(self) -> Option<Cache> {
        match self {
            Origin::Given => None,
            Origin::Built(_, cache) => Some(cache),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Given => f.write_str("PIHA_AGENT_BIN"),
            Origin::Built(way, cache) => write!(f, "{way} (cache {cache})"),
        }
    }
}

/// An agent binary and its content.
#[derive(Debug, Clone)]
pub struct AgentBinary {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    pub sha256: String,
    pub origin: Origin,
}

/// Finds or builds the agent for `arch`. `cache` holds built agents and the
/// build root; `debian_mirror` is the mirror a trixie build root is made
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
        let bytes = read(&path, Origin::Given)?;
        elf::check_arch(&path, &bytes, arch).context("fix: point PIHA_AGENT_BIN at a piha-agent binary")?;
        return Ok(binary(path, bytes, Origin::Given));
    }
    let checkout = catalog::data_dir();
    if !checkout.join("agent/Cargo.toml").exists() {
        bail!(
            "{} is not a piha source checkout, so piha-agent cannot be built from it (fix: set PIHA_AGENT_BIN to a piha-agent binary, or PIHA_DATA_DIR to a checkout)",
            checkout.display()
        );
    }
    let way = cross::detect(arch, runner);
    let task = progress.task(&format!("agent: {way} for {}", arch.rust_target()));
    let ws = Workspace {
        checkout: &checkout,
        cache_dir: cache,
        debian_mirror,
    };
    let verb = if way == AgentBuildPath::Native {
        "building"
    } else {
        "cross-building"
    };
    let (path, cache) = cross::build_agent(arch, way, &ws, runner).with_context(|| format!("{verb} piha-agent for {arch} ({way})"))?;
    task.finish();
    let origin = Origin::Built(way, cache);
    let bytes = read(&path, origin)?;
    elf::check_static(&path, &bytes, arch)?;
    Ok(binary(path, bytes, origin))
}

fn read(path: &Path, origin: Origin) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the agent binary {} ({origin})", path.display()))
}

fn binary(path: PathBuf, bytes: Vec<u8>, origin: Origin) -> AgentBinary {
    AgentBinary {
        path,
        sha256: sha256_hex(&bytes),
        bytes,
        origin,
    }
}
