//! bmaptool's block map (`.bmap`): which blocks of a sparse image hold data,
//! with a checksum per mapped range, so a flasher writes only those blocks and
//! can prove it wrote them right.
//!
//! The format is bmaptool's (Debian `bmap-tools`), version 2.0, byte for byte in
//! the layout `bmaptool create` writes, so `bmaptool copy` accepts piha's files
//! and piha accepts bmaptool's (versions 1.0 to 2.x). Reference:
//! bmaptools/BmapCreate.py and BmapCopy.py (`_verify_bmap_checksum`,
//! `_parse_bmap`): <https://github.com/yoctoproject/bmaptool>.
//!
//! `BmapFileChecksum` is the checksum of the whole file with the checksum's own
//! text replaced by ASCII zeros; bmaptool finds the value, zeroes it and hashes.

use std::fmt::Write as _;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, bail};
use quick_xml::events::Event;
use rustix::fs::SeekFrom;
use sha2::Digest;

/// The block size piha uses when it maps an image (ext4's and bmaptool's usual one).
pub const DEFAULT_BLOCK_SIZE: u64 = 4096;

/// The format version piha writes.
pub const FORMAT_VERSION: &str = "2.0";

/// Hash algorithm of the range and file checksums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChecksumType {
    /// Format 1.3 (and 1.4 files that say so).
    Sha1,
    /// What bmaptool 3.x and piha write.
    Sha256,
}

impl ChecksumType {
    /// The name bmaptool writes in `<ChecksumType>`.
    pub fn name(self) -> &'static str {
        match self {
            ChecksumType::Sha1 => "sha1",
            ChecksumType::Sha256 => "sha256",
        }
    }

    fn from_name(name: &str) -> Option<ChecksumType> {
        match name.trim().to_ascii_lowercase().as_str() {
            "sha1" => Some(ChecksumType::Sha1),
            "sha256" => Some(ChecksumType::Sha256),
            _ => None,
        }
    }

    /// Length of a checksum in hex digits.
    pub fn hex_len(self) -> usize {
        match self {
            ChecksumType::Sha1 => 40,
            ChecksumType::Sha256 => 64,
        }
    }
}

/// An incremental hash of either checksum type.
#[derive(Clone)]
pub enum RangeHasher {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

impl RangeHasher {
    pub fn new(kind: ChecksumType) -> RangeHasher {
        match kind {
            ChecksumType::Sha1 => RangeHasher::Sha1(sha1::Sha1::new()),
            ChecksumType::Sha256 => RangeHasher::Sha256(sha2::Sha256::new()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            RangeHasher::Sha1(h) => h.update(data),
            RangeHasher::Sha256(h) => h.update(data),
        }
    }

    /// The digest in lower-case hex, as bmap files spell it.
    pub fn finish_hex(self) -> String {
        match self {
            RangeHasher::Sha1(h) => hex::encode(h.finalize()),
            RangeHasher::Sha256(h) => hex::encode(h.finalize()),
        }
    }
}

/// One run of mapped blocks, `first..=last`, with the checksum of its bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BmapRange {
    pub first: u64,
    pub last: u64,
    /// Hex checksum of the range's bytes (absent in format 1.0-1.2 files).
    pub checksum: Option<String>,
}

impl BmapRange {
    /// Number of blocks in the range.
    pub fn blocks(&self) -> u64 {
        self.last - self.first + 1
    }
}

/// A parsed or computed block map.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Bmap {
    /// Format version as read (`2.0` for piha's own).
    pub version: String,
    pub image_size: u64,
    pub block_size: u64,
    pub blocks_count: u64,
    pub mapped_blocks_count: u64,
    /// None for format 1.0-1.2, which had no checksums.
    pub checksum_type: Option<ChecksumType>,
    pub ranges: Vec<BmapRange>,
}

impl Bmap {
    /// Maps a sparse image: data extents found with SEEK_DATA/SEEK_HOLE,
    /// widened to whole blocks, each range's sha256 computed from the file.
    pub fn from_image(path: &Path) -> anyhow::Result<Bmap> {
        let file = File::open(path).with_context(|| format!("opening image {}", path.display()))?;
        let image_size = file
            .metadata()
            .with_context(|| format!("reading the size of {}", path.display()))?
            .len();
        if image_size == 0 {
            bail!("{} is empty; there is nothing to map", path.display());
        }
        let block_size = DEFAULT_BLOCK_SIZE;
        let blocks_count = image_size.div_ceil(block_size);
        let extents = data_extents(&file, image_size).with_context(|| format!("finding the data extents of {}", path.display()))?;
        let mut ranges: Vec<BmapRange> = Vec::new();
        for extent in extents {
            let first = extent.start / block_size;
            let last = (extent.end.div_ceil(block_size) - 1).min(blocks_count - 1);
            match ranges.last_mut() {
                // Extents that touch (or share a block once widened) form one range.
                Some(prev) if first <= prev.last + 1 => prev.last = prev.last.max(last),
                _ => ranges.push(BmapRange {
                    first,
                    last,
                    checksum: None,
                }),
            }
        }
        let mut bmap = Bmap {
            version: FORMAT_VERSION.to_string(),
            image_size,
            block_size,
            blocks_count,
            mapped_blocks_count: ranges.iter().map(BmapRange::blocks).sum(),
            checksum_type: Some(ChecksumType::Sha256),
            ranges,
        };
        let mut buf = vec![0u8; 1 << 20];
        for i in 0..bmap.ranges.len() {
            let bytes = bmap.byte_range(&bmap.ranges[i]);
            let sum = hash_file_range(&file, bytes, ChecksumType::Sha256, &mut buf)
                .with_context(|| format!("reading {} to checksum it", path.display()))?;
            bmap.ranges[i].checksum = Some(sum);
        }
        Ok(bmap)
    }

    /// A map that says every block holds data and carries no checksums: what a
    /// flasher uses for an image without a `.bmap` (write everything, like dd).
    pub fn full(image_size: u64) -> Bmap {
        let block_size = DEFAULT_BLOCK_SIZE;
        let blocks_count = image_size.div_ceil(block_size);
        let ranges = if blocks_count == 0 {
            Vec::new()
        } else {
            vec![BmapRange {
                first: 0,
                last: blocks_count - 1,
                checksum: None,
            }]
        };
        Bmap {
            version: FORMAT_VERSION.to_string(),
            image_size,
            block_size,
            blocks_count,
            mapped_blocks_count: blocks_count,
            checksum_type: None,
            ranges,
        }
    }

    /// The bytes of the image a range covers (the last block may be short).
    pub fn byte_range(&self, r: &BmapRange) -> Range<u64> {
        let start = r.first * self.block_size;
        let end = ((r.last + 1) * self.block_size).min(self.image_size);
        start..end
    }

    /// Total bytes in mapped ranges.
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| self.byte_range(r)).map(|b| b.end - b.start).sum()
    }

    /// Reads and parses a `.bmap` file.
    pub fn load(path: &Path) -> anyhow::Result<Bmap> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading bmap {}", path.display()))?;
        Bmap::parse(&text).with_context(|| {
            format!(
                "{} is not a usable bmap file (regenerate it with `bmaptool create IMAGE`)",
                path.display()
            )
        })
    }

    /// Writes the XML to `path`.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        piha_atomic::write(path, self.to_xml().as_bytes(), None).with_context(|| format!("writing bmap {}", path.display()))
    }

    /// The file text, laid out as `bmaptool create` lays it out, with the file checksum filled in.
    pub fn to_xml(&self) -> String {
        // Format 2.0 requires <ChecksumType>; a map without range checksums still
        // needs one for the file checksum.
        let kind = self.checksum_type.unwrap_or(ChecksumType::Sha256);
        let percent = if self.blocks_count == 0 {
            0.0
        } else {
            self.mapped_blocks_count as f64 * 100.0 / self.blocks_count as f64
        };
        let mut x = String::new();
        x.push_str("<?xml version=\"1.0\" ?>\n");
        x.push_str(HEADER_COMMENT);
        let _ = writeln!(x, "<bmap version=\"{FORMAT_VERSION}\">");
        let _ = writeln!(x, "    <!-- Image size in bytes: {} -->", human_size(self.image_size));
        let _ = writeln!(x, "    <ImageSize> {} </ImageSize>\n", self.image_size);
        x.push_str("    <!-- Size of a block in bytes -->\n");
        let _ = writeln!(x, "    <BlockSize> {} </BlockSize>\n", self.block_size);
        x.push_str("    <!-- Count of blocks in the image file -->\n");
        let _ = writeln!(x, "    <BlocksCount> {} </BlocksCount>\n", self.blocks_count);
        // bmaptool writes these two before it knows the values, as blanks as
        // wide as the image's own numbers, and overwrites them at the end; the
        // same padding makes the files identical.
        x.push_str("    <!-- Count of mapped blocks: ");
        let count_comment_at = x.len();
        let _ = writeln!(
            x,
            "{} or {}   -->",
            " ".repeat(human_size(self.image_size).len()),
            " ".repeat("100.0%".len())
        );
        x.push_str("    <MappedBlocksCount> ");
        let count_at = x.len();
        let _ = writeln!(x, "{} </MappedBlocksCount>\n", " ".repeat(self.blocks_count.to_string().len()));
        x.push_str("    <!-- Type of checksum used in this file -->\n");
        let _ = writeln!(x, "    <ChecksumType> {} </ChecksumType>\n", kind.name());
        x.push_str("    <!-- The checksum of this bmap file. When it is calculated, the value of\n");
        x.push_str("         the checksum has be zero (all ASCII \"0\" symbols).  -->\n");
        x.push_str("    <BmapFileChecksum> ");
        let checksum_at = x.len();
        x.push_str(&"0".repeat(kind.hex_len()));
        x.push_str(" </BmapFileChecksum>\n\n");
        x.push_str("    <!-- The block map which consists of elements which may either be a\n");
        x.push_str("         range of blocks or a single block. The 'chksum' attribute\n");
        x.push_str("         (if present) is the checksum of this blocks range. -->\n");
        x.push_str("    <BlockMap>\n");
        for r in &self.ranges {
            let attr = r.checksum.as_ref().map(|c| format!(" chksum=\"{c}\"")).unwrap_or_default();
            if r.first == r.last {
                let _ = writeln!(x, "        <Range{attr}> {} </Range>", r.first);
            } else {
                let _ = writeln!(x, "        <Range{attr}> {}-{} </Range>", r.first, r.last);
            }
        }
        x.push_str("    </BlockMap>\n");
        x.push_str("</bmap>\n");
        overwrite(
            &mut x,
            count_comment_at,
            &format!("{} or {percent:.1}%", human_size(self.mapped_blocks_count * self.block_size)),
        );
        overwrite(&mut x, count_at, &self.mapped_blocks_count.to_string());
        let mut hasher = RangeHasher::new(kind);
        hasher.update(x.as_bytes());
        let sum = hasher.finish_hex();
        x.replace_range(checksum_at..checksum_at + kind.hex_len(), &sum);
        x
    }

    /// Parses bmap XML (format 1.0 to 2.x), verifies the file checksum where the
    /// format has one, and checks that the numbers agree with each other.
    pub fn parse(xml: &str) -> anyhow::Result<Bmap> {
        let raw = parse_elements(xml)?;
        let version = raw.version.context("the <bmap> element has no version attribute")?;
        let (major, minor) = parse_version(&version)?;
        if major > 2 {
            bail!("bmap format version {version} is newer than the 2.x piha understands");
        }
        let number = |name: &str, v: &Option<String>| -> anyhow::Result<u64> {
            let text = v.as_deref().with_context(|| format!("<{name}> is missing"))?;
            text.trim()
                .parse::<u64>()
                .with_context(|| format!("<{name}> is {text:?}, expected a whole number"))
        };
        let image_size = number("ImageSize", &raw.image_size)?;
        let block_size = number("BlockSize", &raw.block_size)?;
        let blocks_count = number("BlocksCount", &raw.blocks_count)?;
        let mapped_blocks_count = number("MappedBlocksCount", &raw.mapped_blocks_count)?;
        // Which checksum the version carries, as bmaptool's _parse_bmap decides it.
        let (checksum_type, file_checksum) = if major > 1 || (major == 1 && minor == 4) {
            let name = raw
                .checksum_type
                .as_deref()
                .context("<ChecksumType> is missing (required since format 1.4)")?;
            let kind = ChecksumType::from_name(name)
                .with_context(|| format!("<ChecksumType> {name:?} is not supported; expected sha256 or sha1"))?;
            (Some(kind), raw.bmap_file_checksum.clone())
        } else if major == 1 && minor == 3 {
            (Some(ChecksumType::Sha1), raw.bmap_file_sha1.clone())
        } else {
            (None, None)
        };
        if let Some(kind) = checksum_type {
            let expected = file_checksum.context("the bmap file checksum (<BmapFileChecksum>) is missing")?;
            verify_file_checksum(xml, expected.trim(), kind)?;
        }
        let attr_name = if major == 1 && minor == 3 { "sha1" } else { "chksum" };
        let mut ranges = Vec::with_capacity(raw.ranges.len());
        for (text, attrs) in &raw.ranges {
            let text = text.trim();
            let (first, last) = match text.split_once('-') {
                Some((a, b)) => (parse_block(a, text)?, parse_block(b, text)?),
                None => {
                    let n = parse_block(text, text)?;
                    (n, n)
                }
            };
            let checksum = attrs
                .iter()
                .find(|(k, _)| k == attr_name)
                .map(|(_, v)| v.trim().to_ascii_lowercase());
            if let (Some(kind), Some(c)) = (checksum_type, &checksum) {
                if c.len() != kind.hex_len() || !c.bytes().all(|b| b.is_ascii_hexdigit()) {
                    bail!("<Range> {text}: checksum {c:?} is not a {} hex digest", kind.name());
                }
            }
            ranges.push(BmapRange { first, last, checksum });
        }
        let bmap = Bmap {
            version,
            image_size,
            block_size,
            blocks_count,
            mapped_blocks_count,
            checksum_type,
            ranges,
        };
        bmap.check()?;
        Ok(bmap)
    }

    /// The numbers must agree: a flasher trusts them to decide what to write.
    fn check(&self) -> anyhow::Result<()> {
        if self.block_size == 0 || self.block_size % 512 != 0 {
            bail!("<BlockSize> {} is not a positive multiple of 512", self.block_size);
        }
        if self.blocks_count != self.image_size.div_ceil(self.block_size) {
            bail!(
                "<BlocksCount> {} does not match <ImageSize> {} / <BlockSize> {} (expected {})",
                self.blocks_count,
                self.image_size,
                self.block_size,
                self.image_size.div_ceil(self.block_size)
            );
        }
        let mut next = 0u64;
        for r in &self.ranges {
            if r.first > r.last {
                bail!("<Range> {}-{}: first block is after the last", r.first, r.last);
            }
            if r.first < next {
                bail!(
                    "<Range> {}-{} overlaps or comes before the range ahead of it; ranges must be ascending",
                    r.first,
                    r.last
                );
            }
            if r.last >= self.blocks_count {
                bail!("<Range> {}-{} goes past the image's {} blocks", r.first, r.last, self.blocks_count);
            }
            next = r.last + 1;
        }
        let mapped: u64 = self.ranges.iter().map(BmapRange::blocks).sum();
        if mapped != self.mapped_blocks_count {
            bail!(
                "<MappedBlocksCount> {} does not match the {mapped} blocks the <Range>s cover",
                self.mapped_blocks_count
            );
        }
        Ok(())
    }
}

const HEADER_COMMENT: &str = r#"<!-- This file contains the block map for an image file, which is basically
     a list of useful (mapped) block numbers in the image file. In other words,
     it lists only those blocks which contain data (boot sector, partition
     table, file-system metadata, files, directories, extents, etc). These
     blocks have to be copied to the target device. The other blocks do not
     contain any useful data and do not have to be copied to the target
     device.

     The block map an optimization which allows to copy or flash the image to
     the image quicker than copying of flashing the entire image. This is
     because with bmap less data is copied: <MappedBlocksCount> blocks instead
     of <BlocksCount> blocks.

     Besides the machine-readable data, this file contains useful commentaries
     which contain human-readable information like image size, percentage of
     mapped data, etc.

     The 'version' attribute is the block map file format version in the
     'major.minor' format. The version major number is increased whenever an
     incompatible block map format change is made. The minor number changes
     in case of minor backward-compatible changes. -->

"#;

/// Overwrites bytes from `at` on, as bmaptool's seek-and-write does (ASCII only).
fn overwrite(x: &mut String, at: usize, text: &str) {
    let end = (at + text.len()).min(x.len());
    x.replace_range(at..end, text);
}

/// bmaptool's `human_size`, for the comments.
fn human_size(size: u64) -> String {
    if size == 1 {
        return "1 byte".to_string();
    }
    if size < 512 {
        return format!("{size} bytes");
    }
    let mut s = size as f64;
    for unit in ["KiB", "MiB", "GiB", "TiB"] {
        s /= 1024.0;
        if s < 1024.0 {
            return format!("{s:.1} {unit}");
        }
    }
    format!("{s:.1} EiB")
}

/// Byte ranges holding data, from SEEK_DATA/SEEK_HOLE (a file system without
/// them reports the whole file as data, which is correct, just not sparse).
pub fn data_extents(file: &File, size: u64) -> io::Result<Vec<Range<u64>>> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match rustix::fs::seek(file, SeekFrom::Data(pos)) {
            Ok(p) => p,
            // ENXIO: no data at or after pos.
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        if start >= size {
            break;
        }
        let end = rustix::fs::seek(file, SeekFrom::Hole(start))?.min(size);
        out.push(start..end);
        pos = end;
    }
    Ok(out)
}

fn hash_file_range(file: &File, bytes: Range<u64>, kind: ChecksumType, buf: &mut [u8]) -> io::Result<String> {
    let mut hasher = RangeHasher::new(kind);
    let mut pos = bytes.start;
    while pos < bytes.end {
        let n = (bytes.end - pos).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], pos)?;
        hasher.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(hasher.finish_hex())
}

fn verify_file_checksum(xml: &str, expected: &str, kind: ChecksumType) -> anyhow::Result<()> {
    if expected.len() != kind.hex_len() {
        bail!("the bmap file checksum {expected:?} is not a {} hex digest", kind.name());
    }
    // As bmaptool does: the first occurrence of the value is the field itself.
    let at = xml.find(expected).context("the bmap file checksum is not in the file text")?;
    let mut zeroed = xml.as_bytes().to_vec();
    zeroed[at..at + expected.len()].fill(b'0');
    let mut hasher = RangeHasher::new(kind);
    hasher.update(&zeroed);
    let actual = hasher.finish_hex();
    if !actual.eq_ignore_ascii_case(expected) {
        bail!("the bmap file checksum does not match (file says {expected}, contents hash to {actual}): the file was edited or damaged");
    }
    Ok(())
}

fn parse_version(v: &str) -> anyhow::Result<(u32, u32)> {
    let (a, b) = v
        .trim()
        .split_once('.')
        .with_context(|| format!("bmap version {v:?} is not major.minor"))?;
    let major = a.parse().with_context(|| format!("bmap version {v:?} is not major.minor"))?;
    let minor = b.parse().with_context(|| format!("bmap version {v:?} is not major.minor"))?;
    Ok((major, minor))
}

fn parse_block(s: &str, range: &str) -> anyhow::Result<u64> {
    s.trim()
        .parse()
        .with_context(|| format!("<Range> {range:?} is not FIRST-LAST or a block number"))
}

/// The elements of a bmap file, as text, before interpretation.
#[derive(Default)]
struct RawBmap {
    version: Option<String>,
    image_size: Option<String>,
    block_size: Option<String>,
    blocks_count: Option<String>,
    mapped_blocks_count: Option<String>,
    checksum_type: Option<String>,
    bmap_file_checksum: Option<String>,
    bmap_file_sha1: Option<String>,
    /// (text, attributes) of each <Range>.
    ranges: Vec<(String, Vec<(String, String)>)>,
}

fn parse_elements(xml: &str) -> anyhow::Result<RawBmap> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut raw = RawBmap::default();
    let mut path: Vec<String> = Vec::new();
    let mut range_attrs: Vec<(String, String)> = Vec::new();
    let mut text = String::new();
    let mut saw_root = false;
    loop {
        let event = reader
            .read_event()
            .with_context(|| format!("XML error at byte {}", reader.error_position()))?;
        match event {
            Event::Start(e) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if path.is_empty() {
                    if name != "bmap" {
                        bail!("the root element is <{name}>, expected <bmap>");
                    }
                    saw_root = true;
                    for a in e.attributes() {
                        let a = a.context("bad attribute on <bmap>")?;
                        if a.key.as_ref() == b"version" {
                            raw.version = Some(a.unescape_value().context("bad version attribute")?.into_owned());
                        }
                    }
                }
                if name == "Range" {
                    range_attrs.clear();
                    for a in e.attributes() {
                        let a = a.context("bad attribute on <Range>")?;
                        let key = String::from_utf8_lossy(a.key.as_ref()).into_owned();
                        range_attrs.push((key, a.unescape_value().context("bad attribute on <Range>")?.into_owned()));
                    }
                }
                path.push(name);
                text.clear();
            }
            Event::Text(t) => text.push_str(&t.unescape().context("bad text")?),
            Event::End(_) => {
                let name = path.pop().unwrap_or_default();
                let value = std::mem::take(&mut text);
                match (path.len(), name.as_str()) {
                    (1, "ImageSize") => raw.image_size = Some(value),
                    (1, "BlockSize") => raw.block_size = Some(value),
                    (1, "BlocksCount") => raw.blocks_count = Some(value),
                    (1, "MappedBlocksCount") => raw.mapped_blocks_count = Some(value),
                    (1, "ChecksumType") => raw.checksum_type = Some(value),
                    (1, "BmapFileChecksum") => raw.bmap_file_checksum = Some(value),
                    (1, "BmapFileSHA1") => raw.bmap_file_sha1 = Some(value),
                    (2, "Range") => raw.ranges.push((value, std::mem::take(&mut range_attrs))),
                    _ => {}
                }
            }
            Event::Empty(e) if e.local_name().as_ref() == b"Range" => bail!("an empty <Range/> has no blocks"),
            Event::Eof => break,
            _ => {}
        }
    }
    if !saw_root {
        bail!("no <bmap> element: this is not a bmap file");
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, SeekFrom, Write};

    use super::{Bmap, BmapRange, ChecksumType, human_size};

    fn sparse_image() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.img");
        let mut f = std::fs::File::create(&path).unwrap();
        f.set_len(10 * 1024 * 1024 + 1000).unwrap();
        f.write_all(&[1u8; 5000]).unwrap();
        f.seek(SeekFrom::Start(3 * 1024 * 1024)).unwrap();
        f.write_all(&[2u8; 8192]).unwrap();
        // A short last block.
        f.seek(SeekFrom::Start(10 * 1024 * 1024 + 10)).unwrap();
        f.write_all(&[3u8; 990]).unwrap();
        f.sync_all().unwrap();
        (dir, path)
    }

    #[test]
    fn maps_data_and_round_trips_through_xml() {
        let (_dir, path) = sparse_image();
        let bmap = Bmap::from_image(&path).unwrap();
        let spans: Vec<(u64, u64)> = bmap.ranges.iter().map(|r| (r.first, r.last)).collect();
        assert_eq!(spans, vec![(0, 1), (768, 769), (2560, 2560)]);
        assert_eq!(bmap.blocks_count, 2561);
        assert_eq!(bmap.mapped_blocks_count, 5);
        assert_eq!(bmap.byte_range(&bmap.ranges[2]), 10 * 1024 * 1024..10 * 1024 * 1024 + 1000);
        let xml = bmap.to_xml();
        let back = Bmap::parse(&xml).unwrap();
        assert_eq!(back, bmap);
    }

    #[test]
    fn edited_file_fails_its_checksum() {
        let (_dir, path) = sparse_image();
        let xml = Bmap::from_image(&path)
            .unwrap()
            .to_xml()
            .replace("<BlockSize> 4096", "<BlockSize> 4096 ");
        let err = format!("{:#}", Bmap::parse(&xml).unwrap_err());
        assert!(err.contains("checksum does not match"), "{err}");
    }

    #[test]
    fn old_format_without_checksums_parses() {
        let xml = "<?xml version=\"1.0\" ?>\n<bmap version=\"1.2\">\n<ImageSize> 8192 </ImageSize>\n<BlockSize> 4096 </BlockSize>\n\
                   <BlocksCount> 2 </BlocksCount>\n<MappedBlocksCount> 1 </MappedBlocksCount>\n<BlockMap>\n<Range> 1 </Range>\n</BlockMap>\n</bmap>\n";
        let bmap = Bmap::parse(xml).unwrap();
        assert_eq!(bmap.checksum_type, None);
        assert_eq!(
            bmap.ranges,
            vec![BmapRange {
                first: 1,
                last: 1,
                checksum: None
            }]
        );
    }

    #[test]
    fn inconsistent_counts_are_refused() {
        let mut bmap = Bmap::full(8192);
        bmap.mapped_blocks_count = 1;
        let err = format!("{:#}", Bmap::parse(&bmap.to_xml()).unwrap_err());
        assert!(err.contains("MappedBlocksCount"), "{err}");
        bmap.mapped_blocks_count = 2;
        bmap.ranges.push(BmapRange {
            first: 1,
            last: 1,
            checksum: None,
        });
        bmap.mapped_blocks_count = 3;
        let err = format!("{:#}", Bmap::parse(&bmap.to_xml()).unwrap_err());
        assert!(err.contains("overlaps"), "{err}");
    }

    #[test]
    fn full_map_covers_everything() {
        let bmap = Bmap::full(10_000);
        assert_eq!(bmap.mapped_bytes(), 10_000);
        assert_eq!(bmap.checksum_type, None);
        assert_eq!(ChecksumType::Sha256.hex_len(), 64);
    }

    #[test]
    fn human_sizes_match_bmaptool() {
        assert_eq!(human_size(1), "1 byte");
        assert_eq!(human_size(100), "100 bytes");
        assert_eq!(human_size(10 * 1024 * 1024), "10.0 MiB");
    }
}
