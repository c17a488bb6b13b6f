//! Adding files to the tree: overlay directories copied over the root (modes
//! normalized), and the build's own entries.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, bail};

use super::tree::{Data, Kind, Node, Tree, canonical, ensure_parents, insert};
use super::{Content, NewEntry};

/// Mode for an overlay file: git keeps only the executable bit, so modes are
/// normalized (the same checkout gives the same image under any umask), with
/// the few exceptions that must be stricter.
pub(super) fn overlay_mode(rel: &str, executable: bool) -> u32 {
    // sudo ignores drop-ins that are group- or world-writable; 0440 is its convention.
    if rel.starts_with("etc/sudoers.d/") {
        return 0o440;
    }
    if executable { 0o755 } else { 0o644 }
}

/// Every path under `dir`, sorted, relative, with its metadata.
pub(super) fn walk(dir: &Path) -> anyhow::Result<Vec<(String, std::fs::Metadata)>> {
    fn visit(root: &Path, dir: &Path, out: &mut Vec<(String, std::fs::Metadata)>) -> anyhow::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading {}", dir.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let meta = std::fs::symlink_metadata(&path).with_context(|| format!("reading {}", path.display()))?;
            let rel = path.strip_prefix(root).expect("under root").to_string_lossy().into_owned();
            let is_dir = meta.is_dir();
            out.push((rel, meta));
            if is_dir {
                visit(root, &path, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    visit(dir, dir, &mut out)?;
    Ok(out)
}

pub(super) fn add_overlay(tree: &mut Tree, dir: &Path) -> anyhow::Result<()> {
    for (rel, meta) in walk(dir)? {
        let path = canonical(tree, &rel);
        let full = dir.join(&rel);
        let node = if meta.is_dir() {
            Node::new(Kind::Dir, 0o755)
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&full).with_context(|| format!("reading {}", full.display()))?;
            Node::new(Kind::Symlink(target.to_string_lossy().into_owned().into_bytes()), 0o777)
        } else if meta.is_file() {
            let mode = overlay_mode(&path, meta.mode() & 0o111 != 0);
            Node::new(
                Kind::File(Data::Disk {
                    path: full,
                    size: meta.len(),
                }),
                mode,
            )
        } else {
            bail!("{}: only files, directories and symlinks can be in an overlay", full.display());
        };
        insert(tree, path, node);
    }
    Ok(())
}

pub(super) fn add_entry(tree: &mut Tree, e: &NewEntry) {
    let path = canonical(tree, e.path.trim_start_matches('/'));
    let kind = match &e.content {
        Content::File(bytes) => Kind::File(Data::Bytes(bytes.clone())),
        Content::Dir => Kind::Dir,
        Content::Symlink(t) => Kind::Symlink(t.clone().into_bytes()),
    };
    let node = Node {
        kind,
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        dev: (0, 0),
        xattrs: Vec::new(),
        from_rootfs: false,
    };
    ensure_parents(tree, &path);
    // Unlike overlays, the build's own directories set their owner and mode (home/piha/.ssh).
    tree.insert(path, node);
}
