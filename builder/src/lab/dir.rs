//! A lab's directory: one per lab, holding its state, every node's disk,
//! firmware variables, console log and QMP socket, the lab's SSH key and the
//! time server's log. `down` empties it of everything but the built images.

use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};

/// Where a lab lives when `--dir` is not given. `piha lab` needs root, and
/// root's state belongs under /var/lib.
pub const DEFAULT_DIR: &str = "/var/lib/piha/lab";

/// Prefix of every lab namespace; `down` also uses it to name what it removes.
pub const NAMESPACE_PREFIX: &str = "piha-lab-";

#[derive(Debug, Clone)]
pub struct LabDir {
    root: PathBuf,
}

impl LabDir {
    /// The lab at `root`, made absolute (the namespace name is derived from it).
    pub fn new(root: &Path) -> anyhow::Result<LabDir> {
        let root = std::path::absolute(root).with_context(|| format!("resolving {}", root.display()))?;
        Ok(LabDir { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `lab.json`.
    pub fn state(&self) -> PathBuf {
        self.root.join("lab.json")
    }

    /// Held by `up` while it works, so two `up`s never race.
    pub fn lock(&self) -> PathBuf {
        self.root.join("lab.lock")
    }

    /// Built images, kept across `down` and reused by the next `up`.
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    pub fn node(&self, name: &str) -> PathBuf {
        self.root.join("nodes").join(name)
    }

    pub fn nodes(&self) -> PathBuf {
        self.root.join("nodes")
    }

    pub fn disk(&self, name: &str) -> PathBuf {
        self.node(name).join("disk.img")
    }

    pub fn console(&self, name: &str) -> PathBuf {
        self.node(name).join("console.log")
    }

    pub fn qmp(&self, name: &str) -> PathBuf {
        self.node(name).join("qmp.sock")
    }

    pub fn pidfile(&self, name: &str) -> PathBuf {
        self.node(name).join("qemu.pid")
    }

    pub fn firmware_vars(&self, name: &str) -> PathBuf {
        self.node(name).join("efivars.fd")
    }

    /// The lab's own SSH key (`ssh` and `ssh.pub`), added to every node.
    pub fn ssh_key(&self) -> PathBuf {
        self.root.join("ssh").join("id_ed25519")
    }

    pub fn timeserver_log(&self) -> PathBuf {
        self.root.join("timeserver.log")
    }

    /// The network namespace of this lab: one per directory, named from its
    /// absolute path so that two labs never share one.
    pub fn namespace(&self) -> String {
        let digest = Sha256::digest(self.root.as_os_str().as_encoded_bytes());
        format!("{NAMESPACE_PREFIX}{}", &hex::encode(digest)[..8])
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{LabDir, NAMESPACE_PREFIX};

    #[test]
    fn namespace_is_per_directory_and_fits_a_name() {
        let a = LabDir::new(Path::new("/tmp/lab-a")).unwrap();
        let b = LabDir::new(Path::new("/tmp/lab-b")).unwrap();
        assert_ne!(a.namespace(), b.namespace());
        assert!(a.namespace().starts_with(NAMESPACE_PREFIX));
        assert_eq!(a.namespace(), LabDir::new(Path::new("/tmp/./lab-a")).unwrap().namespace());
    }
}
