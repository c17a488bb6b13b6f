//! Read-back verification: every written extent is read from the target past
//! the page cache (see `target.rs`) and its sha256 compared with the one
//! computed from the image stream while writing.

use std::sync::mpsc::sync_channel;
use std::thread;

use anyhow::bail;
use sha2::{Digest, Sha256};

use crate::device::target::WriteTarget;
use crate::device::write::Extent;
use crate::progress::Task;

/// How much is read back per call: big enough for full device throughput.
const READ: usize = 4 << 20;

/// The sha256 of one extent (index into the extent list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentDigest {
    pub extent: usize,
    pub sha256: [u8; 32],
}

/// Reads back the extents listed in `which` and compares each with `expected`
/// (indexed by extent). Returns the digests the target produced.
///
/// A second thread reads while this one hashes, so the device is kept busy
/// while the previous piece is hashed.
pub fn verify_extents(
    target: &mut dyn WriteTarget,
    extents: &[Extent],
    which: &[usize],
    expected: &[ExtentDigest],
    progress: &Task,
) -> anyhow::Result<Vec<ExtentDigest>> {
    let name = target.describe();
    let (data_tx, data_rx) = sync_channel::<Piece>(2);
    let (free_tx, free_rx) = sync_channel::<Vec<u8>>(3);
    thread::scope(|scope| {
        let reader = scope.spawn(move || -> anyhow::Result<()> {
            for &i in which {
                let bytes = &extents[i].bytes;
                let mut pos = bytes.start;
                while pos < bytes.end {
                    let n = (bytes.end - pos).min(READ as u64) as usize;
                    let mut buf = free_rx.try_recv().unwrap_or_else(|_| vec![0u8; READ]);
                    target
                        .read_back(pos, &mut buf[..n])
                        .map_err(|e| anyhow::anyhow!("reading back bytes {pos}..{} of {}: {e}", pos + n as u64, target.describe()))?;
                    pos += n as u64;
                    let last = pos == bytes.end;
                    if data_tx
                        .send(Piece {
                            extent: i,
                            buf,
                            len: n,
                            last,
                        })
                        .is_err()
                    {
                        // The hashing side stopped (and says why).
                        return Ok(());
                    }
                }
            }
            Ok(())
        });
        let mut out = Vec::with_capacity(which.len());
        let mut h = Sha256::new();
        let checked = (|| -> anyhow::Result<()> {
            for piece in data_rx.iter() {
                h.update(&piece.buf[..piece.len]);
                progress.inc(piece.len as u64);
                let _ = free_tx.try_send(piece.buf);
                if !piece.last {
                    continue;
                }
                let got: [u8; 32] = std::mem::replace(&mut h, Sha256::new()).finalize().into();
                let want = expected_for(expected, piece.extent);
                if want != Some(got) {
                    let bytes = &extents[piece.extent].bytes;
                    bail!(
                        "read-back mismatch on {name} at bytes {}..{}: wrote sha256 {}, the device returned {}; \
                         the medium did not keep what was written (a failing or fake-capacity card?)",
                        bytes.start,
                        bytes.end,
                        want.map(hex::encode).unwrap_or_else(|| "(nothing)".to_string()),
                        hex::encode(got)
                    );
                }
                out.push(ExtentDigest {
                    extent: piece.extent,
                    sha256: got,
                });
            }
            Ok(())
        })();
        drop(data_rx);
        let read = reader.join().map_err(|_| anyhow::anyhow!("the read-back thread panicked"))?;
        checked?;
        read?;
        if out.len() != which.len() {
            bail!("read-back of {name} stopped after {} of {} ranges", out.len(), which.len());
        }
        Ok(out)
    })
}

/// A piece of an extent as read back.
struct Piece {
    extent: usize,
    buf: Vec<u8>,
    len: usize,
    /// The extent's final piece.
    last: bool,
}

/// The streamed digest of extent `i`: digests are recorded in extent order,
/// so it is usually at index `i`.
fn expected_for(expected: &[ExtentDigest], i: usize) -> Option<[u8; 32]> {
    match expected.get(i) {
        Some(d) if d.extent == i => Some(d.sha256),
        _ => expected.iter().find(|d| d.extent == i).map(|d| d.sha256),
    }
}
