//! The compressed image (`.img.zst`): zstd, multi-threaded, with the content
//! size and a checksum in the frame, so `zstd -t`, `zstd -l` and bmaptool
//! (which decompresses `.zst` itself) all work on it. The image's and the
//! output's sha256 are computed on the way, so SHA256SUMS needs no second read
//! of either file.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use anyhow::Context;
use sha2::{Digest, Sha256};

/// The default zstd level. Measured with this module on a 2.1 GB image of a
/// 750 MB Debian bookworm amd64 root, 2 workers on a 2-core machine under a
/// load average of 7 (so ranges; `assemble-bench --zstd-levels`, see
/// bench/assemble.rs):
///
/// | level | long-distance | seconds | MB  |
/// |-------|---------------|---------|-----|
/// | 1     | no            | 11      | 238 |
/// | 3     | no            | 9       | 216 |
/// | 1     | yes           | 19      | 219 |
/// | 3     | yes           | 19–23   | 205 |
/// | 6     | yes           | 41–73   | 192 |
/// | 10    | yes           | 69–116  | 183 |
/// | 12    | yes           | 135     | 181 |
/// | 15    | yes           | 530     | 180 |
///
/// Level 10 saves 15% of the size for eight to twelve times the time, and
/// long-distance matching 5% for twice the time: on a build that should take
/// seconds, level 3 without it is the better trade (a compressed Pi image stays
/// near 200 MB). From [`LONG_FROM_LEVEL`] on, long-distance matching is
/// turned on, for release builds that want the smallest file.
pub const LEVEL: i32 = 3;
/// Levels from which long-distance matching is worth its time.
pub const LONG_FROM_LEVEL: i32 = 10;
/// Window of 2^27 bytes (128 MiB) for long-distance matching: the largest
/// that `zstd -d` and libzstd decoders accept without `--long`/`--memory`
/// flags, so nobody needs options to decompress.
const WINDOW_LOG: u32 = 27;
/// How often progress is reported, in bytes of input.
const PROGRESS_STEP: u64 = 256 << 20;

/// What compressing produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compressed {
    pub input_bytes: u64,
    pub input_sha256: String,
    pub output_bytes: u64,
    pub output_sha256: String,
}

/// Compresses `src` into `dst` (created or truncated) at `level` (1–19).
pub fn to_zstd(src: &Path, dst: &Path, level: i32, progress: &dyn Fn(&str)) -> anyhow::Result<Compressed> {
    let mut input = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let total = input
        .metadata()
        .with_context(|| format!("reading the size of {}", src.display()))?
        .len();
    let out = File::create(dst).with_context(|| format!("creating {}", dst.display()))?;
    let writer = HashingWriter::new(BufWriter::with_capacity(1 << 20, out));
    let mut enc = zstd::stream::write::Encoder::new(writer, level).context("starting the zstd encoder")?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    enc.multithread(workers).context("enabling zstd worker threads")?;
    if level >= LONG_FROM_LEVEL {
        enc.long_distance_matching(true).context("enabling zstd long-distance matching")?;
        enc.window_log(WINDOW_LOG).context("setting the zstd window")?;
    }
    enc.include_checksum(true).context("enabling the zstd checksum")?;
    enc.include_contentsize(true).context("recording the content size")?;
    enc.set_pledged_src_size(Some(total)).context("recording the content size")?;

    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut done = 0u64;
    let mut next_report = PROGRESS_STEP;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", src.display())),
        };
        hasher.update(&buf[..n]);
        enc.write_all(&buf[..n]).with_context(|| format!("writing {}", dst.display()))?;
        done += n as u64;
        if done >= next_report {
            progress(&format!(
                "compressing: {}% ({} of {} MiB)",
                done * 100 / total.max(1),
                done >> 20,
                total >> 20
            ));
            next_report += PROGRESS_STEP;
        }
    }
    let writer = enc.finish().with_context(|| format!("finishing {}", dst.display()))?;
    let (mut buffered, output_bytes, output_hash) = writer.into_parts();
    buffered.flush().with_context(|| format!("writing {}", dst.display()))?;
    Ok(Compressed {
        input_bytes: done,
        input_sha256: hex::encode(hasher.finalize()),
        output_bytes,
        output_sha256: output_hash,
    })
}

/// A writer that hashes and counts what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    fn into_parts(self) -> (W, u64, String) {
        (self.inner, self.count, hex::encode(self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use sha2::{Digest, Sha256};

    use super::to_zstd;

    #[test]
    fn round_trips_and_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("x.img");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        let dst = dir.path().join("x.img.zst");
        let got = to_zstd(&src, &dst, 10, &|_| {}).unwrap();
        let compressed = std::fs::read(&dst).unwrap();
        assert_eq!(got.input_bytes, data.len() as u64);
        assert_eq!(got.input_sha256, hex::encode(Sha256::digest(&data)));
        assert_eq!(got.output_bytes, compressed.len() as u64);
        assert_eq!(got.output_sha256, hex::encode(Sha256::digest(&compressed)));
        let mut back = Vec::new();
        zstd::stream::read::Decoder::new(&compressed[..])
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
    }
}
