//! Writing an image to a target in the order that keeps a half-written card
//! unbootable:
//!
//! 1. zero the first MiB (and, on a bigger device, the last MiB, where an old
//!    backup GPT lives) and sync, so the old partition table is gone first;
//! 2. stream the decompressed image once: every byte feeds the image's sha256
//!    (on its own thread), the mapped ranges are hashed and checked against
//!    the block map and written, the unmapped ones skipped; the mapped part of
//!    the first MiB is held back in memory;
//! 3. sync, read every written range back past the page cache and compare;
//! 4. only then write the first MiB, sync, read it back and compare.
//!
//! A failure anywhere before step 4 leaves the first MiB zeroed: no partition
//! table, nothing a firmware or kernel would try to boot.

use std::io::Read;
use std::ops::Range;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use crate::image::bmap::{Bmap, ChecksumType, RangeHasher};
use crate::device::target::WriteTarget;
use crate::device::verify::{ExtentDigest, verify_extents};
use crate::progress::Progress;

/// The part of the disk written last: partition tables (MBR, GPT header and
/// entries) and boot code live in the first MiB.
pub const HEAD: u64 = 1 << 20;

/// Size of the pieces the stream is read, hashed and written in.
const CHUNK: usize = 4 << 20;

/// What a write did, for the summary and the ledger.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WriteReport {
    pub image_size: u64,
    /// Image bytes written (the mapped ranges).
    pub bytes_written: u64,
    /// Image bytes not written because the block map marks them unmapped.
    pub bytes_skipped: u64,
    /// Bytes read back from the target and compared.
    pub bytes_verified: u64,
    /// Zeros written up front over the old partition tables.
    pub bytes_wiped: u64,
    pub ranges: usize,
    /// Ranges whose block-map checksum was checked against the image stream.
    pub ranges_checked_against_bmap: usize,
    /// sha256 of the whole decompressed image.
    pub image_sha256: String,
    /// sha256 over the per-range sha256s of the mapped ranges, from the image stream.
    pub mapped_sha256_image: String,
    /// The same, from what the target returned on read-back.
    pub mapped_sha256_device: String,
}

/// One piece of a mapped range: ranges are cut at `HEAD` so the part in the
/// first MiB can be held back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    pub bytes: Range<u64>,
    /// Index into `Bmap::ranges`.
    pub range: usize,
    pub head: bool,
}

/// The bmap's ranges as extents, in offset order.
pub fn extents(bmap: &Bmap) -> Vec<Extent> {
    let mut out = Vec::new();
    for (i, r) in bmap.ranges.iter().enumerate() {
        let b = bmap.byte_range(r);
        if b.start < HEAD && b.end > HEAD {
            out.push(Extent {
                bytes: b.start..HEAD,
                range: i,
                head: true,
            });
            out.push(Extent {
                bytes: HEAD..b.end,
                range: i,
                head: false,
            });
        } else if b.start < b.end {
            out.push(Extent {
                bytes: b.clone(),
                range: i,
                head: b.start < HEAD,
            });
        }
    }
    out
}

/// Writes the image `stream` (decompressed) as `bmap` maps it onto `target`,
/// verifying as described in the module docs.
pub fn write_image(
    stream: Box<dyn Read + Send>,
    bmap: &Bmap,
    target: &mut dyn WriteTarget,
    progress: &Progress,
) -> anyhow::Result<WriteReport> {
    let name = target.describe();
    if target.size() < bmap.image_size {
        bail!("{name} holds {} bytes, the image needs {}", target.size(), bmap.image_size);
    }
    let extents = extents(bmap);
    let bytes_wiped = wipe_tables(target, bmap.image_size).with_context(|| format!("zeroing the partition tables on {name}"))?;

    let streamed = stream_and_write(stream, bmap, &extents, target, progress)?;
    let fail_note = format!("the first MiB of {name} is left zeroed, so it will not boot half-written");

    target.sync().with_context(|| format!("syncing {name}; {fail_note}"))?;
    let body: Vec<usize> = (0..extents.len()).filter(|&i| !extents[i].head).collect();
    let body_bytes: u64 = body.iter().map(|&i| len(&extents[i].bytes)).sum();
    let task = progress.bytes("verifying", body_bytes);
    let mut device = verify_extents(target, &extents, &body, &streamed.digests, &task).with_context(|| fail_note.clone())?;
    task.finish();

    // Everything else is on the medium and proven; now the partition table.
    let head: Vec<usize> = (0..extents.len()).filter(|&i| extents[i].head).collect();
    for &i in &head {
        let b = &extents[i].bytes;
        target
            .write_at(b.start, &streamed.head[b.start as usize..b.end as usize])
            .with_context(|| format!("writing the first MiB of {name}"))?;
    }
    target.sync().with_context(|| format!("syncing {name}"))?;
    let quiet = Progress::quiet().bytes("verifying the first MiB", HEAD);
    let head_digests = verify_extents(target, &extents, &head, &streamed.digests, &quiet).with_context(|| {
        format!("verifying the first MiB of {name}; it holds a partition table that did not read back right, flash again")
    })?;
    device.extend(head_digests);
    device.sort_by_key(|d| d.extent);

    let verified: u64 = device.iter().map(|d| len(&extents[d.extent].bytes)).sum();
    let mapped = bmap.mapped_bytes();
    Ok(WriteReport {
        image_size: bmap.image_size,
        bytes_written: mapped,
        bytes_skipped: bmap.image_size - mapped,
        bytes_verified: verified,
        bytes_wiped,
        ranges: bmap.ranges.len(),
        ranges_checked_against_bmap: streamed.checked,
        image_sha256: streamed.image_sha256,
        mapped_sha256_image: digest_of_digests(streamed.digests.iter().map(|d| &d.sha256)),
        mapped_sha256_device: digest_of_digests(device.iter().map(|d| &d.sha256)),
    })
}

fn len(r: &Range<u64>) -> u64 {
    r.end - r.start
}

fn digest_of_digests<'a>(digests: impl Iterator<Item = &'a [u8; 32]>) -> String {
    let mut h = Sha256::new();
    for d in digests {
        h.update(d);
    }
    hex::encode(h.finalize())
}

/// Zeroes the first MiB, and the last MiB when it lies past the image (a
/// bigger card's old backup GPT, which UEFI firmware would otherwise find),
/// then syncs so this reaches the medium before any image byte does.
fn wipe_tables(target: &mut dyn WriteTarget, image_size: u64) -> std::io::Result<u64> {
    let size = target.size();
    let zeros = vec![0u8; HEAD as usize];
    let first = HEAD.min(size);
    target.write_at(0, &zeros[..first as usize])?;
    let mut wiped = first;
    if size >= image_size + HEAD && size - HEAD >= first {
        target.write_at(size - HEAD, &zeros)?;
        wiped += HEAD;
    }
    target.sync()?;
    Ok(wiped)
}

struct Streamed {
    /// The image's bytes for `[0, HEAD)` (mapped parts filled in).
    head: Vec<u8>,
    /// sha256 of each extent, in extent order.
    digests: Vec<ExtentDigest>,
    image_sha256: String,
    checked: usize,
}

/// Per-range hashing state while the stream passes.
struct Cursor {
    next: usize,
    extent: Option<Sha256>,
    /// For a bmap checksum that the extent hash cannot stand in for (the range
    /// spans two extents, or the bmap uses sha1).
    range: Option<RangeHasher>,
}

fn stream_and_write(
    stream: Box<dyn Read + Send>,
    bmap: &Bmap,
    extents: &[Extent],
    target: &mut dyn WriteTarget,
    progress: &Progress,
) -> anyhow::Result<Streamed> {
    let name = target.describe();
    let (pool_tx, pool_rx) = sync_channel::<Vec<u8>>(16);
    let (hash_tx, hash_rx) = sync_channel::<Arc<Vec<u8>>>(4);
    let (data_tx, data_rx) = sync_channel::<Arc<Vec<u8>>>(4);
    let hash_pool = pool_tx.clone();
    let hasher = thread::spawn(move || hash_all(hash_rx, hash_pool));
    let reader = thread::spawn(move || read_chunks(stream, pool_rx, hash_tx, data_tx));

    let task = progress.bytes("writing", bmap.image_size);
    let mut head = vec![0u8; HEAD.min(bmap.image_size) as usize];
    let mut digests = Vec::with_capacity(extents.len());
    let mut cur = Cursor {
        next: 0,
        extent: None,
        range: None,
    };
    let mut checked = 0usize;
    let mut pos = 0u64;
    let result = (|| -> anyhow::Result<()> {
        for chunk in data_rx.iter() {
            let end = pos + chunk.len() as u64;
            if end > bmap.image_size {
                bail!(
                    "the image is longer than the {} bytes its block map says; the .bmap belongs to another image",
                    bmap.image_size
                );
            }
            while cur.next < extents.len() && extents[cur.next].bytes.start < end {
                let e = &extents[cur.next];
                let s = e.bytes.start.max(pos);
                let t = e.bytes.end.min(end);
                if s < t {
                    if s == e.bytes.start {
                        start_extent(&mut cur, bmap, extents);
                    }
                    let data = &chunk[(s - pos) as usize..(t - pos) as usize];
                    cur.extent.as_mut().expect("extent started").update(data);
                    if let Some(r) = cur.range.as_mut() {
                        r.update(data);
                    }
                    if e.head {
                        head[s as usize..t as usize].copy_from_slice(data);
                    } else {
                        target
                            .write_at(s, data)
                            .with_context(|| format!("writing bytes {s}..{t} of {name}"))?;
                    }
                }
                if e.bytes.end > end {
                    break;
                }
                let sha: [u8; 32] = cur.extent.take().expect("extent started").finalize().into();
                digests.push(ExtentDigest {
                    extent: cur.next,
                    sha256: sha,
                });
                if extents.get(cur.next + 1).is_none_or(|n| n.range != e.range) && check_range(&mut cur, bmap, e.range, &sha)? {
                    checked += 1;
                }
                cur.next += 1;
            }
            pos = end;
            task.inc(chunk.len() as u64);
            if let Ok(buf) = Arc::try_unwrap(chunk) {
                let _ = pool_tx.try_send(buf);
            }
        }
        Ok(())
    })();
    // Stop the reader if we bailed early, then collect both threads.
    drop(data_rx);
    let read = reader.join().map_err(|_| anyhow::anyhow!("the image reader thread panicked"))?;
    let image_sha256 = hasher.join().map_err(|_| anyhow::anyhow!("the image hash thread panicked"))?;
    result?;
    let total = read.context("reading the image")?;
    task.finish();
    if total != bmap.image_size {
        bail!(
            "the image stream ended after {total} bytes, but its block map says {} bytes: the image is truncated or the .bmap belongs to another",
            bmap.image_size
        );
    }
    Ok(Streamed {
        head,
        digests,
        image_sha256,
        checked,
    })
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

/// Reads the stream in `CHUNK`s and hands each to the hasher and the writer.
fn read_chunks(
    mut stream: Box<dyn Read + Send>,
    pool: Receiver<Vec<u8>>,
    hash_tx: SyncSender<Arc<Vec<u8>>>,
    data_tx: SyncSender<Arc<Vec<u8>>>,
) -> std::io::Result<u64> {
    let mut total = 0u64;
    loop {
        let mut buf = match pool.try_recv() {
            Ok(b) => b,
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => Vec::with_capacity(CHUNK),
        };
        buf.resize(CHUNK, 0);
        let mut n = 0;
        while n < CHUNK {
            match stream.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(got) => n += got,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if n == 0 {
            return Ok(total);
        }
        buf.truncate(n);
        total += n as u64;
        let chunk = Arc::new(buf);
        if hash_tx.send(Arc::clone(&chunk)).is_err() || data_tx.send(chunk).is_err() {
            // The writer stopped (it reports why); stop reading.
            return Ok(total);
        }
    }
}

/// sha256 of every byte of the stream, holes included.
fn hash_all(rx: Receiver<Arc<Vec<u8>>>, pool: SyncSender<Vec<u8>>) -> String {
    let mut h = Sha256::new();
    for chunk in rx.iter() {
        h.update(&chunk[..]);
        if let Ok(buf) = Arc::try_unwrap(chunk) {
            let _ = pool.try_send(buf);
        }
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use crate::image::bmap::{Bmap, BmapRange};

    use super::{Extent, HEAD, extents};

    #[test]
    fn ranges_are_cut_at_the_first_mib() {
        let mut bmap = Bmap::full(4 * HEAD);
        bmap.ranges = vec![
            BmapRange {
                first: 0,
                last: 1,
                checksum: None,
            },
            BmapRange {
                first: 200,
                last: 300,
                checksum: None,
            },
            BmapRange {
                first: 512,
                last: 512,
                checksum: None,
            },
        ];
        bmap.mapped_blocks_count = 2 + 101 + 1;
        let e = extents(&bmap);
        assert_eq!(
            e,
            vec![
                Extent {
                    bytes: 0..8192,
                    range: 0,
                    head: true
                },
                Extent {
                    bytes: 200 * 4096..HEAD,
                    range: 1,
                    head: true
                },
                Extent {
                    bytes: HEAD..301 * 4096,
                    range: 1,
                    head: false
                },
                Extent {
                    bytes: 512 * 4096..513 * 4096,
                    range: 2,
                    head: false
                },
            ]
        );
    }
}
