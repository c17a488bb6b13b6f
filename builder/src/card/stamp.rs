//! Stamping: giving a card (or an image file) its node's identity by writing a
//! new PIHA-CFG filesystem into it, or writing a bare PIHA-CFG image.
//!
//! Nothing is mounted. The node is looked up and its secrets read before the
//! target is touched; the whole filesystem is then built in memory, written in
//! one pass at the partition's offset through the target's `WriteTarget`,
//! synced, and read back past the page cache. Every other byte of the target is
//! left as it was.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use piha_config::cluster::ClusterFile;
use piha_config::node::CONFIG_LABEL;
use sha2::{Digest, Sha256};

use crate::card::contents::{self, Card, PARTITION_SIZE};
use crate::device::region::{TargetReader, write_verified};
use crate::device::target::WriteTarget;
use crate::image::fat;
use crate::image::info::{IMAGE_INFO_FILE, ImageInfo};
use crate::image::partition::{self, ConfigPartition};

/// A PIHA-CFG larger than this is a mistake (a card's data partition labelled
/// PIHA-CFG?), not something to build in memory.
const MAX_PARTITION: u64 = 1 << 30;

/// Whose identity goes onto the card, from which cluster.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    pub cluster: &'a ClusterFile,
    pub cluster_path: &'a Path,
    pub secrets_dir: &'a Path,
    pub node: &'a str,
}

/// The `image.json` a card already holds: what it says, and its bytes, which
/// the new filesystem keeps unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundImage {
    pub info: ImageInfo,
    pub raw: Vec<u8>,
}

/// What a stamp wrote, for the summary line.
#[derive(Debug, Clone)]
pub struct Stamped {
    pub card: Card,
    /// Where it went, for people: the target and the partition.
    pub at: String,
    /// sha256 of the filesystem written.
    pub sha256: String,
}

impl Stamped {
    pub fn summary(&self) -> String {
        format!(
            "stamped {} ({}) onto {}: {} files ({} secrets), sha256 {}",
            self.card.node.node.name,
            self.card.node.node.role.as_str(),
            self.at,
            self.card.files.len(),
            self.card.secret_count(),
            self.sha256
        )
    }
}

/// Everything that could stop a stamp, checked before any target is opened:
/// the node exists and its secrets are readable.
pub fn check(id: Identity<'_>) -> anyhow::Result<()> {
    contents::assemble(id, None, id.cluster_path).map(|_| ())
}

/// Writes a bare PIHA-CFG filesystem image to `out`, atomically.
pub fn partition_image(id: Identity<'_>, out: &Path) -> anyhow::Result<Stamped> {
    let card = contents::assemble(id, None, out)?;
    let fs = fat::build(CONFIG_LABEL, PARTITION_SIZE, None, &card.files).context("building the PIHA-CFG filesystem")?;
    piha_atomic::write(out, &fs, None).with_context(|| format!("writing {}", out.display()))?;
    Ok(Stamped {
        at: format!(
            "{} (bare {CONFIG_LABEL} filesystem, {})",
            out.display(),
            partition::human(PARTITION_SIZE)
        ),
        sha256: hex::encode(Sha256::digest(&fs)),
        card,
    })
}

/// Stamps the PIHA-CFG partition of an image or card already open as `target`.
pub fn onto(id: Identity<'_>, target: &mut dyn WriteTarget) -> anyhow::Result<Stamped> {
    onto_with_head(id, target, &[])
}

/// [`onto`] for a card whose first bytes are not written yet: the partition
/// table is read from `head` (the image's first MiB), not from the medium.
/// `piha flash` stamps this way, so that the table goes on last.
pub fn onto_with_head(id: Identity<'_>, target: &mut dyn WriteTarget, head: &[u8]) -> anyhow::Result<Stamped> {
    let name = PathBuf::from(target.describe());
    let sector_size = target.sector_size();
    let (part, image) = {
        let mut r = TargetReader::with_head(target, head);
        let table =
            partition::read_table(&mut r, sector_size).with_context(|| format!("reading the partition table of {}", name.display()))?;
        if table.needed_size > table.disk_size {
            bail!(
                "{} is truncated: its partition table was written for {} bytes, but it holds {}; nothing was written (fix: copy or download the image again)",
                name.display(),
                table.needed_size,
                table.disk_size
            );
        }
        let part = partition::find_config(&mut r, &table, &name)?;
        if part.size > MAX_PARTITION {
            bail!(
                "the {CONFIG_LABEL} partition of {} is {}; piha expects a small config partition ({}). Check that you picked the right disk",
                name.display(),
                partition::human(part.size),
                partition::human(PARTITION_SIZE)
            );
        }
        let image = existing_image(&mut r, &part, &name)?;
        (part, image)
    };
    let card = contents::assemble(id, image.as_ref(), &name)?;
    let fs_sector = u16::try_from(sector_size).unwrap_or(512);
    let mut fs = fat::build_with_sector_size(CONFIG_LABEL, part.size, None, &card.files, fs_sector)
        .with_context(|| format!("building the PIHA-CFG filesystem for {}", name.display()))?;
    fat::set_hidden_sectors(&mut fs, u32::try_from(part.start / sector_size).unwrap_or(u32::MAX))?;
    write_verified(target, part.start, &fs).with_context(|| format!("writing {CONFIG_LABEL} to {}", name.display()))?;
    Ok(Stamped {
        at: describe_partition(&name, &part),
        sha256: hex::encode(Sha256::digest(&fs)),
        card,
    })
}

fn describe_partition(name: &Path, part: &ConfigPartition) -> String {
    match part.number {
        Some(n) => format!(
            "{} partition {n} ({CONFIG_LABEL} by {}, {} at {})",
            name.display(),
            part.found_by,
            partition::human(part.size),
            partition::human(part.start)
        ),
        None => format!(
            "{} (bare {CONFIG_LABEL} filesystem, {})",
            name.display(),
            partition::human(part.size)
        ),
    }
}

/// The image.json the image was built with, if PIHA-CFG holds a readable FAT.
fn existing_image(disk: &mut TargetReader<'_>, part: &ConfigPartition, target: &Path) -> anyhow::Result<Option<FoundImage>> {
    if partition::fat_label_at(disk, part.start, part.size).is_none() {
        // A fresh partition (all zeros) or a damaged one: nothing to keep.
        log::info!("{}: {CONFIG_LABEL} holds no FAT filesystem yet", target.display());
        return Ok(None);
    }
    let slice = fscommon::StreamSlice::new(fat::ReadOnly(&mut *disk), part.start, part.start + part.size)?;
    match fat::read_file(slice, IMAGE_INFO_FILE) {
        Ok(Some(raw)) => {
            let info = ImageInfo::parse(&raw).with_context(|| format!("reading {IMAGE_INFO_FILE} from {}", target.display()))?;
            Ok(Some(FoundImage { info, raw }))
        }
        Ok(None) => Ok(None),
        Err(e) => {
            log::warn!(
                "{}: the old {CONFIG_LABEL} filesystem cannot be read ({e:#}); writing a fresh one",
                target.display()
            );
            Ok(None)
        }
    }
}
