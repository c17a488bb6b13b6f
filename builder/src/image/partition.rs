//! Partition tables of images and block devices (both are files opened
//! directly, nothing is mounted), and finding the PIHA-CFG partition on them.
//!
//! GPT is read with `gptman`, MBR with `mbrman`. A file with no table whose
//! first sector is a FAT boot sector is one bare filesystem (what
//! `piha stamp --partition-image` writes).

use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use anyhow::{Context, bail};
use piha_config::node::CONFIG_LABEL;
use piha_runner::{Cmd, RunError, RunJson, Runner};
use serde::{Deserialize, Serialize};

use crate::image::fat;

/// The kind of partition table: what a board file asks for, what assembly
/// writes, and what reading a disk finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    /// UEFI boards: protective MBR + GPT.
    Gpt,
    /// DOS/MBR: what the Raspberry Pi boot ROM reads.
    Mbr,
}

/// What the table says a partition is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionType {
    /// Type GUID in the usual upper-case text form, and the partition name.
    Gpt { type_guid: String, name: String },
    /// The MBR system id, e.g. 0x0c for FAT32 (LBA).
    Mbr { sys: u8 },
}

/// One partition, in bytes from the start of the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based, as in `/dev/sdX1` (MBR logical partitions start at 5).
    pub number: u32,
    pub start: u64,
    pub size: u64,
    pub kind: PartitionType,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// None: no table, the whole file is one FAT filesystem.
    pub kind: Option<TableKind>,
    pub sector_size: u64,
    /// Size of the whole disk or image in bytes.
    pub disk_size: u64,
    /// The size the table was written for: up to the backup GPT header, or
    /// the end of the last MBR partition. More than `disk_size`: truncated.
    pub needed_size: u64,
    pub partitions: Vec<Partition>,
}

/// The PIHA-CFG filesystem on a disk: where it is and how it was recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigPartition {
    /// Partition number; `None` when the whole file is the filesystem.
    pub number: Option<u32>,
    pub start: u64,
    pub size: u64,
    /// How it was found, for messages: `GPT partition name`, `FAT label`, ...
    pub found_by: &'static str,
}

/// MBR system ids of FAT filesystems: FAT12, FAT16 <32M, FAT16, FAT32 (CHS),
/// FAT32 (LBA), FAT16 (LBA), and the EFI system partition.
pub const MBR_FAT_TYPES: [u8; 7] = [0x01, 0x04, 0x06, 0x0b, 0x0c, 0x0e, 0xef];

/// The logical sector size: what the kernel reports for a block device, 512
/// for an image file.
pub fn sector_size_of(file: &File) -> u64 {
    let Ok(meta) = file.metadata() else { return 512 };
    if !meta.file_type().is_block_device() {
        return 512;
    }
    let rdev = meta.rdev();
    // Linux's dev_t encoding (glibc gnu_dev_major / gnu_dev_minor).
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    let base = format!("/sys/dev/block/{major}:{minor}");
    // A partition's own directory has no queue/; its disk's does.
    [
        format!("{base}/queue/logical_block_size"),
        format!("{base}/../queue/logical_block_size"),
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .and_then(|s| s.trim().parse().ok())
    .unwrap_or(512)
}

/// Reads the partition table of an image or block device.
pub fn read_table<F: Read + Seek>(f: &mut F, sector_size: u64) -> anyhow::Result<Table> {
    let disk_size = f.seek(SeekFrom::End(0)).context("finding the size")?;
    let mut sector0 = [0u8; 512];
    f.seek(SeekFrom::Start(0))?;
    f.read_exact(&mut sector0)
        .context("reading the first sector (is the file smaller than 512 bytes?)")?;
    if looks_like_fat(&sector0) {
        return Ok(Table {
            kind: None,
            sector_size,
            disk_size,
            needed_size: 0,
            partitions: Vec::new(),
        });
    }
    if sector0[510..512] != [0x55, 0xaa] {
        bail!("there is no partition table (no MBR boot signature 55 AA at byte 510) and no FAT filesystem at the start");
    }
    let protective = (0..4).any(|i| sector0[446 + 16 * i + 4] == 0xee);
    if protective {
        let gpt = match gptman::GPT::read_from(f, sector_size) {
            Ok(g) => g,
            // Images are laid out in 512-byte sectors; a 4Kn disk holds 4096.
            Err(_) => gptman::GPT::find_from(f).context("the MBR says GPT (type ee), but the GPT cannot be read")?,
        };
        let ss = gpt.sector_size;
        let partitions = gpt
            .iter()
            .filter(|(_, e)| e.is_used())
            .map(|(i, e)| Partition {
                number: i,
                start: e.starting_lba * ss,
                size: (e.ending_lba + 1 - e.starting_lba) * ss,
                kind: PartitionType::Gpt {
                    type_guid: uuid::Uuid::from_bytes_le(e.partition_type_guid).to_string().to_uppercase(),
                    name: e.partition_name.as_str().to_string(),
                },
            })
            .collect();
        let needed_size = (gpt.header.backup_lba + 1) * ss;
        return Ok(Table {
            kind: Some(TableKind::Gpt),
            sector_size: ss,
            disk_size,
            needed_size,
            partitions,
        });
    }
    let ss32 = u32::try_from(sector_size).context("sector size")?;
    let mbr = mbrman::MBR::read_from(f, ss32).context("reading the MBR partition table")?;
    let partitions: Vec<Partition> = mbr
        .iter()
        .filter(|(_, e)| e.is_used() && !e.is_extended())
        .map(|(i, e)| Partition {
            number: i as u32,
            start: u64::from(e.starting_lba) * sector_size,
            size: u64::from(e.sectors) * sector_size,
            kind: PartitionType::Mbr { sys: e.sys },
        })
        .collect();
    let needed_size = partitions.iter().map(|p: &Partition| p.start + p.size).max().unwrap_or(0);
    Ok(Table {
        kind: Some(TableKind::Mbr),
        sector_size,
        disk_size,
        needed_size,
        partitions,
    })
}

/// The FAT label of the filesystem at `start..start+size`, or `None` if there
/// is no FAT filesystem there.
pub fn fat_label_at<F: Read + Seek>(f: &mut F, start: u64, size: u64) -> Option<String> {
    let mut sector = [0u8; 512];
    f.seek(SeekFrom::Start(start)).ok()?;
    f.read_exact(&mut sector).ok()?;
    if !looks_like_fat(&sector) {
        return None;
    }
    let slice = fscommon::StreamSlice::new(fat::ReadOnly(f), start, start + size).ok()?;
    fat::label(slice)
}

/// Finds the one PIHA-CFG filesystem: on GPT the partition named PIHA-CFG,
/// else the FAT partition labelled PIHA-CFG; on MBR the FAT-type partition
/// labelled PIHA-CFG; on a bare filesystem, the file itself if so labelled.
/// Anything but exactly one is an error that lists what is there.
pub fn find_config<F: Read + Seek>(f: &mut F, table: &Table, what: &Path) -> anyhow::Result<ConfigPartition> {
    if table.kind.is_none() {
        return match fat_label_at(f, 0, table.disk_size) {
            Some(l) if l == CONFIG_LABEL => Ok(ConfigPartition {
                number: None,
                start: 0,
                size: table.disk_size,
                found_by: "FAT label of the whole file",
            }),
            l => bail!(
                "{} has no partition table and is a FAT filesystem labelled {:?}, not {CONFIG_LABEL}; pass a piha image, a card, or a file from `piha stamp --partition-image`",
                what.display(),
                l.unwrap_or_default()
            ),
        };
    }
    if table.kind == Some(TableKind::Gpt) {
        let named: Vec<&Partition> = table
            .partitions
            .iter()
            .filter(|p| matches!(&p.kind, PartitionType::Gpt { name, .. } if name == CONFIG_LABEL))
            .collect();
        match named.as_slice() {
            [one] => return Ok(found(one, "GPT partition name")),
            [] => {}
            many => bail!(
                "{} has {} GPT partitions named {CONFIG_LABEL} ({}); piha needs exactly one: rename the extra ones",
                what.display(),
                many.len(),
                numbers(many)
            ),
        }
    }
    let labelled: Vec<&Partition> = table
        .partitions
        .iter()
        .filter(|p| match p.kind {
            PartitionType::Mbr { sys } => MBR_FAT_TYPES.contains(&sys),
            PartitionType::Gpt { .. } => true,
        })
        .filter(|p| fat_label_at(f, p.start, p.size).as_deref() == Some(CONFIG_LABEL))
        .collect();
    match labelled.as_slice() {
        [one] => Ok(found(one, "FAT label")),
        [] => bail!(
            "{} has no {CONFIG_LABEL} partition (looked for a GPT partition named {CONFIG_LABEL} and a FAT filesystem labelled {CONFIG_LABEL}); its {} table holds: {}. Flash an image built by `piha build` first",
            what.display(),
            kind_name(table.kind),
            describe(f, table)
        ),
        many => bail!(
            "{} has {} FAT partitions labelled {CONFIG_LABEL} ({}); piha needs exactly one: relabel the extra ones (e.g. `fatlabel`)",
            what.display(),
            many.len(),
            numbers(many)
        ),
    }
}

fn found(p: &Partition, by: &'static str) -> ConfigPartition {
    ConfigPartition {
        number: Some(p.number),
        start: p.start,
        size: p.size,
        found_by: by,
    }
}

fn numbers(ps: &[&Partition]) -> String {
    ps.iter().map(|p| format!("partition {}", p.number)).collect::<Vec<_>>().join(", ")
}

fn kind_name(k: Option<TableKind>) -> &'static str {
    match k {
        Some(TableKind::Gpt) => "GPT",
        Some(TableKind::Mbr) => "MBR",
        None => "no",
    }
}

/// One line per partition with its FAT label, for messages.
pub fn describe<F: Read + Seek>(f: &mut F, table: &Table) -> String {
    if table.partitions.is_empty() {
        return "no partitions".to_string();
    }
    let parts: Vec<String> = table
        .partitions
        .iter()
        .map(|p| {
            let label = match fat_label_at(f, p.start, p.size) {
                Some(l) => format!("FAT label {l:?}"),
                None => "not FAT".to_string(),
            };
            format!("{p}, {label}")
        })
        .collect();
    parts.join("; ")
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "partition {} ({} at {}", self.number, human(self.size), human(self.start))?;
        match &self.kind {
            PartitionType::Gpt { name, .. } => write!(f, ", GPT name {name:?})"),
            PartitionType::Mbr { sys } => write!(f, ", MBR type 0x{sys:02x})"),
        }
    }
}

/// `16 MiB`, `1.5 GiB`, or bytes when not a round number of KiB.
pub fn human(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (name, unit) in UNITS {
        if bytes >= unit {
            return if bytes % unit == 0 {
                format!("{} {name}", bytes / unit)
            } else {
                format!("{:.1} {name}", bytes as f64 / unit as f64)
            };
        }
    }
    format!("{bytes} B")
}

/// A FAT boot sector: a jump instruction, a sane sector size and the
/// filesystem-type string in the FAT12/16 or the FAT32 position.
fn looks_like_fat(s: &[u8; 512]) -> bool {
    let jump = s[0] == 0xeb || s[0] == 0xe9;
    let bps = u16::from_le_bytes([s[11], s[12]]);
    let sane = bps.is_power_of_two() && (512..=4096).contains(&bps) && s[13] != 0;
    let fs_type = &s[0x36..0x39] == b"FAT" || &s[0x52..0x57] == b"FAT32";
    jump && sane && fs_type && s[510..512] == [0x55, 0xaa]
}

/// `sfdisk -J` output, for cross-checking what piha reads (and for the image
/// tests). Only the fields piha compares; sfdisk adds more over time.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SfdiskDump {
    pub partitiontable: SfdiskTable,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SfdiskTable {
    /// `gpt` or `dos`.
    pub label: String,
    #[serde(default)]
    pub id: Option<String>,
    pub device: String,
    pub unit: String,
    #[serde(default)]
    pub sectorsize: Option<u64>,
    #[serde(default)]
    pub partitions: Vec<SfdiskPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SfdiskPartition {
    pub node: String,
    /// In sectors.
    pub start: u64,
    /// In sectors.
    pub size: u64,
    /// GPT type GUID, or the MBR id in hex without `0x` (`c`, `83`).
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub bootable: Option<bool>,
}

/// Runs `sfdisk -J PATH` and parses it.
pub fn sfdisk_dump(runner: &impl Runner, path: &Path) -> Result<SfdiskTable, RunError> {
    let dump: SfdiskDump = runner.run_json(&Cmd::new("sfdisk").arg("-J").arg(path))?;
    Ok(dump.partitiontable)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;
    use std::path::Path;

    use super::{SfdiskDump, find_config, human, read_table};
    use crate::image::fat::{FatFile, build};

    fn fixture(name: &str) -> String {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/stamp").join(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn parses_captured_sfdisk_output() {
        let gpt: SfdiskDump = serde_json::from_str(&fixture("sfdisk-gpt.json")).unwrap();
        let t = gpt.partitiontable;
        assert_eq!(t.label, "gpt");
        assert_eq!(t.partitions.len(), 3);
        assert_eq!(t.partitions[1].name.as_deref(), Some("PIHA-CFG"));
        assert_eq!(t.partitions[0].type_, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        let mbr: SfdiskDump = serde_json::from_str(&fixture("sfdisk-mbr.json")).unwrap();
        let t = mbr.partitiontable;
        assert_eq!(t.label, "dos");
        assert_eq!(t.partitions.iter().map(|p| p.type_.as_str()).collect::<Vec<_>>(), ["c", "c", "83"]);
        assert_eq!(t.partitions[0].bootable, Some(true));
    }

    #[test]
    fn bare_filesystem_is_found_by_label() {
        let img = build("PIHA-CFG", 1 << 20, None, &[FatFile::new("a", b"b".to_vec())]).unwrap();
        let mut c = Cursor::new(img);
        let t = read_table(&mut c, 512).unwrap();
        assert_eq!(t.kind, None);
        let found = find_config(&mut c, &t, Path::new("x.img")).unwrap();
        assert_eq!((found.number, found.start, found.size), (None, 0, 1 << 20));

        let other = build("ESP", 1 << 20, None, &[]).unwrap();
        let mut c = Cursor::new(other);
        let t = read_table(&mut c, 512).unwrap();
        let err = find_config(&mut c, &t, Path::new("x.img")).unwrap_err().to_string();
        assert!(err.contains("labelled \"ESP\""), "{err}");
    }

    #[test]
    fn zeros_are_no_table() {
        let err = read_table(&mut Cursor::new(vec![0u8; 4096]), 512).unwrap_err().to_string();
        assert!(err.contains("no partition table"), "{err}");
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human(16 << 20), "16 MiB");
        assert_eq!(human(1536 << 20), "1.5 GiB");
        assert_eq!(human(100), "100 B");
    }
}
