//! Where an image is written: a `WriteTarget` (after omicron installinator's
//! `write.rs`), so the flashing logic runs the same against a block device, an
//! image file for VMs, and, in tests, a target that fails on purpose.
//!
//! Read-back bypasses the page cache, otherwise verification would only prove
//! that the kernel remembers what it was given. Block devices get a second
//! descriptor opened with O_DIRECT and reads into aligned buffers: O_DIRECT
//! writes back any dirty cached page of the range and then reads the device
//! itself. The alternative, fsync + `posix_fadvise(DONTNEED)`, is advisory (a
//! page under writeback or mapped by someone stays cached) and BLKFLSBUF needs
//! an ioctl; both are kept only as the fallback when O_DIRECT is refused. Files
//! are synced and their cached pages dropped the same advisory way, which is
//! what a VM reading the file will see anyway.

use std::fs::{File, OpenOptions};
use std::io;
use std::num::NonZeroU64;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Advice, SeekFrom};

/// Something an image can be written to and read back from. `Send` so the
/// read-back can run on its own thread while the previous piece is hashed.
pub trait WriteTarget: Send {
    /// Human description for messages: the path.
    fn describe(&self) -> String;
    /// Capacity in bytes.
    fn size(&self) -> u64;
    /// Writes all of `buf` at `offset`.
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Makes every write so far durable and drops cached copies, so the next
    /// `read_back` sees what the medium holds.
    fn sync(&mut self) -> io::Result<()>;
    /// Fills `buf` from `offset` with what the medium holds, bypassing caches.
    fn read_back(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Logical sector size: what a filesystem written onto it must use.
    fn sector_size(&self) -> u64 {
        512
    }
}

/// A regular file: `--to-file` images for VMs, and tests.
pub struct FileTarget {
    path: PathBuf,
    file: File,
    size: u64,
}

impl FileTarget {
    /// Creates (or empties) `path` and sizes it to `size` without allocating
    /// blocks, so unwritten ranges stay holes and the file is sparse.
    pub fn create(path: &Path, size: u64) -> io::Result<FileTarget> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
        file.set_len(size)?;
        Ok(FileTarget {
            path: path.to_path_buf(),
            file,
            size,
        })
    }

    /// Opens an existing file and keeps its contents, like a card that held
    /// something before.
    pub fn open_existing(path: &Path) -> io::Result<FileTarget> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(FileTarget {
            path: path.to_path_buf(),
            file,
            size,
        })
    }
}

impl WriteTarget for FileTarget {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        drop_cache(&self.file)
    }

    fn read_back(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
}

/// A whole-disk block device, opened exclusively (O_EXCL on a block device:
/// the open fails with EBUSY while anything has it mounted or claimed, and
/// nothing can mount it while piha holds it).
pub struct BlockTarget {
    path: PathBuf,
    file: File,
    /// O_DIRECT reader, or None where the device refused O_DIRECT.
    direct: Option<File>,
    size: u64,
    /// Logical sector size: O_DIRECT offsets, lengths and buffers align to it.
    sector: u64,
    /// Bytes written since the last sync.
    unsynced: u64,
    /// Reused O_DIRECT read buffer.
    scratch: AlignedBuf,
}

/// How much a block device may hold unwritten in the page cache. Flushing as
/// we go (bmaptool flushes every 6 MiB) keeps the progress bar honest about a
/// slow card and the final sync short, instead of piling up gigabytes of
/// dirty pages.
const SYNC_EVERY: u64 = 32 << 20;

impl BlockTarget {
    pub fn open(path: &Path) -> io::Result<BlockTarget> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_EXCL | libc::O_CLOEXEC)
            .open(path)?;
        // lseek(SEEK_END) on a block device returns its size, like BLKGETSIZE64.
        let size = rustix::fs::seek(&file, SeekFrom::End(0))?;
        let sector = u64::from(rustix::fs::ioctl_blksszget(&file).unwrap_or(512)).max(512);
        let direct = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
            .open(path)
        {
            Ok(f) => Some(f),
            Err(e) => {
                log::warn!(
                    "{}: O_DIRECT refused ({e}); verifying after dropping the page cache instead",
                    path.display()
                );
                None
            }
        };
        Ok(BlockTarget {
            path: path.to_path_buf(),
            file,
            direct,
            size,
            sector,
            unsynced: 0,
            scratch: AlignedBuf::new(0, 4096),
        })
    }
}

impl WriteTarget for BlockTarget {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, offset)?;
        self.unsynced += buf.len() as u64;
        if self.unsynced >= SYNC_EVERY {
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        self.unsynced = 0;
        if self.direct.is_none() {
            drop_cache(&self.file)?;
        }
        Ok(())
    }

    fn read_back(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match &self.direct {
            Some(direct) => read_direct(direct, self.sector, offset, buf, &mut self.scratch),
            None => self.file.read_exact_at(buf, offset),
        }
    }

    fn sector_size(&self) -> u64 {
        self.sector
    }
}

impl BlockTarget {
    /// The device, symlinks resolved.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// An O_DIRECT read of any byte range: widened to whole sectors, read into a
/// sector-aligned buffer, and the wanted bytes copied out.
fn read_direct(file: &File, sector: u64, offset: u64, buf: &mut [u8], aligned: &mut AlignedBuf) -> io::Result<()> {
    let start = offset / sector * sector;
    let end = (offset + buf.len() as u64).div_ceil(sector) * sector;
    aligned.resize((end - start) as usize, 4096.max(sector as usize));
    file.read_exact_at(aligned.as_mut_slice(), start)?;
    let skip = (offset - start) as usize;
    buf.copy_from_slice(&aligned.as_mut_slice()[skip..skip + buf.len()]);
    Ok(())
}

/// A byte buffer whose start is aligned, carved out of a slightly larger Vec
/// (no allocator tricks, no unsafe).
struct AlignedBuf {
    storage: Vec<u8>,
    offset: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize, align: usize) -> AlignedBuf {
        let storage = vec![0u8; len + align];
        let offset = storage.as_ptr().align_offset(align);
        AlignedBuf { storage, offset, len }
    }

    /// Makes room for `len` aligned bytes, reallocating only to grow.
    fn resize(&mut self, len: usize, align: usize) {
        if self.offset + len > self.storage.len() || (self.storage.as_ptr() as usize + self.offset) % align != 0 {
            *self = AlignedBuf::new(len, align);
        }
        self.len = len;
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.offset..self.offset + self.len]
    }
}

/// Drops the file's clean cached pages (after a sync every page is clean).
fn drop_cache(file: &File) -> io::Result<()> {
    rustix::fs::fadvise(file, 0, None::<NonZeroU64>, Advice::DontNeed)?;
    Ok(())
}

/// How a `FailingTarget` misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Writes fail with EIO once this many bytes have been written (a card
    /// pulled out, a dying reader).
    AfterBytes(u64),
    /// At the first `sync` that follows a write of this offset, one byte there
    /// is flipped in the medium itself (bit rot, a fake-capacity card wrapping
    /// around); the read-back must catch it.
    CorruptAt(u64),
}

/// A target for tests that fails on purpose, wrapping a real one.
pub struct FailingTarget<T: WriteTarget> {
    inner: T,
    failure: Failure,
    written: u64,
    corrupt_pending: bool,
}

impl<T: WriteTarget> FailingTarget<T> {
    pub fn new(inner: T, failure: Failure) -> FailingTarget<T> {
        FailingTarget {
            inner,
            failure,
            written: 0,
            corrupt_pending: false,
        }
    }

    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: WriteTarget> WriteTarget for FailingTarget<T> {
    fn describe(&self) -> String {
        format!("{} (failing on purpose: {:?})", self.inner.describe(), self.failure)
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        match self.failure {
            Failure::AfterBytes(limit) => {
                let room = limit.saturating_sub(self.written);
                if (buf.len() as u64) > room {
                    // Part of the buffer lands, as on a real failing device.
                    self.inner.write_at(offset, &buf[..room as usize])?;
                    self.written = limit;
                    return Err(io::Error::other("injected I/O error (FailingTarget)"));
                }
            }
            Failure::CorruptAt(at) => {
                if (offset..offset + buf.len() as u64).contains(&at) {
                    self.corrupt_pending = true;
                }
            }
        }
        self.written += buf.len() as u64;
        self.inner.write_at(offset, buf)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.inner.sync()?;
        if let (Failure::CorruptAt(at), true) = (self.failure, self.corrupt_pending) {
            self.corrupt_pending = false;
            let mut byte = [0u8; 1];
            self.inner.read_back(at, &mut byte)?;
            byte[0] ^= 0xff;
            self.inner.write_at(at, &byte)?;
            self.inner.sync()?;
        }
        Ok(())
    }

    fn read_back(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_back(offset, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::{AlignedBuf, FailingTarget, Failure, FileTarget, WriteTarget};

    #[test]
    fn aligned_buffers_are_aligned() {
        let mut b = AlignedBuf::new(8192, 4096);
        assert_eq!(b.as_mut_slice().as_ptr() as usize % 4096, 0);
        assert_eq!(b.as_mut_slice().len(), 8192);
    }

    #[test]
    fn file_target_is_sparse_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.img");
        let mut t = FileTarget::create(&path, 1 << 20).unwrap();
        t.write_at(4096, b"hello").unwrap();
        t.sync().unwrap();
        let mut buf = [0u8; 5];
        t.read_back(4096, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
    }

    #[test]
    fn failing_target_fails_after_the_limit_and_corrupts_on_sync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.img");
        let mut t = FailingTarget::new(FileTarget::create(&path, 1 << 20).unwrap(), Failure::AfterBytes(6));
        t.write_at(0, b"abc").unwrap();
        assert!(t.write_at(3, b"defg").is_err());
        assert_eq!(&std::fs::read(&path).unwrap()[..7], b"abcdef\0");

        let mut t = FailingTarget::new(FileTarget::create(&path, 1 << 20).unwrap(), Failure::CorruptAt(1));
        t.write_at(0, b"abc").unwrap();
        t.sync().unwrap();
        let mut buf = [0u8; 3];
        t.read_back(0, &mut buf).unwrap();
        assert_eq!(buf, [b'a', b'b' ^ 0xff, b'c']);
    }
}
