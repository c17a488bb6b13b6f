//! Stage 2, customize: `rootfs.tar` (mmdebstrap's output) → `root.tar` (what
//! becomes the ext4 root), without unpacking anything to disk.
//!
//! The rootfs tar is indexed once (headers only), changed as a sorted map of
//! paths — machine-id and SSH host keys dropped, overlays and rendered
//! templates added, the build's own files added, units enabled by symlinks
//! from the overlays' preset files — and written out in path order with every
//! mtime set to SOURCE_DATE_EPOCH, owners and extended attributes kept. The
//! same inputs give the same bytes. Along the way it collects the boot files
//! the firmware needs (kernel, initrd, bootloader, DTBs) and the package list.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use handlebars::Handlebars;
use tar::{Archive, EntryType, Header};

use crate::board::BootFile;
use crate::fat::FatFile;
use crate::manifest::{Package, parse_dpkg_status};
use crate::progress::Progress;
use crate::units::{self, Preset};

/// mtime of every entry when SOURCE_DATE_EPOCH is not set (2023-11-14).
pub const DEFAULT_SOURCE_DATE_EPOCH: u64 = 1_700_000_000;

/// `$SOURCE_DATE_EPOCH` (<https://reproducible-builds.org/specs/source-date-epoch/>), else the default.
pub fn source_date_epoch() -> anyhow::Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds since 1970")),
        Err(_) => Ok(DEFAULT_SOURCE_DATE_EPOCH),
    }
}

/// What a new entry holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    File(Vec<u8>),
    Dir,
    Symlink(String),
}

/// A file, directory or symlink the build adds (or replaces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    /// Path relative to the root, without a leading `/`.
    pub path: String,
    pub content: Content,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
}

impl NewEntry {
    pub fn file(path: &str, contents: impl Into<Vec<u8>>, mode: u32) -> NewEntry {
        NewEntry {
            path: path.to_string(),
            content: Content::File(contents.into()),
            mode,
            uid: 0,
            gid: 0,
        }
    }

    pub fn dir(path: &str, mode: u32) -> NewEntry {
        NewEntry {
            path: path.to_string(),
            content: Content::Dir,
            mode,
            uid: 0,
            gid: 0,
        }
    }

    pub fn symlink(path: &str, target: &str) -> NewEntry {
        NewEntry {
            path: path.to_string(),
            content: Content::Symlink(target.to_string()),
            mode: 0o777,
            uid: 0,
            gid: 0,
        }
    }

    pub fn owned_by(mut self, uid: u64, gid: u64) -> NewEntry {
        self.uid = uid;
        self.gid = gid;
        self
    }
}

/// Everything stage 2 does to the rootfs.
#[derive(Debug, Clone, Default)]
pub struct Customization {
    /// Overlay trees copied over the root, in order (later wins).
    pub overlays: Vec<PathBuf>,
    /// A tree of handlebars templates (`*.hbs`), rendered with `context` to
    /// the same path without the suffix.
    pub templates: Option<PathBuf>,
    pub context: serde_json::Value,
    /// Files the build itself adds, after overlays and templates.
    pub entries: Vec<NewEntry>,
    /// Paths to drop (`*` and `?` match within one component).
    pub remove: Vec<String>,
    /// Rules collecting files for the boot partition.
    pub boot_files: Vec<BootFile>,
    /// mtime of every entry.
    pub epoch: u64,
}

/// What stage 2 produced besides root.tar.
#[derive(Debug, Clone)]
pub struct Customized {
    /// Files for the boot partition, by path on it.
    pub boot_files: Vec<FatFile>,
    /// Installed packages from var/lib/dpkg/status.
    pub packages: Vec<Package>,
    /// Symlinks created by presets (`etc/systemd/system/...`).
    pub enabled: Vec<String>,
    pub entries: usize,
    /// Size of root.tar in bytes.
    pub tar_bytes: u64,
}

/// Where an entry's file data is.
#[derive(Debug, Clone)]
enum Data {
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
    fn size(&self) -> u64 {
        match self {
            Data::Rootfs { size, .. } | Data::Disk { size, .. } => *size,
            Data::Bytes(b) => b.len() as u64,
        }
    }
}

#[derive(Debug, Clone)]
enum Kind {
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
struct Node {
    kind: Kind,
    mode: u32,
    uid: u64,
    gid: u64,
    dev: (u32, u32),
    /// pax xattr records (`SCHILY.xattr.*`), kept byte for byte.
    xattrs: Vec<(String, Vec<u8>)>,
    /// True if it came from the rootfs tar unchanged (presets only read overlays').
    from_rootfs: bool,
}

impl Node {
    fn new(kind: Kind, mode: u32) -> Node {
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
type Tree = BTreeMap<String, Node>;

/// Runs stage 2: reads `rootfs`, writes `out` (through a temporary name).
pub fn run(rootfs: &Path, c: &Customization, out: &Path, progress: &Progress) -> anyhow::Result<Customized> {
    let task = progress.task("customize: index rootfs.tar");
    let mut tree = index(rootfs).with_context(|| format!("reading {}", rootfs.display()))?;
    task.finish();
    let source = File::open(rootfs).with_context(|| format!("opening {}", rootfs.display()))?;

    let hardlinks = group_hardlinks(&mut tree);
    // Before `remove`: the boot partition's files may come from the directory
    // it is mounted on (raspi-firmware's /boot/firmware), which is then
    // emptied in the root filesystem.
    let boot_files = collect_boot_files(&tree, &source, &c.boot_files)?;
    for pattern in &c.remove {
        tree.retain(|path, _| !glob_match(pattern, path));
    }
    for overlay in &c.overlays {
        add_overlay(&mut tree, overlay).with_context(|| format!("adding overlay {}", overlay.display()))?;
    }
    if let Some(dir) = &c.templates {
        add_templates(&mut tree, dir, &c.context).with_context(|| format!("rendering templates from {}", dir.display()))?;
    }
    for e in &c.entries {
        add_entry(&mut tree, e);
    }
    let enabled = apply_presets(&mut tree, &source).context("enabling units from the overlays' preset files")?;
    repair_hardlinks(&mut tree, &hardlinks);

    let packages = match tree.get("var/lib/dpkg/status") {
        Some(node) => parse_dpkg_status(&String::from_utf8_lossy(&read_node(&source, node)?)),
        None => Vec::new(),
    };

    let total: u64 = tree.values().map(|n| if let Kind::File(d) = &n.kind { d.size() } else { 0 }).sum();
    let task = progress.bytes("customize: write root.tar", total);
    let tar_bytes = write_tar(&tree, &source, out, c.epoch, &task).with_context(|| format!("writing {}", out.display()))?;
    task.finish();
    Ok(Customized {
        boot_files,
        packages,
        enabled,
        entries: tree.len(),
        tar_bytes,
    })
}

/// `./usr/bin/` → `usr/bin`; `./` → ``.
fn normalize(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let s = s.trim_start_matches("./").trim_start_matches('/').trim_end_matches('/');
    if s == "." { String::new() } else { s.to_string() }
}

/// Reads every header of the rootfs tar (data is skipped by seeking).
fn index(rootfs: &Path) -> anyhow::Result<Tree> {
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

/// A set of paths sharing one inode, with the data they share.
#[derive(Debug, Clone)]
struct LinkGroup {
    members: Vec<String>,
    data: Node,
}

/// Rewrites hard links so the first member of each group in path order holds
/// the data and the others link to it: a tar extractor (mke2fs -d) needs the
/// target before the link, and the output is in path order, not mmdebstrap's.
fn group_hardlinks(tree: &mut Tree) -> Vec<LinkGroup> {
    let mut by_target: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (path, node) in tree.iter() {
        if let Kind::HardLink(target) = &node.kind {
            by_target.entry(target.clone()).or_default().push(path.clone());
        }
    }
    let mut groups = Vec::new();
    for (target, links) in by_target {
        let Some(data) = tree.get(&target).filter(|n| matches!(n.kind, Kind::File(_))).cloned() else {
            continue;
        };
        let mut members = links;
        members.push(target);
        members.sort();
        let first = members[0].clone();
        for m in &members {
            let node = if *m == first {
                data.clone()
            } else {
                Node {
                    kind: Kind::HardLink(first.clone()),
                    ..data.clone()
                }
            };
            tree.insert(m.clone(), node);
        }
        groups.push(LinkGroup { members, data });
    }
    groups
}

/// After changes: a link whose first member was removed or replaced becomes a
/// plain copy of the data it had.
fn repair_hardlinks(tree: &mut Tree, groups: &[LinkGroup]) {
    for g in groups {
        let first = &g.members[0];
        let intact = tree.get(first).is_some_and(|n| n.from_rootfs && matches!(n.kind, Kind::File(_)));
        if intact {
            continue;
        }
        for m in &g.members[1..] {
            if let Some(node) = tree.get_mut(m) {
                if matches!(&node.kind, Kind::HardLink(t) if t == first) {
                    *node = g.data.clone();
                }
            }
        }
    }
}

/// Resolves symlinked parent directories (`lib` → `usr/lib` on merged-/usr
/// systems) so an overlay's `lib/systemd/system/x` lands where the rootfs keeps
/// it instead of clashing with the symlink.
fn canonical(tree: &Tree, path: &str) -> String {
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
fn ensure_parents(tree: &mut Tree, path: &str) {
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
fn insert(tree: &mut Tree, path: String, node: Node) {
    if matches!(node.kind, Kind::Dir) && tree.get(&path).is_some_and(|n| matches!(n.kind, Kind::Dir | Kind::Symlink(_))) {
        return;
    }
    ensure_parents(tree, &path);
    tree.insert(path, node);
}

/// Mode for an overlay file: git keeps only the executable bit, so modes are
/// normalized (the same checkout gives the same image under any umask), with
/// the few exceptions that must be stricter.
fn overlay_mode(rel: &str, executable: bool) -> u32 {
    // sudo ignores drop-ins that are group- or world-writable; 0440 is its convention.
    if rel.starts_with("etc/sudoers.d/") {
        return 0o440;
    }
    if executable { 0o755 } else { 0o644 }
}

/// Every path under `dir`, sorted, relative, with its metadata.
fn walk(dir: &Path) -> anyhow::Result<Vec<(String, std::fs::Metadata)>> {
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

fn add_overlay(tree: &mut Tree, dir: &Path) -> anyhow::Result<()> {
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

/// The handlebars engine for every template piha renders into an image
/// (rootfs templates, boot configuration, board `rootfs_files`): strict, so a
/// misspelt variable is an error, and without HTML escaping, since the
/// outputs are configuration files.
pub fn template_engine() -> Handlebars<'static> {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    hb.register_escape_fn(handlebars::no_escape);
    hb
}

fn add_templates(tree: &mut Tree, dir: &Path, context: &serde_json::Value) -> anyhow::Result<()> {
    let hb = template_engine();
    for (rel, meta) in walk(dir)? {
        let full = dir.join(&rel);
        if meta.is_dir() {
            continue;
        }
        let Some(target) = rel.strip_suffix(".hbs") else {
            bail!(
                "{}: every file under {} must be a handlebars template ending in .hbs",
                full.display(),
                dir.display()
            );
        };
        let text = std::fs::read_to_string(&full).with_context(|| format!("reading {}", full.display()))?;
        let rendered = hb
            .render_template(&text, context)
            .with_context(|| format!("rendering {}", full.display()))?;
        let path = canonical(tree, target);
        let mode = overlay_mode(&path, meta.mode() & 0o111 != 0);
        insert(tree, path, Node::new(Kind::File(Data::Bytes(rendered.into_bytes())), mode));
    }
    Ok(())
}

fn add_entry(tree: &mut Tree, e: &NewEntry) {
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

/// Reads a file node's data.
fn read_node(source: &File, node: &Node) -> anyhow::Result<Vec<u8>> {
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
fn resolve<'a>(tree: &'a Tree, path: &str) -> Option<(String, &'a Node)> {
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
fn normalize_dots(path: &str) -> String {
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

/// Finds a unit file the way systemd searches (/etc before /usr/lib): the
/// path it was found at (the symlinks' target) and the file's node.
fn find_unit<'a>(tree: &'a Tree, file: &str) -> Option<(String, &'a Node)> {
    for dir in ["etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system"] {
        let declared = canonical(tree, &format!("{dir}/{file}"));
        if !tree.contains_key(&declared) {
            continue;
        }
        if let Some((_, node)) = resolve(tree, &declared).filter(|(_, n)| matches!(n.kind, Kind::File(_))) {
            return Some((declared, node));
        }
    }
    None
}

/// Applies the overlays' preset files; returns the symlinks created.
fn apply_presets(tree: &mut Tree, source: &File) -> anyhow::Result<Vec<String>> {
    let preset_files: Vec<String> = tree
        .iter()
        .filter(|(p, n)| {
            !n.from_rootfs
                && matches!(n.kind, Kind::File(_))
                && (glob_match("usr/lib/systemd/system-preset/*.preset", p) || glob_match("etc/systemd/system-preset/*.preset", p))
        })
        .map(|(p, _)| p.clone())
        .collect();
    let mut sorted = preset_files;
    sorted.sort_by(|a, b| a.rsplit('/').next().cmp(&b.rsplit('/').next()));
    let mut created = Vec::new();
    for file in sorted {
        let text = String::from_utf8_lossy(&read_node(source, &tree[&file])?).into_owned();
        let presets = units::parse_preset(&text).map_err(|e| anyhow::anyhow!("/{file}: {e}"))?;
        for preset in presets {
            match preset {
                Preset::Enable(unit) => {
                    let mut seen = BTreeSet::new();
                    enable(tree, source, &unit, &file, &mut seen, &mut created)?;
                }
                Preset::Disable(unit) => disable(tree, source, &unit)?,
            }
        }
    }
    created.sort();
    created.dedup();
    Ok(created)
}

fn enable(
    tree: &mut Tree,
    source: &File,
    unit: &str,
    preset: &str,
    seen: &mut BTreeSet<String>,
    created: &mut Vec<String>,
) -> anyhow::Result<()> {
    if !seen.insert(unit.to_string()) {
        return Ok(());
    }
    let (template, _) = units::template_of(unit);
    let Some((unit_path, node)) = find_unit(tree, &template) else {
        // `Also=` may name units this image does not have; systemctl skips them too.
        if seen.len() > 1 {
            return Ok(());
        }
        bail!(
            "/{preset}: enable {unit}: no unit file {template} in etc/systemd/system or usr/lib/systemd/system (fix: add it to an overlay or install its package)"
        );
    };
    let install = units::parse_install(&String::from_utf8_lossy(&read_node(source, node)?));
    for link in units::enable_links(unit, &format!("/{unit_path}"), &install) {
        insert(tree, link.path.clone(), Node::new(Kind::Symlink(link.target.into_bytes()), 0o777));
        created.push(link.path);
    }
    for also in &install.also {
        enable(tree, source, also, preset, seen, created)?;
    }
    Ok(())
}

fn disable(tree: &mut Tree, source: &File, unit: &str) -> anyhow::Result<()> {
    let (template, _) = units::template_of(unit);
    let aliases = match find_unit(tree, &template) {
        Some((_, node)) => units::parse_install(&String::from_utf8_lossy(&read_node(source, node)?)).alias,
        None => Vec::new(),
    };
    tree.retain(|path, node| {
        let is_link = matches!(node.kind, Kind::Symlink(_));
        let wants = glob_match(&format!("etc/systemd/system/*.wants/{unit}"), path)
            || glob_match(&format!("etc/systemd/system/*.requires/{unit}"), path)
            || aliases.iter().any(|a| *path == format!("etc/systemd/system/{a}"));
        !(is_link && wants)
    });
    Ok(())
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

/// Compares with digit runs as numbers, so `vmlinuz-6.1.0-10` > `vmlinuz-6.1.0-9`.
pub fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, Some(_)) => return std::cmp::Ordering::Less,
            (Some(_), None) => return std::cmp::Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let na = std::str::from_utf8(&a[..da]).ok().and_then(|s| s.parse::<u128>().ok()).unwrap_or(0);
                let nb = std::str::from_utf8(&b[..db]).ok().and_then(|s| s.parse::<u128>().ok()).unwrap_or(0);
                match na.cmp(&nb) {
                    std::cmp::Ordering::Equal => {
                        a = &a[da..];
                        b = &b[db..];
                    }
                    o => return o,
                }
            }
            (Some(x), Some(y)) => match x.cmp(y) {
                std::cmp::Ordering::Equal => {
                    a = &a[1..];
                    b = &b[1..];
                }
                o => return o,
            },
        }
    }
}

fn collect_boot_files(tree: &Tree, source: &File, rules: &[BootFile]) -> anyhow::Result<Vec<FatFile>> {
    let mut out: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for rule in rules {
        let matches: Vec<&String> = tree.keys().filter(|p| glob_match(&rule.from, p)).collect();
        if matches.is_empty() {
            if rule.optional {
                continue;
            }
            bail!(
                "boot file rule from {:?} to {:?} matches nothing in the root filesystem (is the kernel or bootloader package in the board's package list?)",
                rule.from,
                rule.to
            );
        }
        let to_dir = rule.to.ends_with('/');
        if to_dir {
            let prefix = rule.to.trim_matches('/');
            for m in matches {
                let base = m.rsplit('/').next().unwrap_or(m);
                add_boot_path(tree, source, m, &join(prefix, base), &mut out)?;
            }
        } else {
            let best = matches.iter().max_by(|a, b| version_cmp(a, b)).expect("not empty");
            add_boot_path(tree, source, best, rule.to.trim_start_matches('/'), &mut out)?;
        }
    }
    Ok(out.into_iter().map(|(path, contents)| FatFile { path, contents }).collect())
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}/{name}")
    }
}

/// Adds one file, or a directory's files recursively, to the boot files.
fn add_boot_path(tree: &Tree, source: &File, from: &str, to: &str, out: &mut BTreeMap<String, Vec<u8>>) -> anyhow::Result<()> {
    let Some((real, node)) = resolve(tree, from) else {
        bail!("boot file {from}: a dangling link in the root filesystem");
    };
    if matches!(node.kind, Kind::Dir) {
        let prefix = format!("{real}/");
        for (p, n) in tree.range(prefix.clone()..) {
            if !p.starts_with(&prefix) {
                break;
            }
            if matches!(n.kind, Kind::File(_) | Kind::Symlink(_) | Kind::HardLink(_)) {
                if let Some((_, file)) = resolve(tree, p).filter(|(_, f)| matches!(f.kind, Kind::File(_))) {
                    out.insert(format!("{to}/{}", &p[prefix.len()..]), read_node(source, file)?);
                }
            }
        }
        return Ok(());
    }
    out.insert(
        to.to_string(),
        read_node(source, node).with_context(|| format!("boot file {from}"))?,
    );
    Ok(())
}

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

fn write_tar(tree: &Tree, source: &File, out: &Path, epoch: u64, task: &crate::progress::Task) -> anyhow::Result<u64> {
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let mut builder = tar::Builder::new(BufWriter::with_capacity(1 << 20, tmp));
    for (path, node) in tree {
        let mut name = String::from("./");
        name.push_str(path);
        if matches!(node.kind, Kind::Dir) && !path.is_empty() {
            name.push('/');
        }
        let mut header = Header::new_ustar();
        let mut pax: Vec<(&str, Vec<u8>)> = Vec::new();
        // Names go into the ustar fields as raw bytes whenever they fit: a pax
        // `path` record is UTF-8 that libarchive (mke2fs -d) must convert to the
        // locale, which fails for non-ASCII names under LANG=C.
        if !set_ustar_name(&mut header, name.as_bytes()) {
            pax.push(("path", name.clone().into_bytes()));
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
        let link: Option<Vec<u8>> = match &node.kind {
            Kind::Symlink(t) => Some(t.clone()),
            Kind::HardLink(t) => Some(format!("./{t}").into_bytes()),
            _ => None,
        };
        if let Some(link) = &link {
            if link.len() > 100 {
                pax.push(("linkpath", link.clone()));
                let short: Vec<u8> = link.iter().copied().filter(u8::is_ascii).take(99).collect();
                header.set_link_name_literal(&short)?;
            } else {
                header.set_link_name_literal(link)?;
            }
        }
        if pax.iter().any(|(_, v)| !v.is_ascii()) {
            // Long non-ASCII names: raw bytes, no charset conversion (pax, libarchive).
            pax.insert(0, ("hdrcharset", b"BINARY".to_vec()));
        }
        for (k, v) in &node.xattrs {
            pax.push((k.as_str(), v.clone()));
        }
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
        if !pax.is_empty() {
            builder.append_pax_extensions(pax.iter().map(|(k, v)| (*k, v.as_slice())))?;
        }
        match &node.kind {
            Kind::File(Data::Rootfs { offset, size }) => {
                builder.append(
                    &header,
                    ReadAt {
                        file: source,
                        offset: *offset,
                        left: *size,
                    },
                )?;
            }
            Kind::File(Data::Bytes(b)) => builder.append(&header, b.as_slice())?,
            Kind::File(Data::Disk { path, size }) => {
                let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
                builder.append(&header, f.take(*size))?;
            }
            _ => builder.append(&header, std::io::empty())?,
        }
        task.inc(size);
    }
    let mut writer = builder.into_inner()?;
    writer.flush()?;
    let tmp = writer.into_inner().map_err(|e| e.into_error())?;
    let bytes = tmp.as_file().metadata()?.len();
    tmp.persist(out).with_context(|| format!("renaming into {}", out.display()))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering;

    use super::{glob_match, normalize_dots, version_cmp};

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
    fn versions_compare_numerically() {
        assert_eq!(version_cmp("vmlinuz-6.1.0-10-amd64", "vmlinuz-6.1.0-9-amd64"), Ordering::Greater);
        assert_eq!(version_cmp("a-1", "a-1"), Ordering::Equal);
    }

    #[test]
    fn dots() {
        assert_eq!(normalize_dots("usr/lib/../bin/./x"), "usr/bin/x");
    }
}
