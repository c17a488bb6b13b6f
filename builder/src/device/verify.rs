//! Read-back verification, past the page cache (see `target.rs`), running
//! behind the writer: each written piece is read back from the target while
//! later ones are still being written, and compared byte for byte with the
//! image bytes still in memory.
//!
//! A piece read back right after it was written could still be overwritten
//! later: a fake-capacity card maps addresses past its real size onto earlier
//! ones. So one block of every piece is kept, and after the final sync
//! `recheck` reads each of them again.

use std::ops::Range;
use std::sync::Arc;
use std::sync::mpsc::Receiver;

use anyhow::bail;
use sha2::{Digest, Sha256};

use crate::device::stream::{CHUNK, Chunk, Pool};
use crate::device::target::{AlignedBuf, DIRECT_ALIGN, WriteTarget};
use crate::device::write::Extent;
use crate::progress::Task;

/// A written part of one extent.
pub(crate) struct Piece {
    /// Index into the extent list.
    pub(crate) extent: usize,
    pub(crate) bytes: Range<u64>,
}

/// What the writer hands over: a chunk and the pieces of it it wrote.
pub(crate) struct Written {
    pub(crate) chunk: Arc<Chunk>,
    pub(crate) pieces: Vec<Piece>,
}

/// Bytes kept per piece for the second look after the final sync.
const SAMPLE: usize = DIRECT_ALIGN;

/// A block as written, to be read again after everything else was written.
pub(crate) struct Sample {
    extent: usize,
    offset: u64,
    data: Vec<u8>,
}

/// What the read-back behind the writer saw.
pub(crate) struct Verified {
    /// Bytes read back and found equal.
    pub(crate) bytes: u64,
    pub(crate) samples: Vec<Sample>,
}

/// Reads back every piece the writer hands over and compares it with the
/// chunk it came from; fails at the first difference.
pub(crate) fn follow(
    target: &dyn WriteTarget,
    extents: &[Extent],
    rx: Receiver<Written>,
    task: &Task,
    pool: &Pool,
) -> anyhow::Result<Verified> {
    let mut buf = AlignedBuf::new(CHUNK + DIRECT_ALIGN);
    let mut out = Verified {
        bytes: 0,
        samples: Vec::new(),
    };
    for w in rx.iter() {
        for p in &w.pieces {
            let want = &w.chunk.data()[(p.bytes.start - w.chunk.offset) as usize..(p.bytes.end - w.chunk.offset) as usize];
            compare(target, &extents[p.extent], p.bytes.start, want, &mut buf)?;
            let keep = want.len().min(SAMPLE);
            out.samples.push(Sample {
                extent: p.extent,
                offset: p.bytes.start,
                data: want[..keep].to_vec(),
            });
            out.bytes += want.len() as u64;
            task.inc(want.len() as u64);
        }
        pool.give(w.chunk);
    }
    Ok(out)
}

/// Reads the kept blocks again, after every write reached the medium: a
/// later write landing on an earlier address shows here.
pub(crate) fn recheck(target: &dyn WriteTarget, extents: &[Extent], samples: &[Sample]) -> anyhow::Result<()> {
    let mut buf = AlignedBuf::new(SAMPLE);
    for s in samples {
        compare(target, &extents[s.extent], s.offset, &s.data, &mut buf)?;
    }
    Ok(())
}

/// Reads `want.len()` bytes at `offset` of `extent` back into `buf` and
/// compares them with `want`.
pub(crate) fn compare(target: &dyn WriteTarget, extent: &Extent, offset: u64, want: &[u8], buf: &mut AlignedBuf) -> anyhow::Result<()> {
    let end = offset + want.len() as u64;
    if buf.as_mut_slice().len() < want.len() {
        *buf = AlignedBuf::new(want.len());
    }
    let got = &mut buf.as_mut_slice()[..want.len()];
    target
        .read_back(offset, got)
        .map_err(|e| anyhow::anyhow!("reading back bytes {offset}..{end} of {}: {e}", target.describe()))?;
    if got != want {
        let e = &extent.bytes;
        bail!(
            "read-back mismatch on {} at bytes {}..{}: wrote sha256 {} to bytes {offset}..{end}, the device returned {}; \
             the medium did not keep what was written (a failing or fake-capacity card?)",
            target.describe(),
            e.start,
            e.end,
            hex::encode(Sha256::digest(want)),
            hex::encode(Sha256::digest(&*got))
        );
    }
    Ok(())
}
