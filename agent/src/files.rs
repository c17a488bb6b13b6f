//! Writing the renderer's files onto the node: each one atomically, with the
//! mode and owner the renderer chose, and only when it differs from what is
//! there, so a step can tell whether to reload a service.

use anyhow::Context;
use piha_config::render::RenderedFile;

use crate::paths::Paths;
use piha_atomic::{self as atomic, Perm};

/// Writes `files` under the root; returns the node paths that changed.
pub fn apply(paths: &Paths, files: &[RenderedFile]) -> anyhow::Result<Vec<String>> {
    let mut changed = Vec::new();
    for f in files {
        let dest = paths.host(&f.path);
        let (uid, gid) = f.owner();
        if let Some(dir) = dest.parent() {
            // A directory made for a user's file is that user's and private (~/.ssh).
            let dir_perm = if uid == 0 {
                Perm::root(0o755)
            } else {
                Perm { mode: 0o700, uid, gid }
            };
            atomic::create_dirs(dir, dir_perm).with_context(|| format!("creating {}", dir.display()))?;
        }
        let perm = Perm { mode: f.mode, uid, gid };
        if atomic::write_if_changed(&dest, f.contents.as_bytes(), perm).with_context(|| format!("writing {}", dest.display()))? {
            log::info!("wrote {} (mode {:o})", f.path, f.mode);
            changed.push(f.path.clone());
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use piha_config::render::RenderedFile;

    use super::apply;
    use crate::paths::Paths;
    use piha_atomic::running_as_root;

    #[test]
    fn writes_with_modes_and_owners_and_reports_changes() {
        let root = tempfile::tempdir().unwrap();
        let paths = Paths::new(root.path(), root.path().join("card"));
        let files = vec![
            RenderedFile::new("/etc/piha/kubeadm.yaml", 0o600, "token: x\n".into()),
            RenderedFile::new("/home/piha/.ssh/authorized_keys", 0o600, "ssh-ed25519 AAAA k\n".into()),
            RenderedFile::new("/etc/hosts", 0o644, "127.0.0.1 localhost\n".into()),
        ];
        assert_eq!(apply(&paths, &files).unwrap().len(), 3);
        assert_eq!(
            apply(&paths, &files).unwrap(),
            Vec::<String>::new(),
            "unchanged files are not rewritten"
        );
        let meta = |p: &str| fs::metadata(paths.host(p)).unwrap();
        assert_eq!(meta("/etc/piha/kubeadm.yaml").permissions().mode() & 0o777, 0o600);
        assert_eq!(meta("/etc/hosts").permissions().mode() & 0o777, 0o644);
        assert_eq!(meta("/home/piha/.ssh").permissions().mode() & 0o777, 0o700);
        if running_as_root() {
            assert_eq!(
                (meta("/home/piha/.ssh/authorized_keys").uid(), meta("/home/piha/.ssh").uid()),
                (1000, 1000)
            );
            assert_eq!(meta("/etc/hosts").uid(), 0);
        }
    }
}
