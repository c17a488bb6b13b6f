//! `piha flash`: write an image to a card safely, sparsely and verified, then
//! stamp the node's identity onto it.
//!
//! - `source`: the image as a decompressed stream and its block map;
//! - `stream`: that stream in chunks, hashed and checked against the block map;
//! - `safety`: what must be true of a device before a byte is written;
//! - `target`: where bytes go (`WriteTarget`: block device, file, failing);
//! - `write` + `verify`: the write order that never leaves a half-written
//!   card bootable, and the read-back past the page cache;
//! - `ledger`: which card became which node.

pub mod ledger;
pub mod safety;
pub mod source;
pub(crate) mod stream;
pub mod target;
pub mod verify;
pub mod write;

use std::fs::File;
use std::io::{BufRead, IsTerminal, Write as _};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use piha_config::cluster::ClusterFile;
use piha_runner::{Cmd, Runner, SystemRunner};
use rustix::fs::FlockOperation;

use crate::cli::{ClusterArgs, FlashOpts, StampOpts};
use crate::flash::ledger::{Ledger, LedgerEntry, ledger_path, now_rfc3339};
use crate::flash::safety::DeviceInfo;
use crate::flash::source::{Compression, ImageSource};
use crate::flash::target::{BlockTarget, FileTarget};
use crate::flash::write::{Verify, WriteReport, write_image_with};
use crate::progress::{Progress, human_bytes};
use crate::{card, stamp, validate};

/// What one flash did: the summary printed, and `--json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FlashSummary {
    pub node: String,
    pub target: String,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub image: String,
    pub compression: Compression,
    pub bmap: Option<String>,
    #[serde(flatten)]
    pub report: WriteReport,
    pub stamped: bool,
    pub seconds: f64,
}

pub fn run(opts: &FlashOpts) -> anyhow::Result<()> {
    let runner = SystemRunner;
    let cluster = validate::load_cluster(&opts.cluster.cluster)?;
    let source = ImageSource::open(&opts.image, opts.bmap.as_deref(), &runner)?;
    describe_source(&source);
    let progress = Progress::auto();
    if opts.all {
        let summaries = batch(opts, &cluster, &source, &runner, progress)?;
        if opts.json {
            println!("{}", serde_json::to_string_pretty(&summaries)?);
        }
        return Ok(());
    }
    let node = opts.node.as_deref().context("--node NAME is required (or --all)")?;
    let summary = match (&opts.device, &opts.to_file) {
        (Some(device), _) => flash_device(opts, &cluster, &source, node, device, &runner, progress)?,
        (None, Some(file)) => flash_file(opts, &cluster, &source, node, file, progress)?,
        (None, None) => bail!("give --device DEVICE, --to-file PATH, or --all"),
    };
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    Ok(())
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

/// Everything that could stop the stamp, checked before the card is touched:
/// the node exists and its secrets are readable.
fn preflight_stamp(cluster: &ClusterFile, args: &ClusterArgs, node: &str, target: &Path) -> anyhow::Result<()> {
    card::assemble(cluster, &args.cluster, node, &args.secrets_dir(), None, target).map(|_| ())
}

/// Flashes one block device and stamps `node` onto it.
pub fn flash_device(
    opts: &FlashOpts,
    cluster: &ClusterFile,
    source: &ImageSource,
    node: &str,
    device: &Path,
    runner: &dyn Runner,
    progress: Progress,
) -> anyhow::Result<FlashSummary> {
    preflight_stamp(cluster, &opts.cluster, node, device)?;
    let info = safety::inspect(device, runner)?;
    let refused = safety::refusals(&info, source.bmap.image_size, opts.allow_non_removable);
    if !refused.is_empty() {
        bail!(
            "refusing to write {}; nothing was written:\n  - {}",
            info.path.display(),
            refused.join("\n  - ")
        );
    }
    eprintln!("piha: target {}", info.describe());
    confirm(
        opts.yes,
        &format!(
            "Write {} to {} for node {node}? Everything on it will be lost",
            source.path.display(),
            info.path.display()
        ),
    )?;

    // A BSD lock on the whole disk keeps udev (and the automounters it
    // drives) off the card until the new table is in place and re-read:
    // https://systemd.io/BLOCK_DEVICE_LOCKING/
    let lock = File::open(&info.path).with_context(|| format!("opening {}", info.path.display()))?;
    rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive).map_err(|e| {
        anyhow::anyhow!(
            "{} is locked by another program ({e}); is another flash or a partitioner running?",
            info.path.display()
        )
    })?;
    let started = Instant::now();
    let mut target = BlockTarget::open(&info.path).map_err(|e| {
        if e.raw_os_error() == Some(libc::EBUSY) {
            anyhow::anyhow!(
                "{} is in use (mounted or claimed by another program since the checks); nothing was written",
                info.path.display()
            )
        } else {
            anyhow::Error::new(e).context(format!("opening {} for writing", info.path.display()))
        }
    })?;
    let report = write_image_with(source.stream()?, &source.bmap, &mut target, &progress, verify_mode(opts))?;
    // stamp opens the disk itself, exclusively: close ours first.
    drop(target);
    stamp_node(opts, node, &info.path)?;
    reread_partitions(&info.path, runner);
    drop(lock);
    rustix::fs::sync();
    let summary = summarize(node, &info.path, Some(&info), source, report, started);
    record(&opts.cluster.cluster, &summary)?;
    Ok(summary)
}

/// Writes the image as a sparse file (for a VM) and stamps `node` onto it.
pub fn flash_file(
    opts: &FlashOpts,
    cluster: &ClusterFile,
    source: &ImageSource,
    node: &str,
    path: &Path,
    progress: Progress,
) -> anyhow::Result<FlashSummary> {
    preflight_stamp(cluster, &opts.cluster, node, path)?;
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_block_device() => {
            bail!("{} is a block device; use --device {} for devices", path.display(), path.display())
        }
        Ok(m) if !m.is_file() => bail!("{} exists and is not a regular file; choose another --to-file path", path.display()),
        Ok(_) => confirm(opts.yes, &format!("{} exists; replace it?", path.display()))?,
        Err(_) => {}
    }
    let started = Instant::now();
    let mut target = FileTarget::create(path, source.bmap.image_size).with_context(|| format!("creating {}", path.display()))?;
    let report = write_image_with(source.stream()?, &source.bmap, &mut target, &progress, verify_mode(opts))?;
    drop(target);
    stamp_node(opts, node, path)?;
    let summary = summarize(node, path, None, source, report, started);
    record(&opts.cluster.cluster, &summary)?;
    Ok(summary)
}

fn verify_mode(opts: &FlashOpts) -> Verify {
    if opts.no_verify {
        eprintln!("piha: warning: --no-verify: nothing is read back; a card that does not keep what it is given goes unnoticed");
        Verify::Off
    } else {
        Verify::ReadBack
    }
}

fn stamp_node(opts: &FlashOpts, node: &str, target: &Path) -> anyhow::Result<()> {
    let stamp_opts = StampOpts {
        cluster: opts.cluster.clone(),
        node: node.to_string(),
        target: Some(target.to_path_buf()),
        partition_image: None,
    };
    stamp::run(&stamp_opts).with_context(|| {
        format!(
            "the image was written to {} and verified, but stamping node {node} failed; fix the cause and run `piha stamp --node {node} {}`",
            target.display(),
            target.display()
        )
    })
}

/// Tells the kernel about the new partitions: BLKRRPART via blockdev, then
/// `partx -u`, which also covers kernels that parse no tables themselves.
/// A failure is a warning: the card is written; re-plugging it fixes the view.
fn reread_partitions(device: &Path, runner: &dyn Runner) {
    // A loop device attached without --partscan refuses BLKRRPART (EINVAL).
    let name = device.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let partscan = std::fs::read_to_string(Path::new("/sys/class/block").join(&name).join("loop/partscan"));
    if partscan.map(|s| s.trim() != "0").unwrap_or(true) {
        if let Err(e) = runner.run(&Cmd::new("blockdev").arg("--rereadpt").arg(device)) {
            log::info!("{e}");
        }
    }
    if let Err(e) = runner.run(&Cmd::new("partx").arg("-u").arg(device)) {
        eprintln!(
            "piha: warning: the kernel's view of {}'s partitions may be stale ({e}); unplug and replug the card",
            device.display()
        );
    }
}

fn summarize(
    node: &str,
    target: &Path,
    info: Option<&DeviceInfo>,
    source: &ImageSource,
    report: WriteReport,
    started: Instant,
) -> FlashSummary {
    FlashSummary {
        node: node.to_string(),
        target: target.display().to_string(),
        model: info.and_then(|i| i.model.clone()),
        serial: info.and_then(|i| i.serial.clone()),
        image: source.path.display().to_string(),
        compression: source.compression,
        bmap: source.bmap_path.as_ref().map(|p| p.display().to_string()),
        report,
        stamped: true,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Appends to the ledger beside the cluster file.
fn record(cluster_file: &Path, s: &FlashSummary) -> anyhow::Result<()> {
    let path = ledger_path(cluster_file);
    let entry = LedgerEntry {
        node: s.node.clone(),
        device: s.target.clone(),
        serial: s.serial.clone(),
        model: s.model.clone(),
        image: s.image.clone(),
        image_sha256: s.report.image_sha256.clone(),
        time: now_rfc3339(),
    };
    Ledger::append(&path, entry).with_context(|| format!("the card is flashed and stamped, but recording it in {} failed", path.display()))
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
fn batch(
    opts: &FlashOpts,
    cluster: &ClusterFile,
    source: &ImageSource,
    runner: &dyn Runner,
    progress: Progress,
) -> anyhow::Result<Vec<FlashSummary>> {
    let cluster_path = &opts.cluster.cluster;
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
        let summary = flash_device(opts, cluster, source, &node.name, &device, runner, progress).with_context(|| {
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
