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

mod boot_files;
mod hardlinks;
pub(crate) mod image_files;
mod overlay;
mod presets;
mod read;
pub(crate) mod templates;
mod tree;
pub(crate) mod units;
mod write;

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::Context;

use self::tree::{Kind, Tree, glob_match, read_node};
use crate::image::fat::FatFile;
use crate::inputs::board::BootFile;
use crate::pipeline::manifest::{Package, parse_dpkg_status};
use crate::progress::Progress;

pub use self::templates::template_engine;

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

/// Runs stage 2: reads `rootfs`, writes `out` (through a temporary name).
pub fn run(rootfs: &Path, c: &Customization, out: &Path, progress: &Progress) -> anyhow::Result<Customized> {
    let task = progress.task("customize: index rootfs.tar");
    let mut tree = read::index(rootfs).with_context(|| format!("reading {}", rootfs.display()))?;
    task.finish();
    let source = File::open(rootfs).with_context(|| format!("opening {}", rootfs.display()))?;

    let groups = hardlinks::group_hardlinks(&mut tree);
    // Before `remove`: the boot partition's files may come from the directory
    // it is mounted on (raspi-firmware's /boot/firmware), which is then
    // emptied in the root filesystem.
    let boot_files = boot_files::collect_boot_files(&tree, &source, &c.boot_files)?;
    for pattern in &c.remove {
        tree.retain(|path, _| !glob_match(pattern, path));
    }
    add_files(&mut tree, c)?;
    let enabled = presets::apply_presets(&mut tree, &source).context("enabling units from the overlays' preset files")?;
    hardlinks::repair_hardlinks(&mut tree, &groups);
    let packages = packages(&tree, &source)?;

    let total: u64 = tree.values().map(|n| if let Kind::File(d) = &n.kind { d.size() } else { 0 }).sum();
    let task = progress.bytes("customize: write root.tar", total);
    let tar_bytes = write::write_tar(&tree, &source, out, c.epoch, &task).with_context(|| format!("writing {}", out.display()))?;
    task.finish();
    Ok(Customized {
        boot_files,
        packages,
        enabled,
        entries: tree.len(),
        tar_bytes,
    })
}

/// Overlays, then rendered templates, then the build's own entries (later wins).
fn add_files(tree: &mut Tree, c: &Customization) -> anyhow::Result<()> {
    for dir in &c.overlays {
        overlay::add_overlay(tree, dir).with_context(|| format!("adding overlay {}", dir.display()))?;
    }
    if let Some(dir) = &c.templates {
        templates::add_templates(tree, dir, &c.context).with_context(|| format!("rendering templates from {}", dir.display()))?;
    }
    for e in &c.entries {
        overlay::add_entry(tree, e);
    }
    Ok(())
}

/// The installed packages, from the image's dpkg status file.
fn packages(tree: &Tree, source: &File) -> anyhow::Result<Vec<Package>> {
    Ok(match tree.get("var/lib/dpkg/status") {
        Some(node) => parse_dpkg_status(&String::from_utf8_lossy(&read_node(source, node)?)),
        None => Vec::new(),
    })
}
