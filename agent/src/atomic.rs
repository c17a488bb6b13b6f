//! Crash-safe file replacement: write a temp file in the target directory,
//! fsync it, rename it over the target, fsync the directory. A power cut
//! leaves either the old file or the new one, never a torn mix (the same
//! sequence coreos-installer and systemd use).
//!
//! Works on the FAT config partition too (rename over an existing file is
//! atomic on vfat for our purposes); there, pass no permissions: vfat has no
//! per-file modes and refuses chmod.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Who owns a file and its mode bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perm {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Perm {
    /// Root-owned with `mode`.
    pub fn root(mode: u32) -> Perm {
        Perm { mode, uid: 0, gid: 0 }
    }
}

/// The temp file beside `path` (same directory, so the rename stays on one
/// filesystem). A dot name, so a leftover one from a power cut is harmless.
fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{} has no file name", path.display())))?;
    Ok(path.with_file_name(format!(".{}.piha-tmp", name.to_string_lossy())))
}

/// Replaces `path` with `contents` atomically. With `perm`, the file gets
/// that mode and owner before it becomes visible (secrets are never briefly
/// world-readable). Parent directories must exist.
pub fn write(path: &Path, contents: &[u8], perm: Option<Perm>) -> io::Result<()> {
    let tmp = temp_path(path)?;
    let mut options = OpenOptions::new();
    // 0600 until the final mode is set: a key must never be readable by others, even as a temp file.
    options.write(true).create(true).truncate(true).mode(0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(contents)?;
    if let Some(p) = perm {
        chown(&file, &tmp, p)?;
        // Explicit, because the process umask applies to the mode given at open.
        file.set_permissions(Permissions::from_mode(p.mode))?;
    }
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new("/")))
}

/// Owner change for a file being written. The agent runs as root on a node,
/// where a failure is an error; a test run by an ordinary user in a scratch
/// root cannot chown, so there it is skipped with a log line.
fn chown(file: &File, path: &Path, p: Perm) -> io::Result<()> {
    if !running_as_root() {
        log::debug!(
            "not root: leaving {} owned by the current user (wanted {}:{})",
            path.display(),
            p.uid,
            p.gid
        );
        return Ok(());
    }
    std::os::unix::fs::fchown(file, Some(p.uid), Some(p.gid))
}

/// True when the effective uid is 0 (read from /proc, so no unsafe libc call).
pub fn running_as_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        // `Uid:\treal\teffective\tsaved\tfs`
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            .is_some_and(|euid| euid == "0")
    })
}

/// fsyncs a directory so a rename or unlink in it survives a power cut.
/// Filesystems that cannot fsync a directory (EINVAL) are tolerated.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    match File::open(dir).and_then(|d| d.sync_all()) {
        Err(e) if e.raw_os_error() == Some(22) => Ok(()),
        other => other,
    }
}

/// Creates `dir` and its missing parents with `perm` (only the ones created
/// get it; existing directories are left alone).
pub fn create_dirs(dir: &Path, perm: Perm) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dirs(parent, Perm::root(0o755))?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    let f = File::open(dir)?;
    chown(&f, dir, perm)?;
    f.set_permissions(Permissions::from_mode(perm.mode))?;
    sync_dir(dir.parent().unwrap_or(Path::new("/")))
}

/// Writes `contents` only if the file differs (content, mode or owner).
/// Returns whether it wrote, so callers reload a service only on change.
pub fn write_if_changed(path: &Path, contents: &[u8], perm: Perm) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    if let Ok(meta) = fs::metadata(path) {
        let same_meta = meta.mode() & 0o7777 == perm.mode && ((meta.uid(), meta.gid()) == (perm.uid, perm.gid) || !running_as_root());
        if same_meta && fs::read(path).map(|old| old == contents).unwrap_or(false) {
            return Ok(false);
        }
    }
    write(path, contents, Some(perm))?;
    Ok(true)
}

/// Removes a directory tree and makes the removal durable.
pub fn remove_dir_all(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    sync_dir(dir.parent().unwrap_or(Path::new("/")))
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::{Perm, create_dirs, write, write_if_changed};

    #[test]
    fn replaces_content_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        fs::write(&p, "old").unwrap();
        write(&p, b"new", Some(Perm::root(0o600))).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("key")], "no temp file remains");
    }

    #[test]
    fn write_if_changed_reports_changes_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        assert!(write_if_changed(&p, b"a", Perm::root(0o644)).unwrap());
        assert!(!write_if_changed(&p, b"a", Perm::root(0o644)).unwrap());
        assert!(write_if_changed(&p, b"a", Perm::root(0o600)).unwrap(), "a mode change is a change");
        assert!(write_if_changed(&p, b"b", Perm::root(0o600)).unwrap());
    }

    #[test]
    fn creates_missing_dirs_with_mode() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("a/b/.ssh");
        create_dirs(&d, Perm::root(0o700)).unwrap();
        assert_eq!(fs::metadata(&d).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(fs::metadata(dir.path().join("a")).unwrap().permissions().mode() & 0o777, 0o755);
    }
}
