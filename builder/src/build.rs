//! `piha build`: one flashable image per board, identical for every node of
//! that board (the card decides the node). The orchestration of DESIGN.md's
//! data flow:
//!
//! load + validate → plan → preflight (tools, sources) → stage 1 rootfs
//! (cached) → agent binary → stage 2 customize → stages 3+4 assemble and
//! package (`crate::assemble`) → manifest.json.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use piha_config::cluster::ClusterFile;
use piha_runner::{Runner, SystemRunner};
use serde::Serialize;

use crate::agent_bin;
use crate::assemble::{self, Content, DiskLayout, PartKind, PartSpec, TableKind};
use crate::board::{self, Firmware, TableKind as BoardTable};
use crate::card::IMAGE_INFO_FILE;
use crate::catalog;
use crate::cli::{BuildOpts, Profile};
use crate::customize::{self, Customization, NewEntry};
use crate::distro;
use crate::fat::{FatFile, FatType};
use crate::host_apt;
use crate::manifest::{Artifact, Manifest, Skipped};
use crate::plan::{self, Plan, Request};
use crate::preflight;
use crate::progress::{Progress, human_bytes};
use crate::rootfs::{self, ADMIN_UID};

/// The cluster a build uses when none is given.
pub const EMBEDDED_CLUSTER: &str = include_str!("../../examples/homelab.yaml");
const EMBEDDED_LABEL: &str = "embedded defaults (examples/homelab.yaml)";

/// Bumped when stage 2 changes what it makes from the same inputs.
pub const CUSTOMIZE_RECIPE_VERSION: u32 = 1;

/// `image.json`: `piha stamp` reads it to refuse a node of another board.
#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    pub board: String,
    pub distro: String,
    pub arch: String,
    pub profile: String,
    pub piha_version: String,
    pub input_hash: String,
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
    pub profile: String,
    pub cluster: String,
    pub input_hash: String,
    pub image: PathBuf,
    pub image_size: u64,
    pub compressed: PathBuf,
    pub compressed_size: u64,
    pub bmap: PathBuf,
    pub sha256sums: PathBuf,
    pub manifest: PathBuf,
    pub rootfs: rootfs::Rootfs,
    /// `hit` when the cached rootfs tarball was used, else `miss`.
    pub rootfs_cache: String,
    pub packages: usize,
    pub skipped: Vec<Skipped>,
    pub timings: Timings,
}

pub fn run(opts: &BuildOpts) -> anyhow::Result<()> {
    let progress = Progress::auto();
    let summary = build(opts, &SystemRunner, &progress)?;
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&summary).context("serializing the summary")?);
    } else {
        println!("{}", human_summary(&summary));
    }
    Ok(())
}

fn human_summary(s: &Summary) -> String {
    let t = &s.timings;
    format!(
        "built {} ({}, {} packages)\n  image      {} ({} apparent)\n  compressed {} ({})\n  bmap       {}\n  sums       {}\n  manifest   {}\n  input hash {}\n  rootfs     {} cache, key {}\n  seconds    preflight {:.1}, rootfs {:.1}, agent {:.1}, customize {:.1}, assemble {:.1}, package {:.1}, total {:.1}",
        s.board,
        s.distro,
        s.packages,
        s.image.display(),
        human_bytes(s.image_size),
        s.compressed.display(),
        human_bytes(s.compressed_size),
        s.bmap.display(),
        s.sha256sums.display(),
        s.manifest.display(),
        s.input_hash,
        s.rootfs_cache,
        &s.rootfs.key[..16.min(s.rootfs.key.len())],
        t.preflight,
        t.rootfs,
        t.agent,
        t.customize,
        t.assemble,
        t.package,
        t.total
    )
}

/// Loads the cluster file (validated) or the embedded defaults.
pub fn load_cluster(path: Option<&Path>) -> anyhow::Result<(ClusterFile, String)> {
    match path {
        Some(p) => Ok((crate::validate::load_cluster(p)?, p.display().to_string())),
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
pub fn plan(opts: &BuildOpts) -> anyhow::Result<Plan> {
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
    Plan::resolve(req, &host_apt::host_sources(Path::new("/")), &catalog::data_dir())
}

fn profile_name(p: Profile) -> &'static str {
    match p {
        Profile::Production => "production",
        Profile::Test => "test",
    }
}

/// Runs a whole build.
pub fn build(opts: &BuildOpts, runner: &dyn Runner, progress: &Progress) -> anyhow::Result<Summary> {
    let start = Instant::now();
    let mut timings = Timings::default();
    let plan = plan(opts)?;
    let board = &plan.req.board;
    let distro = &plan.req.distro;
    for s in &plan.skipped {
        progress.note(&format!(
            "skipping the {} packages ({}): {}",
            s.role,
            s.packages.join(", "),
            s.reason
        ));
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

    let t = Instant::now();
    preflight::check_tools(&plan, runner)?;
    preflight::check_sources(&plan, runner, progress)?;
    timings.preflight = secs(t.elapsed());

    std::fs::create_dir_all(&opts.out).with_context(|| format!("creating the output directory {}", opts.out.display()))?;
    let cache = rootfs::cache_dir(opts.cache_dir.as_deref())?;

    let t = Instant::now();
    let rootfs = rootfs::ensure(&plan, &cache, opts.no_cache, runner, progress)?;
    timings.rootfs = secs(t.elapsed());

    let t = Instant::now();
    // A Debian image's mirror also serves the trixie build root (cross builds).
    let debian_mirror = match distro.family {
        board::Family::Debian => plan.sources.first().map(|s| s.url.as_str()),
        board::Family::Ubuntu => None,
    };
    let agent = agent_bin::agent_binary(plan.arch, &cache, debian_mirror, runner, progress)?;
    timings.agent = secs(t.elapsed());

    let epoch = customize::source_date_epoch()?;
    let input_hash = input_hash(&plan, &rootfs.key, &agent.sha256, epoch)?;
    let info = ImageInfo {
        board: board.name.clone(),
        distro: distro.name.clone(),
        arch: plan.arch.deb().to_string(),
        profile: profile_name(plan.req.profile).to_string(),
        piha_version: env!("CARGO_PKG_VERSION").to_string(),
        input_hash: input_hash.clone(),
    };
    let info_json = format!("{}\n", serde_json::to_string_pretty(&info)?);

    // Intermediate files live beside the output (same filesystem, removed at the end).
    let work = tempfile::Builder::new()
        .prefix(".piha-work-")
        .tempdir_in(&opts.out)
        .with_context(|| format!("creating a work directory in {}", opts.out.display()))?;
    let root_tar = work.path().join("root.tar");
    let t = Instant::now();
    let customization = customization(&plan, &agent.bytes, &info_json, epoch)?;
    let customized = customize::run(&rootfs.path, &customization, &root_tar, progress)?;
    timings.customize = secs(t.elapsed());
    if !rootfs.cached {
        let removed = rootfs::prune_debs(&rootfs::debs_dir(&cache, &plan), &customized.packages)?;
        if removed > 0 {
            progress.note(&format!("rootfs: removed {removed} superseded .debs from the cache"));
        }
    }

    let cmdline = render_cmdline(&plan)?;
    let mut boot_files = customized.boot_files.clone();
    let generated = if board.boot.generates_config(distro.family) {
        board.boot.config.iter().collect()
    } else {
        Vec::new()
    };
    for (path, template) in generated {
        // A generated file replaces a copied one of the same name (a package's own config.txt).
        boot_files.retain(|f| !f.path.eq_ignore_ascii_case(path));
        boot_files.push(FatFile::new(
            path.clone(),
            render_boot_template(&plan, template, &cmdline)
                .with_context(|| format!("{}: boot.config.{path}", plan.req.board_file.display()))?,
        ));
    }
    let layout = disk_layout(&plan, boot_files, &info_json, &root_tar, &input_hash)?;
    let image = opts.out.join(format!("{}-{}.img", plan.req.cluster.name, board.name));
    let t = Instant::now();
    let task = progress.task("assemble: filesystems and partition table");
    let assembled = assemble::assemble(&layout, &image, &|m| task.message(m))?;
    task.finish();
    timings.assemble = secs(t.elapsed());

    let t = Instant::now();
    let task = progress.task("package: zstd, bmap, SHA256SUMS");
    let artifacts = assemble::package(&assembled, &opts.out, &|m| task.message(m))?;
    task.finish();
    timings.package = secs(t.elapsed());
    drop(work);

    let sums = read_sums(&artifacts.sha256sums)?;
    let mut files = vec![artifacts.image.clone(), artifacts.compressed.clone(), artifacts.bmap.clone()];
    files.push(artifacts.sha256sums.clone());
    let mut artifact_list = Vec::new();
    for f in &files {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let size = std::fs::metadata(f).with_context(|| format!("reading {}", f.display()))?.len();
        let sha256 = match sums.iter().find(|(_, n)| *n == name) {
            Some((h, _)) => h.clone(),
            None => crate::checksums::sha256_file(f)?,
        };
        artifact_list.push(Artifact { file: name, size, sha256 });
    }
    let manifest_path = opts.out.join(format!("{}-{}.manifest.json", plan.req.cluster.name, board.name));
    let manifest = Manifest {
        piha_version: info.piha_version.clone(),
        cluster: plan.req.cluster.name.clone(),
        board: board.name.clone(),
        distro: distro.name.clone(),
        arch: info.arch.clone(),
        profile: info.profile.clone(),
        kubernetes_version: plan.req.cluster.kubernetes.version.to_string(),
        runtime: plan.req.cluster.kubernetes.runtime.as_str().to_string(),
        input_hash: input_hash.clone(),
        rootfs_key: rootfs.key.clone(),
        sources: plan.source_lines(),
        skipped: plan.skipped.clone(),
        packages: customized.packages.clone(),
        artifacts: artifact_list,
    };
    manifest.write(&manifest_path)?;
    // The well-known name too, for tools that look for `manifest.json` in the out dir.
    manifest.write(&opts.out.join("manifest.json"))?;
    timings.total = secs(start.elapsed());

    Ok(Summary {
        board: board.name.clone(),
        distro: distro.name.clone(),
        arch: info.arch,
        profile: info.profile,
        cluster: plan.req.cluster_label.clone(),
        input_hash,
        image: artifacts.image.clone(),
        image_size: assembled.size,
        compressed_size: std::fs::metadata(&artifacts.compressed)?.len(),
        compressed: artifacts.compressed,
        bmap: artifacts.bmap,
        sha256sums: artifacts.sha256sums,
        manifest: manifest_path,
        rootfs_cache: if rootfs.cached { "hit" } else { "miss" }.to_string(),
        rootfs,
        packages: customized.packages.len(),
        skipped: plan.skipped.clone(),
        timings,
    })
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}

/// Lines of `SHA256SUMS`: (hash, file name).
fn read_sums(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once("  ").or_else(|| l.split_once(" *")))
        .map(|(h, n)| (h.to_string(), n.trim_start_matches('*').to_string()))
        .collect())
}

/// The hash of everything the image is made from: the rootfs key (distro,
/// packages, mirrors, board), the agent, every overlay and template, the
/// cluster (SSH keys, runtime), profile, piha's version and the epoch.
pub fn input_hash(plan: &Plan, rootfs_key: &str, agent_sha256: &str, epoch: u64) -> anyhow::Result<String> {
    #[derive(Serialize)]
    struct Inputs<'a> {
        recipe: u32,
        piha: &'a str,
        rootfs: &'a str,
        agent: &'a str,
        board: &'a board::Board,
        overlays: Vec<(String, String)>,
        templates: String,
        cluster: &'a ClusterFile,
        profile: &'a str,
        epoch: u64,
    }
    let overlays = plan
        .overlays
        .iter()
        .map(|o| {
            Ok((
                o.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                plan::tree_digest(o)?,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let inputs = Inputs {
        recipe: CUSTOMIZE_RECIPE_VERSION,
        piha: env!("CARGO_PKG_VERSION"),
        rootfs: rootfs_key,
        agent: agent_sha256,
        board: &plan.req.board,
        overlays,
        templates: plan::tree_digest(&plan.templates)?,
        cluster: &plan.req.cluster,
        profile: profile_name(plan.req.profile),
        epoch,
    };
    Ok(plan::sha256_hex(serde_json::to_string(&inputs)?.as_bytes()))
}

/// Template variables for the rootfs templates and the boot configuration.
fn context(plan: &Plan, cmdline: &str) -> serde_json::Value {
    let b = &plan.req.board;
    serde_json::json!({
        "board": b.name,
        "distro": plan.req.distro.name,
        "family": plan.req.distro.family.as_str(),
        "arch": plan.arch.deb(),
        "profile": profile_name(plan.req.profile),
        "cluster": plan.req.cluster.name,
        "runtime": plan.req.cluster.kubernetes.runtime.as_str(),
        "kubernetes_version": plan.req.cluster.kubernetes.version,
        "network_renderer": serde_json::to_value(plan.req.distro.network_renderer).unwrap_or_default(),
        "root_label": b.partitions.root.label,
        "boot_label": b.partitions.boot.label,
        "boot_mount": b.partitions.boot.mount,
        "config_label": piha_config::node::CONFIG_LABEL,
        "cmdline": cmdline,
        "piha_version": env!("CARGO_PKG_VERSION"),
    })
}

/// The board's kernel command line with its variables filled in.
pub fn render_cmdline(plan: &Plan) -> anyhow::Result<String> {
    let ctx = context(plan, "");
    customize::template_engine()
        .render_template(&plan.req.board.cmdline, &ctx)
        .with_context(|| format!("{}: cmdline", plan.req.board_file.display()))
        .map(|s| s.trim().to_string())
}

fn render_boot_template(plan: &Plan, template: &str, cmdline: &str) -> anyhow::Result<String> {
    Ok(customize::template_engine().render_template(template, &context(plan, cmdline))?)
}

/// Everything stage 2 does for this plan.
pub fn customization(plan: &Plan, agent: &[u8], info_json: &str, epoch: u64) -> anyhow::Result<Customization> {
    let cmdline = render_cmdline(plan)?;
    let keys: String = plan
        .req
        .cluster
        .ssh_authorized_keys
        .iter()
        .map(|k| format!("{}\n", k.trim()))
        .collect();
    let home = format!("home/{}", rootfs::ADMIN_USER);
    let entries = vec![
        NewEntry::file("usr/bin/piha-agent", agent.to_vec(), 0o755),
        // "uninitialized": systemd's first-boot marker (machine-id(5)); each
        // node generates its own ID and commits it once the first boot is done.
        NewEntry::file("etc/machine-id", "uninitialized\n", 0o444),
        NewEntry::file("etc/hostname", "piha\n", 0o644),
        NewEntry::file("etc/piha/image.json", info_json.as_bytes().to_vec(), 0o644),
        NewEntry::dir(&format!("{home}/.ssh"), 0o700).owned_by(ADMIN_UID, ADMIN_UID),
        NewEntry::file(&format!("{home}/.ssh/authorized_keys"), keys, 0o600).owned_by(ADMIN_UID, ADMIN_UID),
    ];
    Ok(Customization {
        overlays: plan.overlays.clone(),
        templates: Some(plan.templates.clone()).filter(|t| t.is_dir()),
        context: context(plan, &cmdline),
        entries,
        remove: REMOVE
            .iter()
            .map(|s| s.to_string())
            // The boot partition is mounted over this directory: what a package
            // put there is on the partition, not hidden under it.
            .chain([format!("{}/*", plan.req.board.partitions.boot.mount.trim_matches('/'))])
            .collect(),
        boot_files: plan
            .req
            .board
            .boot
            .files
            .iter()
            .filter(|f| f.applies_to(plan.req.distro.family))
            .cloned()
            .collect(),
        epoch,
    })
}

/// What no image may carry: host-specific identity made while building.
pub const REMOVE: &[&str] = &[
    // Regenerated on each node's first boot (overlays/base: piha-ssh-hostkeys.service).
    "etc/ssh/ssh_host_*",
    "var/lib/dbus/machine-id",
    "var/cache/apt/archives/*.deb",
    "var/cache/apt/*.bin",
];

/// Maps the board's partitions onto `crate::assemble`'s layout.
fn disk_layout(plan: &Plan, boot_files: Vec<FatFile>, info_json: &str, root_tar: &Path, input_hash: &str) -> anyhow::Result<DiskLayout> {
    let b = &plan.req.board;
    let p = &b.partitions;
    let table = match b.partition_table {
        BoardTable::Gpt => TableKind::Gpt,
        BoardTable::Mbr => TableKind::Mbr,
    };
    let boot_kind = match b.firmware {
        Firmware::Uefi => PartKind::Esp,
        Firmware::Rpi => PartKind::BootFat,
    };
    let fat_type = p.boot.fat.map(|f| match f {
        board::FatKind::Fat16 => FatType::Fat16,
        board::FatKind::Fat32 => FatType::Fat32,
    });
    let mut seed = [0u8; 32];
    hex::decode_to_slice(input_hash, &mut seed).context("input hash is not 32 bytes of hex")?;
    Ok(DiskLayout {
        table,
        arch: plan.arch.deb().to_string(),
        partitions: vec![
            PartSpec {
                name: p.boot.label.clone(),
                kind: boot_kind,
                size_bytes: Some(p.boot.size_mib << 20),
                content: Content::Fat {
                    label: p.boot.label.clone(),
                    fat_type,
                    files: boot_files,
                },
            },
            PartSpec {
                name: piha_config::node::CONFIG_LABEL.to_string(),
                kind: PartKind::Config,
                size_bytes: Some(p.config.size_mib << 20),
                content: Content::Fat {
                    label: piha_config::node::CONFIG_LABEL.to_string(),
                    fat_type: None,
                    files: vec![FatFile::new(IMAGE_INFO_FILE, info_json.as_bytes().to_vec())],
                },
            },
            PartSpec {
                name: p.root.label.clone(),
                kind: PartKind::Root,
                size_bytes: None,
                content: Content::Ext4 {
                    label: p.root.label.clone(),
                    tar: root_tar.to_path_buf(),
                    free_bytes: p.root.free_mib << 20,
                },
            },
        ],
        seed,
    })
}

/// The out-directory path of an image, for tests and scripts.
pub fn image_path(out: &Path, cluster: &str, board: &str) -> PathBuf {
    out.join(format!("{cluster}-{board}.img"))
}
