//! `piha flash`: write an image to a card safely, sparsely and verified, then
//! stamp the node's identity onto it. The work is `card::flash` over the
//! `device` stack; this module asks, confirms and prints.

use std::io::{BufRead, IsTerminal, Write as _};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use piha_config::cluster::ClusterFile;
use piha_runner::{Runner, SystemRunner};

use crate::card::flash::{self, FlashSummary};
use crate::card::ledger::ledger_path;
use crate::card::stamp::{self, Identity};
use crate::cli::FlashOpts;
use crate::device::claim::{self, Gate};
use crate::device::source::{Compression, ImageSource};
use crate::device::target::FileTarget;
use crate::device::write::Verify;
use crate::inputs::cluster::load_cluster;
use crate::progress::{Progress, human_bytes};

/// What every card of one `piha flash` shares: the cluster, loaded and
/// validated once, and the image.
#[derive(Clone, Copy)]
struct Job<'a> {
    cluster: &'a ClusterFile,
    cluster_path: &'a Path,
    secrets_dir: &'a Path,
    source: &'a ImageSource,
    progress: Progress,
    verify: Verify,
}

impl<'a> Job<'a> {
    fn identity(&self, node: &'a str) -> Identity<'a> {
        Identity {
            cluster: self.cluster,
            cluster_path: self.cluster_path,
            secrets_dir: self.secrets_dir,
            node,
        }
    }
}

pub fn run(opts: &FlashOpts) -> anyhow::Result<()> {
    let runner = SystemRunner;
    let cluster_path = &opts.cluster.cluster;
    let cluster = load_cluster(cluster_path)?;
    let secrets_dir = opts.cluster.secrets_dir();
    let source = ImageSource::open(&opts.image, opts.bmap.as_deref(), &runner)?;
    describe_source(&source);
    let job = Job {
        cluster: &cluster,
        cluster_path,
        secrets_dir: &secrets_dir,
        source: &source,
        progress: Progress::auto(),
        verify: verify_mode(opts),
    };
    if opts.all {
        let summaries = batch(opts, job, &runner)?;
        if opts.json {
            println!("{}", serde_json::to_string_pretty(&summaries)?);
        }
        return Ok(());
    }
    let node = opts.node.as_deref().context("--node NAME is required (or --all)")?;
    let summary = match (&opts.device, &opts.to_file) {
        (Some(device), _) => flash_device(opts, job, node, device, &runner)?,
        (None, Some(file)) => flash_file(opts, job, node, file)?,
        (None, None) => bail!("give --device DEVICE, --to-file PATH, or --all"),
    };
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    Ok(())
}

fn verify_mode(opts: &FlashOpts) -> Verify {
    if opts.no_verify {
        eprintln!("piha: warning: --no-verify: nothing is read back; a card that does not keep what it is given goes unnoticed");
        Verify::Off
    } else {
        Verify::ReadBack
    }
}

fn describe_source(source: &ImageSource) {
    let b = &source.bmap;
    match &source.bmap_path {
        Some(p) => eprintln!(
            "piha: {}: {} image, {} with {} mapped in {} ranges (block map {})",
            source.path.display(),
            compression_name(source.compression),
            human_bytes(b.image_size),
            human_bytes(b.mapped_bytes()),
            b.ranges.len(),
            p.display()
        ),
        None => eprintln!(
            "piha: {}: {} image, {}; no .bmap beside it, so every byte is written (zeros included) and read back",
            source.path.display(),
            compression_name(source.compression),
            human_bytes(b.image_size)
        ),
    }
}

fn compression_name(c: Compression) -> &'static str {
    match c {
        Compression::None => "raw",
        Compression::Zstd => "zstd",
        Compression::Xz => "xz",
    }
}

/// Flashes one block device and stamps `node` onto it.
fn flash_device(opts: &FlashOpts, job: Job<'_>, node: &str, device: &Path, runner: &dyn Runner) -> anyhow::Result<FlashSummary> {
    let id = job.identity(node);
    stamp::check(id)?;
    let gate = Gate {
        min_size: job.source.bmap.image_size,
        allow_non_removable: opts.allow_non_removable,
    };
    let info = claim::check(device, gate, runner)?;
    eprintln!("piha: target {}", info.describe());
    confirm(
        opts.yes,
        &format!(
            "Write {} to {} for node {node}? Everything on it will be lost",
            job.source.path.display(),
            info.path.display()
        ),
    )?;
    let mut held = claim::claim(&info)?;
    let flashed = flash::write_card(id, job.source, &mut held.target, &job.progress, job.verify)?;
    held.finish_with_new_table(runner);
    log::info!("{}", flashed.stamped.summary());
    let summary = flash::summarize(&info.path, Some(&info), job.source, flashed);
    flash::record(job.cluster_path, &summary)?;
    Ok(summary)
}

/// Writes the image as a sparse file (for a VM) and stamps `node` onto it.
fn flash_file(opts: &FlashOpts, job: Job<'_>, node: &str, path: &Path) -> anyhow::Result<FlashSummary> {
    let id = job.identity(node);
    stamp::check(id)?;
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_block_device() => {
            bail!("{} is a block device; use --device {} for devices", path.display(), path.display())
        }
        Ok(m) if !m.is_file() => bail!("{} exists and is not a regular file; choose another --to-file path", path.display()),
        Ok(_) => confirm(opts.yes, &format!("{} exists; replace it?", path.display()))?,
        Err(_) => {}
    }
    // Written beside the target and renamed over it only once written,
    // stamped and verified: a failed flash leaves an existing file as it was.
    let partial = piha_atomic::TempPath::new(path).with_context(|| format!("choosing a temporary name beside {}", path.display()))?;
    let flashed = (|| {
        let mut target = FileTarget::create(partial.path(), job.source.bmap.image_size)
            .with_context(|| format!("creating {}", partial.path().display()))?;
        let flashed = flash::write_card(id, job.source, &mut target, &job.progress, job.verify)?;
        drop(target);
        anyhow::Ok(flashed)
    })()
    .with_context(|| format!("{} was not changed", path.display()))?;
    partial
        .commit()
        .with_context(|| format!("putting the flashed image in place at {}", path.display()))?;
    log::info!("{}", flashed.stamped.summary());
    let summary = flash::summarize(path, None, job.source, flashed);
    flash::record(job.cluster_path, &summary)?;
    Ok(summary)
}

fn print_summary(s: &FlashSummary) {
    let r = &s.report;
    let card = match (&s.model, &s.serial) {
        (None, None) => String::new(),
        (m, ser) => format!(
            " ({}, serial {})",
            m.as_deref().unwrap_or("no model"),
            ser.as_deref().unwrap_or("-")
        ),
    };
    println!(
        "flashed {} onto {}{card} for node {} in {:.1} s",
        s.image, s.target, s.node, s.seconds
    );
    println!(
        "  written   {} in {} ranges ({} checked against the block map)",
        human_bytes(r.bytes_written),
        r.ranges,
        r.ranges_checked_against_bmap
    );
    println!("  skipped   {} (unmapped)", human_bytes(r.bytes_skipped));
    if r.mapped_sha256_device.is_empty() {
        println!("  verified  nothing: --no-verify skipped the read-back");
    } else {
        println!("  verified  {} read back from the medium", human_bytes(r.bytes_verified));
    }
    println!("  image sha256            {}", r.image_sha256);
    println!("  mapped sha256 (image)   {}", r.mapped_sha256_image);
    if !r.mapped_sha256_device.is_empty() {
        println!("  mapped sha256 (device)  {}", r.mapped_sha256_device);
    }
}

/// Asks y/N on the terminal unless `yes`; without a terminal, refuses.
fn confirm(yes: bool, question: &str) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!("{question}: there is no terminal to confirm on; add --yes to write without asking. Nothing was written");
    }
    let answer = ask(&format!("{question} [y/N] "))?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        Ok(())
    } else {
        bail!("not confirmed; nothing was written")
    }
}

fn ask(prompt: &str) -> anyhow::Result<String> {
    eprint!("{prompt}");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the answer from the terminal")?;
    Ok(line)
}

/// `--all`: one card per node, in the cluster file's order.
fn batch(opts: &FlashOpts, job: Job<'_>, runner: &dyn Runner) -> anyhow::Result<Vec<FlashSummary>> {
    let (cluster, cluster_path) = (job.cluster, job.cluster_path);
    for p in &opts.pairs {
        if cluster.node(&p.node).is_none() {
            let known: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
            bail!(
                "--pairs names node {:?}, which {} does not have; the nodes are: {}",
                p.node,
                cluster_path.display(),
                known.join(", ")
            );
        }
        if opts.pairs.iter().filter(|q| q.device == p.device).count() > 1 {
            bail!("--pairs gives {} to more than one node; one card per node", p.device.display());
        }
    }
    if opts.pairs.is_empty() && !std::io::stdin().is_terminal() {
        bail!("--all asks for each node's card on the terminal; without one, give --pairs NODE=DEVICE,...");
    }
    let mut done = Vec::new();
    for node in &cluster.nodes {
        let device: PathBuf = if opts.pairs.is_empty() {
            let answer = ask(&format!(
                "card for node {} ({}): device path, or empty to skip: ",
                node.name,
                node.role.as_str()
            ))?;
            let answer = answer.trim();
            if answer.is_empty() {
                eprintln!("piha: skipping {}", node.name);
                continue;
            }
            PathBuf::from(answer)
        } else {
            match opts.pairs.iter().find(|p| p.node == node.name) {
                Some(p) => p.device.clone(),
                None => continue,
            }
        };
        let summary = flash_device(opts, job, &node.name, &device, runner).with_context(|| {
            format!(
                "flashing node {} on {} ({} card(s) done and in the ledger)",
                node.name,
                device.display(),
                done.len()
            )
        })?;
        if !opts.json {
            print_summary(&summary);
        }
        done.push(summary);
    }
    if !opts.json {
        println!("{} card(s) flashed; ledger: {}", done.len(), ledger_path(cluster_path).display());
    }
    Ok(done)
}
