//! Reading a built disk image without mounting it: the partition table via
//! `sfdisk -J`, FAT files via mtools, ext4 files via debugfs; what an ELF
//! file read from one is built for.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use super::run_ok;

#[derive(Debug, Deserialize)]
struct SfdiskDump {
    partitiontable: PartitionTable,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PartitionTable {
    pub label: String,
    /// Disk GUID (GPT) or disk identifier (MBR): `root=PARTUUID=` depends on it.
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default = "default_sector")]
    pub sectorsize: u64,
    /// GPT's last usable sector.
    #[serde(default)]
    pub lastlba: Option<u64>,
    pub partitions: Vec<Partition>,
}

fn default_sector() -> u64 {
    512
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Partition {
    pub node: String,
    pub start: u64,
    pub size: u64,
    #[serde(rename = "type")]
    pub kind: String,
    /// GPT partition GUID.
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub bootable: Option<bool>,
}

/// `sfdisk -J IMAGE`.
pub fn table(image: &Path) -> PartitionTable {
    let json = run_ok(Command::new("sfdisk").arg("-J").arg(image));
    serde_json::from_str::<SfdiskDump>(&json).expect("sfdisk -J output").partitiontable
}

/// Copies partition `index` (1-based) out of `image` into `dir`, returning its path.
pub fn extract(image: &Path, index: usize, dir: &Path) -> PathBuf {
    let t = table(image);
    let p = &t.partitions[index - 1];
    let out = dir.join(format!("p{index}.img"));
    let mut src = std::fs::File::open(image).expect("open image");
    let mut dst = std::fs::File::create(&out).expect("create partition file");
    use std::io::{Read, Seek, SeekFrom, Write};
    src.seek(SeekFrom::Start(p.start * t.sectorsize)).expect("seek");
    let mut left = p.size * t.sectorsize;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = (left as usize).min(buf.len());
        src.read_exact(&mut buf[..n]).expect("read partition");
        if buf[..n].iter().all(|b| *b == 0) {
            dst.seek(SeekFrom::Current(n as i64)).expect("seek hole");
        } else {
            dst.write_all(&buf[..n]).expect("write partition");
        }
        left -= n as u64;
    }
    dst.set_len(p.size * t.sectorsize).expect("size partition file");
    out
}

/// A file from an ext4 filesystem image, or None if it does not exist.
pub fn ext4_read(fs: &Path, path: &str) -> Option<Vec<u8>> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(fs)
        .output()
        .expect("debugfs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("File not found") || !out.status.success() {
        return None;
    }
    Some(out.stdout)
}

/// Whether `path` exists in an ext4 filesystem image.
pub fn ext4_exists(fs: &Path, path: &str) -> bool {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat {path}"))
        .arg(fs)
        .output()
        .expect("debugfs");
    !String::from_utf8_lossy(&out.stderr).contains("File not found") && out.status.success()
}

/// A file from a FAT filesystem image, or None.
pub fn fat_read(fs: &Path, path: &str) -> Option<Vec<u8>> {
    let out = Command::new("mcopy")
        .arg("-n")
        .arg("-i")
        .arg(fs)
        .arg(format!("::{path}"))
        .arg("-")
        .output()
        .expect("mcopy");
    out.status.success().then_some(out.stdout)
}

/// Every file path in a FAT filesystem image.
pub fn fat_list(fs: &Path) -> Vec<String> {
    let out = run_ok(Command::new("mdir").arg("-i").arg(fs).arg("-/").arg("-b").arg("::"));
    out.lines()
        .map(|l| l.trim_start_matches("::").trim_start_matches('/').to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Replaces (or adds) one file in the FAT partition `index` of `image`, in place.
pub fn fat_write(image: &Path, index: usize, path: &str, contents: &[u8]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let part = extract(image, index, dir.path());
    let src = dir.path().join("new-file");
    std::fs::write(&src, contents).expect("write file");
    run_ok(
        Command::new("mcopy")
            .arg("-o")
            .arg("-i")
            .arg(&part)
            .arg(&src)
            .arg(format!("::{path}")),
    );
    let t = table(image);
    let p = &t.partitions[index - 1];
    run_ok(
        Command::new("dd")
            .arg(format!("if={}", part.display()))
            .arg(format!("of={}", image.display()))
            .arg("bs=512")
            .arg(format!("seek={}", p.start))
            .arg("conv=notrunc,sparse")
            .arg("status=none"),
    );
}

/// A sparse copy of an image, so each boot starts from the same build.
pub fn copy_sparse(from: &Path, to: &Path) {
    run_ok(Command::new("cp").arg("--sparse=always").arg(from).arg(to));
}

/// Of a 64-bit little-endian ELF file (System V gABI): its machine, and
/// whether it asks for a program interpreter (PT_INTERP, the dynamic loader).
pub fn elf_facts(elf: &[u8]) -> (u16, bool) {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[5], 1, "not little-endian");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().expect("8 bytes"));
    assert_eq!(elf[4], 2, "not a 64-bit ELF");
    let phoff = usize::try_from(u64_at(0x20)).expect("e_phoff");
    let (phentsize, phnum) = (usize::from(u16_at(0x36)), usize::from(u16_at(0x38)));
    const PT_INTERP: u32 = 3;
    let interp = (0..phnum).any(|i| u32_at(phoff + i * phentsize) == PT_INTERP);
    (u16_at(0x12), interp)
}
