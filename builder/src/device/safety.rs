//! Is this device safe to overwrite? (after coreos-installer's
//! `ensure_exclusive_access`). Everything is gathered first (`inspect`), then
//! judged by a pure function (`refusals`) that lists every reason at once.
//!
//! Sources: sysfs (`/sys/class/block/X`: size, removable, partitions, holders;
//! `/sys/dev/block/MAJ:MIN` to turn a device number into a disk),
//! `/proc/self/mountinfo` (matched by major:minor, so a bind mount or a
//! renamed node still counts), `/proc/swaps`, and `lsblk -J` for model,
//! serial and transport.

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use indicatif::{BinaryBytes, DecimalBytes};
use piha_runner::{Cmd, RunJson, Runner};
use serde::Deserialize;

/// A partition (or the disk itself) by kernel name and device number.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BlockName {
    /// Kernel name, e.g. `sdb1`.
    pub name: String,
    /// `MAJ:MIN`.
    pub dev: String,
}

/// Everything the safety checks look at, for one whole-disk block device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceInfo {
    /// The path given, symlinks resolved (`/dev/disk/by-id/...` → `/dev/sdb`).
    pub path: PathBuf,
    pub disk: BlockName,
    pub partitions: Vec<BlockName>,
    pub size: u64,
    /// sysfs `removable`.
    pub removable: bool,
    /// lsblk TRAN: usb, mmc, sata, nvme, ... (None for virtual devices).
    pub transport: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    /// (kernel name of the disk or partition, mount point).
    pub mounts: Vec<(String, String)>,
    /// Kernel names of the disk or partitions in use as swap.
    pub swaps: Vec<String>,
    /// (kernel name, holder): device-mapper, md RAID, bcache stacked on it.
    pub holders: Vec<(String, String)>,
    /// Whole disks under `/`, `/boot` and `/boot/efi`.
    pub system_disks: Vec<String>,
    /// Those of `/`, `/boot` and `/boot/efi` whose disk could not be found
    /// (an overlay or network root): the running-system check cannot cover them.
    pub unresolved_system_mounts: Vec<String>,
}

impl DeviceInfo {
    /// SD/MMC slots and USB disks are what a card is written in.
    pub fn is_removable_kind(&self) -> bool {
        self.removable || matches!(self.transport.as_deref(), Some("usb" | "mmc")) || self.disk.name.starts_with("mmcblk")
    }

    /// One line for the confirmation prompt and logs.
    pub fn describe(&self) -> String {
        format!(
            "{}: {}, {} ({}), serial {}, {}{}",
            self.path.display(),
            self.model.as_deref().unwrap_or("(no model)"),
            DecimalBytes(self.size),
            BinaryBytes(self.size),
            self.serial.as_deref().unwrap_or("-"),
            self.transport.as_deref().map(|t| format!("{t}, ")).unwrap_or_default(),
            if self.is_removable_kind() { "removable" } else { "NOT removable" }
        )
    }
}

/// Every reason not to write `info`, each saying why and what to do.
pub fn refusals(info: &DeviceInfo, image_size: u64, allow_non_removable: bool) -> Vec<String> {
    let dev = info.path.display();
    let mut out = Vec::new();
    if info.system_disks.contains(&info.disk.name) {
        out.push(format!(
            "{dev} holds the running system (/, /boot or /boot/efi live on it); piha never writes the disk it runs from"
        ));
    }
    for (name, at) in &info.mounts {
        out.push(format!("/dev/{name} is mounted at {at}; unmount it first (`umount {at}`)"));
    }
    for name in &info.swaps {
        out.push(format!("/dev/{name} is in use as swap; `swapoff /dev/{name}` first"));
    }
    for (name, holder) in &info.holders {
        out.push(format!(
            "/dev/{name} is held by {holder} (LVM, LUKS, RAID or multipath stacked on it); deactivate that first (e.g. `dmsetup remove`, `vgchange -an`, `mdadm --stop`)"
        ));
    }
    if info.size < image_size {
        out.push(format!(
            "{dev} is {} but the image needs {}; use a bigger card",
            BinaryBytes(info.size),
            BinaryBytes(image_size)
        ));
    }
    if !info.is_removable_kind() && !allow_non_removable {
        out.push(format!(
            "{dev} is not a removable disk (sysfs removable=0, transport {}); if you really mean this internal or virtual disk, add --allow-non-removable",
            info.transport.as_deref().unwrap_or("none")
        ));
    }
    out
}

/// Gathers `DeviceInfo` for `path`, failing if it is not a whole-disk block device.
pub fn inspect(path: &Path, runner: &dyn Runner) -> anyhow::Result<DeviceInfo> {
    let meta = std::fs::metadata(path).with_context(|| format!("looking at {}", path.display()))?;
    if !meta.file_type().is_block_device() {
        bail!(
            "{} is not a block device; give the card's device (e.g. /dev/sdb, /dev/mmcblk0; `lsblk` lists them), or --to-file PATH to write an image file",
            path.display()
        );
    }
    let resolved = std::fs::canonicalize(path).with_context(|| format!("resolving {}", path.display()))?;
    let dev = dev_string(meta.rdev());
    let sys = sysfs_of(&dev)?;
    if sys.join("partition").exists() {
        let parent = sys
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        bail!(
            "{} is a partition; give the whole disk /dev/{parent} (piha writes the card as a whole and finds PIHA-CFG on it)",
            path.display()
        );
    }
    let name = file_name(&sys);
    let size = read_trimmed(&sys.join("size"))?.parse::<u64>().context("parsing sysfs size")? * 512;
    let removable = read_trimmed(&sys.join("removable")).map(|s| s == "1").unwrap_or(false);
    let mut partitions = Vec::new();
    for entry in std::fs::read_dir(&sys)
        .with_context(|| format!("listing {}", sys.display()))?
        .flatten()
    {
        let p = entry.path();
        if p.join("partition").exists() {
            partitions.push(BlockName {
                name: file_name(&p),
                dev: read_trimmed(&p.join("dev"))?,
            });
        }
    }
    partitions.sort_by(|a, b| a.name.cmp(&b.name));
    let disk = BlockName { name, dev };
    let all: Vec<&BlockName> = std::iter::once(&disk).chain(partitions.iter()).collect();

    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mut mounts = Vec::new();
    for m in parse_mountinfo(&mountinfo) {
        let by_source = m.source.strip_prefix("/dev/").map(|s| {
            std::fs::canonicalize(&m.source)
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or(s.to_string())
        });
        if let Some(b) = all.iter().find(|b| b.dev == m.dev || by_source.as_deref() == Some(b.name.as_str())) {
            mounts.push((b.name.clone(), m.mount_point.clone()));
        }
    }
    let swaps_text = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    let swaps = parse_swaps(&swaps_text)
        .into_iter()
        .filter_map(|p| std::fs::canonicalize(&p).ok())
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| all.iter().any(|b| &b.name == n))
        .collect();
    let mut holders = Vec::new();
    for b in &all {
        let dir = Path::new("/sys/class/block").join(&b.name).join("holders");
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                holders.push((b.name.clone(), describe_holder(&file_name(&e.path()))));
            }
        }
    }
    let lsblk = lsblk(&resolved, runner)?;
    let system = system_disks(&mountinfo);
    for point in &system.unresolved {
        log::warn!(
            "cannot tell which disk holds {point} (not on a block device this host can see); make sure {} is not the disk the system runs from",
            resolved.display()
        );
    }
    Ok(DeviceInfo {
        path: resolved,
        disk,
        partitions,
        size,
        removable: removable || lsblk.rm,
        transport: lsblk.tran.filter(|t| !t.is_empty()),
        model: lsblk.model.map(|m| m.trim().to_string()).filter(|m| !m.is_empty()),
        serial: lsblk.serial.map(|s| s.trim().to_string()).filter(|s| !s.is_empty()),
        mounts,
        swaps,
        holders,
        system_disks: system.disks.into_iter().collect(),
        unresolved_system_mounts: system.unresolved,
    })
}

/// A holder named for people: `dm-0 (vg-root)`.
fn describe_holder(name: &str) -> String {
    match read_trimmed(&Path::new("/sys/class/block").join(name).join("dm/name")) {
        Ok(dm) => format!("{name} ({dm})"),
        Err(_) => name.to_string(),
    }
}

/// The whole disks under the running system's mount points.
struct SystemDisks {
    disks: BTreeSet<String>,
    /// Mount points that are mounted but whose disk was not found.
    unresolved: Vec<String>,
}

/// The whole disks holding `/`, `/boot` and `/boot/efi`, through partitions
/// and device-mapper/md layers.
fn system_disks(mountinfo: &str) -> SystemDisks {
    let mounts = parse_mountinfo(mountinfo);
    let mut out = SystemDisks {
        disks: BTreeSet::new(),
        unresolved: Vec::new(),
    };
    for point in ["/", "/boot", "/boot/efi"] {
        let mut devs = Vec::new();
        if let Ok(meta) = std::fs::metadata(point) {
            devs.push(dev_string(meta.dev()));
        }
        // btrfs, overlay and friends report an anonymous device (major 0):
        // the mount's source names the real one.
        let mounted = mounts.iter().rev().find(|m| m.mount_point == point);
        if let Some(m) = mounted {
            if let Ok(meta) = std::fs::metadata(&m.source) {
                if meta.file_type().is_block_device() {
                    devs.push(dev_string(meta.rdev()));
                }
            }
            devs.push(m.dev.clone());
        }
        let mut found = BTreeSet::new();
        for d in devs {
            if let Ok(sys) = sysfs_of(&d) {
                whole_disks(&sys, &mut found, 0);
            }
        }
        // `/` always counts; /boot and /boot/efi only when they are mount points of their own.
        if found.is_empty() && (point == "/" || mounted.is_some()) {
            out.unresolved.push(point.to_string());
        }
        out.disks.extend(found);
    }
    out
}

/// Adds the whole disks under the sysfs block directory `sys`.
fn whole_disks(sys: &Path, out: &mut BTreeSet<String>, depth: usize) {
    if depth > 8 {
        return;
    }
    let sys = if sys.join("partition").exists() {
        sys.parent().unwrap_or(sys).to_path_buf()
    } else {
        sys.to_path_buf()
    };
    let slaves: Vec<PathBuf> = std::fs::read_dir(sys.join("slaves"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    if slaves.is_empty() {
        out.insert(file_name(&sys));
    }
    for s in slaves {
        if let Ok(real) = std::fs::canonicalize(&s) {
            whole_disks(&real, out, depth + 1);
        }
    }
}

/// `/sys/dev/block/MAJ:MIN`, resolved to its place under /sys/devices.
fn sysfs_of(dev: &str) -> anyhow::Result<PathBuf> {
    let link = Path::new("/sys/dev/block").join(dev);
    std::fs::canonicalize(&link).with_context(|| format!("finding {} (is sysfs mounted?)", link.display()))
}

fn dev_string(dev: u64) -> String {
    format!("{}:{}", rustix::fs::major(dev), rustix::fs::minor(dev))
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn read_trimmed(p: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(p)
        .with_context(|| format!("reading {}", p.display()))?
        .trim()
        .to_string())
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub dev: String,
    pub mount_point: String,
    pub source: String,
}

/// Parses mountinfo (proc(5)): field 3 is MAJ:MIN, field 5 the mount point,
/// and after the ` - ` separator come the fs type and the source.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            Some(MountEntry {
                dev: f.get(2)?.to_string(),
                mount_point: unescape(f.get(4)?),
                source: unescape(r.get(1)?),
            })
        })
        .collect()
}

/// mountinfo and /proc/swaps escape space, tab, newline and backslash as \ooo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The swap devices and files in /proc/swaps (first column, header skipped).
pub fn parse_swaps(text: &str) -> Vec<String> {
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(unescape)
        .collect()
}

/// `lsblk -J -b` output.
#[derive(Debug, Clone, Deserialize)]
pub struct LsblkOutput {
    pub blockdevices: Vec<LsblkDevice>,
}

/// The fields piha reads of one device in `lsblk -J -b` (sysfs gives the
/// rest). Tolerant of older util-linux, which printed flags as strings.
#[derive(Debug, Clone, Deserialize)]
pub struct LsblkDevice {
    #[serde(deserialize_with = "de::flag")]
    pub rm: bool,
    #[serde(default)]
    pub tran: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub serial: Option<String>,
}

/// Runs lsblk on the disk and returns its entry.
pub fn lsblk(disk: &Path, runner: &dyn Runner) -> anyhow::Result<LsblkDevice> {
    let cmd = Cmd::new("lsblk")
        .args(["-J", "-b", "-o", "NAME,SIZE,RM,TRAN,MODEL,SERIAL,TYPE,MOUNTPOINTS"])
        .arg(disk);
    let out: LsblkOutput = runner.run_json(&cmd)?;
    out.blockdevices.into_iter().next().context("lsblk listed no device")
}

/// The first device of lsblk's JSON, parsed as `run_json` parses it: the
/// fixtures' check.
#[cfg(test)]
fn parse_lsblk(json: &[u8]) -> anyhow::Result<LsblkDevice> {
    let parsed: LsblkOutput = serde_json::from_slice(json)?;
    parsed.blockdevices.into_iter().next().context("lsblk listed no device")
}

mod de {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrText {
        Num(u64),
        Text(String),
        Bool(bool),
    }

    pub fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        match NumOrText::deserialize(d)? {
            NumOrText::Bool(b) => Ok(b),
            NumOrText::Num(n) => Ok(n != 0),
            NumOrText::Text(t) => Ok(t.trim() == "1" || t.trim() == "true"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::{BlockName, DeviceInfo, parse_lsblk, parse_mountinfo, parse_swaps, refusals};

    fn card() -> DeviceInfo {
        DeviceInfo {
            path: PathBuf::from("/dev/sdb"),
            disk: BlockName {
                name: "sdb".into(),
                dev: "8:16".into(),
            },
            partitions: vec![BlockName {
                name: "sdb1".into(),
                dev: "8:17".into(),
            }],
            size: 32_000_000_000,
            removable: false,
            transport: Some("usb".into()),
            model: Some("Ultra".into()),
            serial: Some("1234".into()),
            mounts: vec![],
            swaps: vec![],
            holders: vec![],
            system_disks: vec!["vda".into()],
            unresolved_system_mounts: vec![],
        }
    }

    #[test]
    fn a_free_usb_card_passes() {
        assert_eq!(refusals(&card(), 4 << 30, false), Vec::<String>::new());
        assert!(card().describe().contains("serial 1234"), "{}", card().describe());
    }

    #[test]
    fn every_reason_is_listed() {
        let mut d = card();
        d.disk.name = "vda".into();
        d.transport = None;
        d.mounts = vec![("sdb1".into(), "/media/x".into())];
        d.swaps = vec!["sdb1".into()];
        d.holders = vec![("sdb1".into(), "dm-0 (vg-data)".into())];
        d.size = 1 << 30;
        let r = refusals(&d, 4 << 30, false);
        assert_eq!(r.len(), 6, "{r:#?}");
        assert!(r[0].contains("running system"));
        assert!(r[1].contains("umount /media/x"));
        assert!(r[2].contains("swapoff"));
        assert!(r[3].contains("dm-0"));
        assert!(r[4].contains("bigger card"));
        assert!(r[5].contains("--allow-non-removable"));
        assert_eq!(refusals(&d, 4 << 30, true).len(), 5);
    }

    #[test]
    fn mountinfo_and_swaps_parse() {
        let m = parse_mountinfo(
            "36 35 8:17 / /media/my\\040card rw,noatime shared:1 - vfat /dev/sdb1 rw\n29 1 254:0 / / rw - ext4 /dev/vda rw\n",
        );
        assert_eq!(m[0].dev, "8:17");
        assert_eq!(m[0].mount_point, "/media/my card");
        assert_eq!(m[1].source, "/dev/vda");
        let s = parse_swaps("Filename\tType\tSize\tUsed\tPriority\n/dev/sdb2   partition\t1\t0\t-2\n");
        assert_eq!(s, vec!["/dev/sdb2"]);
    }

    #[test]
    fn lsblk_fixtures_parse() {
        // Captured on this build host by tests/flash/capture-lsblk.sh.
        let loop_dev = parse_lsblk(include_bytes!("../../../tests/flash/lsblk-loop.json")).unwrap();
        assert!(!loop_dev.rm);
        assert_eq!((loop_dev.tran, loop_dev.model, loop_dev.serial), (None, None, None));
        let vda = parse_lsblk(include_bytes!("../../../tests/flash/lsblk-vda.json")).unwrap();
        assert!(!vda.rm);
        // util-linux before 2.37 printed flags and sizes as strings.
        let old = parse_lsblk(br#"{"blockdevices":[{"name":"sdb","size":"31914983424","rm":"1","tran":"usb","model":"SD/MMC","serial":"0001","type":"disk"}]}"#).unwrap();
        assert!(old.rm);
        assert_eq!(old.tran.as_deref(), Some("usb"));
        assert_eq!(old.model.as_deref(), Some("SD/MMC"));
        assert_eq!(old.serial.as_deref(), Some("0001"));
    }
}
