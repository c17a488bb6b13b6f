//! Rewriting one region (a partition) of a target in place (a PIHA-CFG filesystem inside a
//! card or image), and reading a target as a seekable stream, both through the
//! same `WriteTarget` that flashing uses.

use std::io::{self, Read, Seek, SeekFrom};

use anyhow::{Context, bail};

use crate::device::target::WriteTarget;

/// How much is read back and compared per call.
const CHUNK: usize = 1 << 20;

/// Writes `data` at `offset` in one pass, syncs, then reads it back past the
/// page cache and compares byte for byte.
pub fn write_verified(target: &mut dyn WriteTarget, offset: u64, data: &[u8]) -> anyhow::Result<()> {
    let end = offset + data.len() as u64;
    if end > target.size() {
        bail!(
            "{} holds {} bytes but the region ends at byte {end}; the image or card is truncated. Nothing was written",
            target.describe(),
            target.size()
        );
    }
    target.write_at(offset, data).context("writing the new filesystem")?;
    target.sync().context("syncing")?;
    let mut buf = vec![0u8; CHUNK.min(data.len())];
    for (i, want) in data.chunks(CHUNK).enumerate() {
        let at = (i * CHUNK) as u64;
        let got = &mut buf[..want.len()];
        target.read_back(offset + at, got).context("reading the new filesystem back")?;
        if let Some(pos) = got.iter().zip(want).position(|(a, b)| a != b) {
            let off = at + pos as u64;
            bail!(
                "verification failed: byte {off} of the partition (byte {} of the disk) reads back differently from what was written; the card may be failing",
                offset + off
            );
        }
    }
    Ok(())
}

/// A target as `Read + Seek`, reading what the medium holds, so partition
/// tables and filesystems are parsed from the same descriptor that writes.
/// With a `head`, its first bytes are read from it instead: the partition
/// tables of an image being flashed, before they are on the medium.
pub struct TargetReader<'a> {
    target: &'a mut dyn WriteTarget,
    head: &'a [u8],
    pos: u64,
}

impl<'a> TargetReader<'a> {
    /// Reads `head` (which may be empty) in place of the medium's first
    /// `head.len()` bytes.
    pub fn with_head(target: &'a mut dyn WriteTarget, head: &'a [u8]) -> TargetReader<'a> {
        TargetReader { target, head, pos: 0 }
    }
}

impl Read for TargetReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.target.size().saturating_sub(self.pos);
        let mut n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        if n == 0 {
            return Ok(0);
        }
        match usize::try_from(self.pos).ok().filter(|&p| p < self.head.len()) {
            Some(p) => {
                n = n.min(self.head.len() - p);
                buf[..n].copy_from_slice(&self.head[p..p + n]);
            }
            None => self.target.read_back(self.pos, &mut buf[..n])?,
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for TargetReader<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let size = i128::from(self.target.size());
        let next = match to {
            SeekFrom::Start(n) => i128::from(n),
            SeekFrom::End(d) => size + i128::from(d),
            SeekFrom::Current(d) => i128::from(self.pos) + i128::from(d),
        };
        self.pos = u64::try_from(next).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{self, Read, Seek, SeekFrom};
    use std::sync::Mutex;

    use super::{TargetReader, write_verified};
    use crate::device::target::WriteTarget;

    /// A target in memory that can corrupt or fail on purpose.
    struct Memory {
        bytes: Mutex<Vec<u8>>,
        flip_at: Option<usize>,
        fail_write: bool,
    }

    impl Memory {
        fn bytes(&self) -> Vec<u8> {
            self.bytes.lock().unwrap().clone()
        }
    }

    impl WriteTarget for Memory {
        fn describe(&self) -> String {
            "memory".into()
        }

        fn size(&self) -> u64 {
            self.bytes.lock().unwrap().len() as u64
        }

        fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            if self.fail_write {
                return Err(io::Error::other("injected write error"));
            }
            let mut bytes = self.bytes.lock().unwrap();
            let o = offset as usize;
            bytes[o..o + data.len()].copy_from_slice(data);
            if let Some(i) = self.flip_at {
                bytes[i] ^= 0xff;
            }
            Ok(())
        }

        fn sync(&self) -> io::Result<()> {
            Ok(())
        }

        fn read_back(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
            let bytes = self.bytes.lock().unwrap();
            let o = offset as usize;
            out.copy_from_slice(&bytes[o..o + out.len()]);
            Ok(())
        }
    }

    fn memory(len: usize, fill: u8) -> Memory {
        Memory {
            bytes: Mutex::new(vec![fill; len]),
            flip_at: None,
            fail_write: false,
        }
    }

    #[test]
    fn good_write_verifies_and_leaves_the_rest() {
        let mut m = memory(4 << 20, 7);
        let data = vec![1u8; 3 << 20];
        write_verified(&mut m, 512, &data).unwrap();
        let bytes = m.bytes();
        assert_eq!(bytes[..512], [7; 512]);
        assert_eq!(bytes[512..512 + data.len()], data[..]);
        assert!(bytes[512 + data.len()..].iter().all(|b| *b == 7));
    }

    #[test]
    fn corruption_is_caught_with_its_offset() {
        let mut m = memory(4 << 20, 0);
        m.flip_at = Some(1024 + (2 << 20) + 5);
        let err = write_verified(&mut m, 1024, &vec![1u8; 3 << 20]).unwrap_err().to_string();
        assert!(err.contains(&format!("byte {} of the partition", (2 << 20) + 5)), "{err}");
    }

    #[test]
    fn write_errors_surface() {
        let mut m = memory(4096, 0);
        m.fail_write = true;
        let err = format!("{:#}", write_verified(&mut m, 0, &[1; 512]).unwrap_err());
        assert!(err.contains("injected write error"), "{err}");
    }

    #[test]
    fn a_region_past_the_end_is_refused_before_writing() {
        let mut m = memory(4096, 9);
        let err = write_verified(&mut m, 2048, &[1; 4096]).unwrap_err().to_string();
        assert!(err.contains("truncated") && err.contains("Nothing was written"), "{err}");
        assert!(m.bytes().iter().all(|b| *b == 9));
    }

    #[test]
    fn the_reader_reads_and_seeks_within_the_target() {
        let mut m = memory(1000, 0);
        m.bytes.get_mut().unwrap()[990..].copy_from_slice(b"0123456789");
        let mut r = TargetReader::with_head(&mut m, &[]);
        assert_eq!(r.seek(SeekFrom::End(-4)).unwrap(), 996);
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"6789");
        assert!(r.seek(SeekFrom::Current(-2000)).is_err());
    }
}
