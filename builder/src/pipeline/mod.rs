//! `piha build`: one flashable image per board, identical for every node of
//! that board (the card decides the node). Stage by stage:
//!
//! load + validate → [`plan`] → [`preflight`] (tools, sources) → stage 1
//! [`rootfs`] (cached) → [`agent`] binary (cached) → stage 2 [`customize`] →
//! stage 3 [`assemble`] → stage 4 [`package`] (`.zst`, `.bmap`,
//! `SHA256SUMS`, `manifest.json`).

pub mod agent;
pub mod assemble;
pub(crate) mod cache;
pub mod customize;
pub mod epoch;
pub(crate) mod identity;
pub(crate) mod layout;
pub(crate) mod manifest;
pub mod package;
pub mod plan;
pub mod preflight;
pub(crate) mod rootfs;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use piha_config::cluster::ClusterFile;
use piha_runner::Runner;
use serde::Serialize;

use self::agent::AgentBinary;
use self::assemble::Assembled;
use self::cache::Cache;
use self::customize::{Customization, Customized};
use self::manifest::Skipped;
use self::package::{Artifacts, Built};
use self::plan::{Plan, Profile, Request};
use self::rootfs::Rootfs;
use crate::host::apt;
use crate::inputs::board::{self, Family};
use crate::inputs::catalog;
use crate::inputs::distro;
use crate::progress::Progress;

pub use self::customize::image_files::customization;

/// The cluster a build uses when none is given.
pub const EMBEDDED_CLUSTER: &str = include_str!("../../../examples/homelab.yaml");
const EMBEDDED_LABEL: &str = "embedded defaults (examples/homelab.yaml)";

/// What to build, and where.
#[derive(Debug, Clone)]
pub struct Options {
    /// Board file name from `boards/`.
    pub board: String,
    /// Distro file name from `distros/`; `None`: the cluster's.
    pub distro: Option<String>,
    /// Cluster file; `None`: the embedded defaults.
    pub cluster: Option<PathBuf>,
    pub out: PathBuf,
    pub profile: Profile,
    /// Kubernetes (and CRI-O) .debs from this directory instead of their repositories.
    pub k8s_bundle: Option<PathBuf>,
    /// The archive mirror, instead of the distro file's.
    pub mirror: Option<String>,
    pub cache_dir: Option<PathBuf>,
    /// Build a fresh root filesystem even if a cached one matches.
    pub no_cache: bool,
}

/// What every stage of one build shares.
pub struct Env<'a> {
    pub runner: &'a dyn Runner,
    pub progress: &'a Progress,
    /// The cache directory (root filesystems, .debs, agents, the build root).
    pub cache: PathBuf,
    /// The output directory.
    pub out: PathBuf,
    /// The build's one timestamp, read once.
    pub epoch: u64,
}

/// Seconds spent in each stage.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub preflight: f64,
    pub rootfs: f64,
    pub agent: f64,
    pub customize: f64,
    pub assemble: f64,
    pub package: f64,
    pub total: f64,
}

/// What `--json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub board: String,
    pub distro: String,
    pub arch: String,
    pub profile: Profile,
    pub cluster: String,
    pub input_hash: String,
    pub image: PathBuf,
    pub image_size: u64,
    pub compressed: PathBuf,
    pub compressed_size: u64,
    pub bmap: PathBuf,
    pub sha256sums: PathBuf,
    pub manifest: PathBuf,
    pub rootfs: Rootfs,
    /// Whether the cached rootfs tarball was used.
    pub rootfs_cache: Cache,
    /// Whether the cached agent was used; `None` for `PIHA_AGENT_BIN`.
    pub agent_cache: Option<Cache>,
    pub packages: usize,
    pub skipped: Vec<Skipped>,
    pub timings: Timings,
}

/// Loads the cluster file (validated) or the embedded defaults.
pub fn load_cluster(path: Option<&Path>) -> anyhow::Result<(ClusterFile, String)> {
    match path {
        Some(p) => Ok((crate::inputs::cluster::load_cluster(p)?, p.display().to_string())),
        None => {
            let label = Path::new(EMBEDDED_LABEL);
            let cluster =
                ClusterFile::parse(label, EMBEDDED_CLUSTER).map_err(|p| anyhow::anyhow!("{EMBEDDED_LABEL} does not parse:\n{p}"))?;
            let problems = piha_config::validate::cluster(label, &cluster, &catalog::catalog()?);
            if problems.has_errors() {
                bail!("{EMBEDDED_LABEL} is not valid:\n{problems}");
            }
            Ok((cluster, EMBEDDED_LABEL.to_string()))
        }
    }
}

/// Resolves the plan for `opts` (no network, nothing written).
pub fn plan(opts: &Options) -> anyhow::Result<Plan> {
    let (cluster, cluster_label) = load_cluster(opts.cluster.as_deref())?;
    let distro_name = opts.distro.clone().unwrap_or_else(|| cluster.distro.clone());
    let (board, board_file) = board::load(&opts.board)?;
    let (distro, distro_file, distro_text) = distro::load(&distro_name)?;
    let req = Request {
        board,
        board_file,
        distro,
        distro_file,
        distro_text,
        cluster,
        cluster_label,
        profile: opts.profile,
        k8s_bundle: opts.k8s_bundle.clone(),
        mirror: opts.mirror.clone(),
    };
    Plan::resolve(req, &apt::host_sources(Path::new("/")), &catalog::data_dir())
}

/// Runs a whole build; every command goes through `runner`.
pub fn build(opts: &Options, runner: &dyn Runner, progress: &Progress) -> anyhow::Result<Summary> {
    let start = Instant::now();
    let mut t = Timings::default();
    let plan = plan(opts)?;
    announce(&plan, progress)?;
    timed(&mut t.preflight, || {
        preflight::check_tools(&plan, runner)?;
        preflight::check_sources(&plan, runner, progress)
    })?;
    std::fs::create_dir_all(&opts.out).with_context(|| format!("creating the output directory {}", opts.out.display()))?;
    let env = Env {
        runner,
        progress,
        cache: cache::cache_dir(opts.cache_dir.as_deref())?,
        out: opts.out.clone(),
        epoch: epoch::source_date_epoch()?,
    };
    let rootfs = timed(&mut t.rootfs, || rootfs::ensure(&plan, &env, opts.no_cache))?;
    let agent = timed(&mut t.agent, || agent_for(&plan, &env))?;
    let made = make_image(&plan, &env, &rootfs, &agent, &mut t)?;
    t.total = secs(start.elapsed());
    Ok(Summary {
        board: plan.req.board.name.clone(),
        distro: plan.req.distro.name.clone(),
        arch: plan.arch.deb().to_string(),
        profile: plan.req.profile,
        cluster: plan.req.cluster_label.clone(),
        input_hash: made.input_hash,
        image: made.artifacts.image,
        image_size: made.image_size,
        compressed: made.artifacts.compressed,
        compressed_size: made.compressed_size,
        bmap: made.artifacts.bmap,
        sha256sums: made.artifacts.sha256sums,
        manifest: made.manifest,
        rootfs_cache: rootfs.cache,
        rootfs,
        agent_cache: agent.origin.cache(),
        packages: made.packages,
        skipped: plan.skipped.clone(),
        timings: t,
    })
}

/// What stages 2 to 4 made.
struct Made {
    input_hash: String,
    artifacts: Artifacts,
    image_size: u64,
    compressed_size: u64,
    manifest: PathBuf,
    /// How many packages the image has installed.
    packages: usize,
}

/// Stages 2 to 4: customize, assemble, package, and the manifest.
fn make_image(plan: &Plan, env: &Env, rootfs: &Rootfs, agent: &AgentBinary, t: &mut Timings) -> anyhow::Result<Made> {
    let input_hash = identity::input_hash(plan, &rootfs.key, &agent.sha256, env.epoch)?;
    let info_json = identity::image_info(plan, &input_hash).to_json();
    // Intermediate files live beside the output (same filesystem, removed at the end).
    let work = tempfile::Builder::new()
        .prefix(".piha-work-")
        .tempdir_in(&env.out)
        .with_context(|| format!("creating a work directory in {}", env.out.display()))?;
    let root_tar = work.path().join("root.tar");
    let customization = customization(plan, &agent.bytes, &info_json, env.epoch)?;
    let customized = timed(&mut t.customize, || customize_stage(plan, env, rootfs, &customization, &root_tar))?;
    let inputs = layout::Inputs {
        info_json: &info_json,
        root_tar: &root_tar,
        input_hash: &input_hash,
        epoch: env.epoch,
    };
    let assembled = timed(&mut t.assemble, || assemble_stage(plan, env, &customized, &inputs))?;
    let artifacts = timed(&mut t.package, || package_stage(env, &assembled))?;
    drop(work);
    let built = Built {
        input_hash: &input_hash,
        rootfs_key: &rootfs.key,
        packages: &customized.packages,
        artifacts: &artifacts,
    };
    let manifest = package::write_manifest(plan, &built, &env.out)?;
    let compressed_size = std::fs::metadata(&artifacts.compressed)
        .with_context(|| format!("reading {}", artifacts.compressed.display()))?
        .len();
    Ok(Made {
        input_hash,
        artifacts,
        image_size: assembled.size,
        compressed_size,
        manifest,
        packages: customized.packages.len(),
    })
}

/// Says what the plan leaves out and where its packages come from; fails if
/// an overlay is missing from the data directory.
fn announce(plan: &Plan, progress: &Progress) -> anyhow::Result<()> {
    for s in &plan.skipped {
        progress.note(&format!(
            "skipping the {} packages ({}): {}",
            s.role,
            s.packages.join(", "),
            s.reason
        ));
    }
    if let Some(s) = plan.sources.first() {
        progress.note(&format!("packages: {} from {} ({})", s.what, s.url, s.from));
    }
    for overlay in &plan.overlays {
        if !overlay.is_dir() {
            bail!(
                "overlay {} is missing from {} (fix: restore it from the piha checkout)",
                overlay.display(),
                catalog::data_dir().display()
            );
        }
    }
    Ok(())
}

/// The agent for the plan's architecture. A Debian image's mirror also
/// serves the trixie build root of a cross build.
fn agent_for(plan: &Plan, env: &Env) -> anyhow::Result<AgentBinary> {
    let debian_mirror = match plan.req.distro.family {
        Family::Debian => plan.sources.first().map(|s| s.url.as_str()),
        Family::Ubuntu => None,
    };
    agent::agent_binary(plan.arch, &env.cache, debian_mirror, env.runner, env.progress)
}

/// Stage 2; after a fresh rootfs, drops the .debs it superseded from the cache.
fn customize_stage(plan: &Plan, env: &Env, rootfs: &Rootfs, c: &Customization, root_tar: &Path) -> anyhow::Result<Customized> {
    let customized = customize::run(&rootfs.path, c, root_tar, env.progress)?;
    if rootfs.cache == Cache::Miss {
        let removed = rootfs::prune_debs(&rootfs::debs_dir(&env.cache, plan), &customized.packages)?;
        if removed > 0 {
            env.progress
                .note(&format!("rootfs: removed {removed} superseded .debs from the cache"));
        }
    }
    Ok(customized)
}

/// Stage 3: the boot files and the board's layout, assembled into the image.
fn assemble_stage(plan: &Plan, env: &Env, customized: &Customized, inputs: &layout::Inputs) -> anyhow::Result<Assembled> {
    let image = image_path(&env.out, &plan.req.cluster.name, &plan.req.board.name);
    let boot_files = layout::boot_files(plan, customized.boot_files.clone())?;
    let layout = layout::disk_layout(plan, boot_files, inputs)?;
    let task = env.progress.task("assemble: filesystems and partition table");
    let assembled = assemble::assemble(env.runner, &layout, &image, &|m| task.message(m))?;
    task.finish();
    Ok(assembled)
}

/// Stage 4's files beside the image (the manifest comes after, once the work directory is gone).
fn package_stage(env: &Env, assembled: &Assembled) -> anyhow::Result<Artifacts> {
    let task = env.progress.task("package: zstd, bmap, SHA256SUMS");
    let artifacts = package::package(env.runner, assembled, &env.out, &|m| task.message(m))?;
    task.finish();
    Ok(artifacts)
}

/// Runs `f`, adding its seconds to `slot`.
fn timed<T>(slot: &mut f64, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let start = Instant::now();
    let result = f();
    *slot = secs(start.elapsed());
    result
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}

/// The out-directory path of an image.
pub fn image_path(out: &Path, cluster: &str, board: &str) -> PathBuf {
    out.join(format!("{cluster}-{board}.img"))
}
