//! Indexing `rootfs.tar`: every header read once, file data left in place
//! (a byte range of the tar) until the output is written.

use std::fs::File;
use std::path::Path;

use anyhow::bail;
use tar::{Archive, EntryType};

use super::tree::{Data, Kind, Node, Tree};

/// `./usr/bin/` → `usr/bin`; `./` → ``.
pub(super) fn normalize(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let s = s.trim_start_matches("./").trim_start_matches('/').trim_end_matches('/');
    if s == "." { String::new() } else { s.to_string() }
}

/// Reads every header of the rootfs tar (data is skipped by seeking).
pub(super) fn index(rootfs: &Path) -> anyhow::Result<Tree> {
    let file = File::open(rootfs)?;
    let mut archive = Archive::new(file);
    let mut tree = Tree::new();
    for entry in archive.entries_with_seek()? {
        let mut entry = entry?;
        let path = normalize(&entry.path_bytes());
        let mut xattrs = Vec::new();
        if let Some(exts) = entry.pax_extensions()? {
            for ext in exts {
                let ext = ext?;
                let key = ext.key().unwrap_or_default();
                if key.starts_with("SCHILY.xattr.") || key.starts_with("LIBARCHIVE.xattr.") {
                    xattrs.push((key.to_string(), ext.value_bytes().to_vec()));
                }
            }
        }
        let header = entry.header();
        let kind = match header.entry_type() {
            EntryType::Regular | EntryType::Continuous => Kind::File(Data::Rootfs {
                offset: entry.raw_file_position(),
                size: entry.size(),
            }),
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => Kind::Symlink(entry.link_name_bytes().map(|l| l.into_owned()).unwrap_or_default()),
            EntryType::Link => Kind::HardLink(normalize(&entry.link_name_bytes().unwrap_or_default())),
            EntryType::Char => Kind::Char,
            EntryType::Block => Kind::Block,
            EntryType::Fifo => Kind::Fifo,
            other => bail!("{path}: tar entry type {other:?} is not supported in a root filesystem"),
        };
        // Only device nodes carry numbers; other headers may leave the fields blank.
        let dev = match kind {
            Kind::Char | Kind::Block => (header.device_major()?.unwrap_or(0), header.device_minor()?.unwrap_or(0)),
            _ => (0, 0),
        };
        let node = Node {
            kind,
            mode: header.mode()? & 0o7777,
            uid: header.uid()?,
            gid: header.gid()?,
            dev,
            xattrs,
            from_rootfs: true,
        };
        tree.insert(path, node);
    }
    Ok(tree)
}
