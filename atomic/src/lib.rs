//! Crash-safe file replacement, the one way piha writes a file that must not
//! be torn: write a temp file in the target directory, fsync it, rename it over
//! the target, fsync the directory. A power cut leaves either the old file or
//! the new one, never a torn mix (the same sequence coreos-installer and
//! systemd use). An error or an early return removes the temp file.
//!
//! Works on the FAT config partition too (rename over an existing file is
//! atomic on vfat for our purposes); there, pass no permissions: vfat has no
//! per-file modes and refuses chmod.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

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
/// filesystem). A dot name with the process id and a counter, so concurrent
/// writers never share one and a leftover from a power cut is harmless.
fn temp_path(path: &Path) -> io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{} has no file name", path.display())))?;
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Ok(path.with_file_name(format!(".{}.{}-{n}.piha-tmp", name.to_string_lossy(), std::process::id())))
}

/// A file being written that replaces `path` only on `commit`; dropped
/// without a commit, it removes its temp file and leaves `path` untouched.
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
}

impl AtomicFile {
    /// Starts replacing `path`. With `perm`, the file gets that mode and owner
    /// before it becomes visible (secrets are never briefly world-readable).
    /// The parent directory must exist.
    pub fn create(path: &Path, perm: Option<Perm>) -> io::Result<AtomicFile> {
        let tmp = temp_path(path)?;
        let mut options = OpenOptions::new();
        // With a final mode to come, 0600 until it is set: a key must never be
        // readable by others, even as a temp file. Without one, what a plain
        // create gives (0666 less the umask).
        let mode = if perm.is_some() { 0o600 } else { 0o666 };
        options.write(true).create_new(true).mode(mode);
        let file = options.open(&tmp)?;
        let out = AtomicFile {
            path: path.to_path_buf(),
            tmp,
            file: Some(file),
        };
        if let (Some(p), Some(f)) = (perm, out.file.as_ref()) {
            chown(f, &out.tmp, p)?;
            // Explicit, because the process umask applies to the mode given at open.
            f.set_permissions(Permissions::from_mode(p.mode))?;
        }
        Ok(out)
    }

    /// The open temp file, for callers that size or seek it.
    pub fn file(&mut self) -> io::Result<&mut File> {
        self.file.as_mut().ok_or_else(|| io::Error::other("the file was already committed"))
    }

    /// Like `commit`, but fails with `AlreadyExists` instead of replacing a
    /// file that is at `path` by then (a hard link never overwrites).
    pub fn commit_new(mut self) -> io::Result<()> {
        let file = self.file.take().ok_or_else(|| io::Error::other("the file was already committed"))?;
        let synced = file.sync_all();
        drop(file);
        let linked = synced.and_then(|()| fs::hard_link(&self.tmp, &self.path));
        let _ = fs::remove_file(&self.tmp);
        linked?;
        sync_dir(parent(&self.path))
    }

    /// Makes the new contents durable and puts them in place.
    pub fn commit(mut self) -> io::Result<()> {
        let file = self.file.take().ok_or_else(|| io::Error::other("the file was already committed"))?;
        let synced = file.sync_all();
        drop(file);
        if let Err(e) = synced.and_then(|()| fs::rename(&self.tmp, &self.path)) {
            let _ = fs::remove_file(&self.tmp);
            return Err(e);
        }
        sync_dir(parent(&self.path))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file()?.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file()?.flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// A temporary name beside `dest` for a file that an external tool (or a
/// writer that needs a path) creates: `commit` fsyncs it, renames it over
/// `dest` and fsyncs the directory; dropped without a commit, it removes
/// whatever was written there.
pub struct TempPath {
    dest: PathBuf,
    tmp: PathBuf,
    committed: bool,
}

impl TempPath {
    pub fn new(dest: &Path) -> io::Result<TempPath> {
        let tmp = temp_path(dest)?;
        Ok(TempPath {
            dest: dest.to_path_buf(),
            tmp,
            committed: false,
        })
    }

    /// Where the tool writes.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Makes the file durable and puts it in place.
    pub fn commit(mut self) -> io::Result<()> {
        File::open(&self.tmp)?.sync_all()?;
        fs::rename(&self.tmp, &self.dest)?;
        self.committed = true;
        sync_dir(parent(&self.dest))
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// The directory a path lives in (`.` for a bare file name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Replaces `path` with `contents` atomically. With `perm`, the file gets
/// that mode and owner before it becomes visible. Parent directories must exist.
pub fn write(path: &Path, contents: &[u8], perm: Option<Perm>) -> io::Result<()> {
    let mut f = AtomicFile::create(path, perm)?;
    f.write_all(contents)?;
    f.commit()
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
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => Ok(()),
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
    sync_dir(parent(dir))
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
    sync_dir(parent(dir))
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use std::io::Write;

    use super::{AtomicFile, Perm, create_dirs, write, write_if_changed};

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

    #[test]
    fn an_uncommitted_file_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        fs::write(&p, "old").unwrap();
        {
            let mut f = AtomicFile::create(&p, None).unwrap();
            f.write_all(b"half of it").unwrap();
            // Dropped on an error path, before commit.
        }
        assert_eq!(fs::read_to_string(&p).unwrap(), "old");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("big")], "the temp file is removed");
    }

    #[test]
    fn files_without_a_mode_follow_the_umask_and_new_files_never_replace() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("SHA256SUMS");
        write(&p, b"x", None).unwrap();
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o044, 0o044, "readable by others under the usual umask: {mode:o}");
        let mut again = AtomicFile::create(&p, None).unwrap();
        again.write_all(b"other").unwrap();
        let err = again.commit_new().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read_to_string(&p).unwrap(), "x");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temp file left");
    }

    #[test]
    fn a_temp_path_replaces_on_commit_and_vanishes_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("rootfs.tar");
        let t = super::TempPath::new(&dest).unwrap();
        fs::write(t.path(), "half").unwrap();
        drop(t);
        assert!(!dest.exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "the partial file is removed");
        let t = super::TempPath::new(&dest).unwrap();
        fs::write(t.path(), "whole").unwrap();
        t.commit().unwrap();
        assert_eq!(fs::read_to_string(&dest).unwrap(), "whole");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_bare_file_name_is_synced_in_the_current_directory() {
        assert_eq!(super::parent(std::path::Path::new("x")), std::path::Path::new("."));
        assert_eq!(super::parent(std::path::Path::new("/a/x")), std::path::Path::new("/a"));
    }
}
