//! The root filesystem: an ext4 made by `mke2fs -d root.tar` (e2fsprogs ≥ 1.47.1
//! reads tar archives through libarchive), written straight into the disk image
//! at the partition's offset with `-E offset=` so nothing is copied afterwards.
//!
//! Sizing: a content-fitting ext4 is sized from a scan of the tar (data blocks,
//! directory blocks, inodes, journal, metadata) plus headroom and the requested
//! free space. If mke2fs still runs out of blocks or inodes, [`MkfsError::NoSpace`]
//! tells the caller to retry with a bigger partition.
//!
//! Reproducibility: UUID, directory hash seed and every timestamp are fixed
//! (`-U`, `-E hash_seed=`, `E2FSPROGS_FAKE_TIME`), the feature list, block size,
//! inode size and count are explicit rather than taken from the host's
//! /etc/mke2fs.conf, so the same tar and seed give the same bytes.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use piha_runner::{Cmd, RunError, Runner};
use uuid::Uuid;

/// ext4 block size. 4 KiB everywhere: mke2fs would pick 1 KiB blocks for
/// filesystems under 512 MiB ("small" usage type), which later grow badly.
pub const BLOCK: u64 = 4096;
/// On-disk inode size; 256 leaves room for nanosecond timestamps and small xattrs in the inode.
const INODE_SIZE: u64 = 256;
/// Bytes per inode for the minimum inode count, mke2fs's own default ratio, so a
/// root grown to fill a card on first boot keeps a normal inode density.
const BYTES_PER_INODE: u64 = 16384;
/// Percentage of blocks reserved for root (mke2fs's default, stated so a host's
/// mke2fs.conf cannot change it).
const RESERVED_PERCENT: u32 = 5;
/// The filesystem features, replacing the host's mke2fs.conf list. It is
/// e2fsprogs 1.47's ext4 list without `metadata_csum_seed` (GRUB before 2.12
/// cannot read such a filesystem) and `orphan_file` (e2fsck before 1.47, as on
/// Ubuntu 22.04 laptops, refuses it), so a card pulled from a node can be
/// checked and read anywhere.
const FEATURES: &str = "none,has_journal,ext_attr,resize_inode,dir_index,filetype,extent,flex_bg,sparse_super,large_file,huge_file,dir_nlink,extra_isize,64bit,metadata_csum";
/// Content estimate multiplier (in percent) and fixed slack on top of the estimate.
const HEADROOM_PERCENT: u64 = 110;
const SLACK_BYTES: u64 = 16 << 20;
/// Sizes are rounded to this, so partitions stay on 4 MiB boundaries.
pub const SIZE_ROUNDING: u64 = 4 << 20;

/// What a scan of the root tar found, the input to [`size_for`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TarStats {
    /// Entries that need an inode: files, directories, symlinks, devices, fifos (not hard links).
    pub inodes: u64,
    /// Data blocks of regular files, long symlinks and large xattrs, in bytes.
    pub data_bytes: u64,
    /// Directory blocks, in bytes, estimated from the entries each directory holds.
    pub dir_bytes: u64,
    /// The newest modification time in the archive (seconds since the epoch).
    pub newest_mtime: u64,
}

/// How big to make the filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    pub size_bytes: u64,
    pub inodes: u64,
}

/// Everything mke2fs needs for one filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mkfs {
    pub label: String,
    pub tar: PathBuf,
    pub uuid: Uuid,
    /// Timestamp for the superblock, lost+found and journal (`E2FSPROGS_FAKE_TIME`).
    pub time: u64,
    pub sizing: Sizing,
}

#[derive(Debug, thiserror::Error)]
pub enum MkfsError {
    /// The content did not fit; retry with a bigger filesystem.
    #[error("the ext4 filesystem {label} ({size_bytes} bytes, {inodes} inodes) is too small for {}: {detail}", tar.display())]
    NoSpace {
        label: String,
        tar: PathBuf,
        size_bytes: u64,
        inodes: u64,
        detail: String,
    },
    #[error(transparent)]
    Run(#[from] RunError),
}

/// Reads the tar's headers (seeking over file data) and tallies what the
/// filesystem will need.
pub fn scan_tar(path: &Path) -> anyhow::Result<TarStats> {
    let file = File::open(path).with_context(|| format!("opening the root tar {}", path.display()))?;
    // No BufReader: it throws its buffer away on every seek, and the scan
    // seeks past every file's data; the reads are 512-byte headers.
    let mut archive = tar::Archive::new(file);
    let mut stats = TarStats::default();
    // Bytes of directory entries per directory: 8-byte header + name padded to 4.
    let mut dirents: HashMap<String, u64> = HashMap::new();
    let entries = archive
        .entries_with_seek()
        .with_context(|| format!("reading the root tar {}", path.display()))?;
    for entry in entries {
        let mut entry = entry.with_context(|| format!("reading an entry of the root tar {}", path.display()))?;
        let kind = entry.header().entry_type();
        let raw_path = entry
            .path()
            .with_context(|| format!("reading an entry name in {}", path.display()))?
            .into_owned();
        let name = normalize(&raw_path.to_string_lossy());
        if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() || kind.is_gnu_longname() || kind.is_gnu_longlink() {
            continue;
        }
        stats.newest_mtime = stats.newest_mtime.max(entry.header().mtime().unwrap_or(0));
        if name.is_empty() {
            // The root directory itself ("./"): its inode exists anyway.
            continue;
        }
        let (parent, base) = match name.rsplit_once('/') {
            Some((p, b)) => (p.to_string(), b),
            None => (String::new(), name.as_str()),
        };
        *dirents.entry(parent).or_default() += 8 + round_up(base.len() as u64, 4);
        if kind.is_hard_link() {
            continue;
        }
        stats.inodes += 1;
        if kind.is_file() || kind.is_contiguous() {
            let size = entry.header().entry_size().unwrap_or(0);
            // Plus one extent-tree block per 128 MiB (an extent covers 32768 blocks).
            stats.data_bytes += round_up(size, BLOCK) + size / (128 << 20) * BLOCK;
        } else if kind.is_dir() {
            dirents.entry(name.clone()).or_default();
        } else if kind.is_symlink() {
            // Targets of 60 bytes or more do not fit in the inode.
            let target = entry.link_name_bytes().map(|t| t.len()).unwrap_or(0);
            if target >= 60 {
                stats.data_bytes += BLOCK;
            }
        }
        // Extended attributes beyond the ~100 bytes left in a 256-byte inode need a block.
        if let Ok(Some(pax)) = entry.pax_extensions() {
            let xattr_bytes: u64 = pax
                .filter_map(Result::ok)
                .filter(|e| e.key_bytes().starts_with(b"SCHILY.xattr.") || e.key_bytes().starts_with(b"LIBARCHIVE.xattr."))
                .map(|e| (e.key_bytes().len() + e.value_bytes().len()) as u64)
                .sum();
            if xattr_bytes > 96 {
                stats.data_bytes += BLOCK;
            }
        }
    }
    // "." and ".." in each directory; a third more for hash-tree blocks and slack in blocks.
    stats.dir_bytes = dirents.values().map(|b| round_up((24 + b) * 4 / 3, BLOCK)).sum();
    Ok(stats)
}

/// The filesystem size for `stats` plus `free_bytes` of free space: a
/// conservative estimate, rounded up to [`SIZE_ROUNDING`].
pub fn size_for(stats: &TarStats, free_bytes: u64) -> Sizing {
    let content = (stats.data_bytes + stats.dir_bytes) * HEADROOM_PERCENT / 100 + SLACK_BYTES;
    let wanted_inodes = stats.inodes * 5 / 4 + 2048;
    // Journal and inode tables depend on the size; a few rounds reach a fixed point.
    let mut size = content + free_bytes;
    let mut inodes = wanted_inodes;
    for _ in 0..4 {
        inodes = wanted_inodes.max(size / BYTES_PER_INODE);
        // Inode tables, the journal, and ~1% for bitmaps, group descriptors and
        // the reserved descriptor blocks online resizing needs.
        let metadata = inodes * INODE_SIZE + journal_bytes(size) + size / 100;
        size = round_up(content + free_bytes + metadata, SIZE_ROUNDING);
    }
    Sizing { size_bytes: size, inodes }
}

/// The sizing for a partition of a fixed size: inodes at the default density.
pub fn sizing_for_fixed(size_bytes: u64, stats: &TarStats) -> Sizing {
    Sizing {
        size_bytes,
        inodes: (stats.inodes * 5 / 4 + 2048).max(size_bytes / BYTES_PER_INODE),
    }
}

/// A bigger sizing after mke2fs ran out of space: half as much again.
pub fn grown(s: Sizing) -> Sizing {
    Sizing {
        size_bytes: round_up(s.size_bytes * 3 / 2, SIZE_ROUNDING),
        inodes: s.inodes * 3 / 2,
    }
}

/// mke2fs's default journal size for a filesystem of `size` bytes
/// (`ext2fs_default_journal_size` in e2fsprogs' lib/ext2fs/mkjournal.c).
fn journal_bytes(size: u64) -> u64 {
    let blocks = size / BLOCK;
    let journal_blocks = match blocks {
        0..32768 => 1024,
        32768..262144 => 4096,
        262144..524288 => 8192,
        524288..4194304 => 16384,
        4194304..8388608 => 32768,
        8388608..16777216 => 65536,
        16777216..33554432 => 131072,
        _ => 262144,
    };
    journal_blocks * BLOCK
}

/// Runs mke2fs to build the filesystem inside `image` at byte `offset`.
/// The image must already be at least `offset + size_bytes` long.
pub fn make(runner: &dyn Runner, m: &Mkfs, image: &Path, offset: u64) -> Result<(), MkfsError> {
    let uuid = m.uuid.hyphenated().to_string();
    let cmd = Cmd::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-T", "default"])
        .args(["-b".to_string(), BLOCK.to_string(), "-I".to_string(), INODE_SIZE.to_string()])
        .args([
            "-N".to_string(),
            m.sizing.inodes.to_string(),
            "-m".to_string(),
            RESERVED_PERCENT.to_string(),
        ])
        .args(["-O", FEATURES])
        .arg("-L")
        .arg(&m.label)
        .args(["-U", &uuid])
        // lazy_itable_init: inode tables stay holes; the kernel zeroes them in
        // the background after the first mount (it never trusts uninitialised
        // tables), so a card flashed with only the mapped blocks is consistent.
        // lazy_journal_init: zeroing here would only make holes; the journal is
        // zeroed with real writes afterwards ([`zero_journal`]).
        .arg("-E")
        .arg(format!(
            "root_owner=0:0,hash_seed={uuid},offset={offset},nodiscard,lazy_itable_init=1,lazy_journal_init=1"
        ))
        .arg("-d")
        .arg(&m.tar)
        .arg(image)
        .arg(format!("{}k", m.sizing.size_bytes / 1024))
        .env("E2FSPROGS_FAKE_TIME", m.time.to_string())
        .env("SOURCE_DATE_EPOCH", m.time.to_string())
        // English messages, so out-of-space can be recognised; UTF-8, or
        // libarchive cannot convert non-ASCII member names and gives up.
        .env("LC_ALL", "C.UTF-8");
    match runner.run(&cmd) {
        Ok(_) => Ok(()),
        Err(e) => {
            let tail = e.stderr_tail().unwrap_or_default();
            if is_out_of_space(tail) {
                Err(MkfsError::NoSpace {
                    label: m.label.clone(),
                    tar: m.tar.clone(),
                    size_bytes: m.sizing.size_bytes,
                    inodes: m.sizing.inodes,
                    detail: tail.to_string(),
                })
            } else {
                Err(e.into())
            }
        }
    }
}

/// mke2fs's ways of saying the filesystem is full (lib/ext2fs/ext2_err.et.in).
fn is_out_of_space(stderr: &str) -> bool {
    [
        "Could not allocate block",
        "Could not allocate inode",
        "No free space in the directory",
        "No space left on device",
    ]
    .iter()
    .any(|m| stderr.contains(m))
}

/// Overwrites the journal of the filesystem at `offset` with real zeros.
///
/// Why: mke2fs "zeroes" a journal in an image file by punching holes, and a
/// bmap flash skips holes, so the card would keep whatever its journal blocks
/// held before. Reflashing the same image (same UUID, same journal position)
/// would leave an old journal whose transactions carry valid checksums and
/// could be replayed after a power cut during first boot. Writing the zeros
/// makes them part of the image and of every flash. The journal's first block,
/// its superblock, is mke2fs's and is kept. Returns the bytes written.
pub fn zero_journal(runner: &dyn Runner, image: &Path, offset: u64) -> anyhow::Result<u64> {
    // debugfs has no offset option, but accepts `file?offset=N` (unix io manager).
    let device = format!("{}?offset={offset}", image.display());
    let out = runner.run(&Cmd::new("debugfs").args(["-R", "stat <8>"]).arg(&device).env("LC_ALL", "C"))?;
    let ranges = journal_extents(&out.stdout_str())
        .with_context(|| format!("reading the journal's extents from `debugfs -R 'stat <8>' {device}`"))?;
    let file = File::options()
        .write(true)
        .open(image)
        .with_context(|| format!("opening {}", image.display()))?;
    let zeros = vec![0u8; 1 << 20];
    let mut written = 0;
    for (logical, first, count) in ranges {
        // Logical block 0 is the journal superblock.
        let (first, count) = if logical == 0 { (first + 1, count - 1) } else { (first, count) };
        let mut at = offset + first * BLOCK;
        let end = at + count * BLOCK;
        while at < end {
            let n = (end - at).min(zeros.len() as u64);
            file.write_all_at(&zeros[..n as usize], at)
                .with_context(|| format!("zeroing the journal in {}", image.display()))?;
            at += n;
            written += n;
        }
    }
    Ok(written)
}

/// Block ranges `(first logical, first physical, count)` from debugfs's `stat`
/// EXTENTS list, e.g. `(0-9):11-20, (10):22, (ETB0):33`.
fn journal_extents(stat: &str) -> anyhow::Result<Vec<(u64, u64, u64)>> {
    let list = stat.split_once("EXTENTS:").map(|(_, l)| l).context("no EXTENTS section")?;
    let mut ranges = Vec::new();
    for item in list.split([',', '\n']).map(str::trim).filter(|s| !s.is_empty()) {
        let Some((logical, physical)) = item.split_once("):") else {
            anyhow::bail!("unexpected extent {item:?}")
        };
        if logical.starts_with("(ETB") {
            continue;
        }
        let logical = logical.trim_start_matches('(');
        let logical: u64 = logical.split_once('-').map_or(logical, |(a, _)| a).trim().parse()?;
        let (a, b) = physical.split_once('-').unwrap_or((physical, physical));
        let (a, b): (u64, u64) = (a.trim().parse()?, b.trim().parse()?);
        anyhow::ensure!(b >= a, "unexpected extent {item:?}");
        ranges.push((logical, a, b - a + 1));
    }
    anyhow::ensure!(!ranges.is_empty(), "the journal has no extents");
    Ok(ranges)
}

/// Tar member names as mke2fs sees them: no leading `./` or `/`, no trailing `/`.
fn normalize(p: &str) -> String {
    let mut s = p.trim_start_matches("./").trim_start_matches('/');
    while let Some(rest) = s.strip_prefix("./") {
        s = rest;
    }
    s.trim_end_matches('/').trim_end_matches("/.").to_string()
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

#[cfg(test)]
mod tests {
    use super::{TarStats, journal_bytes, journal_extents, normalize, size_for};

    #[test]
    fn parses_debugfs_extents() {
        let stat = "Inode: 8   Type: regular\nEXTENTS:\n(0-9):11-20, (10):22, (ETB0):33, (25-1023):101-1099\n";
        assert_eq!(journal_extents(stat).unwrap(), vec![(0, 11, 10), (10, 22, 1), (25, 101, 999)]);
        assert!(journal_extents("Inode: 8\n").is_err());
    }

    #[test]
    fn normalizes_tar_names() {
        assert_eq!(normalize("./"), "");
        assert_eq!(normalize("./etc/"), "etc");
        assert_eq!(normalize("usr/bin/ls"), "usr/bin/ls");
        assert_eq!(normalize("/./a/b/"), "a/b");
    }

    #[test]
    fn sizing_covers_content_journal_and_free_space() {
        let stats = TarStats {
            inodes: 40_000,
            data_bytes: 900 << 20,
            dir_bytes: 20 << 20,
            newest_mtime: 0,
        };
        let s = size_for(&stats, 256 << 20);
        assert_eq!(s.size_bytes % (4 << 20), 0);
        let minimum = (920 << 20) + (256 << 20) + journal_bytes(s.size_bytes) + s.inodes * 256;
        assert!(s.size_bytes > minimum, "{} <= {minimum}", s.size_bytes);
        assert!(s.size_bytes < minimum * 3 / 2, "{} is wasteful", s.size_bytes);
        assert!(s.inodes >= 50_000);
    }

    #[test]
    fn journal_size_follows_mke2fs() {
        assert_eq!(journal_bytes(64 << 20), 4 << 20);
        assert_eq!(journal_bytes(1 << 30), 32 << 20);
        assert_eq!(journal_bytes(8 << 30), 64 << 20);
    }
}
