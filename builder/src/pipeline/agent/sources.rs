//! The part of the checkout the agent is built from: hashed for the binary
//! cache key and copied into a build root.
//!
//! The set is the workspace manifest and lock, the four crates the agent is
//! made of, `overlays/` (piha-config `include_str!`s its templates from
//! `overlays/templates/`), and the builder's manifest alone: cargo must load
//! every workspace member's manifest, but never builds the builder here.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use piha_atomic::AtomicFile;
use sha2::{Digest, Sha256};

/// Whole files, relative to the workspace root.
const FILES: &[&str] = &["Cargo.toml", "Cargo.lock", "builder/Cargo.toml"];
/// Whole directory trees, relative to the workspace root.
const TREES: &[&str] = &["agent", "atomic", "config", "runner", "overlays"];

/// Every file of the source set, relative to `workspace`, sorted.
pub fn list(workspace: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for f in FILES {
        let path = workspace.join(f);
        if !path.is_file() {
            bail!(
                "{} is missing: the agent is built from a piha checkout (is {} one?)",
                path.display(),
                workspace.display()
            );
        }
        out.push(PathBuf::from(f));
    }
    for t in TREES {
        let dir = workspace.join(t);
        if !dir.is_dir() {
            bail!(
                "{} is missing: the agent is built from a piha checkout (is {} one?)",
                dir.display(),
                workspace.display()
            );
        }
        walk(workspace, Path::new(t), &mut out)?;
    }
    out.sort();
    Ok(out)
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let dir = root.join(rel);
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let name = entry.file_name();
        // Build output and editor/VCS droppings are not sources.
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        let child = rel.join(&name);
        let kind = entry
            .file_type()
            .with_context(|| format!("inspecting {}", entry.path().display()))?;
        if kind.is_dir() {
            walk(root, &child, out)?;
        } else {
            out.push(child);
        }
    }
    Ok(())
}

/// sha256 over every file's relative path and contents (symlinks count by
/// their target's contents, as the compiler would read them).
pub fn hash(workspace: &Path, files: &[PathBuf]) -> anyhow::Result<String> {
    let mut h = Sha256::new();
    for f in files {
        let path = workspace.join(f);
        let data = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        h.update(f.to_string_lossy().as_bytes());
        h.update([0]);
        h.update((data.len() as u64).to_le_bytes());
        h.update(&data);
    }
    Ok(hex::encode(h.finalize()))
}

/// The hash of `Cargo.lock` alone: vendored crates depend on nothing else.
pub fn lock_hash(workspace: &Path) -> anyhow::Result<String> {
    let lock = workspace.join("Cargo.lock");
    let data = fs::read(&lock).with_context(|| format!("reading {} (run `cargo generate-lockfile` in the checkout)", lock.display()))?;
    Ok(hex::encode(Sha256::digest(&data)))
}

/// Copies `files` from `workspace` into `dest` (created; must not exist),
/// through a temporary sibling renamed into place, so a half-copied tree is
/// never mistaken for a complete one.
pub fn stage(workspace: &Path, files: &[PathBuf], dest: &Path) -> anyhow::Result<()> {
    if dest.is_dir() {
        return Ok(());
    }
    let parent = dest.parent().context("staging directory has a parent")?;
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".src-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a directory in {}", parent.display()))?;
    for f in files {
        let from = workspace.join(f);
        let to = tmp.path().join(f);
        if let Some(p) = to.parent() {
            fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
        }
        fs::copy(&from, &to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    let tmp = tmp.keep();
    if let Err(e) = fs::rename(&tmp, dest) {
        // Another build staged the same sources first: theirs is as good as ours.
        let _ = fs::remove_dir_all(&tmp);
        if !dest.is_dir() {
            return Err(e).with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()));
        }
    }
    Ok(())
}

/// Writes `data` to `dest` atomically with `mode`, creating its directory.
pub fn write_atomic(dest: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = dest.parent().context("destination has a parent")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut f = AtomicFile::create(dest, None).with_context(|| format!("creating a file beside {}", dest.display()))?;
    f.write_all(data).with_context(|| format!("writing {}", dest.display()))?;
    f.file()
        .and_then(|t| t.set_permissions(fs::Permissions::from_mode(mode)))
        .with_context(|| format!("chmod {}", dest.display()))?;
    f.commit().with_context(|| format!("putting {} in place", dest.display()))
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::{Path, PathBuf};

    use super::{hash, list, stage};

    fn fake_checkout(root: &Path) {
        for f in [
            "Cargo.toml",
            "Cargo.lock",
            "builder/Cargo.toml",
            "agent/src/main.rs",
            "config/src/lib.rs",
            "runner/src/lib.rs",
            "atomic/src/lib.rs",
        ] {
            let p = root.join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, f).unwrap();
        }
        fs::create_dir_all(root.join("overlays/templates")).unwrap();
        fs::write(root.join("overlays/templates/x.hbs"), "x").unwrap();
        fs::create_dir_all(root.join("agent/target/release")).unwrap();
        fs::write(root.join("agent/target/release/junk"), "junk").unwrap();
        fs::write(root.join("builder/main.rs"), "not in the set").unwrap();
    }

    #[test]
    fn set_skips_build_output_and_builder_sources() {
        let dir = tempfile::tempdir().unwrap();
        fake_checkout(dir.path());
        let files = list(dir.path()).unwrap();
        let names: Vec<String> = files.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        assert!(names.contains(&"overlays/templates/x.hbs".to_string()), "{names:?}");
        assert!(!names.iter().any(|n| n.contains("target") || n == "builder/main.rs"), "{names:?}");
    }

    #[test]
    fn hash_changes_with_content_and_name() {
        let dir = tempfile::tempdir().unwrap();
        fake_checkout(dir.path());
        let files = list(dir.path()).unwrap();
        let h1 = hash(dir.path(), &files).unwrap();
        fs::write(dir.path().join("agent/src/main.rs"), "changed").unwrap();
        let h2 = hash(dir.path(), &files).unwrap();
        assert_ne!(h1, h2);
        // Untracked build output does not change it.
        fs::write(dir.path().join("agent/target/release/junk"), "other").unwrap();
        assert_eq!(h2, hash(dir.path(), &list(dir.path()).unwrap()).unwrap());
    }

    #[test]
    fn stage_copies_the_set() {
        let dir = tempfile::tempdir().unwrap();
        fake_checkout(dir.path());
        let files = list(dir.path()).unwrap();
        let dest = dir.path().join("out/src-1");
        stage(dir.path(), &files, &dest).unwrap();
        assert_eq!(fs::read_to_string(dest.join("overlays/templates/x.hbs")).unwrap(), "x");
        let copied: Vec<PathBuf> = list(&dest).unwrap();
        assert_eq!(copied, files);
    }

    #[test]
    fn missing_crate_is_named() {
        let dir = tempfile::tempdir().unwrap();
        fake_checkout(dir.path());
        fs::remove_dir_all(dir.path().join("runner")).unwrap();
        let err = list(dir.path()).unwrap_err().to_string();
        assert!(err.contains("runner is missing"), "{err}");
    }
}
