//! FAT filesystems built in memory from a list of files, and read back, without
//! mounting anything: the ESP and the Pi `system-boot` partition of an image,
//! and the PIHA-CFG partition `piha stamp` writes.
//!
//! Builds are deterministic: the volume id is derived from the label and the
//! files, and every timestamp is `SOURCE_DATE_EPOCH` (or 1980-01-01, the FAT
//! epoch), so the same inputs give the same bytes.

mod dot_entries;

use std::io::{Cursor, Read, Seek, SeekFrom, Write};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

/// Which FAT variant to format. `None` lets the size decide (FAT12 below 4 MiB,
/// FAT16 below 512 MiB, FAT32 above), as mkfs.fat does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatType {
    Fat16,
    /// What the Raspberry Pi firmware expects on `system-boot`; needs at least
    /// 65525 clusters, i.e. about 33 MiB with 512-byte clusters.
    Fat32,
}

/// One file to put on the filesystem. Parent directories are created as needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatFile {
    /// Path inside the filesystem with `/` separators, e.g. `EFI/BOOT/BOOTX64.EFI`.
    pub path: String,
    pub contents: Vec<u8>,
}

impl FatFile {
    pub fn new(path: impl Into<String>, contents: impl Into<Vec<u8>>) -> Self {
        FatFile {
            path: path.into(),
            contents: contents.into(),
        }
    }
}

/// Offset of the BPB "hidden sectors" field (sectors before the partition).
const HIDDEN_SECTORS_OFFSET: usize = 0x1c;

/// Builds a whole FAT filesystem image of `size_bytes` (a multiple of 512)
/// holding `files`, labelled `label` both in the boot sector and in the root
/// directory's volume-label entry (the one `blkid` and /dev/disk/by-label use).
pub fn build(label: &str, size_bytes: u64, fat: Option<FatType>, files: &[FatFile]) -> anyhow::Result<Vec<u8>> {
    build_with_sector_size(label, size_bytes, fat, files, 512)
}

/// [`build`] with a logical sector size other than 512, for disks with 4096-byte
/// sectors (Linux will not mount a FAT whose sectors are smaller than the disk's).
pub fn build_with_sector_size(
    label: &str,
    size_bytes: u64,
    fat: Option<FatType>,
    files: &[FatFile],
    sector_size: u16,
) -> anyhow::Result<Vec<u8>> {
    let label_bytes = label_field(label)?;
    if !sector_size.is_power_of_two() || !(512..=4096).contains(&sector_size) {
        bail!("FAT sector size {sector_size} is not possible: use 512, 1024, 2048 or 4096");
    }
    if size_bytes % u64::from(sector_size) != 0 || size_bytes < 64 * 1024 {
        bail!("a FAT filesystem of {size_bytes} bytes is not possible: the size must be a multiple of {sector_size} and at least 64 KiB");
    }
    let len = usize::try_from(size_bytes).context("FAT filesystem size does not fit in memory")?;
    let mut disk = Cursor::new(vec![0u8; len]);
    let mut options = fatfs::FormatVolumeOptions::new()
        .bytes_per_sector(sector_size)
        .volume_label(label_bytes)
        .volume_id(volume_id(label, files));
    if let Some(t) = fat {
        options = options.fat_type(match t {
            FatType::Fat16 => fatfs::FatType::Fat16,
            FatType::Fat32 => fatfs::FatType::Fat32,
        });
    }
    fatfs::format_volume(&mut disk, options).with_context(|| {
        format!(
            "formatting a {} FAT filesystem labelled {label} ({size_bytes} bytes)",
            type_name(fat)
        )
    })?;
    disk.seek(SeekFrom::Start(0))?;
    {
        let fs = fatfs::FileSystem::new(&mut disk, fs_options()).context("opening the new FAT filesystem")?;
        {
            let root = fs.root_dir();
            for f in files {
                write_one(&root, f).with_context(|| format!("writing {} into the {label} filesystem ({size_bytes} bytes)", f.path))?;
            }
        }
        fs.unmount().with_context(|| format!("finishing the {label} filesystem"))?;
    }
    let mut image = disk.into_inner();
    dot_entries::repair(&mut image).with_context(|| format!("repairing directory entries of the {label} filesystem"))?;
    Ok(image)
}

/// Records where the filesystem starts on its disk (in its own sectors) in the
/// boot sector, and in the FAT32 backup boot sector, as mkfs.fat does for a
/// partition. Some firmware reads it; Linux and mtools ignore it.
pub fn set_hidden_sectors(image: &mut [u8], start_sector: u32) -> anyhow::Result<()> {
    if image.len() < 512 || image[510..512] != [0x55, 0xaa] {
        bail!("not a FAT boot sector: cannot set its hidden-sectors field");
    }
    let field = HIDDEN_SECTORS_OFFSET..HIDDEN_SECTORS_OFFSET + 4;
    image[field.clone()].copy_from_slice(&start_sector.to_le_bytes());
    // FAT32 keeps a backup boot sector (BPB_BkBootSec at 0x32, usually sector 6).
    let sectors_per_fat16 = u16::from_le_bytes([image[0x16], image[0x17]]);
    if sectors_per_fat16 == 0 {
        let bytes_per_sector = usize::from(u16::from_le_bytes([image[0x0b], image[0x0c]]));
        let backup = usize::from(u16::from_le_bytes([image[0x32], image[0x33]]));
        let at = backup * bytes_per_sector;
        if backup != 0 && at + 512 <= image.len() {
            image[at + HIDDEN_SECTORS_OFFSET..at + HIDDEN_SECTORS_OFFSET + 4].copy_from_slice(&start_sector.to_le_bytes());
        }
    }
    Ok(())
}

/// Reads one file from a FAT filesystem image; `None` if it does not exist.
pub fn read_file(fs_image: impl Read + Write + Seek, path: &str) -> anyhow::Result<Option<Vec<u8>>> {
    let fs = fatfs::FileSystem::new(fs_image, fs_options()).context("opening the FAT filesystem")?;
    let mut file = match fs.root_dir().open_file(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {path} on the FAT filesystem")),
    };
    let mut contents = Vec::new();
    file.read_to_end(&mut contents)
        .with_context(|| format!("reading {path} from the FAT filesystem"))?;
    Ok(Some(contents))
}

/// Every file on a FAT filesystem image with its size, depth first, paths with
/// `/` separators (directories themselves are not listed).
pub fn list_files(fs_image: impl Read + Write + Seek) -> anyhow::Result<Vec<(String, u64)>> {
    let fs = fatfs::FileSystem::new(fs_image, fs_options()).context("opening the FAT filesystem")?;
    let mut out = Vec::new();
    walk(&fs.root_dir(), "", &mut out)?;
    Ok(out)
}

/// The volume label, preferring the root directory entry over the boot sector
/// copy, as blkid does. `None` if the bytes are not a FAT filesystem.
pub fn label(fs_image: impl Read + Write + Seek) -> Option<String> {
    let fs = fatfs::FileSystem::new(fs_image, fs_options()).ok()?;
    let from_root = fs.read_volume_label_from_root_dir().ok().flatten();
    let label = from_root.unwrap_or_else(|| fs.volume_label());
    Some(label.trim_end().to_string())
}

/// A reader that refuses writes, so a FAT filesystem can be inspected through
/// a file opened read-only (fatfs asks for `Write` even to read).
#[derive(Debug)]
pub struct ReadOnly<R>(pub R);

impl<R: Read> Read for ReadOnly<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Seek> Seek for ReadOnly<R> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.0.seek(pos)
    }
}

impl<R> Write for ReadOnly<R> {
    fn write(&mut self, _buf: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "FAT filesystem opened read-only",
        ))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn walk<T: fatfs::ReadWriteSeek>(dir: &fatfs::Dir<'_, T>, prefix: &str, out: &mut Vec<(String, u64)>) -> anyhow::Result<()> {
    for entry in dir.iter() {
        let entry = entry.with_context(|| format!("listing {prefix}/ on the FAT filesystem"))?;
        let name = entry.file_name();
        if name == "." || name == ".." {
            continue;
        }
        let path = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        if entry.is_dir() {
            walk(&entry.to_dir(), &path, out)?;
        } else {
            out.push((path, entry.len()));
        }
    }
    Ok(())
}

fn write_one<T: fatfs::ReadWriteSeek>(root: &fatfs::Dir<'_, T>, f: &FatFile) -> anyhow::Result<()> {
    let path = f.path.trim_start_matches('/');
    if path.is_empty() || path.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        bail!("invalid path {:?}: use `dir/file` with no empty, `.` or `..` components", f.path);
    }
    // Create each parent directory once; fatfs's create_dir opens an existing one.
    let mut parts: Vec<&str> = path.split('/').collect();
    parts.pop();
    let mut sofar = String::new();
    for p in parts {
        if !sofar.is_empty() {
            sofar.push('/');
        }
        sofar.push_str(p);
        root.create_dir(&sofar)?;
    }
    let mut file = root.create_file(path)?;
    file.truncate()?;
    file.write_all(&f.contents)?;
    file.flush()?;
    Ok(())
}

/// The 11-byte, space-padded label field. Kept as given (no upper-casing):
/// Ubuntu's Pi images label their boot partition `system-boot` in lower case
/// and mount it by that label.
fn label_field(label: &str) -> anyhow::Result<[u8; 11]> {
    const FORBIDDEN: &[u8] = b"\"*+,./:;<=>?[\\]|";
    if label.is_empty()
        || label.len() > 11
        || !label.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        || label.bytes().any(|b| FORBIDDEN.contains(&b))
    {
        bail!("invalid FAT volume label {label:?}: use 1 to 11 ASCII letters, digits, `-` or `_`");
    }
    let mut field = [b' '; 11];
    field[..label.len()].copy_from_slice(label.as_bytes());
    Ok(field)
}

/// A volume id that depends only on what goes onto the filesystem.
fn volume_id(label: &str, files: &[FatFile]) -> u32 {
    let mut h = Sha256::new();
    h.update(label.as_bytes());
    for f in files {
        h.update([0]);
        h.update(f.path.as_bytes());
        h.update([0]);
        h.update((f.contents.len() as u64).to_le_bytes());
        h.update(&f.contents);
    }
    let d = h.finalize();
    u32::from_le_bytes([d[0], d[1], d[2], d[3]])
}

fn type_name(fat: Option<FatType>) -> &'static str {
    match fat {
        None => "FAT",
        Some(FatType::Fat16) => "FAT16",
        Some(FatType::Fat32) => "FAT32",
    }
}

fn fs_options() -> fatfs::FsOptions {
    fatfs::FsOptions::new().update_accessed_date(false).time_provider(&FIXED_TIME)
}

/// Stamps every entry with `SOURCE_DATE_EPOCH` (reproducible builds) or the
/// FAT epoch, never the wall clock.
#[derive(Debug)]
struct FixedTime;

static FIXED_TIME: FixedTime = FixedTime;

impl fatfs::TimeProvider for FixedTime {
    fn get_current_date(&self) -> fatfs::Date {
        fixed_date_time().date
    }

    fn get_current_date_time(&self) -> fatfs::DateTime {
        fixed_date_time()
    }
}

fn fixed_date_time() -> fatfs::DateTime {
    let epoch = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|s| s.trim().parse::<i64>().ok());
    dos_date_time(epoch.unwrap_or(0))
}

/// Converts Unix seconds (UTC) to a FAT timestamp, clamped to FAT's range
/// 1980-01-01 ..= 2107-12-31.
fn dos_date_time(unix: i64) -> fatfs::DateTime {
    const MIN: i64 = 315_532_800; // 1980-01-01T00:00:00Z
    const MAX: i64 = 4_354_819_199; // 2107-12-31T23:59:59Z
    let t = time::OffsetDateTime::from_unix_timestamp(unix.clamp(MIN, MAX)).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    fatfs::DateTime {
        date: fatfs::Date {
            year: t.year() as u16,
            month: u16::from(u8::from(t.month())),
            day: u16::from(t.day()),
        },
        // FAT stores seconds in steps of two.
        time: fatfs::Time {
            hour: u16::from(t.hour()),
            min: u16::from(t.minute()),
            sec: u16::from(t.second() & !1),
            millis: 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use piha_runner::{Cmd, Runner, SystemRunner};

    use super::{FatFile, FatType, build, build_with_sector_size, dos_date_time, label, list_files, read_file, set_hidden_sectors};

    fn sample() -> Vec<FatFile> {
        vec![
            FatFile::new("node.yaml", b"schema: 1\n".to_vec()),
            FatFile::new("README.txt", b"hello\n".to_vec()),
            FatFile::new("secrets/pki/etcd/ca.crt", b"-----BEGIN CERTIFICATE-----\n".to_vec()),
            FatFile::new("secrets/bootstrap-token", b"abcdef.0123456789abcdef\n".to_vec()),
            FatFile::new("EFI/BOOT/BOOTX64.EFI", vec![0x4d; 70_000]),
        ]
    }

    #[test]
    fn files_read_back() {
        let img = build("PIHA-CFG", 16 << 20, None, &sample()).unwrap();
        assert_eq!(img.len(), 16 << 20);
        for f in sample() {
            let got = read_file(Cursor::new(img.clone()), &f.path).unwrap();
            assert_eq!(got.as_deref(), Some(&f.contents[..]), "{}", f.path);
        }
        assert_eq!(read_file(Cursor::new(img.clone()), "missing.txt").unwrap(), None);
        let mut listed = list_files(Cursor::new(img.clone())).unwrap();
        listed.sort();
        let mut want: Vec<(String, u64)> = sample().into_iter().map(|f| (f.path, f.contents.len() as u64)).collect();
        want.sort();
        assert_eq!(listed, want);
        assert_eq!(label(Cursor::new(img)).as_deref(), Some("PIHA-CFG"));
    }

    #[test]
    fn builds_are_deterministic_and_content_addressed() {
        let a = build("PIHA-CFG", 4 << 20, None, &sample()).unwrap();
        let b = build("PIHA-CFG", 4 << 20, None, &sample()).unwrap();
        assert!(a == b, "two builds of the same files differ");
        let mut other = sample();
        other[0].contents = b"schema: 2\n".to_vec();
        let c = build("PIHA-CFG", 4 << 20, None, &other).unwrap();
        // Volume id (BPB offset 0x27 on FAT12/16) follows the contents.
        assert_ne!(a[0x27..0x2b], c[0x27..0x2b]);
    }

    #[test]
    fn bad_labels_and_paths_are_refused() {
        assert!(build("MUCH-TOO-LONG-LABEL", 1 << 20, None, &[]).is_err());
        assert!(build("A/B", 1 << 20, None, &[]).is_err());
        let err = build("X", 1 << 20, None, &[FatFile::new("a/../b", b"".to_vec())]).unwrap_err();
        assert!(format!("{err:#}").contains("a/../b"), "{err:#}");
    }

    #[test]
    fn timestamps_clamp_to_fat_range() {
        let t = dos_date_time(0);
        assert_eq!((t.date.year, t.date.month, t.date.day), (1980, 1, 1));
        let t = dos_date_time(1_700_000_001); // 2023-11-14T22:13:21Z
        assert_eq!(
            (t.date.year, t.date.month, t.date.day, t.time.hour, t.time.min, t.time.sec),
            (2023, 11, 14, 22, 13, 20)
        );
    }

    /// fsck.vfat accepts FAT16 and FAT32 builds, and mtools reads the same files.
    #[test]
    fn real_tools_accept_the_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("f16.img", 16u64 << 20, None, "PIHA-CFG", 512),
            ("f32.img", 64 << 20, Some(FatType::Fat32), "system-boot", 512),
            ("f4k.img", 16 << 20, None, "PIHA-CFG", 4096),
            ("f12.img", 2 << 20, None, "ESP", 512),
        ];
        for (name, size, fat, lbl, sector) in cases {
            let mut img = build_with_sector_size(lbl, size, fat, &sample(), sector).unwrap();
            set_hidden_sectors(&mut img, 2048).unwrap();
            let path = dir.path().join(name);
            std::fs::write(&path, &img).unwrap();
            // fsck.vfat reports on stdout; send it to stderr so a failure shows it.
            SystemRunner
                .run(&Cmd::new("sh").args(["-c", "fsck.vfat -n \"$1\" >&2", "fsck"]).arg(&path))
                .unwrap();
            let info = SystemRunner
                .run(&Cmd::new("minfo").arg("-i").arg(&path).arg("::"))
                .unwrap()
                .stdout_str();
            assert!(info.contains(&format!("volume label=\"{lbl}")) || info.contains(lbl), "{info}");
            let node = SystemRunner
                .run(&Cmd::new("mtype").arg("-i").arg(&path).arg("::node.yaml"))
                .unwrap();
            assert_eq!(node.stdout, b"schema: 1\n");
            let efi = SystemRunner
                .run(&Cmd::new("mcopy").arg("-i").arg(&path).arg("::EFI/BOOT/BOOTX64.EFI").arg("-"))
                .unwrap();
            assert_eq!(efi.stdout, vec![0x4d; 70_000]);
            let blkid = SystemRunner
                .run(&Cmd::new("blkid").args(["-p", "-o", "export"]).arg(&path))
                .unwrap()
                .stdout_str();
            assert!(blkid.contains(&format!("LABEL={lbl}")), "{blkid}");
        }
    }
}
