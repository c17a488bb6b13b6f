//! The image being flashed: a raw `.img`, or one compressed with zstd or xz,
//! read as one decompressed stream (never unpacked to disk first), plus the
//! block map that says which of its bytes to write.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use piha_runner::{Cmd, Runner};

use crate::device::stream::fill;
use crate::device::target::DIRECT_ALIGN;
use crate::image::bmap::{Bmap, data_extents};

/// How the image file is compressed, from its first bytes (not its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Zstd,
    Xz,
}

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const XZ_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0x00];

/// An image ready to stream.
#[derive(Debug)]
pub struct ImageSource {
    pub path: PathBuf,
    pub compression: Compression,
    /// The block map: from `bmap_path`, or every block mapped when there is none.
    pub bmap: Bmap,
    pub bmap_path: Option<PathBuf>,
}

impl ImageSource {
    /// Finds the image's compression and its block map (`explicit_bmap`, else
    /// one beside the image), and checks they agree with the file.
    pub fn open(path: &Path, explicit_bmap: Option<&Path>, runner: &dyn Runner) -> anyhow::Result<ImageSource> {
        let compression = detect(path)?;
        let bmap_path = match explicit_bmap {
            Some(p) => Some(p.to_path_buf()),
            None => find_bmap(path),
        };
        let bmap = match &bmap_path {
            Some(p) => Bmap::load(p)?,
            None => Bmap::full(uncompressed_size(path, compression, runner)?),
        };
        if compression == Compression::None {
            let len = std::fs::metadata(path)
                .with_context(|| format!("reading the size of {}", path.display()))?
                .len();
            if len != bmap.image_size {
                bail!(
                    "{} is {len} bytes but its block map {} says {} bytes: the .bmap belongs to another image \
                     (rebuild, or pass the right one with --bmap)",
                    path.display(),
                    bmap_path.as_deref().unwrap_or(Path::new("-")).display(),
                    bmap.image_size
                );
            }
        }
        let source = ImageSource {
            path: path.to_path_buf(),
            compression,
            bmap,
            bmap_path,
        };
        source.check_start()?;
        Ok(source)
    }

    /// Before any target is touched: the image's first sector decompresses
    /// and holds a partition table (the MBR boot signature, which a GPT's
    /// protective MBR has too), and a zstd frame's declared size is the
    /// block map's.
    fn check_start(&self) -> anyhow::Result<()> {
        let p = self.path.display();
        let mut sector = [0u8; 512];
        let n = fill(&mut self.stream()?, &mut sector).map_err(|e| {
            anyhow::anyhow!(
                "{p} cannot be read from its start ({e}): it is damaged or truncated, or not an image (fix: copy or download it again); nothing was written"
            )
        })?;
        if n < sector.len() || sector[510..512] != [0x55, 0xaa] {
            bail!(
                "{p} is not a disk image: its first sector has no partition table (no boot signature 55 AA at byte 510); nothing was written (fix: give the .img, .img.zst or .img.xz `piha build` wrote)"
            );
        }
        if self.compression == Compression::Zstd {
            if let Ok(Some(size)) = zstd_content_size(&self.path) {
                if size != self.bmap.image_size {
                    bail!(
                        "{p} decompresses to {size} bytes but its block map says {}: the .bmap belongs to another image; nothing was written",
                        self.bmap.image_size
                    );
                }
            }
        }
        Ok(())
    }

    /// The decompressed image as a byte stream.
    pub fn stream(&self) -> anyhow::Result<Box<dyn Read + Send>> {
        let file = File::open(&self.path).with_context(|| format!("opening image {}", self.path.display()))?;
        let what = || format!("finding the data extents of {}", self.path.display());
        Ok(match self.compression {
            Compression::None => {
                let size = file.metadata().with_context(what)?.len();
                let extents = data_extents(&file, size).with_context(what)?;
                Box::new(SparseFile {
                    direct: open_direct(&self.path),
                    file,
                    extents,
                    next: 0,
                    size,
                    pos: 0,
                })
            }
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(1 << 20, file))
                    .with_context(|| format!("starting zstd on {}", self.path.display()))?,
            ),
            // Multi-stream: `xz` output concatenated with `cat` is still one image.
            Compression::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(BufReader::with_capacity(1 << 20, file))),
        })
    }
}

/// A raw image read without reading its holes: the file system knows they
/// are zeros, and reading them would make the kernel fill page-cache pages
/// with zeros only to copy them out again (for a mostly empty image, most of
/// the work). Aligned reads of the data use O_DIRECT: the image is read once,
/// so copying it through the page cache costs CPU and evicts pages that are
/// worth keeping.
struct SparseFile {
    file: File,
    /// O_DIRECT descriptor, or None where the file system refuses it.
    direct: Option<File>,
    /// Data extents in offset order; everything else is a hole.
    extents: Vec<Range<u64>>,
    /// The first extent that does not end before `pos`.
    next: usize,
    size: u64,
    pos: u64,
}

impl Read for SparseFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        while self.extents.get(self.next).is_some_and(|e| e.end <= self.pos) {
            self.next += 1;
        }
        let left = (self.size - self.pos).min(buf.len() as u64);
        let n = match self.extents.get(self.next) {
            Some(e) if e.start <= self.pos => {
                let n = (e.end - self.pos).min(left) as usize;
                let buf = &mut buf[..n];
                match self.direct.as_ref().filter(|_| direct_aligned(self.pos, buf)) {
                    Some(direct) => direct.read_at(buf, self.pos)?,
                    None => self.file.read_at(buf, self.pos)?,
                }
            }
            next => {
                let hole_end = next.map(|e| e.start).unwrap_or(self.size);
                let n = (hole_end - self.pos).min(left) as usize;
                buf[..n].fill(0);
                n
            }
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the image file shrank while being read",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

fn open_direct(path: &Path) -> Option<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
        .open(path)
        .ok()
}

/// Whether an O_DIRECT read can take this request as it is.
fn direct_aligned(offset: u64, buf: &[u8]) -> bool {
    let align = DIRECT_ALIGN as u64;
    offset % align == 0 && buf.len() as u64 % align == 0 && (buf.as_ptr() as usize) % DIRECT_ALIGN == 0
}

/// The compression of `path`, from its magic number.
pub fn detect(path: &Path) -> anyhow::Result<Compression> {
    let mut head = [0u8; 6];
    let mut file = File::open(path).with_context(|| format!("opening image {}", path.display()))?;
    let n = fill(&mut file, &mut head).with_context(|| format!("reading {}", path.display()))?;
    Ok(if n >= 4 && head[..4] == ZSTD_MAGIC {
        Compression::Zstd
    } else if n >= 6 && head == XZ_MAGIC {
        Compression::Xz
    } else {
        Compression::None
    })
}

/// Where bmaptool looks for a block map: `X.img.zst.bmap`, `X.img.bmap`,
/// `X.bmap`, taking one extension off at a time.
pub fn find_bmap(image: &Path) -> Option<PathBuf> {
    let mut stem = image.to_path_buf();
    loop {
        let mut candidate = stem.clone().into_os_string();
        candidate.push(".bmap");
        let candidate = PathBuf::from(candidate);
        if candidate.is_file() {
            return Some(candidate);
        }
        stem.extension()?;
        stem.set_extension("");
    }
}

/// The decompressed size of an image that has no block map, without
/// decompressing where the format records it: zstd's frame header (checked
/// against the stream as it is written), xz's index via `xz --robot --list`.
/// The decompressed size a zstd file's frame header declares, if it does.
fn zstd_content_size(path: &Path) -> anyhow::Result<Option<u64>> {
    let mut head = vec![0u8; 18];
    let mut file = File::open(path).with_context(|| format!("opening image {}", path.display()))?;
    file.read_exact(&mut head)
        .with_context(|| format!("reading the zstd header of {}", path.display()))?;
    Ok(zstd::zstd_safe::get_frame_content_size(&head).ok().flatten())
}

fn uncompressed_size(path: &Path, compression: Compression, runner: &dyn Runner) -> anyhow::Result<u64> {
    match compression {
        Compression::None => Ok(std::fs::metadata(path)
            .with_context(|| format!("reading the size of {}", path.display()))?
            .len()),
        Compression::Zstd => match zstd_content_size(path)? {
            Some(size) => Ok(size),
            None => count_stream(path, compression),
        },
        Compression::Xz => {
            let out = runner.run(&Cmd::new("xz").args(["--robot", "--list"]).arg(path))?;
            let text = out.stdout_str();
            // "totals <streams> <blocks> <compressed> <uncompressed> ..."
            let size = text
                .lines()
                .find_map(|l| l.strip_prefix("totals\t"))
                .and_then(|rest| rest.split('\t').nth(3))
                .and_then(|s| s.parse::<u64>().ok());
            match size {
                Some(size) => Ok(size),
                None => count_stream(path, compression),
            }
        }
    }
}

/// Decompresses once just to count: the slow way, when the format has no size.
fn count_stream(path: &Path, compression: Compression) -> anyhow::Result<u64> {
    log::warn!(
        "{}: no .bmap and no recorded size; decompressing once to measure it",
        path.display()
    );
    let src = ImageSource {
        path: path.to_path_buf(),
        compression,
        bmap: Bmap::full(0),
        bmap_path: None,
    };
    let mut stream = src.stream()?;
    std::io::copy(&mut stream, &mut std::io::sink()).with_context(|| format!("decompressing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use piha_runner::SystemRunner;

    use super::{Compression, ImageSource, detect, find_bmap};

    /// Not an image at all, or one cut inside its first sector: refused at
    /// `open`, before any target is opened.
    #[test]
    fn a_file_without_a_partition_table_is_not_an_image() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in [("notes.img", vec![b'x'; 4096]), ("short.img", vec![0u8; 100])] {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let Err(err) = ImageSource::open(&path, None, &SystemRunner) else {
                panic!("{name} was taken for an image")
            };
            let err = err.to_string();
            assert!(err.contains("is not a disk image") && err.contains("nothing was written"), "{err}");
        }
    }

    #[test]
    fn finds_the_bmap_the_way_bmaptool_does() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("x.img.zst");
        std::fs::write(&img, b"").unwrap();
        assert_eq!(find_bmap(&img), None);
        std::fs::write(dir.path().join("x.bmap"), b"").unwrap();
        assert_eq!(find_bmap(&img), Some(dir.path().join("x.bmap")));
        std::fs::write(dir.path().join("x.img.bmap"), b"").unwrap();
        assert_eq!(find_bmap(&img), Some(dir.path().join("x.img.bmap")));
    }

    #[test]
    fn raw_images_read_the_same_with_holes_skipped() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.img");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(9 << 20).unwrap();
        // An MBR's boot signature: what `open` checks an image starts with.
        f.write_all_at(&[0x55, 0xaa], 510).unwrap();
        f.write_all_at(&[7u8; 5000], 4096 * 3 + 11).unwrap();
        f.write_all_at(&[9u8; 70_000], 8 << 20).unwrap();
        f.sync_all().unwrap();
        let src = ImageSource::open(&path, None, &SystemRunner).unwrap();
        let mut out = Vec::new();
        let mut stream = src.stream().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = stream.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert!(out == std::fs::read(&path).unwrap());
    }

    #[test]
    fn streams_compressed_images() {
        let dir = tempfile::tempdir().unwrap();
        let mut data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        data[510..512].copy_from_slice(&[0x55, 0xaa]);
        let zst = dir.path().join("a.img.zst");
        std::fs::write(&zst, zstd::encode_all(&data[..], 3).unwrap()).unwrap();
        let xz = dir.path().join("a.img.xz");
        let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 1);
        enc.write_all(&data).unwrap();
        std::fs::write(&xz, enc.finish().unwrap()).unwrap();
        for (path, kind) in [(&zst, Compression::Zstd), (&xz, Compression::Xz)] {
            assert_eq!(detect(path).unwrap(), kind);
            let src = ImageSource::open(path, None, &SystemRunner).unwrap();
            assert_eq!(src.bmap.image_size, data.len() as u64, "{kind:?}");
            let mut out = Vec::new();
            std::io::copy(&mut src.stream().unwrap(), &mut out).unwrap();
            assert_eq!(out, data);
        }
    }
}
