//! Loop devices and mounts for the tests that need a real block device (as
//! root), each undone when dropped whatever the test did, and deterministic
//! filler bytes for test images.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::run_ok;

/// Deterministic bytes that do not compress to nothing (xorshift; `seed`
/// picks the stream).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A loop device over a file, detached when dropped.
pub struct Loop {
    pub dev: PathBuf,
}

impl Loop {
    /// The whole file as one device, no partition nodes.
    pub fn attach(backing: &Path) -> Loop {
        let out = run_ok(Command::new("losetup").args(["--find", "--show"]).arg(backing));
        Loop {
            dev: PathBuf::from(out.trim()),
        }
    }

    /// With a node per partition (`/dev/loopNpM`). A kernel without
    /// partition-table parsers (some VM kernels) scans nothing with
    /// `--partscan`: the partitions are then added from user space (partx,
    /// BLKPG), which reads the table itself.
    pub fn attach_partitioned(backing: &Path) -> Loop {
        let out = run_ok(Command::new("losetup").args(["--find", "--show", "--partscan"]).arg(backing));
        let lp = Loop {
            dev: PathBuf::from(out.trim()),
        };
        if !lp.sys_part(1).exists() {
            run_ok(Command::new("partx").arg("--add").arg(&lp.dev));
        }
        lp
    }

    /// `loopN`.
    pub fn name(&self) -> String {
        self.dev.file_name().unwrap().to_string_lossy().into_owned()
    }

    /// `/dev/loopNpM`.
    pub fn part(&self, n: u32) -> PathBuf {
        PathBuf::from(format!("{}p{n}", self.dev.display()))
    }

    /// `/sys/class/block/loopN/loopNpM`.
    pub fn sys_part(&self, n: u32) -> PathBuf {
        let name = self.name();
        Path::new("/sys/class/block").join(&name).join(format!("{name}p{n}"))
    }

    pub fn read_at(&self, offset: u64, len: u64) -> Vec<u8> {
        let mut buf = vec![0; len as usize];
        File::open(&self.dev).unwrap().read_exact_at(&mut buf, offset).unwrap();
        buf
    }

    pub fn read_all(&self) -> Vec<u8> {
        fs::read(&self.dev).unwrap()
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        // Partitions added with partx (BLKPG) outlive the detach on some
        // kernels and would confuse the next user of the device: drop them first.
        let _ = Command::new("partx").arg("--delete").arg(&self.dev).output();
        let _ = Command::new("losetup").arg("--detach").arg(&self.dev).output();
    }
}

/// A filesystem mounted on a temporary directory, unmounted when dropped.
pub struct Mount {
    pub dir: tempfile::TempDir,
}

impl Mount {
    pub fn new(dev: &Path) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        run_ok(Command::new("mount").arg(dev).arg(dir.path()));
        Mount { dir }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).output();
    }
}
