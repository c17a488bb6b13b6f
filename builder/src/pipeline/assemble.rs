//! Stage 3 of `piha build`: filesystems and disk. [`assemble`] turns a root
//! tar and FAT file lists into a partitioned, sparse disk image (stage 4,
//! [`crate::pipeline::package`], adds the `.img.zst`, `.bmap` and
//! `SHA256SUMS`). Nothing is mounted and no loop device is used:
//!
//! - FAT partitions are built in memory ([`crate::image::fat::build`]) and written at
//!   their offsets, free clusters left as holes ([`crate::image::disk::write_fat`]);
//! - the ext4 root is made by `mke2fs -d root.tar -E offset=…` directly inside
//!   the image file ([`crate::image::ext4`]), then its journal is zeroed for real;
//! - the partition table (GPT or MBR) is written last, so an interrupted run
//!   never leaves something that looks like a bootable disk; the image is built
//!   under a temporary name and renamed into place at the end.
//!
//! Reproducibility: every identifier (disk GUID or MBR signature, partition
//! GUIDs, ext4 UUID and directory-hash seed) derives from [`DiskLayout::seed`],
//! and every timestamp is [`DiskLayout::epoch`]. The same layout and inputs
//! give the same image bytes.
//! Identifiers can be computed before assembling (for `root=PARTUUID=…` in a
//! boot file): [`DiskLayout::partuuid`], [`DiskLayout::fs_uuid`].

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use piha_atomic::TempPath;
use piha_runner::Runner;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::arch::Arch;
use crate::image::disk::{self, GptPartition, MbrPartition, Slot};
use crate::image::ext4::{self, MkfsError, Sizing};
use crate::image::fat::{FatFile, FatType};

pub use crate::image::partition::TableKind;

/// What a partition is for; decides its GPT type GUID or MBR type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartKind {
    /// EFI system partition (GPT C12A7328-…, MBR 0xef). FAT content.
    Esp,
    /// PIHA-CFG (GPT Microsoft basic data, MBR 0x0c). FAT content.
    Config,
    /// The root filesystem (GPT Linux root for the layout's arch, MBR 0x83). Ext4 content.
    Root,
    /// The Pi's `system-boot` (MBR 0x0c FAT32 LBA, marked bootable). FAT content.
    BootFat,
}

/// What goes into a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A FAT filesystem filling the partition, holding `files`.
    /// `fat_type: None` lets the size decide (see [`FatType`]).
    Fat {
        label: String,
        fat_type: Option<FatType>,
        files: Vec<FatFile>,
    },
    /// An ext4 made from an uncompressed tar (`root.tar` of stage 2), with at
    /// least `free_bytes` free after population when the size is left to fit.
    Ext4 { label: String, tar: PathBuf, free_bytes: u64 },
}

/// One partition, in table order (the first is partition 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartSpec {
    /// GPT partition name (PARTLABEL), at most 36 characters. Unused in an MBR.
    pub name: String,
    pub kind: PartKind,
    /// Partition size; rounded up to 1 MiB. Required for FAT; `None` for ext4
    /// means "fit the content plus `free_bytes`".
    pub size_bytes: Option<u64>,
    pub content: Content,
}

/// The whole disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskLayout {
    pub table: TableKind,
    /// Picks the GPT root partition's type GUID.
    pub arch: Arch,
    pub partitions: Vec<PartSpec>,
    /// The build's input hash; every identifier on the disk derives from it.
    pub seed: [u8; 32],
    /// Seconds since 1970: every timestamp the filesystems record.
    pub epoch: u64,
}

/// Where a partition ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedPartition {
    /// 1-based partition number.
    pub index: u32,
    pub name: String,
    pub kind: PartKind,
    /// Byte offset and size in the image.
    pub start: u64,
    pub size: u64,
}

/// An assembled image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assembled {
    pub image: PathBuf,
    /// Apparent size in bytes (the file is sparse).
    pub size: u64,
    pub partitions: Vec<PlacedPartition>,
}

/// GPT type GUIDs: the EFI system partition, and Microsoft basic data (what
/// any laptop mounts as a FAT drive). The root's is per architecture: [`Arch::gpt_root_type`].
const GUID_ESP: Uuid = Uuid::from_u128(0xC12A7328_F81F_11D2_BA4B_00A0C93EC93B);
const GUID_BASIC_DATA: Uuid = Uuid::from_u128(0xEBD0A0A2_B9E5_4433_87C0_68B6B72699C7);

impl DiskLayout {
    /// The GPT disk GUID.
    pub fn disk_guid(&self) -> Uuid {
        derive_uuid(&self.seed, "gpt-disk")
    }

    /// The MBR disk signature (never zero: some tools treat 0 as "none").
    pub fn mbr_signature(&self) -> [u8; 4] {
        let h = derive(&self.seed, "mbr-signature");
        let sig = [h[0], h[1], h[2], h[3]];
        if sig == [0; 4] { [1, 0, 0, 0] } else { sig }
    }

    /// The GPT partition GUID of partition `index` (1-based).
    pub fn partition_guid(&self, index: u32) -> Uuid {
        derive_uuid(&self.seed, &format!("gpt-partition-{index}"))
    }

    /// PARTUUID of partition `index` as the kernel and blkid spell it: the GPT
    /// partition GUID in lower case, or `<signature>-<NN>` on an MBR disk.
    pub fn partuuid(&self, index: u32) -> String {
        match self.table {
            TableKind::Gpt => self.partition_guid(index).hyphenated().to_string(),
            TableKind::Mbr => format!("{:08x}-{index:02x}", u32::from_le_bytes(self.mbr_signature())),
        }
    }

    /// The ext4 UUID (`root=UUID=…`) of partition `index` (1-based).
    pub fn fs_uuid(&self, index: u32) -> Uuid {
        derive_uuid(&self.seed, &format!("ext4-{index}"))
    }
}

/// Builds the disk image `out_image` (replacing it) from `layout`, running
/// mke2fs and debugfs through `runner`. Progress lines go to `progress`. The
/// image's directory must exist; the image is written beside it under a
/// temporary name first.
pub fn assemble(runner: &dyn Runner, layout: &DiskLayout, out_image: &Path, progress: &dyn Fn(&str)) -> anyhow::Result<Assembled> {
    check(layout)?;
    let mut prepared = Vec::with_capacity(layout.partitions.len());
    for (i, p) in layout.partitions.iter().enumerate() {
        prepared.push(prepare(layout, i as u32 + 1, p, progress).with_context(|| format!("preparing partition {} ({})", i + 1, p.name))?);
    }
    let tmp = TempPath::new(out_image).with_context(|| format!("naming a temporary file beside {}", out_image.display()))?;
    let t = Target {
        path: tmp.path(),
        image: out_image,
        runner,
        progress,
    };
    let (slots, size) = write_fitting(&t, layout, &mut prepared)?;
    tmp.commit().with_context(|| format!("putting {} in place", out_image.display()))?;
    let partitions = layout
        .partitions
        .iter()
        .zip(&slots)
        .enumerate()
        .map(|(i, (p, s))| PlacedPartition {
            index: i as u32 + 1,
            name: p.name.clone(),
            kind: p.kind,
            start: s.start,
            size: s.size,
        })
        .collect();
    Ok(Assembled {
        image: out_image.to_path_buf(),
        size,
        partitions,
    })
}

/// Places the partitions and writes the image; when mke2fs runs out of room
/// in a root sized by estimate, grows it once and writes again.
fn write_fitting(t: &Target, layout: &DiskLayout, prepared: &mut [Prepared]) -> anyhow::Result<(Vec<Slot>, u64)> {
    let mut retried = false;
    loop {
        let sizes: Vec<u64> = prepared.iter().map(Prepared::size).collect();
        let (slots, size) = disk::place(&sizes, layout.table == TableKind::Gpt);
        let (i, e) = match write_image(t, layout, prepared, &slots, size) {
            Ok(()) => return Ok((slots, size)),
            Err(WriteError::NoSpace(i, e)) => (i, e),
            Err(WriteError::Other(e)) => return Err(e.context(format!("assembling {}", t.image.display()))),
        };
        let Prepared::Ext4 { mkfs, fit: true } = &mut prepared[i] else {
            return Err(anyhow::Error::new(e).context(format!(
                "partition {} ({}) has a fixed size that is too small: raise its size",
                i + 1,
                layout.partitions[i].name
            )));
        };
        if retried {
            return Err(anyhow::Error::new(e).context("the root filesystem did not fit even after growing it by half"));
        }
        retried = true;
        mkfs.sizing = ext4::grown(mkfs.sizing);
        (t.progress)(&format!(
            "{}: estimate was short, retrying with {} MiB",
            mkfs.label,
            mkfs.sizing.size_bytes >> 20
        ));
    }
}

/// A partition's content, ready to be written.
enum Prepared {
    Fat(Vec<u8>),
    /// `fit`: the size came from the content estimate and may grow on retry.
    Ext4 {
        mkfs: ext4::Mkfs,
        fit: bool,
    },
}

impl Prepared {
    fn size(&self) -> u64 {
        match self {
            Prepared::Fat(bytes) => bytes.len() as u64,
            Prepared::Ext4 { mkfs, .. } => mkfs.sizing.size_bytes,
        }
    }
}

enum WriteError {
    /// mke2fs ran out of space in partition `.0` (0-based).
    NoSpace(usize, MkfsError),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for WriteError {
    fn from(e: anyhow::Error) -> Self {
        WriteError::Other(e)
    }
}

/// Checks the layout's shape before any work.
fn check(layout: &DiskLayout) -> anyhow::Result<()> {
    ensure!(!layout.partitions.is_empty(), "the disk layout has no partitions");
    if layout.table == TableKind::Mbr {
        ensure!(
            layout.partitions.len() <= 4,
            "an MBR holds at most 4 primary partitions, the layout has {}",
            layout.partitions.len()
        );
    }
    for (i, p) in layout.partitions.iter().enumerate() {
        let n = i + 1;
        match (&p.content, p.kind) {
            (Content::Fat { .. }, PartKind::Esp | PartKind::Config | PartKind::BootFat) => {
                ensure!(p.size_bytes.is_some(), "partition {n} ({}): a FAT partition needs a size", p.name);
            }
            (Content::Ext4 { .. }, PartKind::Root) => {}
            (_, kind) => bail!(
                "partition {n} ({}): a {kind:?} partition cannot hold this content (FAT goes in Esp/Config/BootFat, ext4 in Root)",
                p.name
            ),
        }
        ensure!(
            layout.table == TableKind::Mbr || p.name.encode_utf16().count() <= 36,
            "partition {n}: GPT name {:?} is longer than 36 characters",
            p.name
        );
    }
    Ok(())
}

/// Builds a FAT in memory, or scans a tar and sizes its ext4.
fn prepare(layout: &DiskLayout, index: u32, p: &PartSpec, progress: &dyn Fn(&str)) -> anyhow::Result<Prepared> {
    match &p.content {
        Content::Fat { label, fat_type, files } => {
            let size = p.size_bytes.unwrap_or_default().div_ceil(disk::ALIGN) * disk::ALIGN;
            progress(&format!("{}: FAT {label}, {} MiB, {} files", p.name, size >> 20, files.len()));
            Ok(Prepared::Fat(crate::image::fat::build(label, size, *fat_type, files)?))
        }
        Content::Ext4 { label, tar, free_bytes } => {
            progress(&format!("{}: scanning {}", p.name, tar.display()));
            let stats = ext4::scan_tar(tar)?;
            let (sizing, fit): (Sizing, bool) = match p.size_bytes {
                Some(size) => (ext4::sizing_for_fixed(size.div_ceil(disk::ALIGN) * disk::ALIGN, &stats), false),
                None => (ext4::size_for(&stats, *free_bytes), true),
            };
            let mkfs = ext4::Mkfs {
                label: label.clone(),
                tar: tar.clone(),
                uuid: layout.fs_uuid(index),
                time: layout.epoch,
                sizing,
            };
            Ok(Prepared::Ext4 { mkfs, fit })
        }
    }
}

/// The image file being written, the runner for mke2fs and debugfs, and where progress goes.
struct Target<'a> {
    /// The temporary file written.
    path: &'a Path,
    /// The name it gets once complete.
    image: &'a Path,
    runner: &'a dyn Runner,
    progress: &'a dyn Fn(&str),
}

/// Writes the whole image: contents first, partition table last.
fn write_image(t: &Target, layout: &DiskLayout, prepared: &mut [Prepared], slots: &[Slot], size: u64) -> Result<(), WriteError> {
    let path = t.path;
    // A fresh file each attempt: set_len makes one big hole to fill.
    let mut file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.set_len(size)
        .with_context(|| format!("sizing {} to {size} bytes", path.display()))?;
    for (i, (content, slot)) in prepared.iter_mut().zip(slots).enumerate() {
        let name = &layout.partitions[i].name;
        match content {
            Prepared::Fat(bytes) => write_fat(t, &file, bytes, slot, name)?,
            Prepared::Ext4 { mkfs, .. } => match write_ext4(t, mkfs, slot, name)? {
                Ok(()) => {}
                Err(e) => return Err(WriteError::NoSpace(i, e)),
            },
        }
    }
    (t.progress)(&format!("writing the partition table ({:?})", layout.table));
    write_table(&mut file, layout, slots)?;
    file.sync_all().with_context(|| format!("flushing {}", path.display()))?;
    Ok(())
}

/// Writes a FAT built in memory at its partition's offset.
fn write_fat(t: &Target, file: &File, bytes: &mut [u8], slot: &Slot, name: &str) -> anyhow::Result<()> {
    let start_sector = u32::try_from(slot.start / disk::SECTOR).context("partition starts beyond 2 TiB")?;
    crate::image::fat::set_hidden_sectors(bytes, start_sector)?;
    let written = disk::write_fat(file, slot.start, bytes)?;
    (t.progress)(&format!("{name}: wrote {} KiB of FAT at {} MiB", written >> 10, slot.start >> 20));
    Ok(())
}

/// Makes the ext4 inside the image and zeroes its journal; the inner error
/// is mke2fs running out of space, which a retry with a bigger size may fix.
fn write_ext4(t: &Target, mkfs: &ext4::Mkfs, slot: &Slot, name: &str) -> anyhow::Result<Result<(), MkfsError>> {
    (t.progress)(&format!(
        "{name}: mke2fs {} MiB from {}",
        mkfs.sizing.size_bytes >> 20,
        mkfs.tar.display()
    ));
    match ext4::make(t.runner, mkfs, t.path, slot.start) {
        Ok(()) => {}
        Err(e @ MkfsError::NoSpace { .. }) => return Ok(Err(e)),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("making the ext4 filesystem of {name}"))),
    }
    let zeroed = ext4::zero_journal(t.runner, t.path, slot.start)?;
    (t.progress)(&format!("{name}: zeroed the {} MiB journal", zeroed >> 20));
    Ok(Ok(()))
}

/// Writes the GPT (with its protective MBR) or the MBR.
fn write_table(file: &mut File, layout: &DiskLayout, slots: &[Slot]) -> anyhow::Result<()> {
    match layout.table {
        TableKind::Gpt => {
            let parts: Vec<GptPartition> = layout
                .partitions
                .iter()
                .zip(slots)
                .enumerate()
                .map(|(i, (p, slot))| GptPartition {
                    type_guid: gpt_type(p.kind, layout.arch),
                    guid: layout.partition_guid(i as u32 + 1),
                    name: p.name.clone(),
                    slot: *slot,
                })
                .collect();
            disk::write_gpt(file, layout.disk_guid(), &parts)?;
        }
        TableKind::Mbr => {
            let parts: Vec<MbrPartition> = layout
                .partitions
                .iter()
                .zip(slots)
                .map(|(p, slot)| MbrPartition {
                    sys: mbr_type(p.kind),
                    bootable: p.kind == PartKind::BootFat,
                    slot: *slot,
                })
                .collect();
            disk::write_mbr(file, layout.mbr_signature(), &parts)?;
        }
    }
    Ok(())
}

fn gpt_type(kind: PartKind, arch: Arch) -> Uuid {
    match kind {
        PartKind::Esp => GUID_ESP,
        PartKind::Config | PartKind::BootFat => GUID_BASIC_DATA,
        PartKind::Root => arch.gpt_root_type(),
    }
}

fn mbr_type(kind: PartKind) -> u8 {
    match kind {
        PartKind::Esp => 0xef,
        PartKind::Config | PartKind::BootFat => 0x0c,
        PartKind::Root => 0x83,
    }
}

/// 32 bytes derived from the seed for one purpose.
fn derive(seed: &[u8; 32], purpose: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"piha-disk\0");
    h.update(purpose.as_bytes());
    h.update([0]);
    h.update(seed);
    h.finalize().into()
}

/// A version-4-shaped UUID derived from the seed for one purpose.
fn derive_uuid(seed: &[u8; 32], purpose: &str) -> Uuid {
    let h = derive(seed, purpose);
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    uuid::Builder::from_random_bytes(b).into_uuid()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::{Content, DiskLayout, PartKind, PartSpec, TableKind, check, gpt_type};
    use crate::arch::Arch;

    fn layout(table: TableKind) -> DiskLayout {
        DiskLayout {
            table,
            arch: Arch::Amd64,
            partitions: vec![PartSpec {
                name: "root".into(),
                kind: PartKind::Root,
                size_bytes: None,
                content: Content::Ext4 {
                    label: "root".into(),
                    tar: PathBuf::from("r.tar"),
                    free_bytes: 0,
                },
            }],
            seed: [7; 32],
            epoch: 0,
        }
    }

    #[test]
    fn identifiers_are_stable_and_distinct() {
        let l = layout(TableKind::Gpt);
        assert_eq!(l.partition_guid(1), layout(TableKind::Gpt).partition_guid(1));
        assert_ne!(l.partition_guid(1), l.partition_guid(2));
        assert_ne!(l.fs_uuid(3), l.partition_guid(3));
        assert_eq!(l.partition_guid(1).get_version_num(), 4);
        let m = layout(TableKind::Mbr);
        let sig = u32::from_le_bytes(m.mbr_signature());
        assert_eq!(m.partuuid(3), format!("{sig:08x}-03"));
        let mut other = layout(TableKind::Gpt);
        other.seed[0] = 8;
        assert_ne!(other.disk_guid(), l.disk_guid());
    }

    #[test]
    fn rejects_mismatched_content() {
        let mut l = layout(TableKind::Gpt);
        l.partitions[0].kind = PartKind::Esp;
        assert!(check(&l).unwrap_err().to_string().contains("cannot hold"));
        assert!(check(&layout(TableKind::Mbr)).is_ok());
    }

    #[test]
    fn root_type_follows_the_arch() {
        assert_eq!(
            gpt_type(PartKind::Root, Arch::Amd64).hyphenated().to_string(),
            "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
        );
        assert_eq!(
            gpt_type(PartKind::Root, Arch::Arm64).hyphenated().to_string(),
            "b921b045-1df0-41c3-af44-4c6f280d3fae"
        );
        assert_eq!(
            gpt_type(PartKind::Esp, Arch::Arm64).hyphenated().to_string(),
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
        );
    }
}
