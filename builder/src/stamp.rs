//! `piha stamp`: give a card (or an image file) its node identity by writing a
//! new PIHA-CFG filesystem into it, or write a bare PIHA-CFG image.
//!
//! Nothing is mounted. The cluster file is validated, the node looked up and
//! its secrets read before the target is touched; the whole filesystem is then
//! built in memory, written in one pass at the partition's offset, synced, and
//! read back through a fresh descriptor that bypasses the page cache where the
//! target allows it. Every other byte of the target is left as it was.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{Context, bail};
use piha_config::cluster::ClusterFile;
use piha_config::node::CONFIG_LABEL;
use sha2::{Digest, Sha256};

use crate::card::{self, Card, IMAGE_INFO_FILE, ImageInfo};
use crate::cli::StampOpts;
use crate::partition::{self, ConfigPartition};
use crate::{fat, validate};

/// A PIHA-CFG larger than this is a mistake (a card's data partition labelled
/// PIHA-CFG?), not something to build in memory.
const MAX_PARTITION: u64 = 1 << 30;

pub fn run(opts: &StampOpts) -> anyhow::Result<()> {
    let cluster_path = &opts.cluster.cluster;
    let cluster = validate::load_cluster(cluster_path)?;
    // An unknown node fails here, before any target is opened.
    card::node_config(&cluster, cluster_path, &opts.node, &cluster.distro)?;
    match (&opts.partition_image, &opts.target) {
        (Some(out), _) => stamp_partition_image(opts, &cluster, out),
        (None, Some(target)) => stamp_target(opts, &cluster, target),
        (None, None) => bail!("give a TARGET (image file or block device) or --partition-image OUT"),
    }
}

fn stamp_partition_image(opts: &StampOpts, cluster: &ClusterFile, out: &Path) -> anyhow::Result<()> {
    let card = card::assemble(cluster, &opts.cluster.cluster, &opts.node, &opts.cluster.secrets_dir(), None, out)?;
    let fs = fat::build(CONFIG_LABEL, card::PARTITION_SIZE, None, &card.files).context("building the PIHA-CFG filesystem")?;
    write_atomically(out, &fs)?;
    print_summary(
        &card,
        &format!(
            "{} (bare {CONFIG_LABEL} filesystem, {})",
            out.display(),
            partition::human(card::PARTITION_SIZE)
        ),
        &fs,
    );
    Ok(())
}

fn stamp_target(opts: &StampOpts, cluster: &ClusterFile, target: &Path) -> anyhow::Result<()> {
    let mut disk = open_target(target)?;
    let sector_size = partition::sector_size_of(&disk);
    let table =
        partition::read_table(&mut disk, sector_size).with_context(|| format!("reading the partition table of {}", target.display()))?;
    let part = partition::find_config(&mut disk, &table, target)?;
    if part.size > MAX_PARTITION {
        bail!(
            "the {CONFIG_LABEL} partition of {} is {}; piha expects a small config partition ({}). Check that you picked the right disk",
            target.display(),
            partition::human(part.size),
            partition::human(card::PARTITION_SIZE)
        );
    }
    let image = existing_image_info(&mut disk, &part, target)?;
    let card = card::assemble(
        cluster,
        &opts.cluster.cluster,
        &opts.node,
        &opts.cluster.secrets_dir(),
        image.as_ref(),
        target,
    )?;
    let fs_sector = u16::try_from(sector_size).unwrap_or(512);
    let mut fs = fat::build_with_sector_size(CONFIG_LABEL, part.size, None, &card.files, fs_sector)
        .with_context(|| format!("building the PIHA-CFG filesystem for {}", target.display()))?;
    fat::set_hidden_sectors(&mut fs, u32::try_from(part.start / sector_size).unwrap_or(u32::MAX))?;

    let mut medium = DiskMedium {
        file: disk,
        path: target.to_path_buf(),
        sector_size,
        reader: None,
    };
    write_verified(&mut medium, part.start, &fs).with_context(|| format!("writing {CONFIG_LABEL} to {}", target.display()))?;
    let at = match part.number {
        Some(n) => format!(
            "{} partition {n} ({CONFIG_LABEL} by {}, {} at {})",
            target.display(),
            part.found_by,
            partition::human(part.size),
            partition::human(part.start)
        ),
        None => format!(
            "{} (bare {CONFIG_LABEL} filesystem, {})",
            target.display(),
            partition::human(part.size)
        ),
    };
    print_summary(&card, &at, &fs);
    Ok(())
}

fn print_summary(card: &Card, at: &str, fs: &[u8]) {
    println!(
        "stamped {} ({}) onto {at}: {} files ({} secrets), sha256 {}",
        card.node.node.name,
        card.node.node.role.as_str(),
        card.files.len(),
        card.secret_count(),
        hex::encode(Sha256::digest(fs))
    );
}

/// Opens an image file or block device for writing. A block device is opened
/// O_EXCL, which the kernel refuses while it is mounted or otherwise held, and
/// is refused as well when one of its partitions is mounted.
fn open_target(target: &Path) -> anyhow::Result<File> {
    let meta = std::fs::metadata(target).with_context(|| format!("opening {}", target.display()))?;
    let block = meta.file_type().is_block_device();
    if !block && !meta.is_file() {
        bail!("{} is neither an image file nor a block device", target.display());
    }
    if block {
        ensure_unmounted(target, meta.rdev())?;
    }
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if block {
        o.custom_flags(libc::O_EXCL);
    }
    o.open(target).map_err(|e| {
        if e.raw_os_error() == Some(libc::EBUSY) {
            anyhow::anyhow!(
                "{} is in use (mounted, or held by another program); unmount it first",
                target.display()
            )
        } else {
            anyhow::Error::new(e).context(format!("opening {} for writing", target.display()))
        }
    })
}

/// Fails if the device or any of its partitions appears in /proc/self/mountinfo.
fn ensure_unmounted(target: &Path, rdev: u64) -> anyhow::Result<()> {
    let (major, minor) = ((rdev >> 8) & 0xfff | (rdev >> 32) & !0xfff, rdev & 0xff | (rdev >> 12) & !0xff);
    let mut ids = vec![format!("{major}:{minor}")];
    // Partitions are subdirectories of the disk's sysfs directory with a `dev` file.
    if let Ok(entries) = std::fs::read_dir(format!("/sys/dev/block/{major}:{minor}")) {
        for e in entries.flatten() {
            if let Ok(dev) = std::fs::read_to_string(e.path().join("dev")) {
                ids.push(dev.trim().to_string());
            }
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    for line in mountinfo.lines() {
        let mut fields = line.split(' ');
        let (Some(dev), Some(mountpoint)) = (fields.nth(2), fields.nth(1)) else {
            continue;
        };
        if ids.iter().any(|i| i == dev) {
            bail!(
                "{} (or a partition of it, device {dev}) is mounted at {mountpoint}; unmount it first",
                target.display()
            );
        }
    }
    Ok(())
}

/// The image.json the image was built with, if PIHA-CFG holds a readable FAT.
fn existing_image_info(disk: &mut File, part: &ConfigPartition, target: &Path) -> anyhow::Result<Option<ImageInfo>> {
    if partition::fat_label_at(disk, part.start, part.size).is_none() {
        // A fresh partition (all zeros) or a damaged one: nothing to keep.
        log::info!("{}: {CONFIG_LABEL} holds no FAT filesystem yet", target.display());
        return Ok(None);
    }
    let slice = fscommon::StreamSlice::new(fat::ReadOnly(&mut *disk), part.start, part.start + part.size)?;
    match fat::read_file(slice, IMAGE_INFO_FILE) {
        Ok(Some(raw)) => Ok(Some(
            ImageInfo::parse(raw).with_context(|| format!("reading {IMAGE_INFO_FILE} from {}", target.display()))?,
        )),
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

/// Writes `data` to `path` through a temporary file in the same directory and
/// a rename, so a crash never leaves half a file under the final name.
fn write_atomically(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(data).with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("syncing {}", tmp.path().display()))?;
    tmp.persist(path)
        .with_context(|| format!("renaming the temporary file to {}", path.display()))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))?;
    Ok(())
}

/// Where the new filesystem goes. Tests substitute media that fail on purpose.
trait Medium {
    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()>;
    fn sync(&mut self) -> io::Result<()>;
    /// Reads back what the medium holds, not what a cache remembers.
    fn read_back(&mut self, offset: u64, out: &mut [u8]) -> io::Result<()>;
}

/// Writes in one pass, syncs, reads back and compares byte for byte.
fn write_verified(m: &mut impl Medium, offset: u64, data: &[u8]) -> anyhow::Result<()> {
    m.write_at(data, offset).context("writing the new filesystem")?;
    m.sync().context("syncing")?;
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK.min(data.len())];
    for (i, want) in data.chunks(CHUNK).enumerate() {
        let at = (i * CHUNK) as u64;
        let got = &mut buf[..want.len()];
        m.read_back(offset + at, got).context("reading the new filesystem back")?;
        if let Some(pos) = got.iter().zip(want).position(|(a, b)| a != b) {
            let off = at + pos as u64;
            bail!(
                "verification failed: byte {off} of the partition (byte {} of the disk) reads back differently from what was written; the card may be failing",
                offset + off
            );
        }
    }
    Ok(())
}

struct DiskMedium {
    file: File,
    path: std::path::PathBuf,
    sector_size: u64,
    /// Opened on the first read-back, after the sync.
    reader: Option<Reader>,
}

/// A second descriptor for reading back: O_DIRECT reads the medium, not the
/// page cache the write went through. Filesystems without O_DIRECT (tmpfs)
/// refuse it; there the page cache is the storage, so a plain read is true.
enum Reader {
    Direct(File, Box<AlignedChunk>),
    Plain(File),
}

/// O_DIRECT needs buffers aligned to the logical block size; 4096 covers every disk.
#[repr(C, align(4096))]
struct AlignedChunk([u8; 64 * 1024]);

impl Reader {
    fn open(path: &Path) -> io::Result<Reader> {
        match OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path) {
            Ok(f) => Ok(Reader::Direct(f, Box::new(AlignedChunk([0; 64 * 1024])))),
            Err(e) => {
                log::debug!("{}: no O_DIRECT ({e}); verifying through a fresh descriptor", path.display());
                Ok(Reader::Plain(File::open(path)?))
            }
        }
    }
}

impl Medium for DiskMedium {
    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_all()
    }

    fn read_back(&mut self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let reader = match self.reader {
            Some(ref mut r) => r,
            None => self.reader.insert(Reader::open(&self.path)?),
        };
        let aligned = offset % self.sector_size == 0 && out.len() as u64 % self.sector_size == 0;
        match reader {
            Reader::Direct(f, chunk) if aligned => {
                let mut done = 0;
                while done < out.len() {
                    let n = (out.len() - done).min(chunk.0.len());
                    f.read_exact_at(&mut chunk.0[..n], offset + done as u64)?;
                    out[done..done + n].copy_from_slice(&chunk.0[..n]);
                    done += n;
                }
                Ok(())
            }
            // Unaligned requests cannot use O_DIRECT; read them through the page cache.
            Reader::Direct(..) => File::open(&self.path)?.read_exact_at(out, offset),
            Reader::Plain(f) => f.read_exact_at(out, offset),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::{Medium, write_verified};

    /// A medium backed by memory that can corrupt or fail on purpose.
    struct Memory {
        bytes: Vec<u8>,
        flip_at: Option<usize>,
        fail_write: bool,
    }

    impl Medium for Memory {
        fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
            if self.fail_write {
                return Err(io::Error::other("injected write error"));
            }
            let o = offset as usize;
            self.bytes[o..o + data.len()].copy_from_slice(data);
            if let Some(i) = self.flip_at {
                self.bytes[i] ^= 0xff;
            }
            Ok(())
        }

        fn sync(&mut self) -> io::Result<()> {
            Ok(())
        }

        fn read_back(&mut self, offset: u64, out: &mut [u8]) -> io::Result<()> {
            let o = offset as usize;
            out.copy_from_slice(&self.bytes[o..o + out.len()]);
            Ok(())
        }
    }

    #[test]
    fn good_write_verifies_and_leaves_the_rest() {
        let mut m = Memory {
            bytes: vec![7; 4 << 20],
            flip_at: None,
            fail_write: false,
        };
        let data = vec![1u8; 3 << 20];
        write_verified(&mut m, 512, &data).unwrap();
        assert_eq!(m.bytes[..512], [7; 512]);
        assert_eq!(m.bytes[512..512 + data.len()], data[..]);
        assert!(m.bytes[512 + data.len()..].iter().all(|b| *b == 7));
    }

    #[test]
    fn corruption_is_caught_with_its_offset() {
        let mut m = Memory {
            bytes: vec![0; 4 << 20],
            flip_at: Some(1024 + (2 << 20) + 5),
            fail_write: false,
        };
        let err = write_verified(&mut m, 1024, &vec![1u8; 3 << 20]).unwrap_err().to_string();
        assert!(err.contains(&format!("byte {} of the partition", (2 << 20) + 5)), "{err}");
    }

    #[test]
    fn write_errors_surface() {
        let mut m = Memory {
            bytes: vec![0; 4096],
            flip_at: None,
            fail_write: true,
        };
        let err = format!("{:#}", write_verified(&mut m, 0, &[1; 512]).unwrap_err());
        assert!(err.contains("injected write error"), "{err}");
    }
}
