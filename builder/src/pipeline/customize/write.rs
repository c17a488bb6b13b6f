//! Writing `root.tar`: the tree in path order, every mtime the build's
//! epoch, owners and extended attributes kept, names as raw bytes.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::Context;
use piha_atomic::AtomicFile;
use tar::{EntryType, Header};

use super::tree::{Data, Kind, Node, Tree};
use crate::progress::Task;

/// Reads from a file at a moving offset without seeking (the source is shared).
struct ReadAt<'a> {
    file: &'a File,
    offset: u64,
    left: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.offset)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "rootfs tar ends inside a file",
            ));
        }
        self.offset += n as u64;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Puts a name into a ustar header (name, or prefix + name); false if it does not fit.
fn set_ustar_name(header: &mut Header, name: &[u8]) -> bool {
    let Some(ustar) = header.as_ustar_mut() else { return false };
    if name.len() <= ustar.name.len() {
        ustar.name[..name.len()].copy_from_slice(name);
        return true;
    }
    // Split at a '/' so that prefix <= 155 and the rest <= 100 bytes.
    for (i, b) in name.iter().enumerate().rev() {
        if *b == b'/' && i <= ustar.prefix.len() && name.len() - i - 1 <= ustar.name.len() && i > 0 && i + 1 < name.len() {
            ustar.prefix[..i].copy_from_slice(&name[..i]);
            let rest = &name[i + 1..];
            ustar.name[..rest.len()].copy_from_slice(rest);
            return true;
        }
    }
    false
}

pub(super) fn write_tar(tree: &Tree, source: &File, out: &Path, epoch: u64, task: &Task) -> anyhow::Result<u64> {
    let tmp = AtomicFile::create(out, None).with_context(|| format!("creating a file beside {}", out.display()))?;
    let mut builder = tar::Builder::new(BufWriter::with_capacity(1 << 20, tmp));
    for (path, node) in tree {
        let (header, pax) = header(path, node, epoch)?;
        if !pax.is_empty() {
            builder.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        }
        append_data(&mut builder, &header, node, source)?;
        task.inc(header.size()?);
    }
    let mut writer = builder.into_inner()?;
    writer.flush()?;
    let mut tmp = writer.into_inner().map_err(|e| e.into_error())?;
    let bytes = tmp.file()?.metadata()?.len();
    tmp.commit().with_context(|| format!("putting {} in place", out.display()))?;
    Ok(bytes)
}

/// pax records of one entry: (key, value).
type Pax = Vec<(String, Vec<u8>)>;

/// The ustar header of one entry, and the pax records for what does not fit in it.
fn header(path: &str, node: &Node, epoch: u64) -> anyhow::Result<(Header, Pax)> {
    let mut name = String::from("./");
    name.push_str(path);
    if matches!(node.kind, Kind::Dir) && !path.is_empty() {
        name.push('/');
    }
    let mut header = Header::new_ustar();
    let mut pax: Pax = Vec::new();
    // Names go into the ustar fields as raw bytes whenever they fit: a pax
    // `path` record is UTF-8 that libarchive (mke2fs -d) must convert to the
    // locale, which fails for non-ASCII names under LANG=C.
    if !set_ustar_name(&mut header, name.as_bytes()) {
        pax.push(("path".into(), name.clone().into_bytes()));
        let short: Vec<u8> = name.bytes().filter(u8::is_ascii).take(99).collect();
        set_ustar_name(&mut header, &short);
    }
    let (entry_type, size) = match &node.kind {
        Kind::File(d) => (EntryType::Regular, d.size()),
        Kind::Dir => (EntryType::Directory, 0),
        Kind::Symlink(_) => (EntryType::Symlink, 0),
        Kind::HardLink(_) => (EntryType::Link, 0),
        Kind::Char => (EntryType::Char, 0),
        Kind::Block => (EntryType::Block, 0),
        Kind::Fifo => (EntryType::Fifo, 0),
    };
    set_link(&mut header, &mut pax, node)?;
    if pax.iter().any(|(_, v)| !v.is_ascii()) {
        // Long non-ASCII names: raw bytes, no charset conversion (pax, libarchive).
        pax.insert(0, ("hdrcharset".into(), b"BINARY".to_vec()));
    }
    pax.extend(node.xattrs.iter().cloned());
    header.set_entry_type(entry_type);
    header.set_size(size);
    header.set_mode(node.mode);
    header.set_uid(node.uid);
    header.set_gid(node.gid);
    header.set_mtime(epoch);
    if matches!(node.kind, Kind::Char | Kind::Block) {
        header.set_device_major(node.dev.0)?;
        header.set_device_minor(node.dev.1)?;
    }
    header.set_cksum();
    Ok((header, pax))
}

/// A symlink's or hard link's target: in the header when it fits, else a pax `linkpath`.
fn set_link(header: &mut Header, pax: &mut Pax, node: &Node) -> anyhow::Result<()> {
    let link: Vec<u8> = match &node.kind {
        Kind::Symlink(t) => t.clone(),
        Kind::HardLink(t) => format!("./{t}").into_bytes(),
        _ => return Ok(()),
    };
    if link.len() > 100 {
        let short: Vec<u8> = link.iter().copied().filter(u8::is_ascii).take(99).collect();
        pax.push(("linkpath".into(), link));
        header.set_link_name_literal(&short)?;
    } else {
        header.set_link_name_literal(&link)?;
    }
    Ok(())
}

/// Appends the entry with its data, read from wherever it is.
fn append_data<W: Write>(builder: &mut tar::Builder<W>, header: &Header, node: &Node, source: &File) -> anyhow::Result<()> {
    match &node.kind {
        Kind::File(Data::Rootfs { offset, size }) => builder.append(
            header,
            ReadAt {
                file: source,
                offset: *offset,
                left: *size,
            },
        )?,
        Kind::File(Data::Bytes(b)) => builder.append(header, b.as_slice())?,
        Kind::File(Data::Disk { path, size }) => {
            let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            builder.append(header, f.take(*size))?;
        }
        _ => builder.append(header, std::io::empty())?,
    }
    Ok(())
}
