//! The cluster's secrets directory on the workstation (default `secrets/`
//! beside the cluster file): created once by `piha init`, replaced only by
//! `piha rotate-secrets --yes`, read by `piha stamp` and `piha render`.
//!
//! The directory is 0700 and every file 0600. It is always created whole:
//! everything is generated into a temporary directory beside it, synced, and
//! renamed into place, so an interrupted `piha init` never leaves half a PKI
//! that a later run would mistake for the real one.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use piha_config::cluster::ClusterFile;
use piha_config::secrets::{self, SecretFile};

use crate::card::pki;

/// Names the cluster the secrets belong to, so one cluster's secrets are never
/// stamped onto another cluster's cards.
pub const CLUSTER_NAME_FILE: &str = "cluster-name";

const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// A complete secrets directory.
#[derive(Debug, Clone)]
pub struct Secrets {
    dir: PathBuf,
    cluster_name: String,
}

/// What `ensure` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    AlreadyPresent,
}

impl Secrets {
    /// Opens a complete secrets directory; fails, naming what is missing and
    /// how to create it, otherwise.
    pub fn load(dir: &Path) -> anyhow::Result<Secrets> {
        let init = format!("run `piha init --cluster <cluster file> --secrets {}`", dir.display());
        open(dir, &init)
    }

    /// Opens the secrets directory of `cluster` (read from `cluster_file`) and
    /// checks that it belongs to that cluster.
    pub fn for_cluster(cluster_file: &Path, dir: &Path, cluster: &ClusterFile) -> anyhow::Result<Secrets> {
        let init = format!(
            "run `piha init --cluster {}{}`",
            cluster_file.display(),
            secrets_arg(cluster_file, dir)
        );
        let s = open(dir, &init)?;
        s.check_cluster(cluster_file, cluster)?;
        Ok(s)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cluster these secrets were generated for.
    pub fn cluster_name(&self) -> &str {
        &self.cluster_name
    }

    pub fn path(&self, f: SecretFile) -> PathBuf {
        self.dir.join(f.rel)
    }

    /// The bytes of one secret file.
    pub fn read(&self, f: SecretFile) -> anyhow::Result<Vec<u8>> {
        let p = self.path(f);
        fs::read(&p).with_context(|| format!("reading {}", p.display()))
    }

    /// The bootstrap token, checked against kubeadm's format.
    pub fn token(&self) -> anyhow::Result<String> {
        let p = self.path(secrets::BOOTSTRAP_TOKEN);
        let token = String::from_utf8(self.read(secrets::BOOTSTRAP_TOKEN)?).with_context(|| format!("{} is not text", p.display()))?;
        let token = token.trim();
        if !pki::is_bootstrap_token(token) {
            bail!(
                "{}: not a bootstrap token of the form [a-z0-9]{{6}}.[a-z0-9]{{16}} (fix: `piha rotate-secrets --yes`)",
                p.display()
            );
        }
        Ok(token.to_string())
    }

    /// The discovery hash `sha256:<hex>`, checked against the CA certificate it
    /// was derived from (a stale hash would make every join fail).
    pub fn ca_cert_hash(&self) -> anyhow::Result<String> {
        let p = self.path(secrets::CA_CERT_HASH);
        let stored = String::from_utf8(self.read(secrets::CA_CERT_HASH)?).with_context(|| format!("{} is not text", p.display()))?;
        let stored = stored.trim();
        let ca = self.path(secrets::CA_CRT);
        let actual = pki::ca_cert_hash(&self.read(secrets::CA_CRT)?).with_context(|| format!("reading {}", ca.display()))?;
        if stored != actual {
            bail!(
                "{} holds {stored} but {} hashes to {actual} (fix: restore the matching files, or `piha rotate-secrets --yes`)",
                p.display(),
                ca.display()
            );
        }
        Ok(actual)
    }

    /// The cluster CA's notBefore, in Unix seconds.
    pub fn ca_not_before(&self) -> anyhow::Result<u64> {
        let ca = self.path(secrets::CA_CRT);
        pki::not_before(&self.read(secrets::CA_CRT)?).with_context(|| format!("reading {}", ca.display()))
    }

    fn check_cluster(&self, cluster_file: &Path, cluster: &ClusterFile) -> anyhow::Result<()> {
        if self.cluster_name != cluster.name {
            bail!(
                "{} holds the secrets of cluster `{}`, but {} describes cluster `{}` \
                 (fix: pass that cluster's own directory with --secrets DIR; or, if `name:` was changed on purpose, \
                 `piha rotate-secrets --cluster {}{} --yes` gives it new secrets and keeps the old ones beside it)",
                self.dir.display(),
                self.cluster_name,
                cluster_file.display(),
                cluster.name,
                cluster_file.display(),
                secrets_arg(cluster_file, &self.dir),
            );
        }
        Ok(())
    }
}

/// ` --secrets DIR` when DIR is not the default for `cluster_file`.
fn secrets_arg(cluster_file: &Path, dir: &Path) -> String {
    if default_dir(cluster_file) == dir {
        String::new()
    } else {
        format!(" --secrets {}", dir.display())
    }
}

/// `secrets/` beside the cluster file.
pub fn default_dir(cluster_file: &Path) -> PathBuf {
    cluster_file.parent().unwrap_or(Path::new("")).join("secrets")
}

fn open(dir: &Path, init: &str) -> anyhow::Result<Secrets> {
    if !dir.is_dir() {
        bail!("no secrets directory {} ({init})", dir.display());
    }
    let missing = missing(dir);
    if !missing.is_empty() {
        bail!(
            "{} is incomplete, missing {} (fix: restore the files from a backup; \
             or, if no card was stamped from it yet, `piha rotate-secrets --yes` makes new ones)",
            dir.display(),
            missing.join(", ")
        );
    }
    let name_file = dir.join(CLUSTER_NAME_FILE);
    let name = fs::read_to_string(&name_file).with_context(|| format!("reading {}", name_file.display()))?;
    if let Ok(meta) = fs::metadata(dir) {
        if meta.permissions().mode() & 0o077 != 0 {
            log::warn!(
                "{} is readable by other users; it holds the cluster's private keys (fix: chmod 700 {0})",
                dir.display()
            );
        }
    }
    Ok(Secrets {
        dir: dir.to_path_buf(),
        cluster_name: name.trim().to_string(),
    })
}

/// Relative paths of the files a complete directory has but `dir` lacks.
fn missing(dir: &Path) -> Vec<&'static str> {
    secrets::ALL
        .iter()
        .map(|f| f.rel)
        .chain([CLUSTER_NAME_FILE])
        .filter(|rel| !dir.join(rel).is_file())
        .collect()
}

/// True if `dir` exists and holds nothing (the user made it ahead of time).
fn is_empty_dir(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}

/// `piha init`: creates the secrets directory if there is none; leaves a
/// complete one of the same cluster alone; refuses anything else.
pub fn ensure(cluster_file: &Path, dir: &Path, cluster: &ClusterFile) -> anyhow::Result<Outcome> {
    if dir.exists() && !is_empty_dir(dir) {
        Secrets::for_cluster(cluster_file, dir, cluster)?;
        return Ok(Outcome::AlreadyPresent);
    }
    let staged = stage(dir, cluster)?;
    if dir.exists() {
        // Only an empty directory gets here; remove_dir refuses anything else.
        fs::remove_dir(dir).with_context(|| format!("removing the empty directory {}", dir.display()))?;
    }
    publish(staged, dir)?;
    Ok(Outcome::Created)
}

/// `piha rotate-secrets --yes`: generates new secrets and swaps them in; the
/// old directory is kept as `<dir>.old-<unix time>`, whose path is returned.
pub fn rotate(dir: &Path, cluster: &ClusterFile) -> anyhow::Result<PathBuf> {
    if !dir.exists() {
        bail!(
            "there are no secrets to replace in {} (fix: `piha init` creates them)",
            dir.display()
        );
    }
    let name = dir
        .file_name()
        .with_context(|| format!("{} has no directory name", dir.display()))?;
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?
        .as_secs();
    let old = dir.with_file_name(format!("{}.old-{secs}", name.to_string_lossy()));
    if old.exists() {
        bail!("{} already exists; wait a second and run again", old.display());
    }
    let staged = stage(dir, cluster)?;
    fs::rename(dir, &old).with_context(|| format!("moving {} to {}", dir.display(), old.display()))?;
    if let Err(e) = publish(staged, dir) {
        // Put the old secrets back so the cluster is left as it was.
        return match fs::rename(&old, dir) {
            Ok(()) => Err(e),
            Err(back) => Err(e.context(format!("and moving {} back to {} failed too: {back}", old.display(), dir.display()))),
        };
    }
    Ok(old)
}

/// Generates every secret into a fresh 0700 temporary directory beside `dir`.
fn stage(dir: &Path, cluster: &ClusterFile) -> anyhow::Result<tempfile::TempDir> {
    let parent = parent_of(dir);
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "secrets".to_string());
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.new-"))
        .permissions(fs::Permissions::from_mode(DIR_MODE))
        .tempdir_in(parent)
        .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
    for (rel, bytes) in generate(cluster)? {
        write_private(tmp.path(), rel, &bytes)?;
    }
    for sub in ["pki/etcd", "pki", ""] {
        fsync_dir(&tmp.path().join(sub))?;
    }
    Ok(tmp)
}

/// Renames the staged directory to `dir` and makes the rename durable.
fn publish(staged: tempfile::TempDir, dir: &Path) -> anyhow::Result<()> {
    let from = staged.path().to_path_buf();
    // rename(2) fails on a non-empty target, so a concurrent init cannot be clobbered.
    fs::rename(&from, dir).with_context(|| format!("renaming {} to {}", from.display(), dir.display()))?;
    // From here the TempDir must not delete anything: its path no longer exists.
    let _ = staged.keep();
    fsync_dir(parent_of(dir))
}

fn parent_of(dir: &Path) -> &Path {
    match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Every file of a secrets directory, freshly generated: relative path → bytes.
pub fn generate(cluster: &ClusterFile) -> anyhow::Result<Vec<(&'static str, Vec<u8>)>> {
    let alg = cluster.kubernetes.key_algorithm;
    let ca = pki::ca(pki::CLUSTER_CA_CN, alg)?;
    let etcd = pki::ca(pki::ETCD_CA_CN, alg)?;
    let front_proxy = pki::ca(pki::FRONT_PROXY_CA_CN, alg)?;
    let sa = pki::service_account_key(alg)?;
    let hash = pki::ca_cert_hash(ca.cert_pem.as_bytes())?;
    let line = |s: &str| format!("{s}\n").into_bytes();
    Ok(vec![
        (secrets::CA_CRT.rel, ca.cert_pem.into_bytes()),
        (secrets::CA_KEY.rel, ca.key_pem.into_bytes()),
        (secrets::ETCD_CA_CRT.rel, etcd.cert_pem.into_bytes()),
        (secrets::ETCD_CA_KEY.rel, etcd.key_pem.into_bytes()),
        (secrets::FRONT_PROXY_CA_CRT.rel, front_proxy.cert_pem.into_bytes()),
        (secrets::FRONT_PROXY_CA_KEY.rel, front_proxy.key_pem.into_bytes()),
        (secrets::SA_KEY.rel, sa.private_pem.into_bytes()),
        (secrets::SA_PUB.rel, sa.public_pem.into_bytes()),
        (secrets::BOOTSTRAP_TOKEN.rel, line(&pki::bootstrap_token())),
        (secrets::CA_CERT_HASH.rel, line(&hash)),
        (CLUSTER_NAME_FILE, line(&cluster.name)),
    ])
}

/// Writes `root/rel` with mode 0600, creating 0700 parent directories; never
/// replaces an existing file.
fn write_private(root: &Path, rel: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let path = root.join(rel);
    let mut dir = root.to_path_buf();
    for part in Path::new(rel).parent().into_iter().flat_map(Path::components) {
        dir.push(part);
        if !dir.is_dir() {
            fs::DirBuilder::new()
                .mode(DIR_MODE)
                .create(&dir)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes).with_context(|| format!("writing {}", path.display()))?;
    f.sync_all().with_context(|| format!("syncing {}", path.display()))?;
    // The umask can only remove bits; make sure nothing else did either.
    fs::set_permissions(&path, fs::Permissions::from_mode(FILE_MODE)).with_context(|| format!("chmod 600 {}", path.display()))
}

fn fsync_dir(dir: &Path) -> anyhow::Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::{CLUSTER_NAME_FILE, generate};
    use piha_config::cluster::{ClusterFile, KeyAlgorithm};
    use piha_config::secrets;

    #[test]
    fn generates_every_secret_file() {
        let text = include_str!("../../../examples/qemu-lab.yaml");
        let mut c = ClusterFile::parse(std::path::Path::new("qemu-lab.yaml"), text).unwrap();
        c.kubernetes.key_algorithm = KeyAlgorithm::EcdsaP256;
        let files = generate(&c).unwrap();
        let names: Vec<&str> = files.iter().map(|(rel, _)| *rel).collect();
        let mut expected: Vec<&str> = secrets::ALL.iter().map(|f| f.rel).collect();
        expected.push(CLUSTER_NAME_FILE);
        assert_eq!(names, expected);
    }
}
