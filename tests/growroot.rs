//! `growroot` and `piha-growroot.service` (overlays/base): on a card bigger
//! than its image, the root partition grows to the end of the disk and its
//! ext4 with it, for GPT (UEFI boards) and MBR (Raspberry Pi) tables, with
//! the real sfdisk, partx, resize2fs and sgdisk on loop devices; a second
//! run changes nothing; the unit is ordered before what fills the disk.
//! Needs root (losetup, mount, unshare).

// Tests run the binaries under test, QEMU and the host tools that check
// their output directly, as a user's shell would; clippy.toml's ban on
// Command::new is for piha's own code, which goes through piha_runner.
#![allow(clippy::disallowed_methods)]

mod support;

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use piha::image::ext4::{self, Mkfs, Sizing};
use piha_runner::{Cmd, Runner, SystemRunner};
use support::disk::{Loop, Mount, noise};
use support::image::table;
use support::{repo, run_ok};

const MIB: u64 = 1 << 20;
const SECTOR: u64 = 512;
/// The image as built: p1 8 MiB, p2 4 MiB, p3 24 MiB, then 27 MiB outside
/// the table (an image's end is never exactly its last partition's).
const IMAGE_BYTES: u64 = 64 * MIB;
/// The card it is flashed to.
const CARD_BYTES: u64 = 160 * MIB;
const CARD_SECTORS: u64 = CARD_BYTES / SECTOR;
const P3_START: u64 = 13 * MIB;
const P3_BYTES: u64 = 24 * MIB;
/// growroot (like growpart) leaves the last 33 sectors free on both table kinds: a GPT keeps
/// its backup table (32 sectors) and header there, and an MBR disk can still
/// be converted to GPT. So p3 ends at sector N-34.
const LAST_USABLE: u64 = CARD_SECTORS - 34;

fn growroot_script() -> PathBuf {
    repo().join("overlays/base/usr/lib/piha/growroot")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    /// UEFI boards: ESP, PIHA-CFG, piha-root.
    Gpt,
    /// Raspberry Pi: system-boot, PIHA-CFG, writable.
    Mbr,
}

impl Label {
    fn sfdisk_script(self) -> &'static str {
        match self {
            Label::Gpt => "label: gpt\nsize=8M, type=U, name=ESP\nsize=4M, type=L, name=PIHA-CFG\nsize=24M, type=L, name=piha-root\n",
            Label::Mbr => "label: dos\nsize=8M, type=c, bootable\nsize=4M, type=c\nsize=24M, type=83\n",
        }
    }

    fn root_label(self) -> &'static str {
        match self {
            Label::Gpt => "piha-root",
            Label::Mbr => "writable",
        }
    }
}

/// A piha-like image grown into a bigger card: the table, a FAT p1, noise in
/// p2, and p3 an ext4 made by the builder's own mke2fs call from a tar that
/// holds a marker file and the top-level directories a chroot needs.
struct Card {
    dir: tempfile::TempDir,
    img: PathBuf,
}

impl Card {
    fn new(label: Label) -> Card {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("card.img");
        File::create(&img).unwrap().set_len(IMAGE_BYTES).unwrap();
        SystemRunner
            .run(&Cmd::new("sfdisk").arg("-q").arg(&img).stdin(label.sfdisk_script()))
            .unwrap_or_else(|e| panic!("{e}"));
        run_ok(
            Command::new("mkfs.vfat")
                .args(["-n", "BOOT", "--offset=2048"])
                .arg(&img)
                .arg("8192"),
        );
        File::options()
            .write(true)
            .open(&img)
            .unwrap()
            .write_all_at(&noise(4 * MIB as usize, 0), 9 * MIB)
            .unwrap();

        let tree = dir.path().join("tree");
        for d in ["usr", "etc", "proc", "sys", "dev", "tmp"] {
            fs::create_dir_all(tree.join(d)).unwrap();
        }
        // bin, lib... as on the host: merged-/usr symlinks are copied, real
        // directories become mount points.
        for d in ["bin", "sbin", "lib", "lib64", "lib32", "libx32"] {
            let host = Path::new("/").join(d);
            match fs::read_link(&host) {
                Ok(target) => std::os::unix::fs::symlink(target, tree.join(d)).unwrap(),
                Err(_) if host.is_dir() => fs::create_dir(tree.join(d)).unwrap(),
                Err(_) => {}
            }
        }
        fs::write(tree.join("marker"), "still here\n").unwrap();
        let tar = dir.path().join("root.tar");
        run_ok(Command::new("tar").arg("-cf").arg(&tar).arg("-C").arg(&tree).arg("."));
        let mkfs = Mkfs {
            label: label.root_label().to_string(),
            tar,
            uuid: uuid::Uuid::from_u128(0x6b1e_5f0a_0b7a_4c1e_9d2f_1c3b_5a7e_9f01),
            time: 1_700_000_000,
            sizing: Sizing {
                size_bytes: P3_BYTES,
                inodes: 2048,
            },
        };
        ext4::make(&SystemRunner, &mkfs, &img, P3_START).unwrap();
        // Flashed onto a bigger card: the table still describes the image.
        File::options().write(true).open(&img).unwrap().set_len(CARD_BYTES).unwrap();
        Card { dir, img }
    }
}

/// The partition tables of a card: the first 34 sectors and the last 33.
fn table_sectors(lp: &Loop) -> Vec<u8> {
    let mut v = lp.read_at(0, 34 * SECTOR);
    v.extend(lp.read_at(CARD_BYTES - 33 * SECTOR, 33 * SECTOR));
    v
}

/// `growroot DEV` on the host.
fn growroot(dev: &Path) -> Output {
    Command::new(growroot_script()).arg(dev).output().unwrap()
}

/// `growroot` with no argument, as the unit runs it, on a root that is `dev`:
/// in a private mount namespace, `dev` mounted and chrooted into, with the
/// host's /usr, /etc, /proc, /sys and /dev bound under it. findmnt then
/// reports `dev` as `/`, and the mounts go away with the namespace.
fn growroot_as_root(card: &Card, dev: &Path) -> Output {
    let root = card.dir.path().join("root");
    fs::create_dir_all(&root).unwrap();
    let script = r#"
dev=$1 root=$2 growroot=$3
mount "$dev" "$root"
for d in usr etc proc sys dev bin sbin lib lib64 lib32 libx32; do
	if [ -d "/$d" ] && [ ! -L "/$d" ]; then mount --rbind "/$d" "$root/$d"; fi
done
mount -t tmpfs tmpfs "$root/tmp"
cp "$growroot" "$root/growroot"
exec chroot "$root" /growroot
"#;
    Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-euc", script, "sh"])
        .arg(dev)
        .arg(&root)
        .arg(growroot_script())
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "growroot failed: {}", text(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Online growth is the EXT4_IOC_RESIZE_FS ioctl, which needs
/// CAP_SYS_RESOURCE; some containers run root without it.
fn can_resize_online() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim();
    u64::from_str_radix(eff, 16).unwrap() & (1 << CAP_SYS_RESOURCE) != 0
}

/// `Block count` × `Block size` from the superblock.
fn ext4_bytes(dev: &Path) -> u64 {
    let out = run_ok(Command::new("dumpe2fs").arg("-h").arg(dev));
    let field = |name: &str| -> u64 {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in dumpe2fs -h:\n{out}"))
    };
    field("Block count:") * field("Block size:")
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The GPT is whole at the card's end, as firmware reading it expects: the
/// protective MBR covers the card, the primary header points at a backup
/// header in the last sector, which points back and has its table before it.
fn assert_gpt_spans_the_card(lp: &Loop) {
    let mbr = lp.read_at(0, SECTOR);
    assert_eq!(mbr[446 + 4], 0xEE, "protective MBR entry");
    let pmbr_sectors = u32::from_le_bytes(mbr[446 + 12..446 + 16].try_into().unwrap());
    assert_eq!(u64::from(pmbr_sectors), CARD_SECTORS - 1, "protective MBR size");
    let primary = lp.read_at(SECTOR, SECTOR);
    assert_eq!(&primary[..8], b"EFI PART");
    assert_eq!(u64_at(&primary, 32), CARD_SECTORS - 1, "primary header's AlternateLBA");
    assert_eq!(u64_at(&primary, 48), LAST_USABLE, "primary header's LastUsableLBA");
    let backup = lp.read_at(CARD_BYTES - SECTOR, SECTOR);
    assert_eq!(&backup[..8], b"EFI PART", "no backup GPT header in the card's last sector");
    assert_eq!(u64_at(&backup, 24), CARD_SECTORS - 1, "backup header's MyLBA");
    assert_eq!(u64_at(&backup, 32), 1, "backup header's AlternateLBA");
    assert_eq!(u64_at(&backup, 48), LAST_USABLE, "backup header's LastUsableLBA");
    assert_eq!(u64_at(&backup, 72), CARD_SECTORS - 33, "backup header's PartitionEntryLBA");
    // gdisk's own check also verifies both headers' and tables' CRCs.
    let verify = run_ok(Command::new("sgdisk").arg("-v").arg(&lp.dev));
    assert!(verify.contains("No problems found"), "sgdisk -v:\n{verify}");
}

fn grows_the_root_to_the_end_of_the_card(label: Label) {
    let card = Card::new(label);
    assert_eq!(table(&card.img).partitions[2].size * SECTOR, P3_BYTES);
    if label == Label::Gpt {
        // What a card bigger than its image looks like before the first boot.
        let verify = run_ok(Command::new("sgdisk").arg("-v").arg(&card.img));
        assert!(verify.contains("doesn't reside\nat the end of the disk"), "sgdisk -v:\n{verify}");
    }
    let lp = Loop::attach_partitioned(&card.img);
    // The table as flashed, read through the device (node names and all).
    let image_table = table(&lp.dev);
    assert!(image_table.id.is_some(), "no disk identifier: {image_table:#?}");
    let p3 = lp.part(3);
    let p1_p2 = lp.read_at(MIB, 12 * MIB);

    // First boot: growroot with no argument finds the root itself.
    let first = growroot_as_root(&card, &p3);
    if can_resize_online() {
        let line = stdout(&first);
        let want = format!(
            "growroot: {}: partition 3 of {} grown from {P3_BYTES} to ",
            p3.display(),
            lp.dev.display()
        );
        assert!(line.starts_with(&want) && line.contains("; ext4 grown to "), "{line}");
        assert_eq!(line.lines().count(), 1, "{line}");
    } else {
        // This host cannot grow a mounted ext4 at all. The partition still
        // grew; the failure names resize2fs; the next run (offline here,
        // after e2fsck) finishes the job, as the next boot would.
        assert_eq!(first.status.code(), Some(1), "{}", text(&first));
        let err = String::from_utf8_lossy(&first.stderr);
        assert!(err.contains(&format!("growroot: resize2fs {} failed", p3.display())), "{err}");
        eprintln!("note: no CAP_SYS_RESOURCE on this host: online growth checked as a clean failure, then an offline retry");
        let p = &table(&lp.dev).partitions[2];
        assert_eq!(p.start + p.size - 1, LAST_USABLE);
        assert_eq!(ext4_bytes(&p3), P3_BYTES, "the failed online run changed the filesystem");
        let line = stdout(&growroot(&p3));
        assert!(line.contains("already fills it") && line.contains("; ext4 grown to "), "{line}");
    }

    // The table: p3 ends at the last usable sector; everything else as it was.
    let grown = table(&lp.dev);
    let p = &grown.partitions[2];
    assert_eq!(p.start + p.size - 1, LAST_USABLE, "{grown:#?}");
    let mut want = image_table.clone();
    want.partitions[2].size = LAST_USABLE + 1 - p.start;
    want.lastlba = want.lastlba.map(|_| LAST_USABLE);
    assert_eq!(grown, want, "only p3's size (and GPT's last usable sector) may change");
    assert_eq!(lp.read_at(MIB, 12 * MIB), p1_p2, "p1 and p2 bytes changed");
    run_ok(Command::new("sfdisk").arg("--verify").arg(&lp.dev));
    if label == Label::Gpt {
        assert_gpt_spans_the_card(&lp);
    }
    // The kernel sees the new size (partx told it, BLKPG).
    let sys_size: u64 = fs::read_to_string(lp.sys_part(3).join("size")).unwrap().trim().parse().unwrap();
    assert_eq!(sys_size, p.size);

    // The filesystem: fills the partition, clean, content intact.
    let part_bytes = p.size * SECTOR;
    let fs_bytes = ext4_bytes(&p3);
    assert!(
        fs_bytes <= part_bytes && part_bytes - fs_bytes < 4096,
        "ext4 {fs_bytes} bytes in a {part_bytes}-byte partition"
    );
    run_ok(Command::new("e2fsck").arg("-fn").arg(&p3));
    let mount = Mount::new(&p3);
    let df = run_ok(Command::new("df").args(["-B1", "--output=size"]).arg(mount.dir.path()));
    let df_bytes: u64 = df.lines().last().unwrap().trim().parse().unwrap();
    // df leaves out the journal and metadata: a few MiB here.
    assert!(
        df_bytes > P3_BYTES * 4 && part_bytes - df_bytes < 8 * MIB,
        "df says {df_bytes} of {part_bytes}"
    );
    assert_eq!(fs::read_to_string(mount.dir.path().join("marker")).unwrap(), "still here\n");

    // Every later boot: mounted, nothing to do, nothing written.
    let tables = table_sectors(&lp);
    let again = stdout(&growroot(&p3));
    assert_eq!(
        again,
        format!(
            "growroot: {}: partition 3 of {} already fills it ({part_bytes} bytes); ext4 already fills it ({} (4k) blocks)\n",
            p3.display(),
            lp.dev.display(),
            fs_bytes / 4096
        )
    );
    assert_eq!(table_sectors(&lp), tables, "a second run rewrote the partition table");
    drop(mount);
    // And offline, named by a link as /dev/disk/by-label/ would.
    let link = card.dir.path().join("by-label-root");
    std::os::unix::fs::symlink(&p3, &link).unwrap();
    let again = stdout(&growroot(&link));
    assert!(
        again.starts_with(&format!("growroot: {}: ", p3.display()))
            && again.contains("already fills it (")
            && again.contains("; ext4 already fills it ("),
        "{again}"
    );
    assert_eq!(table_sectors(&lp), tables);
    assert_eq!(ext4_bytes(&p3), fs_bytes);
    drop(lp);
    drop(card);
}

#[test]
fn gpt_root_grows_to_the_end_of_a_bigger_disk() {
    grows_the_root_to_the_end_of_the_card(Label::Gpt);
}

#[test]
fn mbr_root_grows_to_the_end_of_a_bigger_card() {
    grows_the_root_to_the_end_of_the_card(Label::Mbr);
}

#[test]
fn refuses_what_it_cannot_grow_before_touching_the_table() {
    let card = Card::new(Label::Mbr);
    let lp = Loop::attach_partitioned(&card.img);
    let tables = table_sectors(&lp);
    for (dev, says) in [
        (lp.dev.clone(), "is not a partition"),
        (lp.part(1), "holds 'vfat', not ext4"),
        (lp.part(2), "holds no filesystem blkid recognises"),
        (PathBuf::from("/dev/does-not-exist"), "is not a block device"),
    ] {
        let out = growroot(&dev);
        assert_eq!(out.status.code(), Some(1), "{}: {}", dev.display(), text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with(&format!("growroot: {}", dev.display())) && err.contains(says),
            "{err}"
        );
    }
    let usage = Command::new(growroot_script()).args(["a", "b"]).output().unwrap();
    assert_eq!(usage.status.code(), Some(2), "{}", text(&usage));
    assert_eq!(table_sectors(&lp), tables);
}

/// `Key=value` lines of one section of a unit file, values split on spaces.
fn unit_values(unit: &str, section: &str, key: &str) -> Vec<String> {
    let mut current = "";
    let mut values = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            current = line;
        } else if current == section {
            if let Some(v) = line.strip_prefix(key).and_then(|r| r.strip_prefix('=')) {
                values.extend(v.split_whitespace().map(String::from));
            }
        }
    }
    values
}

#[test]
fn unit_runs_after_the_root_is_writable_and_before_what_fills_it() {
    let path = repo().join("overlays/base/usr/lib/systemd/system/piha-growroot.service");
    let unit = fs::read_to_string(&path).unwrap();
    let get = |section: &str, key: &str| unit_values(&unit, section, key);
    assert_eq!(get("[Service]", "Type"), ["oneshot"]);
    assert_eq!(get("[Service]", "ExecStart"), ["/usr/lib/piha/growroot"]);
    // Default dependencies: after sysinit.target, hence local-fs.target and
    // systemd-remount-fs (root read-write).
    assert!(get("[Unit]", "DefaultDependencies").is_empty());
    assert_eq!(get("[Unit]", "After"), ["local-fs.target"]);
    let before = get("[Unit]", "Before");
    for unit in ["piha-agent.service", "containerd.service", "crio.service", "kubelet.service"] {
        assert!(before.iter().any(|b| b == unit), "not Before={unit}: {before:?}");
    }
    // Ordering only: a failed growth must not stop the agent or the boot.
    for key in ["Requires", "Requisite", "BindsTo", "RequiredBy"] {
        assert!(get("[Unit]", key).is_empty() && get("[Install]", key).is_empty(), "{key}=");
    }
    assert_eq!(get("[Install]", "WantedBy"), ["multi-user.target"]);

    let preset = fs::read_to_string(repo().join("overlays/base/usr/lib/systemd/system-preset/10-piha-base.preset")).unwrap();
    assert!(preset.lines().any(|l| l == "enable piha-growroot.service"), "{preset}");

    // systemd's own reading of it, in a root with the host's units and the
    // base overlay.
    let root = tempfile::tempdir().unwrap();
    let units = root.path().join("usr/lib/systemd/system");
    fs::create_dir_all(&units).unwrap();
    run_ok(Command::new("cp").arg("-a").arg("/usr/lib/systemd/system/.").arg(&units));
    run_ok(Command::new("cp").arg("-a").arg(repo().join("overlays/base/.")).arg(root.path()));
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .arg("piha-growroot.service")
        .current_dir(&units)
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
        "{}",
        text(&out)
    );
}

#[test]
fn script_is_executable_posix_sh() {
    let path = growroot_script();
    let body = fs::read_to_string(&path).unwrap();
    assert!(body.starts_with("#!/bin/sh\n"));
    assert!(body.contains("\nset -eu\n"));
    // dash is Debian's /bin/sh and knows no bashisms.
    run_ok(Command::new("dash").arg("-n").arg(&path));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o111, 0o111);
}
