//! The root filesystem as an ordered map of paths, and the path rules on it:
//! symlinked parents resolved (`lib` → `usr/lib`), missing parents added,
//! links followed, one-component globs.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use anyhow::{Context, bail};

/// Where an entry's file data is.
#[derive(Debug, Clone)]
pub(super) enum Data {
    /// A byte range of the rootfs tar.
    Rootfs {
        offset: u64,
        size: u64,
    },
    Bytes(Vec<u8>),
    Disk {
        path: PathBuf,
        size: u64,
    },
}

impl Data {
    pub(super) fn size(&self) -> u64 {
        match self {
            Data::Rootfs { size, .. } | Data::Disk { size, .. } => *size,
            Data::Bytes(b) => b.len() as u64,
        }
    }
}

#[derive(Debug, Clone)]
pub(super) enum Kind {
    File(Data),
    Dir,
    Symlink(Vec<u8>),
    /// Path of the regular file this is a hard link to (emitted earlier in the tar).
    HardLink(String),
    Char,
    Block,
    Fifo,
}

#[derive(Debug, Clone)]
pub(super) struct Node {
    pub(super) kind: Kind,
    pub(super) mode: u32,
    pub(super) uid: u64,
    pub(super) gid: u64,
    pub(super) dev: (u32, u32),
    /// pax xattr records (`SCHILY.xattr.*`), kept byte for byte.
    pub(super) xattrs: Vec<(String, Vec<u8>)>,
    /// True if it came from the rootfs tar unchanged (presets only read overlays').
    pub(super) from_rootfs: bool,
}

impl Node {
    pub(super) fn new(kind: Kind, mode: u32) -> Node {
        Node {
            kind,
            mode,
            uid: 0,
            gid: 0,
            dev: (0, 0),
            xattrs: Vec::new(),
            from_rootfs: false,
        }
    }
}

/// The tree being built: normalized path (no leading `./` or `/`, root = "") → node.
pub(super) type Tree = BTreeMap<String, Node>;

/// Resolves symlinked parent directories (`lib` → `usr/lib` on merged-/usr
/// systems) so an overlay's `lib/systemd/system/x` lands where the rootfs keeps
/// it instead of clashing with the symlink.
pub(super) fn canonical(tree: &Tree, path: &str) -> String {
    let mut parts: Vec<String> = path.split('/').filter(|p| !p.is_empty()).map(str::to_string).collect();
    let mut i = 0;
    let mut hops = 0;
    // The last component is the entry itself and is never resolved.
    while i + 1 < parts.len() && hops < 40 {
        let prefix = parts[..=i].join("/");
        match tree.get(&prefix).map(|n| &n.kind) {
            Some(Kind::Symlink(target)) => {
                hops += 1;
                let target = String::from_utf8_lossy(target).into_owned();
                let mut base: Vec<String> = if target.starts_with('/') { Vec::new() } else { parts[..i].to_vec() };
                for comp in target.split('/') {
                    match comp {
                        "" | "." => {}
                        ".." => {
                            base.pop();
                        }
                        c => base.push(c.to_string()),
                    }
                }
                let rest = parts[i + 1..].to_vec();
                i = base.len().saturating_sub(1);
                parts = base;
                parts.extend(rest);
                if parts.is_empty() {
                    break;
                }
            }
            _ => i += 1,
        }
    }
    parts.join("/")
}

/// Adds missing parent directories (root-owned, 0755).
pub(super) fn ensure_parents(tree: &mut Tree, path: &str) {
    let mut at = 0;
    while let Some(slash) = path[at..].find('/') {
        let parent = &path[..at + slash];
        tree.entry(parent.to_string()).or_insert_with(|| Node::new(Kind::Dir, 0o755));
        at += slash + 1;
    }
}

/// Inserts a node. A directory added over an existing directory keeps the
/// existing metadata (an overlay's `etc/` must not change the rootfs's `/etc`),
/// and over a symlink keeps the symlink (an overlay's `lib/` is the rootfs's
/// `lib -> usr/lib`; its files are resolved through it by [`canonical`]).
pub(super) fn insert(tree: &mut Tree, path: String, node: Node) {
    if matches!(node.kind, Kind::Dir) && tree.get(&path).is_some_and(|n| matches!(n.kind, Kind::Dir | Kind::Symlink(_))) {
        return;
    }
    ensure_parents(tree, &path);
    tree.insert(path, node);
}

/// Reads a file node's data.
pub(super) fn read_node(source: &File, node: &Node) -> anyhow::Result<Vec<u8>> {
    match &node.kind {
        Kind::File(Data::Rootfs { offset, size }) => {
            let mut buf = vec![0u8; usize::try_from(*size)?];
            source.read_exact_at(&mut buf, *offset).context("reading the rootfs tar")?;
            Ok(buf)
        }
        Kind::File(Data::Bytes(b)) => Ok(b.clone()),
        Kind::File(Data::Disk { path, .. }) => std::fs::read(path).with_context(|| format!("reading {}", path.display())),
        _ => bail!("not a regular file"),
    }
}

/// Follows symlinks (and hard links) to the node they end at.
pub(super) fn resolve<'a>(tree: &'a Tree, path: &str) -> Option<(String, &'a Node)> {
    let mut path = canonical(tree, path);
    for _ in 0..40 {
        let node = tree.get(&path)?;
        match &node.kind {
            Kind::Symlink(t) => {
                let t = String::from_utf8_lossy(t).into_owned();
                let joined = match (t.starts_with('/'), path.rfind('/')) {
                    (true, _) | (false, None) => t,
                    (false, Some(i)) => format!("{}/{t}", &path[..i]),
                };
                path = canonical(tree, &normalize_dots(&joined));
            }
            Kind::HardLink(t) => path = t.clone(),
            _ => return Some((path, node)),
        }
    }
    None
}

/// Removes `.` and `..` components.
pub(super) fn normalize_dots(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}

/// `*` and `?` match within one path component.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    fn inner(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => inner(&p[1..], s) || (s.first().is_some_and(|c| *c != b'/') && inner(p, &s[1..])),
            (Some(b'?'), Some(c)) if *c != b'/' => inner(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b && *a != b'?' => inner(&p[1..], &s[1..]),
            _ => false,
        }
    }
    inner(pattern.as_bytes(), path.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::{glob_match, normalize_dots};

    #[test]
    fn globs_stay_in_one_component() {
        assert!(glob_match("etc/ssh/ssh_host_*", "etc/ssh/ssh_host_rsa_key.pub"));
        assert!(!glob_match("etc/*", "etc/ssh/sshd_config"));
        assert!(glob_match("boot/vmlinuz-*", "boot/vmlinuz-6.1.0-50-amd64"));
        assert!(glob_match(
            "usr/lib/linux-image-*/broadcom/bcm2711-rpi-?-b.dtb",
            "usr/lib/linux-image-6.1.0-50-arm64/broadcom/bcm2711-rpi-4-b.dtb"
        ));
        assert!(!glob_match("a?c", "a/c"));
    }

    #[test]
    fn dots() {
        assert_eq!(normalize_dots("usr/lib/../bin/./x"), "usr/bin/x");
    }
}
