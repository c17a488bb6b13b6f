//! The gates a block device passes before `piha flash` or `piha stamp` writes
//! a byte to it, and holding it while they do.

use std::fs::File;
use std::path::Path;

use anyhow::{Context, bail};
use piha_runner::{Cmd, Runner};
use rustix::fs::FlockOperation;

use crate::device::safety::{self, DeviceInfo};
use crate::device::target::BlockTarget;

/// What a write needs of the device beyond it being free.
#[derive(Debug, Clone, Copy)]
pub struct Gate {
    /// Bytes the device must hold.
    pub min_size: u64,
    /// Writing an internal or virtual disk was asked for explicitly.
    pub allow_non_removable: bool,
}

/// Inspects `path` and fails, listing every reason at once, unless it is a
/// whole-disk block device that nothing has mounted, swapped or held, that is
/// not the running system's disk, is large enough and is removable (or
/// `allow_non_removable`).
pub fn check(path: &Path, gate: Gate, runner: &dyn Runner) -> anyhow::Result<DeviceInfo> {
    let info = safety::inspect(path, runner)?;
    let refused = safety::refusals(&info, gate.min_size, gate.allow_non_removable);
    if !refused.is_empty() {
        bail!(
            "refusing to write {}; nothing was written:\n  - {}",
            info.path.display(),
            refused.join("\n  - ")
        );
    }
    Ok(info)
}

/// A checked device held for writing: a BSD lock on the whole disk keeps udev
/// (and the automounters it drives) off it until its new table is in place
/// (<https://systemd.io/BLOCK_DEVICE_LOCKING/>), and the target is opened
/// O_EXCL, which fails while anything mounts or claims it.
pub struct Claimed {
    pub target: BlockTarget,
    lock: File,
}

pub fn claim(info: &DeviceInfo) -> anyhow::Result<Claimed> {
    let path = &info.path;
    let lock = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive).map_err(|e| {
        anyhow::anyhow!(
            "{} is locked by another program ({e}); is another flash or a partitioner running?",
            path.display()
        )
    })?;
    let target = BlockTarget::open(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::EBUSY) {
            anyhow::anyhow!(
                "{} is in use (mounted or claimed by another program since the checks); nothing was written",
                path.display()
            )
        } else {
            anyhow::Error::new(e).context(format!("opening {} for writing", path.display()))
        }
    })?;
    Ok(Claimed { target, lock })
}

impl Claimed {
    /// Closes the target, tells the kernel about the partition table now on
    /// the disk, syncs, and only then lets udev see the device again.
    pub fn finish_with_new_table(self, runner: &dyn Runner) {
        let Claimed { target, lock } = self;
        let path = target.path().to_path_buf();
        drop(target);
        reread_partitions(&path, runner);
        rustix::fs::sync();
        drop(lock);
    }

    /// Closes the target of a write that left the partition table as it was.
    pub fn finish(self) {
        let Claimed { target, lock } = self;
        drop(target);
        rustix::fs::sync();
        drop(lock);
    }
}

/// Tells the kernel about the new partitions: BLKRRPART via blockdev, then
/// `partx -u`, which also covers kernels that parse no tables themselves.
/// A failure is a warning: the card is written; re-plugging it fixes the view.
fn reread_partitions(device: &Path, runner: &dyn Runner) {
    // A loop device attached without --partscan refuses BLKRRPART (EINVAL).
    let name = device.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let partscan = std::fs::read_to_string(Path::new("/sys/class/block").join(&name).join("loop/partscan"));
    if partscan.map(|s| s.trim() != "0").unwrap_or(true) {
        if let Err(e) = runner.run(&Cmd::new("blockdev").arg("--rereadpt").arg(device)) {
            log::info!("{e}");
        }
    }
    if let Err(e) = runner.run(&Cmd::new("partx").arg("-u").arg(device)) {
        eprintln!(
            "piha: warning: the kernel's view of {}'s partitions may be stale ({e}); unplug and replug the card",
            device.display()
        );
    }
}
