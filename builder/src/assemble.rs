//! Stages 3 and 4 of `piha build`: filesystems and disk. [`assemble`] turns a
//! root tar and FAT file lists into a partitioned, sparse disk image;
//! [`package`] adds the `.img.zst`, the `.bmap` and `SHA256SUMS` next to it.
//! Nothing is mounted and no loop device is used:
//!
//! - FAT partitions are built in memory ([`crate::fat::build`]) and written at
//!   their offsets, free clusters left as holes ([`crate::disk::write_fat`]);
//! - the ext4 root is made by `mke2fs -d root.tar -E offset=…` directly inside
//!   the image file ([`crate::ext4`]), then its journal is zeroed for real;
//! - the partition table (GPT or MBR) is written last, so an interrupted run
//!   never leaves something that looks like a bootable disk; the image is built
//!   under a temporary name and renamed into place at the end.
//!
//! Reproducibility: every identifier (disk GUID or MBR signature, partition
//! GUIDs, ext4 UUID and directory-hash seed) derives from [`DiskLayout::seed`],
//! and every timestamp is `SOURCE_DATE_EPOCH` when set, else the newest mtime
//! in the root tar. The same layout and inputs give the same image bytes.
//! Identifiers can be computed before assembling (for `root=PARTUUID=…` in a
//! boot file): [`DiskLayout::partuuid`], [`DiskLayout::fs_uuid`].

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use piha_runner::{Cmd, Runner, SystemRunner};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::checksums;
use crate::compress;
use crate::disk::{self, GptPartition, MbrPartition, Slot};
use crate::ext4::{self, MkfsError, Sizing};
use crate::fat::{FatFile, FatType};

/// The partition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// UEFI boards: protective MBR + GPT.
    Gpt,
    /// Raspberry Pi: the firmware reads only an MBR.
    Mbr,
}

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
    /// `amd64` or `arm64` (also `x86_64`, `aarch64`): picks the GPT root type GUID.
    pub arch: String,
    pub partitions: Vec<PartSpec>,
    /// The build's input hash; every identifier on the disk derives from it.
    pub seed: [u8; 32],
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

/// The files [`package`] leaves in its output directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifacts {
    pub image: PathBuf,
    pub compressed: PathBuf,
    pub bmap: PathBuf,
    pub sha256sums: PathBuf,
}

/// GPT type GUIDs (UEFI spec; Linux ones from the Discoverable Partitions
/// Specification, <https://uapi-group.org/specifications/specs/discoverable_partitions_specification/>).
const GUID_ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const GUID_BASIC_DATA: &str = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7";
const GUID_ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
const GUID_ROOT_ARM64: &str = "B921B045-1DF0-41C3-AF44-4C6F280D3FAE";

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

/// Builds the disk image `out_image` (replacing it) from `layout`. Progress
/// lines go to `progress`. The image's directory must exist; the image is
/// written beside it under a temporary name first.
pub fn assemble(layout: &DiskLayout, out_image: &Path, progress: &dyn Fn(&str)) -> anyhow::Result<Assembled> {
    assemble_with(&SystemRunner, layout, out_image, progress)
}

/// [`assemble`] with a chosen runner for mke2fs and debugfs.
pub fn assemble_with(runner: &dyn Runner, layout: &DiskLayout, out_image: &Path, progress: &dyn Fn(&str)) -> anyhow::Result<Assembled> {
    check(layout)?;
    let mut prepared = Vec::with_capacity(layout.partitions.len());
    for (i, p) in layout.partitions.iter().enumerate() {
        prepared.push(prepare(layout, i as u32 + 1, p, progress).with_context(|| format!("preparing partition {} ({})", i + 1, p.name))?);
    }
    let tmp = temp_path(out_image);
    let mut retried = false;
    let (slots, size) = loop {
        let sizes: Vec<u64> = prepared.iter().map(Prepared::size).collect();
        let (slots, size) = disk::place(&sizes, layout.table == TableKind::Gpt);
        match write_image(runner, layout, &mut prepared, &slots, size, &tmp, progress) {
            Ok(()) => break (slots, size),
            Err(WriteError::NoSpace(i, e)) => {
                let Prepared::Ext4 { mkfs, fit: true } = &mut prepared[i] else {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(anyhow::Error::new(e).context(format!(
                        "partition {} ({}) has a fixed size that is too small: raise its size",
                        i + 1,
                        layout.partitions[i].name
                    )));
                };
                if retried {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(anyhow::Error::new(e).context("the root filesystem did not fit even after growing it by half"));
                }
                retried = true;
                mkfs.sizing = ext4::grown(mkfs.sizing);
                progress(&format!(
                    "{}: estimate was short, retrying with {} MiB",
                    mkfs.label,
                    mkfs.sizing.size_bytes >> 20
                ));
            }
            Err(WriteError::Other(e)) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e.context(format!("assembling {}", out_image.display())));
            }
        }
    };
    std::fs::rename(&tmp, out_image).with_context(|| format!("renaming {} to {}", tmp.display(), out_image.display()))?;
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
    } else {
        root_type(&layout.arch)?;
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
            Ok(Prepared::Fat(crate::fat::build(label, size, *fat_type, files)?))
        }
        Content::Ext4 { label, tar, free_bytes } => {
            progress(&format!("{}: scanning {}", p.name, tar.display()));
            let stats = ext4::scan_tar(tar)?;
            let (sizing, fit): (Sizing, bool) = match p.size_bytes {
                Some(size) => (ext4::sizing_for_fixed(size.div_ceil(disk::ALIGN) * disk::ALIGN, &stats), false),
                None => (ext4::size_for(&stats, *free_bytes), true),
            };
            let time = match std::env::var("SOURCE_DATE_EPOCH") {
                Ok(v) => v
                    .trim()
                    .parse()
                    .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"))?,
                Err(_) => stats.newest_mtime,
            };
            let mkfs = ext4::Mkfs {
                label: label.clone(),
                tar: tar.clone(),
                uuid: layout.fs_uuid(index),
                time,
                sizing,
            };
            Ok(Prepared::Ext4 { mkfs, fit })
        }
    }
}

/// Writes the whole image at `path`: contents first, partition table last.
fn write_image(
    runner: &dyn Runner,
    layout: &DiskLayout,
    prepared: &mut [Prepared],
    slots: &[Slot],
    size: u64,
    path: &Path,
    progress: &dyn Fn(&str),
) -> Result<(), WriteError> {
    // A fresh file each attempt: set_len makes one big hole to fill.
    let mut file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.set_len(size)
        .with_context(|| format!("sizing {} to {size} bytes", path.display()))?;
    for (i, (content, slot)) in prepared.iter_mut().zip(slots).enumerate() {
        let name = &layout.partitions[i].name;
        match content {
            Prepared::Fat(bytes) => {
                let start_sector = u32::try_from(slot.start / disk::SECTOR).context("partition starts beyond 2 TiB")?;
                crate::fat::set_hidden_sectors(bytes, start_sector)?;
                let written = disk::write_fat(&file, slot.start, bytes)?;
                progress(&format!("{name}: wrote {} KiB of FAT at {} MiB", written >> 10, slot.start >> 20));
            }
            Prepared::Ext4 { mkfs, .. } => {
                progress(&format!(
                    "{name}: mke2fs {} MiB from {}",
                    mkfs.sizing.size_bytes >> 20,
                    mkfs.tar.display()
                ));
                match ext4::make(runner, mkfs, path, slot.start) {
                    Ok(()) => {}
                    Err(e @ MkfsError::NoSpace { .. }) => return Err(WriteError::NoSpace(i, e)),
                    Err(e) => {
                        return Err(WriteError::Other(
                            anyhow::Error::new(e).context(format!("making the ext4 filesystem of {name}")),
                        ));
                    }
                }
                let zeroed = ext4::zero_journal(runner, path, slot.start)?;
                progress(&format!("{name}: zeroed the {} MiB journal", zeroed >> 20));
            }
        }
    }
    progress(&format!("writing the partition table ({:?})", layout.table));
    match layout.table {
        TableKind::Gpt => {
            let parts = layout
                .partitions
                .iter()
                .zip(slots)
                .enumerate()
                .map(|(i, (p, slot))| {
                    Ok(GptPartition {
                        type_guid: gpt_type(p.kind, &layout.arch)?,
                        guid: layout.partition_guid(i as u32 + 1),
                        name: p.name.clone(),
                        slot: *slot,
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            disk::write_gpt(&mut file, layout.disk_guid(), &parts)?;
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
            disk::write_mbr(&mut file, layout.mbr_signature(), &parts)?;
        }
    }
    file.sync_all().with_context(|| format!("flushing {}", path.display()))?;
    Ok(())
}

fn gpt_type(kind: PartKind, arch: &str) -> anyhow::Result<Uuid> {
    let guid = match kind {
        PartKind::Esp => GUID_ESP,
        PartKind::Config | PartKind::BootFat => GUID_BASIC_DATA,
        PartKind::Root => root_type(arch)?,
    };
    Ok(Uuid::parse_str(guid).expect("valid GUID constant"))
}

fn root_type(arch: &str) -> anyhow::Result<&'static str> {
    match arch {
        "amd64" | "x86_64" => Ok(GUID_ROOT_X86_64),
        "arm64" | "aarch64" => Ok(GUID_ROOT_ARM64),
        other => bail!("no GPT root partition type for architecture {other:?}: expected amd64 or arm64"),
    }
}

fn mbr_type(kind: PartKind) -> u8 {
    match kind {
        PartKind::Esp => 0xef,
        PartKind::Config | PartKind::BootFat => 0x0c,
        PartKind::Root => 0x83,
    }
}

/// Makes the `.img.zst`, `.bmap` and `SHA256SUMS` for an assembled image in
/// `out_dir` (created if missing). The image is moved into `out_dir` if it is
/// elsewhere; [`Artifacts::image`] is where it is now. For `X.img` the files
/// are `X.img.zst`, `X.bmap` (the name `bmaptool copy` finds by itself for
/// both `X.img` and `X.img.zst`) and `SHA256SUMS` listing all three. Each is
/// written under a temporary name and renamed into place.
pub fn package(a: &Assembled, out_dir: &Path, progress: &dyn Fn(&str)) -> anyhow::Result<Artifacts> {
    package_with(a, out_dir, &PackageOptions::default(), progress)
}

/// How [`package_with`] compresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackageOptions {
    /// zstd level, 1–19. The default, [`compress::LEVEL`], is fast; in the
    /// benchmark level 15 made the file 17% smaller in sixty times the time.
    pub zstd_level: i32,
}

impl Default for PackageOptions {
    fn default() -> Self {
        PackageOptions {
            zstd_level: compress::LEVEL,
        }
    }
}

/// [`package`] with chosen options.
pub fn package_with(a: &Assembled, out_dir: &Path, opts: &PackageOptions, progress: &dyn Fn(&str)) -> anyhow::Result<Artifacts> {
    ensure!(
        (1..=19).contains(&opts.zstd_level),
        "zstd level {} is out of range: use 1 to 19",
        opts.zstd_level
    );
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let name = a
        .image
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no usable file name", a.image.display()))?;
    let image = out_dir.join(name);
    if !same_file(&a.image, &image) {
        move_file(&SystemRunner, &a.image, &image)?;
    }
    let stem = name.strip_suffix(".img").unwrap_or(name);
    let compressed = out_dir.join(format!("{stem}.img.zst"));
    let bmap = out_dir.join(format!("{stem}.bmap"));
    let sha256sums = out_dir.join(checksums::FILE_NAME);

    progress(&format!("compressing {name} (zstd level {})", opts.zstd_level));
    let tmp = temp_path(&compressed);
    let z = compress::to_zstd(&image, &tmp, opts.zstd_level, progress).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    rename(&tmp, &compressed)?;
    progress(&format!("{}: {} MiB", file_name(&compressed), z.output_bytes >> 20));

    progress(&format!("mapping {name}"));
    let xml = crate::bmap::Bmap::from_image(&image)?.to_xml();
    write_new(&bmap, xml.as_bytes())?;

    let sums = checksums::render(&[
        (z.input_sha256, name.to_string()),
        (z.output_sha256, file_name(&compressed)),
        (hex::encode(Sha256::digest(xml.as_bytes())), file_name(&bmap)),
    ])?;
    write_new(&sha256sums, sums.as_bytes())?;
    Ok(Artifacts {
        image,
        compressed,
        bmap,
        sha256sums,
    })
}

/// Writes `bytes` to a temporary name beside `path`, then renames it over `path`.
fn write_new(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = temp_path(path);
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    rename(&tmp, path)
}

fn rename(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::rename(from, to).with_context(|| format!("renaming {} to {}", from.display(), to.display()))
}

/// Moves a file; across filesystems, copies it with its holes kept.
fn move_file(runner: &dyn Runner, from: &Path, to: &Path) -> anyhow::Result<()> {
    match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let tmp = temp_path(to);
            runner.run(&Cmd::new("cp").arg("--sparse=always").arg(from).arg(&tmp))?;
            rename(&tmp, to)?;
            std::fs::remove_file(from).with_context(|| format!("removing {} after copying it", from.display()))
        }
        Err(e) => Err(e).with_context(|| format!("moving {} to {}", from.display(), to.display())),
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// `dir/.name.partial`: hidden, in the same directory so the rename is atomic.
fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.partial"))
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
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
    use super::{Content, DiskLayout, PartKind, PartSpec, TableKind, check, temp_path};
    use std::path::{Path, PathBuf};

    fn layout(table: TableKind) -> DiskLayout {
        DiskLayout {
            table,
            arch: "amd64".into(),
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
    fn rejects_mismatched_content_and_arch() {
        let mut l = layout(TableKind::Gpt);
        l.partitions[0].kind = PartKind::Esp;
        assert!(check(&l).unwrap_err().to_string().contains("cannot hold"));
        let mut l = layout(TableKind::Gpt);
        l.arch = "riscv64".into();
        assert!(check(&l).unwrap_err().to_string().contains("riscv64"));
        assert!(check(&layout(TableKind::Mbr)).is_ok());
    }

    #[test]
    fn temp_names_sit_beside_the_target() {
        assert_eq!(temp_path(Path::new("/o/x.img")), PathBuf::from("/o/.x.img.partial"));
    }
}
