//! Shared by tests/flash.rs and tests/bmap.rs: a small sparse disk image laid
//! out like piha's UEFI images (GPT; ESP, PIHA-CFG, root), made with the real
//! tools (sfdisk, mkfs.vfat, mcopy) plus data ranges in the root partition,
//! compressed with zstd and xz; loop devices that detach themselves; the
//! example QEMU cluster with its secrets.

#![allow(dead_code)] // each test binary uses a different subset

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use piha::image::bmap::Bmap;
use piha_runner::{Cmd, Runner, SystemRunner};
use sha2::{Digest, Sha256};

use crate::support::disk::noise;

pub const MIB: u64 = 1 << 20;
pub const IMAGE_SIZE: u64 = 64 * MIB;
/// PIHA-CFG: sectors 34816.. (17 MiB), 16 MiB long.
pub const CFG_START: u64 = 17 * MIB;
pub const CFG_SIZE: u64 = 16 * MIB;

/// Runs a tool through the runner, panicking with its stderr on failure.
pub fn run(cmd: Cmd) -> Vec<u8> {
    SystemRunner.run(&cmd).unwrap_or_else(|e| panic!("{e}")).stdout
}

/// The test image and its companions, in a temp dir.
pub struct TestImage {
    pub dir: tempfile::TempDir,
    pub img: PathBuf,
    /// piha's own map, beside the image as `x.bmap`.
    pub bmap: PathBuf,
    pub zst: PathBuf,
    pub xz: PathBuf,
}

impl TestImage {
    /// The image, its map and its .zst and .xz copies.
    pub fn new() -> TestImage {
        let t = TestImage::uncompressed();
        run(Cmd::new("zstd").args(["-q", "-f", "-k"]).arg(&t.img).arg("-o").arg(&t.zst));
        run(Cmd::new("xz").args(["-k", "-f", "-T1", "-1"]).arg(&t.img));
        t
    }

    /// The image and its map only: `zst` and `xz` name files that do not
    /// exist. For tests that never read them (xz alone takes seconds).
    pub fn uncompressed() -> TestImage {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("x.img");
        File::create(&img).unwrap().set_len(IMAGE_SIZE).unwrap();
        let table = "label: gpt\nsize=16M, type=U, name=ESP\nsize=16M, type=L, name=PIHA-CFG\ntype=L, name=root\n";
        run(Cmd::new("sfdisk").arg("-q").arg(&img).stdin(table));
        run(Cmd::new("mkfs.vfat").args(["-n", "ESP", "--offset=2048"]).arg(&img).arg("16384"));
        run(Cmd::new("mkfs.vfat")
            .args(["-n", "PIHA-CFG", "--offset=34816"])
            .arg(&img)
            .arg("16384"));
        let payload = dir.path().join("BOOTX64.EFI");
        fs::write(&payload, noise(700_000, 1)).unwrap();
        run(Cmd::new("mcopy")
            .arg("-i")
            .arg(format!("{}@@1M", img.display()))
            .arg(&payload)
            .arg("::BOOTX64.EFI"));
        fs::remove_file(&payload).unwrap();
        // Root-partition data: one aligned run and one that starts mid-block.
        let f = fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(&noise(3 * MIB as usize, 2), 40 * MIB).unwrap();
        f.write_all_at(&noise(100_005, 3), 60 * MIB + 12_345).unwrap();
        f.sync_all().unwrap();
        drop(f);
        let bmap = dir.path().join("x.bmap");
        Bmap::from_image(&img).unwrap().write(&bmap).unwrap();
        let zst = dir.path().join("x.img.zst");
        let xz = dir.path().join("x.img.xz");
        TestImage { dir, img, bmap, zst, xz }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn bytes(&self) -> Vec<u8> {
        fs::read(&self.img).unwrap()
    }

    pub fn map(&self) -> Bmap {
        Bmap::load(&self.bmap).unwrap()
    }
}

/// A file of `size` bytes all set to `byte` (a card that held something).
pub fn pattern_file(path: &Path, size: u64, byte: u8) {
    let f = File::create(path).unwrap();
    let block = vec![byte; MIB as usize];
    let mut at = 0;
    while at < size {
        let n = (size - at).min(MIB) as usize;
        f.write_all_at(&block[..n], at).unwrap();
        at += n as u64;
    }
    f.sync_all().unwrap();
}

/// Asserts equal bytes, reporting the first difference instead of both buffers.
pub fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {i}: got {:#04x}, want {:#04x}", got[i], want[i]);
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A temp dir holding the example QEMU cluster and its secrets (`piha init`).
pub struct Lab {
    pub dir: tempfile::TempDir,
}

impl Lab {
    pub fn new() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/qemu-lab.yaml");
        fs::copy(&example, dir.path().join("cluster.yaml")).unwrap();
        let lab = Lab { dir };
        let out = lab.piha(&["init"]);
        assert!(out.status.success(), "piha init failed: {}", String::from_utf8_lossy(&out.stderr));
        lab
    }

    pub fn cluster(&self) -> PathBuf {
        self.dir.path().join("cluster.yaml")
    }

    /// `piha COMMAND --cluster cluster.yaml REST...`, stdin closed.
    pub fn piha(&self, args: &[&str]) -> Output {
        let (command, rest) = args.split_first().unwrap();
        Command::new(env!("CARGO_BIN_EXE_piha"))
            .arg(command)
            .arg("--cluster")
            .arg(self.cluster())
            .args(rest)
            .output()
            .unwrap()
    }
}

pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "piha failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "piha should have failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}
