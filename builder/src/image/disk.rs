//! The disk image file: partition placement, the partition table (GPT through
//! `gptman`, MBR through `mbrman`) and partition contents written at their
//! offsets. The file is sized with `set_len` and only real data is written, so
//! everything else stays a hole: the image is sparse and its bmap small.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use anyhow::{Context, bail, ensure};
use uuid::Uuid;

/// Logical sector size of the images piha writes.
pub const SECTOR: u64 = 512;
/// Partition alignment: 1 MiB, what every partitioning tool uses and what SD
/// cards' erase blocks divide.
pub const ALIGN: u64 = 1 << 20;

/// Where a partition goes, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub start: u64,
    pub size: u64,
}

/// Places partitions of `sizes` bytes one after the other from 1 MiB, each
/// start and size aligned to 1 MiB. Returns the slots and the disk size, which
/// leaves a final MiB for the backup GPT when `gpt` is set.
pub fn place(sizes: &[u64], gpt: bool) -> (Vec<Slot>, u64) {
    let mut at = ALIGN;
    let mut slots = Vec::with_capacity(sizes.len());
    for &size in sizes {
        let size = size.div_ceil(ALIGN) * ALIGN;
        slots.push(Slot { start: at, size });
        at += size;
    }
    let disk = if gpt { at + ALIGN } else { at };
    (slots, disk)
}

/// One GPT partition entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptPartition {
    pub type_guid: Uuid,
    pub guid: Uuid,
    pub name: String,
    pub slot: Slot,
}

/// Writes a protective MBR, the primary GPT and the backup GPT (at the end of
/// the file, whose length must already be final).
pub fn write_gpt(file: &mut File, disk_guid: Uuid, parts: &[GptPartition]) -> anyhow::Result<()> {
    let mut gpt = gptman::GPT::new_from(file, SECTOR, disk_guid.to_bytes_le()).context("laying out the GPT")?;
    gpt.align = ALIGN / SECTOR;
    for (i, p) in parts.iter().enumerate() {
        ensure!(
            p.name.encode_utf16().count() <= 36,
            "GPT partition name {:?} is longer than 36 characters",
            p.name
        );
        let first = p.slot.start / SECTOR;
        let last = (p.slot.start + p.slot.size) / SECTOR - 1;
        ensure!(
            first >= gpt.header.first_usable_lba && last <= gpt.header.last_usable_lba,
            "partition {} ({}) does not fit between the GPT headers",
            i + 1,
            p.name
        );
        gpt[u32::try_from(i + 1)?] = gptman::GPTPartitionEntry {
            partition_type_guid: p.type_guid.to_bytes_le(),
            unique_partition_guid: p.guid.to_bytes_le(),
            starting_lba: first,
            ending_lba: last,
            attribute_bits: 0,
            partition_name: p.name.as_str().into(),
        };
    }
    gpt.write_into(file).context("writing the GPT")?;
    // The whole first sector, so no stale boot code or disk signature survives a flash.
    file.write_all_at(&[0u8; SECTOR as usize], 0).context("clearing the MBR sector")?;
    gptman::GPT::write_protective_mbr_into(file, SECTOR).context("writing the protective MBR")?;
    file.flush()?;
    Ok(())
}

/// One primary MBR partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MbrPartition {
    /// Partition type byte: 0x0c FAT32 (LBA), 0x83 Linux, 0xef EFI system.
    pub sys: u8,
    pub bootable: bool,
    pub slot: Slot,
}

/// Writes an MBR (boot sector with four primary entries) with `signature` as
/// disk identifier; PARTUUIDs are `<signature as hex>-<NN>`.
pub fn write_mbr(file: &mut File, signature: [u8; 4], parts: &[MbrPartition]) -> anyhow::Result<()> {
    if parts.len() > 4 {
        bail!("an MBR holds at most 4 primary partitions, the layout has {}", parts.len());
    }
    let mut mbr = mbrman::MBR::new_from(file, SECTOR as u32, signature).context("laying out the MBR")?;
    for (i, p) in parts.iter().enumerate() {
        let start = u32::try_from(p.slot.start / SECTOR).context("MBR partitions must start below 2 TiB")?;
        let sectors = u32::try_from(p.slot.size / SECTOR).context("MBR partitions must be smaller than 2 TiB")?;
        mbr[i + 1] = mbrman::MBRPartitionEntry {
            boot: if p.bootable { mbrman::BOOT_ACTIVE } else { mbrman::BOOT_INACTIVE },
            first_chs: chs(start),
            sys: p.sys,
            last_chs: chs(start + sectors - 1),
            starting_lba: start,
            sectors,
        };
    }
    file.seek(SeekFrom::Start(0))?;
    mbr.write_into(file).context("writing the MBR")?;
    file.flush()?;
    Ok(())
}

/// The CHS address of `lba` with the 255-head, 63-sector geometry fdisk uses,
/// or the "beyond CHS" marker 1023/254/63 past 8 GiB. Only ancient BIOSes read it.
fn chs(lba: u32) -> mbrman::CHS {
    mbrman::CHS::from_lba_exact(lba, 1023, 255, 63).unwrap_or(mbrman::CHS::new(1023, 254, 63))
}

/// Writes `bytes` at `offset`.
pub fn write_at(file: &File, offset: u64, bytes: &[u8]) -> anyhow::Result<()> {
    file.write_all_at(bytes, offset)
        .with_context(|| format!("writing {} bytes at offset {offset}", bytes.len()))
}

/// Writes a FAT filesystem image at `offset`, leaving its free clusters as
/// holes. Returns the number of bytes written.
///
/// Only free clusters are skipped: the boot sectors, both FATs, the root
/// directory and every allocated cluster are written whole, zeros included,
/// because on a card those zeros mean "end of directory" and "free cluster";
/// a bmap flash that skipped them would leave the card's old bytes there.
pub fn write_fat(file: &File, offset: u64, fs: &[u8]) -> anyhow::Result<u64> {
    let mut written = 0;
    for (from, to) in fat_used_ranges(fs)? {
        write_at(file, offset + from as u64, &fs[from..to])?;
        written += (to - from) as u64;
    }
    Ok(written)
}

/// The byte ranges of a FAT image that carry meaning: everything before the
/// data area, plus runs of allocated clusters. A FAT12 image is used whole.
pub fn fat_used_ranges(fs: &[u8]) -> anyhow::Result<Vec<(usize, usize)>> {
    ensure!(
        fs.len() >= 512 && fs[510..512] == [0x55, 0xaa],
        "not a FAT boot sector (no 0x55AA signature)"
    );
    let u16_at = |o: usize| usize::from(u16::from_le_bytes([fs[o], fs[o + 1]]));
    let u32_at = |o: usize| u32::from_le_bytes([fs[o], fs[o + 1], fs[o + 2], fs[o + 3]]) as usize;
    let bytes_per_sector = u16_at(0x0b);
    let per_cluster = usize::from(fs[0x0d]) * bytes_per_sector;
    let reserved = u16_at(0x0e);
    let fats = usize::from(fs[0x10]);
    let root_entries = u16_at(0x11);
    let total = if u16_at(0x13) != 0 { u16_at(0x13) } else { u32_at(0x20) };
    let fat_sectors = if u16_at(0x16) != 0 { u16_at(0x16) } else { u32_at(0x24) };
    ensure!(
        bytes_per_sector >= 512 && per_cluster > 0 && fats > 0,
        "FAT boot sector has an invalid geometry"
    );
    let root_sectors = (root_entries * 32).div_ceil(bytes_per_sector);
    let data_start = (reserved + fats * fat_sectors + root_sectors) * bytes_per_sector;
    let end = (total * bytes_per_sector).min(fs.len());
    ensure!(data_start <= end, "FAT boot sector describes a data area beyond the filesystem");
    let clusters = (end - data_start) / per_cluster;
    let fat = &fs[reserved * bytes_per_sector..];
    let entry: Box<dyn Fn(usize) -> u32> = if clusters < 4085 {
        return Ok(vec![(0, fs.len())]);
    } else if clusters < 65525 {
        Box::new(|n| u32::from(u16::from_le_bytes([fat[2 * n], fat[2 * n + 1]])))
    } else {
        Box::new(|n| u32::from_le_bytes([fat[4 * n], fat[4 * n + 1], fat[4 * n + 2], fat[4 * n + 3]]) & 0x0fff_ffff)
    };
    let mut ranges = vec![(0, data_start)];
    for n in 0..clusters {
        if entry(n + 2) == 0 {
            continue;
        }
        let from = data_start + n * per_cluster;
        let to = from + per_cluster;
        match ranges.last_mut() {
            Some(last) if last.1 == from => last.1 = to,
            _ => ranges.push((from, to)),
        }
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::{ALIGN, Slot, fat_used_ranges, place};
    use crate::image::fat::{FatFile, FatType, build};

    #[test]
    fn places_aligned_partitions() {
        let (slots, disk) = place(&[(256 << 20) + 1, 16 << 20, 100], true);
        assert_eq!(
            slots[0],
            Slot {
                start: ALIGN,
                size: 257 << 20
            }
        );
        assert_eq!(
            slots[1],
            Slot {
                start: 258 << 20,
                size: 16 << 20
            }
        );
        assert_eq!(
            slots[2],
            Slot {
                start: 274 << 20,
                size: ALIGN
            }
        );
        assert_eq!(disk, 276 << 20);
        let (_, mbr_disk) = place(&[ALIGN], false);
        assert_eq!(mbr_disk, 2 * ALIGN);
    }

    #[test]
    fn fat_ranges_skip_only_free_clusters() {
        let big = vec![7u8; 300_000];
        for fat in [FatType::Fat16, FatType::Fat32] {
            let size = if fat == FatType::Fat32 { 64 << 20 } else { 16 << 20 };
            let fs = build(
                "TEST",
                size,
                Some(fat),
                &[FatFile::new("a/big.bin", big.clone()), FatFile::new("x.txt", "x")],
            )
            .unwrap();
            let ranges = fat_used_ranges(&fs).unwrap();
            let used: usize = ranges.iter().map(|(a, b)| b - a).sum();
            assert!(used > big.len() && used < 4 << 20, "{fat:?}: {used} bytes used");
            // Every non-zero byte lies in a used range.
            let mut covered = vec![false; fs.len()];
            for (a, b) in ranges {
                covered[a..b].iter_mut().for_each(|c| *c = true);
            }
            assert!(
                fs.iter().zip(&covered).all(|(byte, c)| *byte == 0 || *c),
                "{fat:?}: data outside the used ranges"
            );
        }
    }
}
