//! Stages 3 and 4 of `piha build` on small synthetic inputs, checked with the
//! real tools: `sfdisk -J` for the tables, `e2fsck -fn` and `debugfs` for the
//! ext4 root, `fsck.vfat -n` and `mcopy` for the FAT partitions, `zstd -t`,
//! `sha256sum -c` and `bmaptool copy` for the packaged artifacts.

// Tests run the binaries under test, QEMU and the host tools that check
// their output directly, as a user's shell would; clippy.toml's ban on
// Command::new is for piha's own code, which goes through piha_runner.
#![allow(clippy::disallowed_methods)]

mod support;

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use piha::arch::Arch;
use piha::image::bmap::Bmap;
use piha::image::fat::{FatFile, FatType};
use piha::pipeline::assemble::{Assembled, Content, DiskLayout, PartKind, PartSpec, TableKind, assemble};
use piha::pipeline::package::package;
use piha_runner::{Cmd, Output, RunError, Runner, SystemRunner};
use support::image::table;

const MTIME: u64 = 1_700_000_000;
/// 3 MB of data that does not compress to nothing.
fn big_contents() -> Vec<u8> {
    let mut x: u32 = 12345;
    (0..3_000_000)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect()
}

const LONG_TARGET: &str = "/usr/lib/a/rather/long/symlink/target/that/does/not/fit/in/the/inode/at/all";

/// A root tar with directories, modes, owners, a symlink with a target too long
/// for the inode, a hard link and a multi-block file.
fn make_tar(path: &Path) {
    let mut b = tar::Builder::new(File::create(path).unwrap());
    let mut add = |name: &str, kind: tar::EntryType, mode: u32, uid: u64, data: &[u8], link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_mtime(MTIME);
        h.set_size(data.len() as u64);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        b.append_data(&mut h, name, data).unwrap();
    };
    add("./", tar::EntryType::Directory, 0o755, 0, b"", None);
    add("./etc/", tar::EntryType::Directory, 0o755, 0, b"", None);
    add("./etc/hostname", tar::EntryType::Regular, 0o644, 0, b"piha\n", None);
    add(
        "./etc/shadow",
        tar::EntryType::Regular,
        0o640,
        0,
        b"root:*:19000:0:99999:7:::\n",
        None,
    );
    add("./home/", tar::EntryType::Directory, 0o755, 0, b"", None);
    add("./home/pi/", tar::EntryType::Directory, 0o700, 1000, b"", None);
    add(
        "./home/pi/notes.txt",
        tar::EntryType::Regular,
        0o600,
        1000,
        b"hello from uid 1000\n",
        None,
    );
    add("./usr/", tar::EntryType::Directory, 0o755, 0, b"", None);
    add("./usr/bin/", tar::EntryType::Directory, 0o755, 0, b"", None);
    add("./usr/bin/su", tar::EntryType::Regular, 0o4755, 0, b"#!/bin/sh\nexit 0\n", None);
    add("./usr/bin/big", tar::EntryType::Regular, 0o755, 0, &big_contents(), None);
    add("./usr/bin/big-again", tar::EntryType::Link, 0o755, 0, b"", Some("./usr/bin/big"));
    add("./usr/bin/long", tar::EntryType::Symlink, 0o777, 0, b"", Some(LONG_TARGET));
    add("./usr/bin/short", tar::EntryType::Symlink, 0o777, 0, b"", Some("su"));
    // A non-ASCII name in a pax header, as GNU tar and mmdebstrap write them.
    b.append_pax_extensions([("path", "./etc/café.conf".as_bytes())]).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_mtime(MTIME);
    h.set_size(4);
    b.append_data(&mut h, "./etc/cafe.conf", &b"crme"[..]).unwrap();
    b.finish().unwrap();
}

fn esp_files() -> Vec<FatFile> {
    vec![
        FatFile::new("EFI/BOOT/BOOTX64.EFI", vec![0x4d, 0x5a, 1, 2, 3]),
        FatFile::new("loader/entries/piha.conf", "title piha\nlinux /vmlinuz\n"),
        FatFile::new("vmlinuz", big_contents()),
    ]
}

fn layout(table: TableKind, tar: &Path) -> DiskLayout {
    let first = match table {
        TableKind::Gpt => PartSpec {
            name: "ESP".into(),
            kind: PartKind::Esp,
            size_bytes: Some(64 << 20),
            content: Content::Fat {
                label: "ESP".into(),
                fat_type: None,
                files: esp_files(),
            },
        },
        TableKind::Mbr => PartSpec {
            name: "system-boot".into(),
            kind: PartKind::BootFat,
            size_bytes: Some(64 << 20),
            content: Content::Fat {
                label: "system-boot".into(),
                fat_type: Some(FatType::Fat32),
                files: vec![
                    FatFile::new("config.txt", "arm_64bit=1\n"),
                    FatFile::new("cmdline.txt", "root=LABEL=writable\n"),
                ],
            },
        },
    };
    DiskLayout {
        table,
        arch: Arch::Amd64,
        partitions: vec![
            first,
            PartSpec {
                name: "PIHA-CFG".into(),
                kind: PartKind::Config,
                size_bytes: Some(16 << 20),
                content: Content::Fat {
                    label: "PIHA-CFG".into(),
                    fat_type: None,
                    files: vec![],
                },
            },
            PartSpec {
                name: "writable".into(),
                kind: PartKind::Root,
                size_bytes: None,
                content: Content::Ext4 {
                    label: "writable".into(),
                    tar: tar.to_path_buf(),
                    free_bytes: 64 << 20,
                },
            },
        ],
        seed: [42; 32],
        epoch: MTIME,
    }
}

fn run(cmd: Cmd) -> String {
    SystemRunner.run(&cmd).unwrap_or_else(|e| panic!("{e}")).stdout_str()
}

/// sha256sum, not the sha2 crate: tests build without optimisation, where
/// hashing a few hundred MB in Rust takes longer than the rest of the test.
fn sha256(path: &Path) -> String {
    let out = run(Cmd::new("sha256sum").arg(path));
    out.split_whitespace().next().expect("sha256sum prints a hash").to_string()
}

/// Copies a partition's bytes out of an image.
fn extract(image: &Path, start: u64, size: u64, to: &Path) -> PathBuf {
    let src = File::open(image).unwrap();
    let mut out = File::create(to).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = start;
    while at < start + size {
        let n = (start + size - at).min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], at).unwrap();
        out.write_all(&buf[..n]).unwrap();
        at += n as u64;
    }
    to.to_path_buf()
}

fn build(table: TableKind, dir: &Path) -> (DiskLayout, Assembled) {
    let tar = dir.join("root.tar");
    make_tar(&tar);
    let l = layout(table, &tar);
    let lines = std::cell::RefCell::new(Vec::new());
    let a = assemble(&SystemRunner, &l, &dir.join("test.img"), &|m| {
        lines.borrow_mut().push(m.to_string())
    })
    .unwrap();
    assert!(
        lines.borrow().iter().any(|m| m.contains("mke2fs")),
        "no progress: {:?}",
        lines.borrow()
    );
    (l, a)
}

/// e2fsck, debugfs and fsck.vfat/mcopy on every partition of `image`.
fn check_filesystems(a: &Assembled, image: &Path, dir: &Path) {
    let root = &a.partitions[2];
    let ext4 = extract(image, root.start, root.size, &dir.join("root.ext4"));
    run(Cmd::new("e2fsck").args(["-fn"]).arg(&ext4));
    let debugfs = |req: &str| run(Cmd::new("debugfs").args(["-R", req]).arg(&ext4));
    assert_eq!(debugfs("cat /etc/hostname"), "piha\n");
    assert_eq!(debugfs("cat /home/pi/notes.txt"), "hello from uid 1000\n");
    assert_eq!(debugfs("cat /etc/café.conf"), "crme");
    let big = dir.join("big.out");
    debugfs(&format!("dump /usr/bin/big {}", big.display()));
    assert_eq!(std::fs::read(&big).unwrap(), big_contents());
    for (path, mode, owner) in [
        ("/etc/shadow", "0640", "0"),
        ("/home/pi", "0700", "1000"),
        ("/home/pi/notes.txt", "0600", "1000"),
        ("/usr/bin/su", "04755", "0"),
    ] {
        let stat = debugfs(&format!("stat {path}"));
        assert!(stat.contains(&format!("Mode:  {mode}")), "{path}: {stat}");
        assert!(stat.contains(&format!("User: {owner:>5}   Group: {owner:>5}")), "{path}: {stat}");
    }
    assert!(debugfs("stat /usr/bin/big-again").contains("Links: 2"), "hard link kept");
    // A target of 60 bytes or more lives in a data block, which `cat` prints.
    assert!(debugfs("stat /usr/bin/long").contains("Type: symlink"));
    assert_eq!(debugfs("cat /usr/bin/long"), LONG_TARGET);
    assert!(debugfs("stat /usr/bin/short").contains("Fast link dest: \"su\""));

    for p in &a.partitions[..2] {
        let fat = extract(image, p.start, p.size, &dir.join(format!("p{}.fat", p.index)));
        run(Cmd::new("fsck.vfat").arg("-n").arg(&fat));
        let listing = run(Cmd::new("mdir").arg("-i").arg(&fat).arg("::/"));
        assert!(listing.contains(&format!("Volume in drive : is {}", p.name)), "{listing}");
    }
}

#[test]
fn gpt_image_layout_and_filesystems() {
    let dir = tempfile::tempdir().unwrap();
    let (l, a) = build(TableKind::Gpt, dir.path());
    let t = table(&a.image);
    assert_eq!(t.label, "gpt");
    assert_eq!(t.sectorsize, 512);
    assert_eq!(t.id.as_deref().map(str::to_lowercase), Some(l.disk_guid().to_string()));
    let expect = [
        ("ESP", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
        ("PIHA-CFG", "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"),
        ("writable", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"),
    ];
    assert_eq!(t.partitions.len(), 3);
    for (i, ((name, kind), p)) in expect.iter().zip(&t.partitions).enumerate() {
        let placed = &a.partitions[i];
        assert_eq!(p.name.as_deref(), Some(*name));
        assert_eq!(p.kind, *kind);
        assert_eq!(p.uuid.as_deref().map(str::to_lowercase), Some(l.partuuid(i as u32 + 1)));
        assert_eq!(p.start * 512, placed.start);
        assert_eq!(p.size * 512, placed.size);
        assert_eq!(placed.start % (1 << 20), 0, "1 MiB aligned");
    }
    assert_eq!(t.partitions[0].start, 2048);
    assert_eq!(a.partitions[1].size, 16 << 20);

    check_filesystems(&a, &a.image, dir.path());
    let root = dir.path().join("root.ext4");
    let super_block = run(Cmd::new("dumpe2fs").arg("-h").arg(&root));
    assert!(
        super_block.contains(&format!("Filesystem UUID:          {}", l.fs_uuid(3))),
        "{super_block}"
    );
    assert!(super_block.contains("Filesystem volume name:   writable"));
    // The ESP's files read back whole through mtools.
    let esp = dir.path().join("p1.fat");
    let out = dir.path().join("vmlinuz.out");
    run(Cmd::new("mcopy").arg("-i").arg(&esp).arg("::/vmlinuz").arg(&out));
    assert_eq!(std::fs::read(&out).unwrap(), big_contents());
    let conf = run(Cmd::new("mtype").arg("-i").arg(&esp).arg("::/loader/entries/piha.conf"));
    assert_eq!(conf, "title piha\nlinux /vmlinuz\n");

    // Sparse: far fewer blocks allocated than the apparent size.
    let meta = std::fs::metadata(&a.image).unwrap();
    assert_eq!(meta.len(), a.size);
    let allocated = meta.blocks() * 512;
    assert!(allocated * 4 < meta.len(), "{allocated} bytes allocated of {}", meta.len());
}

#[test]
fn mbr_image_layout_for_the_pi() {
    let dir = tempfile::tempdir().unwrap();
    let (l, a) = build(TableKind::Mbr, dir.path());
    let t = table(&a.image);
    assert_eq!(t.label, "dos");
    assert_eq!(t.id, Some(format!("0x{:08x}", u32::from_le_bytes(l.mbr_signature()))));
    let kinds: Vec<(&str, bool)> = t
        .partitions
        .iter()
        .map(|p| (p.kind.as_str(), p.bootable.unwrap_or(false)))
        .collect();
    assert_eq!(kinds, vec![("c", true), ("c", false), ("83", false)]);
    for (p, placed) in t.partitions.iter().zip(&a.partitions) {
        assert_eq!(p.start * 512, placed.start);
        assert_eq!(p.size * 512, placed.size);
    }
    check_filesystems(&a, &a.image, dir.path());
    let boot = dir.path().join("p1.fat");
    let info = run(Cmd::new("minfo").arg("-i").arg(&boot).arg("::"));
    assert!(info.contains("FAT32"), "system-boot must be FAT32: {info}");
    assert!(info.contains("hidden sectors: 2048"), "hidden sectors = partition start: {info}");
    assert_eq!(run(Cmd::new("mtype").arg("-i").arg(&boot).arg("::/config.txt")), "arm_64bit=1\n");
}

#[test]
fn same_seed_gives_identical_images() {
    let one = tempfile::tempdir().unwrap();
    let two = tempfile::tempdir().unwrap();
    let (_, a) = build(TableKind::Gpt, one.path());
    let (_, b) = build(TableKind::Gpt, two.path());
    assert_eq!(sha256(&a.image), sha256(&b.image));
}

#[test]
fn fixed_size_too_small_names_the_partition() {
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("root.tar");
    make_tar(&tar);
    let mut l = layout(TableKind::Gpt, &tar);
    l.partitions[2].size_bytes = Some(2 << 20);
    let err = assemble(&SystemRunner, &l, &dir.path().join("x.img"), &|_| {}).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("partition 3 (writable)") && text.contains("raise its size"), "{text}");
    assert!(!dir.path().join("x.img").exists());
    assert!(!dir.path().join(".x.img.partial").exists());
}

#[test]
fn package_compresses_maps_and_sums() {
    let dir = tempfile::tempdir().unwrap();
    let (_, a) = build(TableKind::Gpt, dir.path());
    let out = dir.path().join("out");
    let art = package(&SystemRunner, &a, &out, &|_| {}).unwrap();
    assert_eq!(art.image, out.join("test.img"));
    assert_eq!(art.compressed, out.join("test.img.zst"));
    assert_eq!(art.bmap, out.join("test.bmap"));
    let image_sha = sha256(&art.image);

    run(Cmd::new("zstd").arg("-tq").arg(&art.compressed));
    let unpacked = dir.path().join("unpacked.img");
    run(Cmd::new("zstd").args(["-dq", "-o"]).arg(&unpacked).arg(&art.compressed));
    assert_eq!(sha256(&unpacked), image_sha);

    let sums = std::fs::read_to_string(&art.sha256sums).unwrap();
    assert_eq!(sums.lines().count(), 3, "{sums}");
    assert!(sums.contains("  test.img\n") && sums.contains("  test.img.zst\n") && sums.contains("  test.bmap\n"));
    run(Cmd::new("sh")
        .arg("-c")
        .arg(format!("cd '{}' && sha256sum --quiet -c SHA256SUMS", out.display())));
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".partial")), "temporary files left: {names:?}");

    // bmaptool accepts the map, for the image and for the .zst.
    for (src, dest) in [(&art.image, "copy.img"), (&art.compressed, "copy-from-zst.img")] {
        let dest = dir.path().join(dest);
        run(Cmd::new("bmaptool").arg("copy").arg("--bmap").arg(&art.bmap).arg(src).arg(&dest));
        assert_eq!(sha256(&dest), image_sha, "bmaptool copy of {}", src.display());
    }
}

/// A card is not blank: a bmap flash writes only mapped blocks and leaves the
/// card's old bytes in the holes. The filesystems must still check clean.
#[test]
fn flashed_over_garbage_the_filesystems_stay_valid() {
    let dir = tempfile::tempdir().unwrap();
    let (_, a) = build(TableKind::Gpt, dir.path());
    let bmap = Bmap::from_image(&a.image).unwrap();
    let card = dir.path().join("card.img");
    {
        let mut f = File::create(&card).unwrap();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..a.size.div_ceil(1 << 20) {
            for b in chunk.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            f.write_all(&chunk).unwrap();
        }
        f.set_len(a.size).unwrap();
        let src = File::open(&a.image).unwrap();
        for r in &bmap.ranges {
            let bytes = bmap.byte_range(r);
            let mut buf = vec![0u8; (bytes.end - bytes.start) as usize];
            src.read_exact_at(&mut buf, bytes.start).unwrap();
            f.write_all_at(&buf, bytes.start).unwrap();
        }
    }
    assert_eq!(table(&card).partitions.len(), 3);
    check_filesystems(&a, &card, dir.path());
}

/// Runs the real tools, except that the first mke2fs "runs out of blocks" the
/// way mke2fs reports it, as when the size estimate is short.
struct ShortFirstMkfs {
    failed: AtomicBool,
}

impl Runner for ShortFirstMkfs {
    fn run(&self, cmd: &Cmd) -> Result<Output, RunError> {
        if cmd.program == "mke2fs" && !self.failed.swap(true, Ordering::SeqCst) {
            return Err(RunError::Failed {
                command: cmd.display(),
                status: "exit status: 1".into(),
                stderr_tail: "__populate_fs: Could not allocate block in ext2 filesystem while writing file \"big\"".into(),
            });
        }
        SystemRunner.run(cmd)
    }
}

#[test]
fn a_short_estimate_is_retried_once_bigger() {
    let dir = tempfile::tempdir().unwrap();
    let (l, normal) = build(TableKind::Gpt, dir.path());
    let runner = ShortFirstMkfs {
        failed: AtomicBool::new(false),
    };
    let lines = std::cell::RefCell::new(Vec::new());
    let image = dir.path().join("retried.img");
    let a = assemble(&runner, &l, &image, &|m| lines.borrow_mut().push(m.to_string())).unwrap();
    assert!(lines.borrow().iter().any(|m| m.contains("retrying")), "{:?}", lines.borrow());
    assert!(a.partitions[2].size > normal.partitions[2].size * 4 / 3, "the root grew");
    check_filesystems(&a, &image, dir.path());
}
