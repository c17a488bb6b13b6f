//! The decompressed image as a stream of chunks, fanned out to the stages
//! that run side by side while it passes once: the whole-image sha256, the
//! per-range check against the block map, and the writer (see `write.rs`).

use std::io::Read;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use crate::device::target::AlignedBuf;
use crate::device::write::Extent;
use crate::image::bmap::{Bmap, ChecksumType, RangeHasher};

/// Size of the pieces the stream is read, hashed, written and read back in.
pub(crate) const CHUNK: usize = 4 << 20;

/// Image bytes `[offset, offset + data().len())`, in a buffer aligned for
/// O_DIRECT so the writer hands it to the medium without a copy.
pub(crate) struct Chunk {
    pub(crate) offset: u64,
    buf: AlignedBuf,
}

impl Chunk {
    pub(crate) fn data(&self) -> &[u8] {
        self.buf.as_slice()
    }

    pub(crate) fn end(&self) -> u64 {
        self.offset + self.data().len() as u64
    }
}

/// Buffers given back by whichever stage held a chunk last, so the reader
/// reuses their pages instead of faulting in fresh zeroed ones.
#[derive(Default)]
pub(crate) struct Pool(Mutex<Vec<AlignedBuf>>);

/// More buffers than the channels between the stages can hold are never needed.
const POOL_MAX: usize = 32;

impl Pool {
    fn take(&self) -> AlignedBuf {
        let reused = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match reused {
            Some(mut buf) => {
                buf.restore();
                buf
            }
            None => AlignedBuf::new(CHUNK),
        }
    }

    /// Takes the chunk's buffer back if this was its last holder.
    pub(crate) fn give(&self, chunk: Arc<Chunk>) {
        if let Ok(c) = Arc::try_unwrap(chunk) {
            let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < POOL_MAX {
                pool.push(c.buf);
            }
        }
    }
}

/// Reads the stream in `CHUNK`s and hands each to every stage. Stops early,
/// without an error of its own, when a stage stops (that stage says why).
/// Returns the stream's length.
pub(crate) fn read_chunks(
    mut stream: Box<dyn Read + Send>,
    image_size: u64,
    pool: &Pool,
    stages: &[SyncSender<Arc<Chunk>>],
) -> anyhow::Result<u64> {
    let mut total = 0u64;
    loop {
        let mut buf = pool.take();
        let n = fill(&mut stream, buf.as_mut_slice())
            .with_context(|| format!("reading the image after {total} bytes: it is truncated or damaged"))?;
        if n == 0 {
            if total < image_size {
                bail!("the image ended after {total} of its {image_size} bytes: it is truncated");
            }
            return Ok(total);
        }
        if total + n as u64 > image_size {
            bail!("the image is longer than the {image_size} bytes its block map says; the .bmap belongs to another image");
        }
        buf.truncate(n);
        let chunk = Arc::new(Chunk { offset: total, buf });
        total += n as u64;
        for stage in stages {
            if stage.send(Arc::clone(&chunk)).is_err() {
                return Ok(total);
            }
        }
    }
}

/// Reads until `buf` is full or the stream ends; returns how much it read.
pub(crate) fn fill<R: Read + ?Sized>(stream: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match stream.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(got) => n += got,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// sha256 of every byte of the stream, holes included.
pub(crate) fn hash_all(rx: Receiver<Arc<Chunk>>, pool: &Pool) -> String {
    let mut h = Sha256::new();
    for chunk in rx.iter() {
        h.update(chunk.data());
        pool.give(chunk);
    }
    hex::encode(h.finalize())
}

/// What the block-map check found.
pub(crate) struct Checked {
    /// sha256 of each extent, in extent order.
    pub(crate) digests: Vec<[u8; 32]>,
    /// Ranges whose block-map checksum was checked.
    pub(crate) ranges: usize,
}

/// Hashes every extent as the stream passes and checks each range that has a
/// checksum in the block map; fails at the first range that does not match.
pub(crate) fn check_extents(rx: Receiver<Arc<Chunk>>, bmap: &Bmap, extents: &[Extent], pool: &Pool) -> anyhow::Result<Checked> {
    let mut cur = Cursor {
        next: 0,
        extent: None,
        range: None,
    };
    let mut out = Checked {
        digests: Vec::with_capacity(extents.len()),
        ranges: 0,
    };
    for chunk in rx.iter() {
        let (pos, end) = (chunk.offset, chunk.end());
        while cur.next < extents.len() && extents[cur.next].bytes.start < end {
            let e = &extents[cur.next];
            let s = e.bytes.start.max(pos);
            let t = e.bytes.end.min(end);
            if s < t {
                if s == e.bytes.start {
                    start_extent(&mut cur, bmap, extents);
                }
                let data = &chunk.data()[(s - pos) as usize..(t - pos) as usize];
                cur.extent.as_mut().expect("extent started").update(data);
                if let Some(r) = cur.range.as_mut() {
                    r.update(data);
                }
            }
            if e.bytes.end > end {
                break;
            }
            let sha: [u8; 32] = cur.extent.take().expect("extent started").finalize().into();
            out.digests.push(sha);
            if extents.get(cur.next + 1).is_none_or(|n| n.range != e.range) && check_range(&mut cur, bmap, e.range, &sha)? {
                out.ranges += 1;
            }
            cur.next += 1;
        }
        pool.give(chunk);
    }
    Ok(out)
}

/// Per-range hashing state while the stream passes.
struct Cursor {
    next: usize,
    extent: Option<Sha256>,
    /// For a bmap checksum that the extent hash cannot stand in for (the range
    /// spans two extents, or the bmap uses sha1).
    range: Option<RangeHasher>,
}

fn start_extent(cur: &mut Cursor, bmap: &Bmap, extents: &[Extent]) {
    let e = &extents[cur.next];
    cur.extent = Some(Sha256::new());
    let first_of_range = cur.next == 0 || extents[cur.next - 1].range != e.range;
    if first_of_range {
        let r = &bmap.ranges[e.range];
        let split = extents.get(cur.next + 1).is_some_and(|n| n.range == e.range);
        cur.range = match (bmap.checksum_type, &r.checksum) {
            (Some(kind), Some(_)) if split || kind != ChecksumType::Sha256 => Some(RangeHasher::new(kind)),
            _ => None,
        };
    }
}

/// Compares a finished range with its bmap checksum; Ok(true) if one was checked.
fn check_range(cur: &mut Cursor, bmap: &Bmap, range: usize, last_extent_sha: &[u8; 32]) -> anyhow::Result<bool> {
    let r = &bmap.ranges[range];
    let Some(expected) = &r.checksum else {
        cur.range = None;
        return Ok(false);
    };
    let actual = match cur.range.take() {
        Some(h) => h.finish_hex(),
        None => hex::encode(last_extent_sha),
    };
    if !actual.eq_ignore_ascii_case(expected) {
        let b = bmap.byte_range(r);
        bail!(
            "the image does not match its block map: blocks {}-{} (bytes {}..{}) hash to {actual}, the .bmap says {expected}; \
             the image is damaged or the .bmap belongs to another image (download or build it again)",
            r.first,
            r.last,
            b.start,
            b.end
        );
    }
    Ok(true)
}
