//! Writing an image to a target in the order that keeps a half-written card
//! unbootable:
//!
//! 1. zero the first MiB (and, on a bigger device, the last MiB, where an old
//!    backup GPT lives) and sync, so the old partition table is gone first;
//! 2. stream the decompressed image once, in chunks, to stages running side by
//!    side (`stream.rs`): the image's sha256 over every byte; each mapped range
//!    hashed and checked against the block map; the writer, which writes the
//!    mapped ranges, skips the unmapped ones and holds back the mapped part of
//!    the first MiB in memory; and the read-back (`verify.rs`), which reads
//!    each written piece back past the page cache while later ones are being
//!    written, and compares it with the image bytes;
//! 3. sync, and read one block of every piece again (a later write may have
//!    landed on it: a fake-capacity card);
//! 4. run the caller's before-head step (`piha flash` stamps the card there,
//!    finding PIHA-CFG in the first MiB still in memory);
//! 5. only then write the first MiB, sync, read it back and compare.
//!
//! A failure anywhere before step 5 leaves the first MiB zeroed: no partition
//! table, nothing a firmware or kernel would try to boot.
//!
//! `Verify::Off` skips the read-backs of steps 2, 3 and 5, nothing else (the
//! stamp reads its own back).

use std::io::Read;
use std::ops::Range;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use crate::device::stream::{Checked, Chunk, Pool, check_extents, hash_all, read_chunks};
use crate::device::target::{AlignedBuf, WriteTarget};
use crate::device::verify::{self, Piece, Verified, Written};
use crate::image::bmap::Bmap;
use crate::progress::{Progress, Task};

/// The part of the disk written last: partition tables (MBR, GPT header and
/// entries) and boot code live in the first MiB.
pub const HEAD: u64 = 1 << 20;

/// Chunks each stage may hold queued: enough that a stage waiting on I/O does
/// not stall the others, few enough to keep memory at some tens of MiB.
const QUEUE: usize = 4;

/// Chunks the read-back may trail the writer by.
const VERIFY_QUEUE: usize = 8;

/// Whether what was written is read back and compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    ReadBack,
    /// Unsafe: a card that does not keep what it is given goes unnoticed.
    Off,
}

/// What a write did, for the summary and the ledger.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WriteReport {
    pub image_size: u64,
    /// Image bytes written (the mapped ranges).
    pub bytes_written: u64,
    /// Image bytes not written because the block map marks them unmapped.
    pub bytes_skipped: u64,
    /// Bytes read back from the target and compared (0 with `Verify::Off`).
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
    /// The same over what the target returned on read-back. Every byte read
    /// back is compared with the image's, so after a successful flash this
    /// equals `mapped_sha256_image`; empty with `Verify::Off`.
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
    write_image_with(stream, bmap, target, progress, Verify::ReadBack)
}

/// `write_image`, with the read-back on or off.
pub fn write_image_with(
    stream: Box<dyn Read + Send>,
    bmap: &Bmap,
    target: &mut dyn WriteTarget,
    progress: &Progress,
    verify: Verify,
) -> anyhow::Result<WriteReport> {
    let finish = Finish {
        verify,
        before_head: &mut |_, _| Ok(()),
    };
    write_image_before_head(stream, bmap, target, progress, finish)
}

/// What runs between the image's body (written, synced and verified) and
/// its first MiB: it gets the target and the first MiB's bytes, which are
/// not on the medium yet. `piha flash` stamps the card there.
pub type BeforeHead<'a> = dyn FnMut(&mut dyn WriteTarget, &[u8]) -> anyhow::Result<()> + 'a;

/// How a write ends: with or without the read-back, and what runs just
/// before the first MiB goes on.
pub struct Finish<'f, 'c> {
    pub verify: Verify,
    pub before_head: &'f mut BeforeHead<'c>,
}

/// `write_image_with`, running `finish.before_head` just before the first
/// MiB is written: if it fails, the first MiB stays zeroed.
pub fn write_image_before_head(
    stream: Box<dyn Read + Send>,
    bmap: &Bmap,
    target_mut: &mut dyn WriteTarget,
    progress: &Progress,
    finish: Finish<'_, '_>,
) -> anyhow::Result<WriteReport> {
    let Finish { verify, before_head } = finish;
    let target: &dyn WriteTarget = &*target_mut;
    let name = target.describe();
    if target.size() < bmap.image_size {
        bail!("{name} holds {} bytes, the image needs {}", target.size(), bmap.image_size);
    }
    let extents = extents(bmap);
    let bytes_wiped = wipe_tables(target, bmap.image_size).with_context(|| format!("zeroing the partition tables on {name}"))?;

    let fail_note = format!(
        "{name} is blank now (its first MiB is zeroed, so it will not boot half-written): flash it again, from a good copy of the image if the image was at fault"
    );
    let label = match verify {
        Verify::ReadBack => "writing and verifying",
        Verify::Off => "writing (no read-back)",
    };
    let task = progress.bytes(label, bmap.image_size);
    let job = Job {
        bmap,
        extents: &extents,
        target,
        task: &task,
    };
    let streamed = stream_and_write(stream, job, verify).with_context(|| fail_note.clone())?;
    task.finish();

    target.sync().with_context(|| format!("syncing {name}; {fail_note}"))?;
    if let Some(v) = &streamed.verified {
        verify::recheck(target, &extents, &v.samples).with_context(|| fail_note.clone())?;
    }
    before_head(&mut *target_mut, &streamed.head).with_context(|| fail_note.clone())?;
    let target: &dyn WriteTarget = &*target_mut;

    // Everything else is on the medium and proven; now the partition table.
    let head: Vec<usize> = (0..extents.len()).filter(|&i| extents[i].head).collect();
    for &i in &head {
        let b = &extents[i].bytes;
        target
            .write_at(b.start, &streamed.head[b.start as usize..b.end as usize])
            .with_context(|| format!("writing the first MiB of {name}"))?;
    }
    target.sync().with_context(|| format!("syncing {name}"))?;
    let mut verified = 0;
    if let Some(v) = &streamed.verified {
        let mut buf = AlignedBuf::new(HEAD as usize);
        for &i in &head {
            let b = &extents[i].bytes;
            verify::compare(
                target,
                &extents[i],
                b.start,
                &streamed.head[b.start as usize..b.end as usize],
                &mut buf,
            )
            .with_context(|| {
                format!("verifying the first MiB of {name}; it holds a partition table that did not read back right, flash again")
            })?;
            verified += len(b);
        }
        verified += v.bytes;
    }

    let mapped = bmap.mapped_bytes();
    let mapped_sha256_image = digest_of_digests(&streamed.checked.digests);
    Ok(WriteReport {
        image_size: bmap.image_size,
        bytes_written: mapped,
        bytes_skipped: bmap.image_size - mapped,
        bytes_verified: verified,
        bytes_wiped,
        ranges: bmap.ranges.len(),
        ranges_checked_against_bmap: streamed.checked.ranges,
        image_sha256: streamed.image_sha256,
        mapped_sha256_device: match verify {
            Verify::ReadBack => mapped_sha256_image.clone(),
            Verify::Off => String::new(),
        },
        mapped_sha256_image,
    })
}

fn len(r: &Range<u64>) -> u64 {
    r.end - r.start
}

fn digest_of_digests(digests: &[[u8; 32]]) -> String {
    let mut h = Sha256::new();
    for d in digests {
        h.update(d);
    }
    hex::encode(h.finalize())
}

/// Zeroes the first MiB, and whatever of the last MiB lies past the image
/// (a bigger card's old backup GPT: its header is the last sector and its
/// entries the 16 KiB before, which UEFI firmware would otherwise find, even
/// on a card only a few sectors bigger than the image), then syncs so this
/// reaches the medium before any image byte does.
fn wipe_tables(target: &dyn WriteTarget, image_size: u64) -> std::io::Result<u64> {
    let size = target.size();
    let zeros = vec![0u8; HEAD as usize];
    let first = HEAD.min(size);
    target.write_at(0, &zeros[..first as usize])?;
    let mut wiped = first;
    let tail = size.saturating_sub(HEAD).max(image_size).max(first);
    if tail < size {
        target.write_at(tail, &zeros[..(size - tail) as usize])?;
        wiped += size - tail;
    }
    target.sync()?;
    Ok(wiped)
}

struct Streamed {
    /// The image's bytes for `[0, HEAD)` (mapped parts filled in).
    head: Vec<u8>,
    checked: Checked,
    image_sha256: String,
    /// None with `Verify::Off`.
    verified: Option<Verified>,
}

/// What every stage of the write shares.
#[derive(Clone, Copy)]
struct Job<'a> {
    bmap: &'a Bmap,
    extents: &'a [Extent],
    target: &'a dyn WriteTarget,
    task: &'a Task,
}

/// Runs the stages of step 2 on their own threads and collects them. When
/// one fails the others stop; the error reported is the most basic one: the
/// image unreadable, then the image wrong, then the write, then the read-back.
fn stream_and_write(stream: Box<dyn Read + Send>, job: Job<'_>, verify: Verify) -> anyhow::Result<Streamed> {
    let Job {
        bmap,
        extents,
        target,
        task,
    } = job;
    let pool = Pool::default();
    let pool = &pool;
    thread::scope(|s| {
        let (hash_tx, hash_rx) = sync_channel::<Arc<Chunk>>(QUEUE);
        let (check_tx, check_rx) = sync_channel::<Arc<Chunk>>(QUEUE);
        let (write_tx, write_rx) = sync_channel::<Arc<Chunk>>(QUEUE);
        let reader = s.spawn(move || read_chunks(stream, bmap.image_size, pool, &[hash_tx, check_tx, write_tx]));
        let hasher = s.spawn(move || hash_all(hash_rx, pool));
        let checker = s.spawn(move || check_extents(check_rx, bmap, extents, pool));
        let (verify_tx, verifier) = match verify {
            Verify::ReadBack => {
                let (tx, rx) = sync_channel::<Written>(VERIFY_QUEUE);
                (Some(tx), Some(s.spawn(move || verify::follow(target, extents, rx, task, pool))))
            }
            Verify::Off => (None, None),
        };
        let written = write_chunks(write_rx, job, verify_tx, pool);
        let total = joined(reader, "image reader")?;
        let image_sha256 = joined(hasher, "image hash")?;
        let checked = joined(checker, "block map check")?;
        let verified = verifier.map(|v| joined(v, "read-back")).transpose()?;
        let (total, checked, head) = (total?, checked?, written?);
        let verified = verified.transpose()?;
        if total != bmap.image_size {
            bail!(
                "the image stream ended after {total} bytes, but its block map says {} bytes: the image is truncated or the .bmap belongs to another",
                bmap.image_size
            );
        }
        Ok(Streamed {
            head,
            checked,
            image_sha256,
            verified,
        })
    })
}

fn joined<T>(h: thread::ScopedJoinHandle<'_, T>, what: &str) -> anyhow::Result<T> {
    h.join().map_err(|_| anyhow::anyhow!("the {what} thread panicked"))
}

/// The writer: writes each chunk's mapped, non-head bytes and hands them to
/// the read-back; returns the first MiB's bytes, held back.
fn write_chunks(rx: Receiver<Arc<Chunk>>, job: Job<'_>, verify_tx: Option<SyncSender<Written>>, pool: &Pool) -> anyhow::Result<Vec<u8>> {
    let Job {
        bmap,
        extents,
        target,
        task,
    } = job;
    let mut head = vec![0u8; HEAD.min(bmap.image_size) as usize];
    let mut next = 0;
    for chunk in rx.iter() {
        let (pos, end) = (chunk.offset, chunk.end());
        let mut pieces = Vec::new();
        while next < extents.len() && extents[next].bytes.start < end {
            let e = &extents[next];
            let (s, t) = (e.bytes.start.max(pos), e.bytes.end.min(end));
            if s < t {
                let data = &chunk.data()[(s - pos) as usize..(t - pos) as usize];
                if e.head {
                    head[s as usize..t as usize].copy_from_slice(data);
                } else {
                    target
                        .write_at(s, data)
                        .with_context(|| format!("writing bytes {s}..{t} of {}", target.describe()))?;
                    pieces.push(Piece { extent: next, bytes: s..t });
                }
            }
            if e.bytes.end > end {
                break;
            }
            next += 1;
        }
        let handed: u64 = pieces.iter().map(|p| len(&p.bytes)).sum();
        match &verify_tx {
            Some(tx) => {
                task.inc(chunk.data().len() as u64 - handed);
                if !pieces.is_empty() && tx.send(Written { chunk, pieces }).is_err() {
                    // The read-back stopped, and says why.
                    break;
                }
            }
            None => {
                task.inc(chunk.data().len() as u64);
                pool.give(chunk);
            }
        }
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use crate::device::target::FileTarget;
    use crate::image::bmap::{Bmap, BmapRange};

    use super::{Extent, HEAD, extents, wipe_tables};

    /// Whatever the card's size past the image, an old backup GPT in its
    /// last sectors is zeroed, and nothing the image will cover is touched
    /// but the first MiB.
    #[test]
    fn the_old_backup_gpt_is_wiped_whatever_the_size_difference() {
        let image = 4 * HEAD;
        for extra in [0, 512, 16 * 1024 + 512, HEAD - 512, HEAD, 3 * HEAD] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("card");
            let size = image + extra;
            std::fs::write(&path, vec![0xAAu8; size as usize]).unwrap();
            let target = FileTarget::open_existing(&path).unwrap();
            let wiped = wipe_tables(&target, image).unwrap();
            drop(target);
            let bytes = std::fs::read(&path).unwrap();
            assert!(bytes[..HEAD as usize].iter().all(|&b| b == 0), "extra {extra}: first MiB");
            assert!(
                bytes[HEAD as usize..image as usize].iter().all(|&b| b == 0xAA),
                "extra {extra}: the image's part"
            );
            let tail = &bytes[image as usize..];
            let zeroed_from = tail.len().saturating_sub(HEAD as usize);
            assert!(
                tail[zeroed_from..].iter().all(|&b| b == 0),
                "extra {extra}: the last MiB past the image"
            );
            assert_eq!(wiped, HEAD + extra.min(HEAD), "extra {extra}");
        }
    }

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
