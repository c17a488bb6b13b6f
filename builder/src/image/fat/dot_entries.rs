//! Repairs the `.` and `..` entries fatfs 0.3 writes into every new directory,
//! so that `fsck.fat` (and Windows' chkdsk) accept the filesystem.
//!
//! fatfs 0.3.6 gives `.` and `..` a long-file-name entry each, so a new
//! directory starts `LFN(.) . LFN(..) ..` instead of `. ..`, and on FAT32 it
//! points a first-level `..` at the root's cluster instead of 0, the value the
//! FAT specification requires. Both are fixed upstream but unreleased
//! (rafalh/rust-fatfs#100, #99, #117); this pass rewrites the finished image.

use anyhow::bail;

/// Filesystem geometry read from the boot sector.
struct Geometry {
    bytes_per_sector: usize,
    sectors_per_cluster: usize,
    fat_start: usize,
    first_data_sector: usize,
    root_entries: usize,
    root_start: usize,
    /// First cluster of the root directory on FAT32; `None` on FAT12/16,
    /// whose root is a fixed region.
    root_cluster: Option<u32>,
    kind: Kind,
    clusters: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fat12,
    Fat16,
    Fat32,
}

const ENTRY: usize = 32;
const ATTR_LFN: u8 = 0x0f;
const ATTR_VOLUME: u8 = 0x08;
const ATTR_DIR: u8 = 0x10;
const DELETED: u8 = 0xe5;

/// Rewrites every subdirectory's first entries to `.`, `..` and points a
/// first-level `..` at cluster 0.
pub(super) fn repair(image: &mut [u8]) -> anyhow::Result<()> {
    let g = geometry(image)?;
    let root = slots(image, &g, g.root_cluster)?;
    walk(image, &g, &root, 0)
}

fn walk(image: &mut [u8], g: &Geometry, dir_slots: &[usize], depth: usize) -> anyhow::Result<()> {
    if depth > 64 {
        bail!("FAT directories nested more than 64 deep");
    }
    for &off in dir_slots {
        let first = image[off];
        if first == 0 {
            break;
        }
        let attr = image[off + 11];
        if first == DELETED || attr == ATTR_LFN || attr & ATTR_VOLUME != 0 || attr & ATTR_DIR == 0 || first == b'.' {
            continue;
        }
        let cluster = entry_cluster(image, off);
        let sub = slots(image, g, Some(cluster))?;
        fix_dots(image, &sub, depth == 0);
        walk(image, g, &sub, depth + 1)?;
    }
    Ok(())
}

fn fix_dots(image: &mut [u8], s: &[usize], parent_is_root: bool) {
    if s.len() < 4 {
        return;
    }
    let name = |image: &[u8], off: usize| image[off..off + 11].to_vec();
    if image[s[0] + 11] == ATTR_LFN
        && name(image, s[1]) == b".          "
        && image[s[2] + 11] == ATTR_LFN
        && name(image, s[3]) == b"..         "
    {
        image.copy_within(s[1]..s[1] + ENTRY, s[0]);
        image.copy_within(s[3]..s[3] + ENTRY, s[1]);
        for &off in &s[2..4] {
            image[off..off + ENTRY].fill(0);
            image[off] = DELETED;
        }
    }
    if parent_is_root && name(image, s[1]) == b"..         " {
        image[s[1] + 20..s[1] + 22].fill(0);
        image[s[1] + 26..s[1] + 28].fill(0);
    }
}

fn entry_cluster(image: &[u8], off: usize) -> u32 {
    let hi = u32::from(u16::from_le_bytes([image[off + 20], image[off + 21]]));
    let lo = u32::from(u16::from_le_bytes([image[off + 26], image[off + 27]]));
    (hi << 16) | lo
}

/// Byte offsets of every 32-byte entry slot of a directory: the fixed root
/// region (`None` on FAT12/16) or a cluster chain.
fn slots(image: &[u8], g: &Geometry, cluster: Option<u32>) -> anyhow::Result<Vec<usize>> {
    let Some(mut c) = cluster else {
        return Ok((0..g.root_entries).map(|i| g.root_start + i * ENTRY).collect());
    };
    let cluster_bytes = g.bytes_per_sector * g.sectors_per_cluster;
    let mut out = Vec::new();
    let mut seen = 0u32;
    while (2..g.clusters + 2).contains(&c) {
        seen += 1;
        if seen > g.clusters {
            bail!("FAT cluster chain loops at cluster {c}");
        }
        let start = (g.first_data_sector + (c as usize - 2) * g.sectors_per_cluster) * g.bytes_per_sector;
        if start + cluster_bytes > image.len() {
            bail!("FAT cluster {c} lies beyond the end of the filesystem");
        }
        out.extend((0..cluster_bytes / ENTRY).map(|i| start + i * ENTRY));
        c = next_cluster(image, g, c);
    }
    Ok(out)
}

fn next_cluster(image: &[u8], g: &Geometry, c: u32) -> u32 {
    let c = c as usize;
    match g.kind {
        Kind::Fat12 => {
            let off = g.fat_start + c + c / 2;
            let v = u16::from_le_bytes([image[off], image[off + 1]]);
            u32::from(if c % 2 == 1 { v >> 4 } else { v & 0x0fff })
        }
        Kind::Fat16 => {
            let off = g.fat_start + 2 * c;
            u32::from(u16::from_le_bytes([image[off], image[off + 1]]))
        }
        Kind::Fat32 => {
            let off = g.fat_start + 4 * c;
            u32::from_le_bytes([image[off], image[off + 1], image[off + 2], image[off + 3]]) & 0x0fff_ffff
        }
    }
}

fn geometry(b: &[u8]) -> anyhow::Result<Geometry> {
    if b.len() < 512 {
        bail!("FAT image shorter than its boot sector");
    }
    let u16_at = |o: usize| usize::from(u16::from_le_bytes([b[o], b[o + 1]]));
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let bytes_per_sector = u16_at(0x0b);
    let sectors_per_cluster = usize::from(b[0x0d]);
    let reserved = u16_at(0x0e);
    let fats = usize::from(b[0x10]);
    let root_entries = u16_at(0x11);
    let total = if u16_at(0x13) != 0 { u16_at(0x13) } else { u32_at(0x20) as usize };
    let fat_size = if u16_at(0x16) != 0 { u16_at(0x16) } else { u32_at(0x24) as usize };
    if bytes_per_sector < 512 || sectors_per_cluster == 0 || fats == 0 || fat_size == 0 {
        bail!("not a FAT boot sector");
    }
    let root_sectors = (root_entries * ENTRY).div_ceil(bytes_per_sector);
    let first_data_sector = reserved + fats * fat_size + root_sectors;
    let clusters = u32::try_from(total.saturating_sub(first_data_sector) / sectors_per_cluster)?;
    // The FAT type follows from the cluster count alone (FAT specification 3.5).
    let kind = if clusters < 4085 {
        Kind::Fat12
    } else if clusters < 65525 {
        Kind::Fat16
    } else {
        Kind::Fat32
    };
    if total * bytes_per_sector > b.len() {
        bail!(
            "FAT boot sector claims {} bytes but the image has {}",
            total * bytes_per_sector,
            b.len()
        );
    }
    Ok(Geometry {
        bytes_per_sector,
        sectors_per_cluster,
        fat_start: reserved * bytes_per_sector,
        first_data_sector,
        root_entries,
        root_start: (reserved + fats * fat_size) * bytes_per_sector,
        root_cluster: if kind == Kind::Fat32 { Some(u32_at(0x2c)) } else { None },
        kind,
        clusters,
    })
}
